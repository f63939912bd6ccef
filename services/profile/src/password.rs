//! Passwords: argon2id (the crate's defaults: v19, 19 MiB, 2 passes, 1 lane —
//! OWASP's recommendation), stored as PHC strings.
//!
//! Hashing costs tens of milliseconds of CPU by design, so both operations run on
//! Tokio's blocking pool, never on an async worker where they would stall every
//! other request that worker serves.
//!
//! Each computation holds 19 MiB, so they are bounded: at most one per core at a
//! time ([`PERMITS`]); others queue for up to [`QUEUE_TIMEOUT`], then get a 503
//! with `Retry-After` instead of growing memory without bound (a few hundred
//! concurrent anonymous registrations used to take the process to gigabytes). The
//! global allocator (mimalloc, kai-shared's `server` module) returns freed hash memory to the
//! system.
//!
//! Login must not reveal whether an e-mail is registered, by its answer or by its
//! timing: for an unknown e-mail the password is still verified, against
//! [`DUMMY_HASH`], which has the same parameters as real hashes.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use kai_http::ApiError;
use kai_shared::metrics::{Metrics, OutcomeCounter};
use tokio::sync::Semaphore;

/// A hash of nothing anyone knows, computed once with the live parameters.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"kai: no account has this password")
        .expect("argon2id with default parameters hashes")
        .to_string()
});

/// One argon2 computation per core at a time.
pub static PERMITS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// How long a request waits for a hashing slot before a 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Computations refused because the queue wait ran out (tests, metrics).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Most computations ever running at once in this process (tests).
static PEAK_CONCURRENT: AtomicU64 = AtomicU64::new(0);
static RUNNING: AtomicU64 = AtomicU64::new(0);

/// Runs `work` on the blocking pool once a slot is free, or refuses with a 503.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = match tokio::time::timeout(QUEUE_TIMEOUT, PERMITS.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Unavailable(anyhow::anyhow!(
                "password hashing is saturated (every slot busy for {QUEUE_TIMEOUT:?})"
            )));
        }
    };
    let result = tokio::task::spawn_blocking(move || {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK_CONCURRENT.fetch_max(now, Ordering::SeqCst);
        let out = work();
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        out
    })
    .await
    .map_err(ApiError::internal);
    drop(permit);
    result
}

/// Hashes a new password (random salt) into a `$argon2id$…` PHC string.
pub async fn hash(password: String) -> Result<String, ApiError> {
    bounded(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await?
    .map_err(ApiError::internal)
}

/// argon2id verifications by outcome: the counted fact behind "an unknown
/// e-mail costs the same work as a wrong password", and what a guessing
/// campaign costs (exported at 0 from the start).
pub const VERIFICATIONS: OutcomeCounter = OutcomeCounter {
    name: "kai_password_verifications_total",
    help: "argon2id password verifications by outcome (match, mismatch)",
    outcomes: &["match", "mismatch"],
};

/// True when `password` matches `stored`; with `stored = None` (no such account)
/// it does the same work against [`DUMMY_HASH`] and answers false. Counted in
/// [`VERIFICATIONS`].
pub async fn verify(
    metrics: &Metrics,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    let matched = verify_unmetered(password, stored).await?;
    metrics.count_outcome(&VERIFICATIONS, if matched { "match" } else { "mismatch" });
    Ok(matched)
}

async fn verify_unmetered(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    bounded(move || {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new("profile")
            .with_outcome_counters(&[VERIFICATIONS])
            .expect("registered")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn never_more_hashes_at_once_than_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let tasks: Vec<_> = (0..16)
            .map(|i| tokio::spawn(hash(format!("password number {i}"))))
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let peak = PEAK_CONCURRENT.load(Ordering::SeqCst);
        assert!(peak >= 1 && peak <= cores, "peak {peak} with {cores} cores");
    }

    #[tokio::test]
    async fn a_saturated_queue_answers_503_with_retry_after() {
        // Hold every slot: the next computation waits QUEUE_TIMEOUT (5 s), then is refused.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let held = PERMITS.acquire_many(cores).await.unwrap();
        let err = hash("waits forever".into()).await.unwrap_err();
        drop(held);
        let res = actix_web::ResponseError::error_response(&err);
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after"));
        assert_eq!(REFUSED.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(
            verify(&metrics(), "correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify(&metrics(), "wrong horse".into(), Some(h))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(
            !verify(&metrics(), "kai: no account has this password".into(), None)
                .await
                .unwrap()
        );
        assert!(
            !verify(
                &metrics(),
                "anything".into(),
                Some("not a phc string".into())
            )
            .await
            .unwrap()
        );
    }
}
