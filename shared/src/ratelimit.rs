//! Rate limiting: token buckets kept in Redis (one Lua script per check, shared by
//! every replica), falling back to in-process limiters when Redis is not configured
//! or its circuit is open — so a Redis outage never turns into unlimited login
//! attempts, only into per-replica limits.
//!
//! A busy path (journal's creates) takes its tokens in leases instead
//! ([`RateLimiter::check_leased`]): one script call takes up to a few dozen
//! tokens from the same shared bucket, and this process spends them for at most
//! [`LEASE_TTL`]. The bucket stays the one limit across replicas — no token is
//! spent that Redis did not hand out — and a user far from the limit costs one
//! Redis call per lease instead of one per request; near it (a bucket below two
//! tokens) every request asks Redis for one token, as `check` does.
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

/// Leased tokens: refill by elapsed server time plus what the caller gives back
/// (the unspent rest of an expired lease), then hand out up to `want` tokens —
/// never more than half of what is left (at least one), so one replica's lease
/// leaves the others something — or return the wait in milliseconds.
/// Returns {granted, wait}.
const LEASE_BUCKET: &str = r"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or cap
local ts = tonumber(state[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000 + refund)
local granted = 0
local wait = 0
if tokens >= 1 then
  granted = math.max(1, math.min(want, math.floor(tokens / 2)))
  tokens = tokens - granted
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)
return {granted, wait}
";

/// The limiter's Lua scripts (their sources), for [`crate::lua_scripts`].
pub(crate) const LUA_SCRIPTS: [&str; 2] = [TOKEN_BUCKET, LEASE_BUCKET];

/// How long this process may spend a lease's tokens; what is left after that
/// goes back to the bucket with the next call for the same subject.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// The most tokens one lease asks for. A lease doubles (from one) each time
/// the previous one was spent within [`LEASE_TTL`], so only a subject busy on
/// this replica asks for many.
pub const MAX_LEASE: u32 = 64;

/// What this process holds of one bucket.
#[derive(Debug, Clone, Copy)]
struct Lease {
    left: u32,
    until: std::time::Instant,
    /// What the last call asked for.
    ask: u32,
    /// Calls to Redis for this bucket running now: while one runs, others ask
    /// for one token each, so concurrent requests do not each take a lease.
    in_flight: u32,
}

/// A lease call in flight, counted in its [`Lease`] until answered; dropped
/// unanswered (the request was cancelled), it takes itself off the count. What
/// that call took from Redis, or gave back, is lost to this process: the bucket
/// is never overdrawn, at worst underspent.
struct InFlight<'a> {
    leases: &'a Mutex<HashMap<String, Lease>>,
    key: &'a str,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = leases.get_mut(self.key) {
            lease.in_flight = lease.in_flight.saturating_sub(1);
        }
    }
}

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
    /// Leases of shared buckets ([`RateLimiter::check_leased`]), by bucket key.
    leases: Arc<Mutex<HashMap<String, Lease>>>,
}

impl RateLimiter {
    pub fn new(redis: Option<Arc<Redis>>, service: &'static str) -> Self {
        Self {
            redis,
            service,
            local: Arc::default(),
            leases: Arc::default(),
        }
    }

    /// Takes one token for `subject` under `limit`, or says how long to wait.
    /// `subject` is hashed into the key: e-mail addresses never reach Redis in clear.
    pub async fn check(&self, limit: &Limit, subject: &str) -> Result<(), Limited> {
        let key = bucket_key(limit, subject);
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
        refusal(wait)
    }

    /// As [`check`](Self::check), the same bucket, but its tokens taken from
    /// Redis in leases: a request first spends a token this process leased for
    /// `subject` in the last [`LEASE_TTL`]; only when none is left does it call
    /// Redis, for a lease twice the last one's size if that one was spent in
    /// time (at most [`MAX_LEASE`]), else for one token — giving back the rest of
    /// an expired lease. Near the limit every request asks Redis for one token.
    pub async fn check_leased(&self, limit: &Limit, subject: &str) -> Result<(), Limited> {
        let key = bucket_key(limit, subject);
        let now = std::time::Instant::now();
        // `leasing`: this call takes the next lease. While it runs, concurrent
        // requests take one token each and leave the lease's size alone.
        let (want, refund, leasing) = {
            let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            match leases.get_mut(&key) {
                Some(lease) if lease.left > 0 && now < lease.until => {
                    lease.left -= 1;
                    return Ok(());
                }
                Some(lease) => {
                    let leasing = lease.in_flight == 0;
                    let want = if !leasing {
                        1
                    } else if now < lease.until {
                        lease.ask.saturating_mul(2).min(MAX_LEASE)
                    } else {
                        1
                    };
                    lease.in_flight += 1;
                    (want, std::mem::take(&mut lease.left), leasing)
                }
                None => {
                    leases.insert(
                        key.clone(),
                        Lease {
                            left: 0,
                            until: now,
                            ask: 1,
                            in_flight: 1,
                        },
                    );
                    (1, 0, true)
                }
            }
        };
        // A request dropped while the call runs (its client went away) must not
        // leave the call counted: every later one would take a single token.
        let mut in_flight = InFlight {
            leases: &self.leases,
            key: &key,
            answered: false,
        };
        let granted = lease_bucket(
            self.redis.as_ref(),
            self.service,
            &key,
            limit.capacity,
            limit.per_second,
            want,
            refund,
        )
        .await;
        in_flight.answered = true;
        let now = std::time::Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() >= MAX_LOCAL_KEYS {
            leases.retain(|_, l| l.until > now || l.in_flight > 0);
        }
        let lease = leases.entry(key.clone()).or_insert(Lease {
            left: 0,
            until: now,
            ask: want,
            in_flight: 1,
        });
        lease.in_flight = lease.in_flight.saturating_sub(1);
        let wait = match granted {
            Some(Ok(granted)) => {
                let kept = if lease.until > now { lease.left } else { 0 };
                lease.left = kept + granted - 1;
                // A one-token call beside a lease spends its token at once: it
                // neither sizes the next lease nor lengthens this one's life.
                if leasing {
                    lease.until = now + LEASE_TTL;
                    lease.ask = want;
                }
                None
            }
            // Refused: a concurrent request of this replica may have leased
            // tokens meanwhile; those are this subject's to spend.
            Some(Err(_)) if lease.left > 0 && now < lease.until => {
                lease.left -= 1;
                None
            }
            Some(Err(wait)) => Some(wait),
            None => {
                drop(leases);
                self.check_local(&key, limit)
            }
        };
        refusal(wait)
    }

