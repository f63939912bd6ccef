//! L2: Redis — one node through a bb8 pool, a cluster through one shared
//! multiplexed connection — every command bounded by `REDIS_TIMEOUT_MS`, behind a
//! circuit breaker.
//!
//! * A timeout or connection error opens the circuit: from then on requests skip
//!   Redis at once (they go to PostgreSQL) and a background probe PINGs Redis every
//!   [`PROBE_EVERY`] until it answers.
//! * Invalidations that could not reach Redis while it was unreachable are kept
//!   (`pending`) and replayed by the probe *before* the circuit closes, so a Redis
//!   that kept its data through a partition or a pause never serves an entry older
//!   than a write acknowledged meanwhile.
//! * A multiplexed connection never reports itself broken; [`Manager`] wraps it
//!   with a flag that a failed command sets, so the pool drops that connection
//!   instead of handing it out again — and no PING per checkout is needed. The
//!   manager connects through a configured client (`rediss://` roots, ACL user:
//!   see `connect`).
//! * A cluster connection is itself multiplexed (one connection per node, routed
//!   by slot, reconnecting and re-reading the slot map on its own): every call
//!   clones the one [`Shared`] connection instead of checking one out, so no
//!   caller ever queues behind another. After a command fails on it the next
//!   caller connects anew (in a task of its own, which a timed-out caller does
//!   not cancel).

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{FromRedisValue, Script};

use super::connect::{Link, Target};

use super::generations::Generations;
use super::keys::{self, Scope};
use crate::metrics::Metrics;

/// How often the probe retries an open circuit.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// At most this many scopes are remembered for replay; beyond it, recovery drops
/// every generation counter of this service instead (re-seeded from the clock).
const MAX_PENDING: usize = 50_000;
/// Generation counters outlive every entry (the longest TTL is 24 h).
const GENERATION_TTL_SECS: u64 = 7 * 24 * 3600;

/// Reads a scope's generation (seeding it from the server clock if absent — never
/// from 0, so a counter evicted by `allkeys-lru` never repeats a generation) and
/// the entry under it, in one round trip.
const GENERATION_AND_GET: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  g = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  if not redis.call('SET', KEYS[1], g, 'NX', 'EX', ARGV[3]) then
    g = redis.call('GET', KEYS[1])
  end
end
if ARGV[2] == '' then return {g, false} end
return {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
";

/// Moves a scope to a new generation, above both the old one and the server clock,
/// and announces it to every replica.
const BUMP: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nxt = string.format('%.0f', math.max(cur + 1, now))
redis.call('SET', KEYS[1], nxt, 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. nxt)
return nxt
";

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

/// A pooled connection that remembers whether a command failed on it.
pub struct Conn {
    inner: Link,
    broken: bool,
}

/// bb8 manager over a configured target (one node or a cluster; TLS roots, ACL
/// user), plus the broken flag.
pub struct Manager(Target);

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        Ok(Conn {
            inner: self.0.connect().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<String>(&mut conn.inner)
            .await
            .map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// How a call gets a connection.
enum Links {
    /// One node: a pool of multiplexed connections, each held by one call.
    Pool(bb8::Pool<Manager>),
    /// A cluster: one connection shared by every call.
    Shared(Arc<Shared>),
}

/// The one cluster connection. Connecting (the seed's slot map, then a
/// connection per node) runs in a task of its own: a caller that gives up after
/// `REDIS_TIMEOUT_MS` does not cancel it, and concurrent callers wait for the same
/// attempt.
struct Shared {
    target: Target,
    current: Mutex<Option<Link>>,
    failure: Mutex<Option<String>>,
    connecting: AtomicBool,
    attempted: tokio::sync::Notify,
}

impl Shared {
    fn new(target: Target) -> Arc<Self> {
        let shared = Arc::new(Self {
            target,
            current: Mutex::default(),
            failure: Mutex::default(),
            connecting: AtomicBool::new(false),
            attempted: tokio::sync::Notify::new(),
        });
        shared.connect_in_background();
        shared
    }

    fn current(&self) -> Option<Link> {
        self.current.lock().expect("not poisoned").clone()
    }

    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = this.target.connect().await;
            match outcome {
                Ok(link) => *this.current.lock().expect("not poisoned") = Some(link),
                Err(e) => {
                    tracing::debug!(error = %e, "redis cluster could not connect");
                    *this.failure.lock().expect("not poisoned") = Some(e.to_string());
                }
            }
            this.connecting.store(false, Ordering::Release);
            this.attempted.notify_waiters();
        });
    }

    async fn get(self: &Arc<Self>) -> Result<Conn, L2Error> {
        let conn = |inner| Conn {
            inner,
            broken: false,
        };
        if let Some(inner) = self.current() {
            return Ok(conn(inner));
        }
        let attempted = self.attempted.notified();
        tokio::pin!(attempted);
        attempted.as_mut().enable();
        if let Some(inner) = self.current() {
            return Ok(conn(inner));
        }
        self.connect_in_background();
        attempted.await;
        match self.current() {
            Some(inner) => Ok(conn(inner)),
            None => Err(L2Error::Pool(
                self.failure
                    .lock()
                    .expect("not poisoned")
                    .clone()
                    .unwrap_or_else(|| "not connected".into()),
            )),
        }
    }

    fn forget(&self) {
        self.current.lock().expect("not poisoned").take();
    }
}

