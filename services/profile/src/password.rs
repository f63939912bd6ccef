//! Passwords: argon2id (the crate's defaults: v19, 19 MiB, 2 passes, 1 lane —
//! OWASP's recommendation), stored as PHC strings.
//!
//! Hashing costs tens of milliseconds of CPU by design, so both operations run on
//! Tokio's blocking pool, never on an async worker where they would stall every
//! other request that worker serves.
//!
//! Each computation holds 19 MiB, so they are bounded: at most one per core at a
//! time ([`PERMITS`]), plus one slot kept for logged-in users ([`RESERVED`]). Work comes in two classes ([`Caller`]):
//!
//! - **Anonymous** (login, registration) waits in a bounded queue: at most
//!   [`MAX_WAITING`] requests wait for a slot, each for up to [`QUEUE_TIMEOUT`];
//!   one more, or one that waited that long, gets 503 with `Retry-After` at once.
//!   A 503, not a 429: the refusal says the server's hashing capacity is spent by
//!   everyone together, not that this client sent too much (its own rate is what
//!   the 429 buckets in `limits` judge). The queue bound keeps a flood's memory
//!   and latency bounded: a request that would wait past the timeout is told so
//!   now instead of holding a connection for 5 s first.
//! - **Authenticated** (re-entering the password to change it or delete the
//!   account: a logged-in user; and a login presenting the account's device
//!   token, `device`) is never refused for saturation: it takes a
//!   shared slot or its own reserved one ([`RESERVED`]), whichever frees first,
//!   and waits without a deadline — anonymous work cannot take the reserved slot,
//!   and authenticated work is itself bounded per session (`limits`), so the
//!   wait is short. Every other route of a logged-in user runs no argon2 at all
//!   (hashing runs on the blocking pool, never on an async worker).
//!
//! The global allocator (mimalloc) returns freed hash memory to the system.
//!
//! Login must not reveal whether an e-mail is registered, by its answer or by its
//! timing: for an unknown e-mail the password is still verified, against
//! [`DUMMY_HASH`], which has the same parameters as real hashes.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use kai_http::ApiError;
use kai_shared::metrics::{Metrics, OutcomeCounter};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A hash of nothing anyone knows, computed once with the live parameters.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"kai: no account has this password")
        .expect("argon2id with default parameters hashes")
        .to_string()
});

/// One argon2 computation per core at a time, shared by every caller.
pub static PERMITS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// One more slot that only authenticated callers may take.
pub static RESERVED: Semaphore = Semaphore::const_new(1);

/// How long an anonymous request waits for a hashing slot before a 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many anonymous requests may wait for a slot at once (per core); one
/// more is refused at once with a 503.
pub const MAX_WAITING_PER_CORE: usize = 8;

/// The anonymous queue's bound on this machine.
pub static MAX_WAITING: LazyLock<usize> = LazyLock::new(|| {
    MAX_WAITING_PER_CORE * std::thread::available_parallelism().map_or(1, |n| n.get())
});

/// Who asks for the work: an anonymous caller (login, registration) or a
/// logged-in user re-entering a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Authenticated,
}

/// Computations refused because the queue was full or its wait ran out (tests, metrics).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Anonymous requests waiting for a slot now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Most computations ever running at once in this process (tests).
static PEAK_CONCURRENT: AtomicU64 = AtomicU64::new(0);
static RUNNING: AtomicU64 = AtomicU64::new(0);

fn saturated(why: &str) -> ApiError {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    ApiError::Unavailable(anyhow::anyhow!("password hashing is saturated ({why})"))
}

/// A slot for `caller`'s computation (see the module's documentation).
async fn slot(caller: Caller) -> Result<SemaphorePermit<'static>, ApiError> {
    match caller {
        Caller::Authenticated => tokio::select! {
            p = PERMITS.acquire() => p,
            p = RESERVED.acquire() => p,
        }
        .map_err(ApiError::internal),
        Caller::Anonymous => {
            if let Ok(p) = PERMITS.try_acquire() {
                return Ok(p);
            }
            // Join the queue only while it has room.
            let joined = WAITING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < *MAX_WAITING).then_some(n + 1)
            });
            if joined.is_err() {
                return Err(saturated("the queue is full"));
            }
            let waited = tokio::time::timeout(QUEUE_TIMEOUT, PERMITS.acquire()).await;
            WAITING.fetch_sub(1, Ordering::AcqRel);
            match waited {
                Ok(Ok(permit)) => Ok(permit),
                _ => Err(saturated("every slot busy for the whole wait")),
            }
        }
    }
}

/// Runs `work` on the blocking pool once `caller` has a slot (or refuses).
async fn bounded<T: Send + 'static>(
    caller: Caller,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = slot(caller).await?;
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
pub async fn hash(caller: Caller, password: String) -> Result<String, ApiError> {
    bounded(caller, move || {
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
    caller: Caller,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    let matched = verify_unmetered(caller, password, stored).await?;
    metrics.count_outcome(&VERIFICATIONS, if matched { "match" } else { "mismatch" });
    Ok(matched)
}

async fn verify_unmetered(
    caller: Caller,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    bounded(caller, move || {
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
            .map(|i| tokio::spawn(hash(Caller::Anonymous, format!("password number {i}"))))
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
        let err = hash(Caller::Anonymous, "waits forever".into())
            .await
            .unwrap_err();
        drop(held);
        let res = actix_web::ResponseError::error_response(&err);
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after"));
        assert_eq!(REFUSED.load(Ordering::SeqCst), 1);
    }

    /// A full queue refuses the next anonymous request at once (it does not wait
    /// the timeout first), while a logged-in user's computation still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_anonymous_work_at_once_and_never_authenticated_work() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let held = PERMITS.acquire_many(cores).await.unwrap();
        let waiting: Vec<_> = (0..*MAX_WAITING)
            .map(|i| tokio::spawn(hash(Caller::Anonymous, format!("queued number {i}"))))
            .collect();
        while WAITING.load(Ordering::SeqCst) < *MAX_WAITING {
            tokio::task::yield_now().await;
        }
        let err = hash(Caller::Anonymous, "one too many".into())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("queue is full"), "{err:?}");
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "the queue still waits"
        );
        // Every shared slot is busy and the queue is full: a logged-in user's
        // computation runs in the reserved slot.
        let h = hash(Caller::Authenticated, "logged in".into())
            .await
            .unwrap();
        assert!(
            verify(
                &metrics(),
                Caller::Authenticated,
                "logged in".into(),
                Some(h)
            )
            .await
            .unwrap()
        );
        drop(held);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(REFUSED.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = hash(Caller::Anonymous, "correct horse".into())
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(
            verify(
                &metrics(),
                Caller::Anonymous,
                "correct horse".into(),
                Some(h.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !verify(&metrics(), Caller::Anonymous, "wrong horse".into(), Some(h))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(
            !verify(
                &metrics(),
                Caller::Anonymous,
                "kai: no account has this password".into(),
                None
            )
            .await
            .unwrap()
        );
        assert!(
            !verify(
                &metrics(),
                Caller::Anonymous,
                "anything".into(),
                Some("not a phc string".into())
            )
            .await
            .unwrap()
        );
    }
}
