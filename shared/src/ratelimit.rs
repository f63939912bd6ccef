//! Rate limiting: token buckets kept in Redis (one Lua script per check, shared by
//! every replica), falling back to in-process limiters when Redis is not configured
//! or its circuit is open — so a Redis outage never turns into unlimited login
//! attempts, only into per-replica limits.
//!
//! The in-process fallback is `governor`'s keyed limiter (GCRA). GCRA with a burst
//! of `capacity` and one cell every `1 / per_second` is the token bucket the Redis
//! script keeps: `capacity` requests at once, then one per refill interval, and a
//! refused request learns when the next one would pass.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
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

/// One in-process limiter per [`Limit`], keyed by the hashed subject.
type Keyed = Gcra<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The fallback's limiters, by limit: its name, capacity and rate (as bits).
type Limiters = HashMap<(&'static str, u32, u64), Arc<Keyed>>;

/// Subjects an in-process limiter keeps before it drops those whose bucket is
/// full again (`retain_recent`: they are indistinguishable from new ones).
const MAX_LOCAL_KEYS: usize = 100_000;

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
    /// The service whose buckets these are: every key is
    /// `<prefix>:ratelimit:<service>:<limit>:<hashed subject>` (its own keys only,
    /// under the service's Redis ACL user).
    service: &'static str,
    /// The fallback's limiters, by limit (its name and quota).
    local: Arc<Mutex<Limiters>>,
}

impl RateLimiter {
    pub fn new(redis: Option<Arc<Redis>>, service: &'static str) -> Self {
        Self {
            redis,
            service,
            local: Arc::default(),
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
        let wait = match token_bucket(
            self.redis.as_ref(),
            self.service,
            &key,
            limit.capacity,
            limit.per_second,
        )
        .await
        {
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
        let Some(quota) = quota(limit) else {
            tracing::error!(
                limit = limit.name,
                "a rate limit without capacity or refill refuses everything"
            );
            return Some(Duration::from_secs(3600));
        };
        let limiter = self
            .local
            .lock()
            .expect("limiters lock")
            .entry((limit.name, limit.capacity, limit.per_second.to_bits()))
            .or_insert_with(|| Arc::new(Gcra::keyed(quota)))
            .clone();
        let outcome = limiter.check_key(&key.to_owned());
        if limiter.len() > MAX_LOCAL_KEYS {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        outcome
            .err()
            .map(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// `limit` as a GCRA quota: a burst of `capacity`, one more every `1 / per_second`.
/// `None` when the limit allows nothing (no capacity, no refill).
fn quota(limit: &Limit) -> Option<Quota> {
    let period = Duration::try_from_secs_f64(1.0 / limit.per_second).ok()?;
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(limit.capacity)?))
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

/// One token-bucket step in Redis, on `<prefix>:ratelimit:<service>:<key>`: `Some(None)` allowed, `Some(Some(wait))`
/// refused, `None` when Redis is not configured or unavailable (the caller falls
/// back to an in-process bucket).
pub async fn token_bucket(
    redis: Option<&Arc<Redis>>,
    service: &str,
    key: &str,
    capacity: u32,
    per_second: f64,
) -> Option<Option<Duration>> {
    let store = redis.filter(|r| r.available())?;
    let key = format!("{}:ratelimit:{service}:{key}", store.prefix());
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

    /// Redis is not configured: the in-process limiter allows `capacity` at
    /// once, then says when to retry (one token per `1 / per_second`).
    #[tokio::test]
    async fn the_fallback_allows_its_capacity_then_says_when_to_retry() {
        let limiter = RateLimiter::new(None, "test");
        for _ in 0..3 {
            assert!(limiter.check(&LIMIT, "sam@example.com").await.is_ok());
        }
        let wait = limiter.check_local("t:sam", &LIMIT);
        assert!(wait.is_none(), "another key has its own bucket");
        let refused = limiter
            .check(&LIMIT, "sam@example.com")
            .await
            .expect_err("the fourth is refused");
        let Limited { retry_after } = refused;
        // The next token is 2 s away (0.5 per second), less the moments spent here.
        assert!(
            retry_after > Duration::from_millis(1900) && retry_after <= Duration::from_secs(2),
            "{retry_after:?}"
        );
        // Another limit keeps its own buckets for the same subject.
        let other = Limit { name: "u", ..LIMIT };
        assert!(limiter.check(&other, "sam@example.com").await.is_ok());
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let limit = Limit {
            name: "fast",
            capacity: 2,
            per_second: 20.0,
        };
        let limiter = RateLimiter::new(None, "test");
        assert_eq!(limiter.check_local("k", &limit), None);
        assert_eq!(limiter.check_local("k", &limit), None);
        let wait = limiter.check_local("k", &limit).expect("empty");
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert_eq!(limiter.check_local("k", &limit), None, "one token is back");
        assert!(limiter.check_local("k", &limit).is_some(), "and only one");
    }

    #[test]
    fn a_limit_that_allows_nothing_refuses() {
        for limit in [
            Limit {
                name: "none",
                capacity: 0,
                per_second: 1.0,
            },
            Limit {
                name: "never",
                capacity: 1,
                per_second: 0.0,
            },
        ] {
            assert!(quota(&limit).is_none());
            assert!(
                RateLimiter::new(None, "test")
                    .check_local("k", &limit)
                    .is_some()
            );
        }
    }
}
