//! Rate limiting: token buckets kept in Redis (one Lua script per check, shared by
//! every replica), falling back to in-process buckets when Redis is not configured
//! or its circuit is open — so a Redis outage never turns into unlimited login
//! attempts, only into per-replica limits.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::redis::{Command, Redis};

/// Token bucket: refill by elapsed server time, take one token or return the wait
/// in milliseconds. State is a hash {tokens, ts}; it expires once full again.
const TOKEN_BUCKET: &str = r"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or cap
local ts = tonumber(state[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)
return wait
";

/// A bucket: `capacity` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub name: &'static str,
    pub capacity: u32,
    pub per_second: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A refusal: the bucket is empty for this long (at least a second). The HTTP
/// layer answers it as 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many attempts; retry later")]
pub struct Limited {
    pub retry_after: Duration,
}

/// Token-bucket limiter, cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Option<Arc<Redis>>,
    local: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    pub fn new(redis: Option<Arc<Redis>>) -> Self {
        Self {
            redis,
            local: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    /// Takes one token for `subject` under `limit`, or says how long to wait.
    /// `subject` is hashed into the key: e-mail addresses never reach Redis in clear.
    pub async fn check(&self, limit: &Limit, subject: &str) -> Result<(), Limited> {
        let key = format!(
            "{}:{}",
            limit.name,
            hex::encode(&Sha256::digest(subject.as_bytes())[..16])
        );
        let wait =
            match token_bucket(self.redis.as_ref(), &key, limit.capacity, limit.per_second).await {
                Some(wait) => wait,
                None => self.check_local(&key, limit),
            };
        match wait {
            None => Ok(()),
            Some(retry_after) => Err(Limited {
                retry_after: retry_after.max(Duration::from_secs(1)),
            }),
        }
    }

    fn check_local(&self, key: &str, limit: &Limit) -> Option<Duration> {
        let bucket = self.local.get_with(key.to_owned(), || {
            Arc::new(Mutex::new(Bucket {
                tokens: f64::from(limit.capacity),
                at: Instant::now(),
            }))
        });
        let mut b = bucket.lock().expect("bucket lock");
        take(&mut b, limit, Instant::now())
    }
}

/// At most `max` at once per subject (say, a user's running exports), in this
/// process: [`Running::acquire`] hands out a [`Slot`] that frees itself when
/// dropped — when the work ends, fails or its client goes away.
#[derive(Clone, Default)]
pub struct Running {
    counts: Arc<Mutex<std::collections::HashMap<String, u32>>>,
}

/// One running piece of work; dropping it frees the slot.
pub struct Slot {
    counts: Arc<Mutex<std::collections::HashMap<String, u32>>>,
    key: String,
}

impl Running {
    /// A slot for `subject` when fewer than `max` are running, else a refusal
    /// (retry in `retry_after`).
    pub fn acquire(&self, subject: &str, max: u32, retry_after: Duration) -> Result<Slot, Limited> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(subject.to_owned()).or_insert(0);
        if *n >= max {
            return Err(Limited {
                retry_after: retry_after.max(Duration::from_secs(1)),
            });
        }
        *n += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            key: subject.to_owned(),
        })
    }

    /// How many run for `subject` now (tests).
    pub fn running(&self, subject: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(subject).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One token-bucket step in Redis: `Some(None)` allowed, `Some(Some(wait))`
/// refused, `None` when Redis is not configured or unavailable (the caller falls
/// back to an in-process bucket).
pub async fn token_bucket(
    redis: Option<&Arc<Redis>>,
    key: &str,
    capacity: u32,
    per_second: f64,
) -> Option<Option<Duration>> {
    let store = redis.filter(|r| r.available())?;
    let key = format!("{}:ratelimit:{key}", store.prefix());
    let (cap, rate) = (capacity.to_string(), per_second.to_string());
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TOKEN_BUCKET));
    let wait_ms: u64 = store
        .run(Command::Script(
            &SCRIPT,
            &[key.as_str()],
            &[cap.as_bytes(), rate.as_bytes()],
        ))
        .await
        .ok()?;
    Some((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
}

/// One token-bucket step: refill for the time passed, then take a token or say how
/// long until one is available.
fn take(b: &mut Bucket, limit: &Limit, now: Instant) -> Option<Duration> {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * limit.per_second).min(f64::from(limit.capacity));
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        None
    } else {
        Some(Duration::from_secs_f64((1.0 - b.tokens) / limit.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        name: "t",
        capacity: 3,
        per_second: 0.5,
    };

    #[test]
    fn running_work_is_capped_per_subject_and_freed_on_drop() {
        let running = Running::default();
        let wait = Duration::from_secs(2);
        let a = running.acquire("u1", 2, wait).unwrap();
        let b = running.acquire("u1", 2, wait).unwrap();
        assert_eq!(
            running.acquire("u1", 2, wait).err(),
            Some(Limited { retry_after: wait })
        );
        assert!(running.acquire("u2", 2, wait).is_ok(), "another subject");
        drop(a);
        let c = running.acquire("u1", 2, wait).unwrap();
        drop((b, c));
        assert_eq!(running.running("u1"), 0);
    }

    #[test]
    fn a_bucket_allows_its_capacity_then_says_when_to_retry() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            at: start,
        };
        assert_eq!(
            (
                take(&mut b, &LIMIT, start),
                take(&mut b, &LIMIT, start),
                take(&mut b, &LIMIT, start)
            ),
            (None, None, None)
        );
        let wait = take(&mut b, &LIMIT, start).unwrap();
        assert_eq!(wait, Duration::from_secs(2));
        // Two seconds later one token is back.
        assert_eq!(take(&mut b, &LIMIT, start + Duration::from_secs(2)), None);
        assert!(take(&mut b, &LIMIT, start + Duration::from_secs(2)).is_some());
    }
}