/// A connection held for one call: returned to the pool, or — when a command
/// broke the shared one — making the next caller connect anew.
enum Checkout<'a> {
    Pooled(bb8::PooledConnection<'a, Manager>),
    Shared(Conn, &'a Shared),
}

impl Deref for Checkout<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            Self::Pooled(c) => c,
            Self::Shared(c, _) => c,
        }
    }
}

impl DerefMut for Checkout<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Self::Pooled(c) => c,
            Self::Shared(c, _) => c,
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Self::Shared(conn, home) = self
            && conn.broken
        {
            home.forget();
        }
    }
}

/// Logs pool errors (bb8 otherwise drops them silently).
#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<redis::RedisError> for LogSink {
    fn sink(&self, e: redis::RedisError) {
        tracing::debug!(error = %e, "redis pool could not connect");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<redis::RedisError>> {
        Box::new(*self)
    }
}

/// Why an L2 call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("redis circuit open")]
    Open,
    #[error("redis timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
}

pub struct L2 {
    links: Links,
    target: Target,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    open: AtomicBool,
    probing: AtomicBool,
    pending: Mutex<HashSet<Scope>>,
    overflowed: AtomicBool,
    generation_and_get: Script,
    bump: Script,
    token_bucket: Script,
    generations: Arc<Generations>,
    metrics: Metrics,
}

impl L2 {
    pub fn new(
        target: Target,
        pool_size: u32,
        timeout: Duration,
        prefix: String,
        generations: Arc<Generations>,
        metrics: Metrics,
    ) -> Result<Self, redis::RedisError> {
        let links = if target.is_cluster() {
            Links::Shared(Shared::new(target.clone()))
        } else {
            Links::Pool(
                bb8::Pool::builder()
                    .max_size(pool_size)
                    .min_idle(Some(1))
                    .connection_timeout(timeout)
                    .test_on_check_out(false)
                    .retry_connection(false)
                    .error_sink(Box::new(LogSink))
                    .build_unchecked(Manager(target.clone())),
            )
        };
        let _ = metrics
            .registry
            .register(Box::new(metrics.redis_up.clone()));
        metrics.redis_up.set(1);
        Ok(Self {
            links,
            target,
            prefix,
            timeout,
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            pending: Mutex::default(),
            overflowed: AtomicBool::new(false),
            generation_and_get: Script::new(GENERATION_AND_GET),
            bump: Script::new(BUMP),
            token_bucket: Script::new(TOKEN_BUCKET),
            generations,
            metrics,
        })
    }