    /// Tokens this process holds of `subject`'s bucket under `limit` (tests).
    pub fn leased(&self, limit: &Limit, subject: &str) -> u32 {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .get(&bucket_key(limit, subject))
            .filter(|l| l.until > std::time::Instant::now())
            .map_or(0, |l| l.left)
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

/// A bucket's key under the Redis prefix's `ratelimit:`: the limit's name and
/// the hashed subject (e-mail addresses never reach Redis in clear).
fn bucket_key(limit: &Limit, subject: &str) -> String {
    format!(
        "{}:{}",
        limit.name,
        hex::encode(&Sha256::digest(subject.as_bytes())[..16])
    )
}

/// A wait as a refusal (at least a second), or none.
fn refusal(wait: Option<Duration>) -> Result<(), Limited> {
    match wait {
        None => Ok(()),
        Some(retry_after) => Err(Limited {
            retry_after: retry_after.max(Duration::from_secs(1)),
        }),
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

/// One lease from a Redis token bucket: `Some(Ok(granted))` (at least one
/// token), `Some(Err(wait))` refused, `None` when Redis is not configured or
/// unavailable (the caller falls back to an in-process bucket). `refund` tokens
/// go back into the bucket first.
pub async fn lease_bucket(
    redis: Option<&Arc<Redis>>,
    service: &str,
    key: &str,
    capacity: u32,
    per_second: f64,
    want: u32,
    refund: u32,
) -> Option<Result<u32, Duration>> {
    let store = redis.filter(|r| r.available())?;
    let key = format!("{}:ratelimit:{service}:{key}", store.prefix());
    let (cap, rate) = (capacity.to_string(), per_second.to_string());
    let (want, refund) = (want.max(1).to_string(), refund.to_string());
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LEASE_BUCKET));
    let (granted, wait_ms): (u32, u64) = store
        .run(Command::Script(
            &SCRIPT,
            &[key.as_str()],
            &[
                cap.as_bytes(),
                rate.as_bytes(),
                want.as_bytes(),
                refund.as_bytes(),
            ],
        ))
        .await
        .ok()?;
    Some(if granted > 0 {
        Ok(granted)
    } else {
        Err(Duration::from_millis(wait_ms.max(1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        name: "t",
        capacity: 3,
        per_second: 0.5,
    };

    /// A replica's limiter on the shared Redis under `prefix`, and its count of
    /// Redis commands sent.
    fn replica(prefix: &str) -> (RateLimiter, prometheus::IntCounter) {
        let metrics = crate::metrics::Metrics::new("test");
        let client = redis::Client::open(kai_testing::redis_url()).unwrap();
        let redis = Redis::new(
            crate::redis::Target::Node(Box::new(client)),
            2,
            Duration::from_secs(5),
            prefix.to_owned(),
            metrics.clone(),
        );
        let sent = metrics.redis_commands.with_label_values(&["sent"]);
        (RateLimiter::new(Some(Arc::new(redis)), "test"), sent)
    }

    /// A limit far above what the lease tests use.
    const ROOMY: Limit = Limit {
        name: "roomy",
        capacity: 100_000,
        per_second: 1000.0,
    };

    /// A busy subject far from its limit: one Redis call per lease, not per
    /// request (leases double from one to `MAX_LEASE`).
    #[tokio::test]
    async fn leased_checks_call_redis_once_per_lease() {
        let prefix = kai_testing::TestPrefix::new(&kai_testing::redis_url());
        let (limiter, sent) = replica(&prefix.prefix);
        for _ in 0..1000 {
            limiter.check_leased(&ROOMY, "sam").await.unwrap();
        }
        // 1 + 2 + 4 + … + 64 = 127 in 7 calls, then 64 per call: 22 calls for
        // 1,000 (more only if the machine took over a second between two).
        assert!(
            sent.get() <= 30,
            "{} Redis commands for 1000 checks",
            sent.get()
        );
        assert!(
            sent.get() >= 7,
            "the leases came from Redis: {}",
            sent.get()
        );
    }

    /// A busy subject whose requests arrive together (a combined batch's worth
    /// at a time) still costs about one Redis call per lease: the one-token calls
    /// made while a lease is in flight do not shrink the next lease to one.
    #[tokio::test]
    async fn concurrent_bursts_keep_their_leases_large() {
        let prefix = kai_testing::TestPrefix::new(&kai_testing::redis_url());
        let (limiter, sent) = replica(&prefix.prefix);
        for _ in 0..125 {
            let burst = (0..8).map(|_| limiter.check_leased(&ROOMY, "sam"));
            let all = futures_util::future::join_all(burst).await;
            assert!(all.iter().all(Result::is_ok), "{all:?}");
        }
        // Leases grow to 64 within the first ~130 checks; each one spent costs
        // its call and at most 7 one-token calls beside it (45 calls here, for
        // 1,000 checks). When the one-token calls set the next lease's size, it
        // fell back to one after every burst: 877 calls.
        assert!(
            sent.get() <= 250,
            "{} Redis commands for 1000 checks in bursts of 8",
            sent.get()
        );
    }

    /// A check dropped while its Redis call runs (the client went away) leaves
    /// no call counted as in flight: later checks still take growing leases
    /// rather than one token each, for good.
    #[tokio::test]
    async fn a_check_dropped_mid_call_leaves_the_leases_as_they_were() {
        use futures_util::FutureExt;
        let prefix = kai_testing::TestPrefix::new(&kai_testing::redis_url());
        let (limiter, sent) = replica(&prefix.prefix);
        limiter.check_leased(&ROOMY, "sam").await.unwrap();
        // Polled once: the lease call is sent, its answer not yet read.
        let dropped = limiter.check_leased(&ROOMY, "sam").now_or_never();
        assert!(dropped.is_none(), "the call had to wait for Redis");
        let before = sent.get();
        for _ in 0..1000 {
            limiter.check_leased(&ROOMY, "sam").await.unwrap();
        }
        assert!(
            sent.get() - before <= 30,
            "{} Redis commands for 1000 checks after a dropped one",
            sent.get() - before
        );
    }

    /// Two replicas share one bucket: together they get exactly its capacity
    /// (every token they spent Redis handed out; none is lost while they keep
    /// asking), and each refusal says when to retry.
    #[tokio::test]
    async fn leases_keep_one_exact_limit_across_replicas() {
        let prefix = kai_testing::TestPrefix::new(&kai_testing::redis_url());
        let ((a, sent_a), (b, sent_b)) = (replica(&prefix.prefix), replica(&prefix.prefix));
        let tight = Limit {
            name: "tight",
            capacity: 50,
            // One token back every 1,000 s: none refills during the test.
            per_second: 0.001,
        };
        let (mut allowed, mut refusals_in_a_row) = (0, 0);
        let mut turn = 0u32;
        // Until both replicas were refused after the last success (a refused
        // replica holds no lease: it gave back the rest with its call).
        while refusals_in_a_row < 14 {
            // A burst on one replica, then on the other.
            let limiter = if (turn / 7).is_multiple_of(2) { &a } else { &b };
            turn += 1;
            match limiter.check_leased(&tight, "sam").await {
                Ok(()) => {
                    allowed += 1;
                    refusals_in_a_row = 0;
                }
                Err(Limited { retry_after }) => {
                    assert!(retry_after >= Duration::from_secs(1));
                    refusals_in_a_row += 1;
                }
            }
            assert!(turn < 500, "never refused");
        }
        assert_eq!(allowed, 50, "the bucket's capacity, across both replicas");
        assert_eq!(a.leased(&tight, "sam") + b.leased(&tight, "sam"), 0);
        let calls = sent_a.get() + sent_b.get();
        assert!(
            calls < u64::from(turn),
            "fewer Redis calls than checks: {calls} for {turn}"
        );
        // Another subject has its own bucket.
        assert!(a.check_leased(&tight, "kim").await.is_ok());
    }

    /// Concurrent requests of one replica do not each take a lease: while one
    /// call runs the others ask for one token, and a refused one spends what a
    /// concurrent call leased — 30 at once within a capacity of 40 all pass.
    #[tokio::test]
    async fn concurrent_checks_do_not_overdraw_the_bucket() {
        let prefix = kai_testing::TestPrefix::new(&kai_testing::redis_url());
        let (limiter, _) = replica(&prefix.prefix);
        let limit = Limit {
            name: "burst",
            capacity: 40,
            per_second: 0.001,
        };
        for _ in 0..5 {
            limiter.check_leased(&limit, "sam").await.unwrap();
        }
        let all =
            futures_util::future::join_all((0..30).map(|_| limiter.check_leased(&limit, "sam")))
                .await;
        assert!(all.iter().all(Result::is_ok), "{all:?}");
    }

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
