//! Signed control messages: what profile-service tells the other services
//! through Redis — revocations (channel messages and the members of the revoked
//! set), the revoked set's completeness marker, and account erasures — signed
//! with the key that signs access tokens and verified with the keys every
//! service already holds (by `kid`). Redis carries them; it is not trusted with
//! them: whoever can write a Redis key or publish on a channel (another
//! service's credentials, a foothold in Redis) cannot forge one.
//!
//! A message is a compact JWS (EdDSA, the signing key's `kid` in its header)
//! whose claims say what it is: the audience `kai-control` (so a control
//! message is never an access token, nor the reverse), its `kind`, when it was
//! issued, until when it matters (`exp`, revocations) and its `body` — for an
//! erasure the event id and the user id, so a signed event cannot be replayed
//! under another event's id or for another user.

use serde::{Deserialize, Serialize};

/// The audience of every control message (never `kai-api`).
pub const AUDIENCE: &str = "kai-control";

/// What a control message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A revocation: `body` is a session id or a user-wide watermark
    /// (`user <user id> <before ms> <kept session id or ->`).
    Revocation,
    /// The revoked set is complete (restored from PostgreSQL): `body` is empty.
    Complete,
    /// An account erasure: `body` is `<event id> <user id>`.
    AccountErased,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Revocation => "revocation",
            Kind::Complete => "revocations-complete",
            Kind::AccountErased => "account-erased",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Kind::Revocation, Kind::Complete, Kind::AccountErased]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The claims of a control message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub kind: String,
    pub iat: i64,
    /// Unix seconds after which the message no longer matters (revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub body: String,
}

/// A verified control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub kind: Kind,
    pub iat: i64,
    pub exp: Option<i64>,
    pub body: String,
}

/// Why a control message was refused: a fixed word, safe to log and count
/// (never the message, which names a user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("not a control message")]
    WrongAudience,
    #[error("unexpected kind")]
    WrongKind,
}

impl Claims {
    pub fn new(kind: Kind, body: String, exp: Option<i64>) -> Self {
        Self {
            iss: super::ISSUER.into(),
            aud: AUDIENCE.into(),
            kind: kind.as_str().into(),
            iat: chrono::Utc::now().timestamp(),
            exp,
            body,
        }
    }
}

/// The check of a control message's signature and audience (times are the
/// caller's business: an expired revocation is not forged, merely over).
pub(super) fn validation() -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&[super::ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["iss", "aud"]);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v
}

pub(super) fn verify(
    message: &str,
    keys: &super::keys::VerifyingKeys,
    validation: &jsonwebtoken::Validation,
    expected: &[Kind],
) -> Result<Control, Refused> {
    use jsonwebtoken::errors::ErrorKind as K;
    let header = jsonwebtoken::decode_header(message).map_err(|_| Refused::Malformed)?;
    if header.alg != jsonwebtoken::Algorithm::EdDSA || header.crit.is_some() {
        return Err(Refused::Malformed);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.get(kid))
        .ok_or(Refused::UnknownKey)?;
    let data =
        jsonwebtoken::decode::<Claims>(message, key, validation).map_err(|e| match e.kind() {
            K::InvalidSignature => Refused::BadSignature,
            K::InvalidAudience | K::InvalidIssuer => Refused::WrongAudience,
            _ => Refused::Malformed,
        })?;
    let claims = data.claims;
    let kind = Kind::parse(&claims.kind).ok_or(Refused::WrongKind)?;
    if !expected.contains(&kind) {
        return Err(Refused::WrongKind);
    }
    Ok(Control {
        kind,
        iat: claims.iat,
        exp: claims.exp,
        body: claims.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::auth::keys::{KeyPair, parse_signing_pem, parse_verifying_pems};
    use std::time::Duration;

    fn auth(pair: &KeyPair) -> Authenticator {
        Authenticator::new(
            Some(parse_signing_pem(&pair.private_pem).unwrap()),
            parse_verifying_pems(&pair.public_pem).unwrap(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn signed_messages_verify_and_forgeries_are_refused_with_a_reason() {
        let pair = KeyPair::generate();
        let a = auth(&pair);
        let m = a
            .sign_control(Kind::AccountErased, "e u".into(), None)
            .unwrap();
        let v = a.verify_control(&m, &[Kind::AccountErased]).unwrap();
        assert_eq!((v.kind, v.body.as_str()), (Kind::AccountErased, "e u"));
        assert_eq!(
            a.verify_control(&m, &[Kind::Revocation]),
            Err(Refused::WrongKind)
        );
        let stranger = auth(&KeyPair::generate());
        let forged = stranger
            .sign_control(Kind::AccountErased, "e v".into(), None)
            .unwrap();
        assert_eq!(
            a.verify_control(&forged, &[Kind::AccountErased]),
            Err(Refused::UnknownKey)
        );
        // The stranger's claims and signature under the trusted header.
        let header = m.split('.').next().unwrap();
        let rest: Vec<&str> = forged.split('.').skip(1).collect();
        let swapped = format!("{header}.{}", rest.join("."));
        assert_eq!(
            a.verify_control(&swapped, &[Kind::AccountErased]),
            Err(Refused::BadSignature)
        );
        for garbage in ["", "x", "a.b.c", "not a message at all"] {
            assert_eq!(
                a.verify_control(garbage, &[Kind::AccountErased]),
                Err(Refused::Malformed)
            );
        }
    }

    #[test]
    fn a_control_message_is_no_access_token_and_a_token_no_control_message() {
        let a = auth(&KeyPair::generate());
        let m = a.sign_control(Kind::Complete, String::new(), None).unwrap();
        assert!(a.verify(&m).is_err());
        let (token, _) = a.mint(uuid::Uuid::new_v4(), uuid::Uuid::new_v4()).unwrap();
        assert!(
            a.verify_control(&token, &[Kind::Complete, Kind::Revocation])
                .is_err()
        );
    }
}
