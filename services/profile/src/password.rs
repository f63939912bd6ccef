//! Passwords: argon2id (the crate's defaults: v19, 19 MiB, 2 passes, 1 lane —
//! OWASP's recommendation), stored as PHC strings.
//!
//! Hashing costs tens of milliseconds of CPU by design, so both operations run on
//! Tokio's blocking pool, never on an async worker where they would stall every
//! other request that worker serves.
//!
//! Login must not reveal whether an e-mail is registered, by its answer or by its
//! timing: for an unknown e-mail the password is still verified, against
//! [`DUMMY_HASH`], which has the same parameters as real hashes.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use kai_shared::ApiError;

/// A hash of nothing anyone knows, computed once with the live parameters.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"kai: no account has this password")
        .expect("argon2id with default parameters hashes")
        .to_string()
});

/// Hashes a new password (random salt) into a `$argon2id$…` PHC string.
pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// Password verifications run by this process: the counted fact behind "an
/// unknown e-mail costs the same argon2id work as a wrong password".
pub static VERIFICATIONS: AtomicU64 = AtomicU64::new(0);

/// True when `password` matches `stored`; with `stored = None` (no such account)
/// it does the same work against [`DUMMY_HASH`] and answers false.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        VERIFICATIONS.fetch_add(1, Ordering::Relaxed);
        let known = stored.is_some();
        let phc = stored.as_deref().unwrap_or(DUMMY_HASH.as_str());
        match Argon2::default().verify_password(password.as_bytes(), phc) {
            Ok(()) => known,
            Err(argon2::password_hash::Error::PasswordInvalid) => false,
            Err(e) => {
                // A stored hash we cannot read: refuse the login, and say so in the logs.
                tracing::error!(error = %e, "unreadable password hash");
                false
            }
        }
    })
    .await
    .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(
            verify("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(h)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(
            !verify("kai: no account has this password".into(), None)
                .await
                .unwrap()
        );
        assert!(
            !verify("anything".into(), Some("not a phc string".into()))
                .await
                .unwrap()
        );
    }
}
