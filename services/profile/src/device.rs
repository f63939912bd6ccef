//! Device tokens (SPEC §4, device-bound login throttling, after OWASP's and
//! Google's "device cookies"): a successful login also returns a signed token
//! naming the account and a device id. A client keeps it in persistent storage
//! of its own — the platform keychain/keystore on a phone, an `HttpOnly; Secure;
//! SameSite=Strict` cookie set by a web front end — and sends it back as
//! `device_token` with every later login.
//!
//! A login that presents a valid device token of the account it logs in to is
//! limited only by that device's own bucket ([`LOGIN_PER_DEVICE`]); every other
//! login also draws on the account's budget for unknown devices
//! ([`LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES`]). So many addresses guessing one account
//! reach the password check a bounded number of times, and the owner, on a device
//! that logged in before, is never refused because others guessed.
//!
//! The token is an EdDSA JWT signed with the access-token key but for another
//! audience (`kai-device`): no service accepts it as an access token, and it
//! grants nothing but a separate login bucket.
//!
//! [`LOGIN_PER_DEVICE`]: crate::limits::LOGIN_PER_DEVICE
//! [`LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES`]: crate::limits::LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header, Validation};
use kai_http::ApiError;
use kai_http::auth::{AuthSettings, CLOCK_SKEW_SECS, ISSUER};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The audience of device tokens (access tokens are for `kai-api`).
pub const AUDIENCE: &str = "kai-device";

/// How long a device token is good for; each login with it renews it.
pub const DEVICE_TOKEN_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct DeviceClaims {
    /// The account.
    sub: Uuid,
    /// The device.
    did: Uuid,
    iat: i64,
    exp: i64,
    iss: String,
    aud: String,
}

/// A verified device token: the account it was issued to and the device's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub user_id: Uuid,
    pub id: Uuid,
}

/// Signs a device token for `device` (profile-service holds the signing key).
pub fn issue(auth: &AuthSettings, device: Device) -> Result<String, ApiError> {
    let signing = auth.signing_key.as_ref().ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "no signing key (AUTH_SIGNING_KEY_FILE) for device tokens"
        ))
    })?;
    let now = chrono::Utc::now().timestamp();
    let claims = DeviceClaims {
        sub: device.user_id,
        did: device.id,
        iat: now,
        exp: now.saturating_add(DEVICE_TOKEN_TTL.as_secs() as i64),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(signing.kid.clone());
    jsonwebtoken::encode(&header, &claims, &signing.key).map_err(ApiError::internal)
}

/// The device a token names, when it verifies (key by `kid`, EdDSA only,
/// issuer, audience, not expired, issued no later than now + skew, a lifetime
/// within [`DEVICE_TOKEN_TTL`] in checked arithmetic); `None` otherwise.
pub fn verify(auth: &AuthSettings, token: &str) -> Option<Device> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    if header.alg != Algorithm::EdDSA || header.crit.is_some() {
        return None;
    }
    let key = auth.verifying_keys.get(header.kid.as_deref()?)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<DeviceClaims>(token, key, &validation)
        .ok()?
        .claims;
    let now = chrono::Utc::now().timestamp();
    let lifetime = claims.exp.checked_sub(claims.iat)?;
    let fresh = claims.iat <= now.saturating_add(CLOCK_SKEW_SECS)
        && claims.exp > now
        && (0..=DEVICE_TOKEN_TTL.as_secs() as i64).contains(&lifetime);
    fresh.then_some(Device {
        user_id: claims.sub,
        id: claims.did,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kai_http::auth::keys::{KeyPair, parse_signing_pem, parse_verifying_pems};

    fn settings(pair: &KeyPair) -> AuthSettings {
        AuthSettings {
            verifying_keys: parse_verifying_pems(&pair.public_pem).unwrap(),
            signing_key: Some(parse_signing_pem(&pair.private_pem).unwrap()),
            token_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_device_token_verifies_only_with_its_key_and_is_no_access_token() {
        let pair = KeyPair::generate();
        let auth = settings(&pair);
        let device = Device {
            user_id: Uuid::new_v4(),
            id: Uuid::new_v4(),
        };
        let token = issue(&auth, device).unwrap();
        assert_eq!(verify(&auth, &token), Some(device));
        assert_eq!(verify(&settings(&KeyPair::generate()), &token), None);
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(verify(&auth, &tampered), None);
        // The access-token verifier refuses it (another audience).
        let access = kai_http::auth::Authenticator::new(
            None,
            auth.verifying_keys.clone(),
            Duration::from_secs(3600),
        );
        assert!(access.verify(&token).is_err());
        // And an access token is no device token.
        let minter = kai_http::auth::Authenticator::new(
            auth.signing_key.clone(),
            auth.verifying_keys.clone(),
            Duration::from_secs(3600),
        );
        let (access_token, _) = minter.mint(device.user_id, Uuid::now_v7()).unwrap();
        assert_eq!(verify(&auth, &access_token), None);
    }
}
