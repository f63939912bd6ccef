//! Sessions: one row per login, keyed by the session id the token carries.
//!
//! The table stores the token's SHA-256 (hex), never the token: a copy of the
//! table cannot be replayed. Tokens are 256-bit-signed JWTs, not passwords, so a
//! fast unsalted hash is the right tool here.
//!
//! Every authenticated request to profile-service also checks its session here
//! ([`session_check`]), so a logout takes effect in this service at once even
//! when Redis — which carries revocations to the other services — is down.

use std::sync::Arc;

use kai_http::ApiError;
use kai_platform::server::SessionCheck;
use kai_shared::db::Db;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Whether a session is still live: not revoked, not expired.
pub const SESSION_LIVE: &str =
    "SELECT revoked_at IS NULL AND expires_at > now() FROM profile.sessions WHERE id = $1";

/// The hex SHA-256 of a token, as stored in `sessions.token_hash`.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The platform's per-request check for this service (`ServiceDef.session_check`).
pub fn session_check(db: Db) -> SessionCheck {
    Arc::new(move |session_id: Uuid| {
        let db = db.clone();
        Box::pin(async move {
            let conn = db.conn().await?;
            let live = db
                .query_opt(&conn, SESSION_LIVE, &[&session_id])
                .await?
                .is_some_and(|row| row.get::<_, bool>(0));
            if live {
                Ok(())
            } else {
                Err(ApiError::Unauthorized(
                    "the session has ended; log in again".into(),
                ))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_64_lowercase_hex_characters() {
        let h = token_hash("a.b.c");
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, token_hash("a.b.c"));
        assert_ne!(h, token_hash("a.b.d"));
    }
}
