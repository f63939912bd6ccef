//! Access tokens: HS256 JWTs carrying the user id (`sub`) and a session id (`sid`),
//! minted by profile-service and verified by every service with the shared
//! `AUTH_SECRET`.
//!
//! Revocation costs no database round trip: a logout is announced on Redis pub/sub
//! and remembered in a sorted set (loaded when a replica subscribes); each replica
//! keeps the revoked session ids in memory until the tokens would have expired
//! anyway. profile-service, which owns the sessions table, additionally checks it.
//!
//! "Every session of a user" (log out everywhere, password change, account
//! deletion) travels the same way as one message, not one per session: a per-user
//! *watermark* — "sessions created before T are revoked, except possibly this
//! one" — so a check stays one O(1) lookup whatever the user's session count.
//! Session ids are UUIDv7, so a token carries its creation time to the
//! millisecond (tokens with another kind of session id fall back to `iat`).

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::{LocalBoxFuture, ready};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Platform;
use crate::http::errors::ApiError;

/// Issuer and audience of every Kai token.
pub const ISSUER: &str = "kai";
pub const AUDIENCE: &str = "kai-api";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// Signs and verifies tokens; holds the revoked-session set.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    revoked: moka::sync::Cache<Uuid, ()>,
    /// Per user: sessions created before this many unix milliseconds are revoked,
    /// except the one named (the caller of a password change).
    revoked_before: moka::sync::Cache<Uuid, Watermark>,
}

/// A user-wide revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub before_ms: i64,
    pub keep: Option<Uuid>,
}

impl Authenticator {
    pub fn new(secret: &SecretString, ttl: Duration) -> Self {
        let key = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
            // A revoked token is forgotten once it would have expired anyway.
            revoked: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl + Duration::from_secs(60))
                .build(),
            revoked_before: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl + Duration::from_secs(60))
                .build(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints a token for a user's session.
    pub fn mint(&self, user_id: Uuid, session_id: Uuid) -> Result<(String, Claims), ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm, expiry, issuer, audience and revocation.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid access token: {}", reason(&e))))?;
        if self.revoked.contains_key(&data.claims.sid) {
            return Err(ApiError::Unauthorized("the session has ended".into()));
        }
        if let Some(w) = self.revoked_before.get(&data.claims.sub)
            && created_ms(&data.claims) < w.before_ms
            && w.keep != Some(data.claims.sid)
        {
            return Err(ApiError::Unauthorized("the session has ended".into()));
        }
        Ok(data.claims)
    }

    /// Remembers a revoked session on this replica.
    pub fn mark_revoked(&self, session_id: Uuid) {
        self.revoked.insert(session_id, ());
    }

    /// Remembers a user-wide revocation on this replica; the newest watermark wins
    /// (an older one arriving late changes nothing).
    pub fn mark_user_revoked(&self, user_id: Uuid, watermark: Watermark) {
        self.revoked_before.entry(user_id).and_upsert_with(|old| {
            match old.map(|e| e.into_value()) {
                Some(old) if old.before_ms >= watermark.before_ms => old,
                _ => watermark,
            }
        });
    }

    /// Applies a revocation as announced between replicas: a session id, or
    /// `user <user id> <before ms> <kept session id or ->` (see [`user_revocation`]).
    /// Anything else is ignored.
    pub fn apply_revocation(&self, announced: &str) {
        if let Some(rest) = announced.strip_prefix("user ") {
            let mut parts = rest.split(' ');
            if let (Some(Ok(user)), Some(Ok(before_ms)), Some(keep)) = (
                parts.next().map(str::parse::<Uuid>),
                parts.next().map(str::parse::<i64>),
                parts.next(),
            ) {
                let keep = keep.parse().ok();
                self.mark_user_revoked(user, Watermark { before_ms, keep });
            }
        } else if let Ok(sid) = announced.parse() {
            self.mark_revoked(sid);
        }
    }
}

/// How a user-wide revocation is announced (and kept in Redis) — the form
/// [`Authenticator::apply_revocation`] reads.
pub fn user_revocation(user_id: Uuid, watermark: Watermark) -> String {
    let keep = watermark
        .keep
        .map_or_else(|| "-".to_owned(), |k| k.to_string());
    format!("user {user_id} {} {keep}", watermark.before_ms)
}