    /// The variable that configured Redis (`REDIS_URL` or `REDIS_CLUSTER_NODES`).
    pub fn variable(&self) -> &'static str {
        self.target.variable()
    }

    /// Drops expired revocations and returns the live ones (the subscriber reads
    /// them once subscribed). Routed by key, so it works on a cluster too; does
    /// not touch the circuit (the subscriber retries on its own).
    pub async fn revoked_sessions(&self, patience: Duration) -> Result<Vec<String>, L2Error> {
        let key = keys::revoked_sessions(&self.prefix);
        let now = chrono::Utc::now().timestamp();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore();
        pipe.cmd("ZRANGE").arg(&key).arg(0).arg(-1);
        let mut conn = self.checkout(patience).await?;
        match tokio::time::timeout(
            patience,
            pipe.query_async::<(Vec<String>,)>(&mut conn.inner),
        )
        .await
        {
            Ok(Ok((revoked,))) => Ok(revoked),
            Ok(Err(e)) => {
                conn.broken = true;
                Err(e.into())
            }
            Err(_) => {
                conn.broken = true;
                Err(L2Error::Timeout)
            }
        }
    }

    /// False while the circuit is open: callers skip Redis entirely.
    pub fn available(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    async fn conn(&self) -> Result<Checkout<'_>, L2Error> {
        self.checkout(self.timeout).await
    }

    async fn checkout(&self, patience: Duration) -> Result<Checkout<'_>, L2Error> {
        match &self.links {
            Links::Pool(pool) => match tokio::time::timeout(patience, pool.get()).await {
                Ok(Ok(conn)) => Ok(Checkout::Pooled(conn)),
                Ok(Err(e)) => Err(L2Error::Pool(e.to_string())),
                Err(_) => Err(L2Error::Timeout),
            },
            Links::Shared(shared) => match tokio::time::timeout(patience, shared.get()).await {
                Ok(Ok(conn)) => Ok(Checkout::Shared(conn, shared)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(L2Error::Timeout),
            },
        }
    }

    /// Runs one command within the timeout; any failure marks the connection
    /// broken and opens the circuit.
    async fn run<T: FromRedisValue>(self: &Arc<Self>, cmd: Command<'_>) -> Result<T, L2Error> {
        if !self.available() {
            return Err(L2Error::Open);
        }
        let result = async {
            let mut conn = self.conn().await?;
            let outcome = tokio::time::timeout(self.timeout, async {
                match &cmd {
                    Command::Plain(c) => c.query_async::<T>(&mut conn.inner).await,
                    Command::Pipeline(p) => p.query_async::<T>(&mut conn.inner).await,
                    Command::Script(s, keys, args) => {
                        let mut inv = s.prepare_invoke();
                        for k in *keys {
                            inv.key(k);
                        }
                        for a in *args {
                            inv.arg(a);
                        }
                        inv.invoke_async::<T>(&mut conn.inner).await
                    }
                }
            })
            .await;
            match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    conn.broken = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    Err(L2Error::Redis(e))
                }
                Err(_) => {
                    conn.broken = true;
                    Err(L2Error::Timeout)
                }
            }
        }
        .await;
        if let Err(e) = &result {
            self.trip(e);
        }
        result
    }

    fn trip(self: &Arc<Self>, e: &L2Error) {
        let connectivity = match e {
            L2Error::Open => false,
            L2Error::Timeout | L2Error::Pool(_) => true,
            L2Error::Redis(r) => {
                r.is_io_error()
                    || r.is_connection_dropped()
                    || r.is_connection_refusal()
                    || r.is_timeout()
            }
        };
        if !connectivity {
            return;
        }
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "redis unavailable: circuit open, serving from PostgreSQL");
            self.metrics.redis_up.set(0);
            // This replica's own invalidations may not reach Redis from now on:
            // forget remembered generations (trust itself follows the heartbeat).
            self.generations.clear();
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.probe_until_recovered().await });
        }
    }

    /// PINGs until Redis answers, replays pending invalidations, then closes the circuit.
    async fn probe_until_recovered(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let ping = async {
                let mut conn = self.conn().await?;
                let r = tokio::time::timeout(
                    self.timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn.inner),
                )
                .await;
                match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        conn.broken = true;
                        Err(L2Error::Redis(e))
                    }
                    Err(_) => {
                        conn.broken = true;
                        Err(L2Error::Timeout)
                    }
                }
            };
            if ping.await.is_err() {
                continue;
            }
            match self.replay_pending().await {
                Ok(replayed) => {
                    self.open.store(false, Ordering::Release);
                    self.probing.store(false, Ordering::Release);
                    self.metrics.redis_up.set(1);
                    tracing::info!(replayed, "redis answers again: circuit closed");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "redis recovery replay failed; probing on"),
            }
        }
    }

    /// Re-applies the invalidations made while Redis was unreachable.
    async fn replay_pending(&self) -> Result<usize, L2Error> {
        let scopes: Vec<Scope> = self
            .pending
            .lock()
            .expect("pending lock")
            .iter()
            .cloned()
            .collect();
        let mut conn = self.conn().await?;
        for scope in &scopes {
            let gen_key = keys::generation_key(&self.prefix, scope);
            let mut inv = self.bump.prepare_invoke();
            inv.key(&gen_key)
                .arg(keys::invalidation_channel(&self.prefix))
                .arg(scope.tag())
                .arg(GENERATION_TTL_SECS);
            tokio::time::timeout(
                self.timeout * 4,
                inv.invoke_async::<String>(&mut conn.inner),
            )
            .await
            .map_err(|_| L2Error::Timeout)??;
            self.pending.lock().expect("pending lock").remove(scope);
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            // Too many scopes to remember: drop every generation of this service
            // (recovery only, never on a request path). Re-seeded counters start at
            // the clock, above every generation handed out before.
            let pattern = format!("{}:{{*}}:gen", self.prefix);
            // Every primary of a cluster: the counters are spread over all slots.
            conn.inner
                .unlink_matching(&pattern, self.timeout * 10)
                .await?;
        }
        Ok(scopes.len())
    }

    /// The scope's generation and, if `logical` is given, the entry under it.
    pub async fn generation_and_get(
        self: &Arc<Self>,
        scope: &Scope,
        logical: Option<&str>,
    ) -> Result<(u64, Option<bytes::Bytes>), L2Error> {
        let gen_key = keys::generation_key(&self.prefix, scope);
        let head = keys::entry_key_head(&self.prefix, scope);
        let tail = logical.map(|l| format!(":{l}")).unwrap_or_default();
        let ttl = GENERATION_TTL_SECS.to_string();
        let (generation, value): (String, Option<Vec<u8>>) = self
            .run(Command::Script(
                &self.generation_and_get,
                &[gen_key.as_str()],
                &[head.as_str(), tail.as_str(), ttl.as_str()],
            ))
            .await?;
        let generation = generation
            .parse()
            .map_err(|_| L2Error::Pool(format!("bad generation {generation:?}")))?;
        Ok((generation, value.map(bytes::Bytes::from)))
    }

    pub async fn get(self: &Arc<Self>, key: &str) -> Result<Option<bytes::Bytes>, L2Error> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let value: Option<Vec<u8>> = self.run(Command::Plain(cmd)).await?;
        Ok(value.map(bytes::Bytes::from))
    }

    pub async fn set(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.run(Command::Plain(cmd)).await
    }

    /// Moves the scope to a new generation and announces it. If Redis cannot be
    /// reached the scope is remembered and replayed on recovery.
    pub async fn bump(self: &Arc<Self>, scope: &Scope) -> Result<u64, L2Error> {
        let gen_key = keys::generation_key(&self.prefix, scope);
        let channel = keys::invalidation_channel(&self.prefix);
        let ttl = GENERATION_TTL_SECS.to_string();
        let result: Result<String, L2Error> = if self.target.is_cluster() {
            // A cluster fails over to a replica that may lag its primary: the bump
            // waits (briefly) for one replica, so a primary killed right after a
            // write cannot take the write's invalidation with it. One pipeline,
            // routed by the generation key's slot.
            let wait_ms = (self.timeout.as_millis() / 4).max(1) as u64;
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(BUMP)
                .arg(1)
                .arg(&gen_key)
                .arg(&channel)
                .arg(scope.tag())
                .arg(&ttl);
            pipe.cmd("WAIT").arg(1).arg(wait_ms).ignore();
            self.run::<(String,)>(Command::Pipeline(pipe))
                .await
                .map(|(g,)| g)
        } else {
            self.run(Command::Script(
                &self.bump,
                &[gen_key.as_str()],
                &[channel.as_str(), scope.tag(), ttl.as_str()],
            ))
            .await
        };
        match result {
            Ok(g) => g
                .parse()
                .map_err(|_| L2Error::Pool(format!("bad generation {g:?}"))),
            Err(e) => {
                self.remember_pending(scope);
                self.tell_others_to_forget(scope, &channel);
                Err(e)
            }
        }
    }

    /// Cluster only: the scope's slot has no primary, but the other nodes still
    /// relay pub/sub. Announcing "newer than anything you know" makes every other
    /// replica forget the scope's generation, so none answers it from L1; their
    /// next read asks Redis, fails for this slot and goes to PostgreSQL until the
    /// replayed bump (after the failover) gives the scope its new generation.
    fn tell_others_to_forget(self: &Arc<Self>, scope: &Scope, channel: &str) {
        if !self.target.is_cluster() {
            return;
        }
        let (this, message, channel) = (
            self.clone(),
            format!("{} {}", scope.tag(), u64::MAX),
            channel.to_owned(),
        );
        tokio::spawn(async move {
            let sent = this
                .target
                .publish_anywhere(&channel, &message, this.timeout)
                .await;
            if !sent {
                tracing::debug!("no cluster node relayed the forget announcement");
            }
        });
    }

    fn remember_pending(&self, scope: &Scope) {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.len() < MAX_PENDING {
            pending.insert(scope.clone());
        } else {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// Announces a revoked session to every replica of every service and keeps it
    /// (until the token's expiry) for replicas that subscribe later.
    pub async fn revoke(
        self: &Arc<Self>,
        session_id: &str,
        expires_at: i64,
    ) -> Result<(), L2Error> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(keys::revoked_sessions(&self.prefix))
            .arg(expires_at)
            .arg(session_id);
        let mut publish = redis::cmd("PUBLISH");
        publish
            .arg(keys::revocation_channel(&self.prefix))
            .arg(session_id);
        if self.target.is_cluster() {
            // A cluster routes PUBLISH by its channel's slot, which is not the
            // set's: two commands (stored first, so a replica subscribing between
            // them still reads it), each routed on its own.
            self.run::<()>(Command::Plain(zadd)).await?;
            return self.run::<()>(Command::Plain(publish)).await;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(zadd).ignore();
        pipe.add_command(publish).ignore();
        self.run(Command::Pipeline(pipe)).await
    }

    /// Deletes every key of a scope — its entries under every generation and its
    /// counter — by `SCAN MATCH <prefix>:{<scope>}:*` and `UNLINK`. O(keyspace):
    /// for erasing a person's data (rare, off every request path), never for
    /// invalidation. Returns how many keys were removed.
    pub async fn unlink_scope(&self, scope: &Scope) -> Result<u64, L2Error> {
        if !self.available() {
            return Err(L2Error::Open);
        }
        let pattern = format!("{}*", keys::entry_key_head(&self.prefix, scope));
        let mut conn = self.conn().await?;
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            // The scope's keys share one slot: scan the node that holds it.
            let (next, found): (u64, Vec<String>) = tokio::time::timeout(
                self.timeout * 10,
                conn.inner.query_on_slot_of(&pattern, scan),
            )
            .await
            .map_err(|_| L2Error::Timeout)??;
            if !found.is_empty() {
                removed += tokio::time::timeout(
                    self.timeout * 10,
                    redis::cmd("UNLINK")
                        .arg(&found)
                        .query_async::<u64>(&mut conn.inner),
                )
                .await
                .map_err(|_| L2Error::Timeout)??;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// One token-bucket step; `Ok(None)` allowed, `Ok(Some(wait))` refused.
    pub async fn token_bucket(
        self: &Arc<Self>,
        key: &str,
        capacity: u32,
        per_second: f64,
    ) -> Result<Option<Duration>, L2Error> {
        let key = format!("{}:ratelimit:{key}", self.prefix);
        let (cap, rate) = (capacity.to_string(), per_second.to_string());
        let wait_ms: u64 = self
            .run(Command::Script(
                &self.token_bucket,
                &[key.as_str()],
                &[cap.as_str(), rate.as_str()],
            ))
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// One PING at start: `Err` only when the answer proves the configuration
    /// wrong (password, certificate); an unreachable Redis starts degraded.
    pub async fn check_configuration(&self) -> Result<(), redis::RedisError> {
        let patience = self.timeout.max(std::time::Duration::from_secs(2));
        let attempt = tokio::time::timeout(patience, async {
            let mut conn = self.target.connect().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await;
        match attempt {
            Ok(Err(e)) if super::connect::is_configuration_error(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Round-trip time of a PING (detailed health); does not touch the circuit.
    pub async fn ping(&self) -> Result<Duration, L2Error> {
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        match tokio::time::timeout(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn.inner),
        )
        .await
        {
            Ok(Ok(_)) => Ok(started.elapsed()),
            Ok(Err(e)) => {
                conn.broken = true;
                Err(e.into())
            }
            Err(_) => {
                conn.broken = true;
                Err(L2Error::Timeout)
            }
        }
    }
}

enum Command<'a> {
    Plain(redis::Cmd),
    Pipeline(redis::Pipeline),
    Script(&'a Script, &'a [&'a str], &'a [&'a str]),
}