/// When the token's session was created, in unix milliseconds: from its UUIDv7
/// session id, else (another kind of id) from `iat`.
fn created_ms(claims: &Claims) -> i64 {
    match claims.sid.get_timestamp() {
        Some(ts) => {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        }
        None => claims.iat.saturating_mul(1000),
    }
}

fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired",
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "unsupported algorithm",
        K::InvalidIssuer | K::InvalidAudience => "not issued for this API",
        _ => "malformed",
    }
}

/// The authenticated caller, taken from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// Expiry of the token (unix seconds).
    pub expires_at: i64,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(platform) = req.app_data::<web::Data<Platform>>().cloned() else {
            return Box::pin(ready(Err(ApiError::internal(anyhow::anyhow!(
                "platform state missing"
            )))));
        };
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
            .and_then(|header| {
                header
                    .to_str()
                    .ok()
                    .and_then(|h| {
                        h.strip_prefix("Bearer ")
                            .or_else(|| h.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())
                    })
            });
        let user = token
            .and_then(|token| platform.auth.verify(token))
            .map(|claims| AuthUser {
                user_id: claims.sub,
                session_id: claims.sid,
                expires_at: claims.exp,
            });
        match (user, platform.session_check.clone()) {
            (Err(e), _) => Box::pin(ready(Err(e))),
            (Ok(user), None) => Box::pin(ready(Ok(user))),
            // A service that owns the sessions (profile) adds its own check.
            (Ok(user), Some(check)) => Box::pin(async move {
                check(user.session_id).await?;
                Ok(user)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(
            &SecretString::from("0123456789abcdef0123456789abcdef"),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = a.mint(user, session).unwrap();
        let claims = a.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));
    }

    #[test]
    fn tampered_foreign_and_revoked_tokens_are_refused() {
        let a = auth();
        let (token, claims) = a.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(a.verify(&tampered).is_err());
        let other = Authenticator::new(
            &SecretString::from("another-secret-another-secret-xx"),
            Duration::from_secs(60),
        );
        assert!(other.verify(&token).is_err());
        a.mark_revoked(claims.sid);
        assert!(matches!(a.verify(&token), Err(ApiError::Unauthorized(_))));
    }

    #[test]
    fn a_user_watermark_revokes_older_sessions_but_the_kept_one_and_newer_ones() {
        let a = auth();
        let user = Uuid::new_v4();
        let (old, _) = a.mint(user, Uuid::now_v7()).unwrap();
        let kept_sid = Uuid::now_v7();
        let (kept, _) = a.mint(user, kept_sid).unwrap();
        let (other_user, _) = a.mint(Uuid::new_v4(), Uuid::now_v7()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let before_ms = chrono::Utc::now().timestamp_millis();
        let announced = user_revocation(
            user,
            Watermark {
                before_ms,
                keep: Some(kept_sid),
            },
        );
        a.apply_revocation(&announced);
        assert!(a.verify(&old).is_err());
        assert!(a.verify(&kept).is_ok());
        assert!(a.verify(&other_user).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        let (newer, _) = a.mint(user, Uuid::now_v7()).unwrap();
        assert!(
            a.verify(&newer).is_ok(),
            "a login after the watermark works"
        );
        // An older announcement arriving late does not undo a newer one.
        a.apply_revocation(&user_revocation(
            user,
            Watermark {
                before_ms: chrono::Utc::now().timestamp_millis() + 1,
                keep: None,
            },
        ));
        a.apply_revocation(&announced);
        assert!(a.verify(&kept).is_err() && a.verify(&newer).is_err());
        a.apply_revocation("user garbage");
        a.apply_revocation("not a uuid");
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = chrono::Utc::now().timestamp();
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(
            format!(
                r#"{{"sub":"{}","sid":"{}","iat":{now},"exp":{},"iss":"kai","aud":"kai-api"}}"#,
                Uuid::new_v4(),
                Uuid::new_v4(),
                now + 60
            )
            .as_bytes(),
        );
        assert!(auth().verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let a = auth();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            iat: now - 120,
            exp: now - 60,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        let err = a.verify(&token).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }
}
