//! Redis, in one place: how a client is made from the configuration (one node or
//! a cluster, `rediss://` TLS, ACL users: [`link`]), how a call gets a connection
//! ([`pool`]), and [`Redis`] — every command bounded by `REDIS_TIMEOUT_MS`, behind
//! one circuit breaker — which the cache (`crate::cache`), session revocation
//! ([`revocation`]) and rate limiting (`crate::ratelimit`) each use through their
//! own module; durable events (`crate::events`) use its [`Link`] too.
//!
//! * A timeout or connection error opens the circuit: from then on requests skip
//!   Redis at once (they go to PostgreSQL) and a background probe PINGs Redis every
//!   [`PROBE_EVERY`] until it answers.
//! * Before the circuit closes the probe runs the recovery hook the cache set
//!   ([`Redis::on_recovery`]): invalidations that could not reach Redis while it
//!   was unreachable are replayed first, so a Redis that kept its data through a
//!   partition or a pause never serves an entry older than a write acknowledged
//!   meanwhile.
//! * A multiplexed connection never reports itself broken; the pool's manager
//!   wraps it with a flag that a failed command sets, so the pool drops that
//!   connection instead of handing it out again — and no PING per checkout is
//!   needed.
//! * A cluster connection is itself multiplexed (one connection per node, routed
//!   by slot, reconnecting and re-reading the slot map on its own): every call
//!   clones the one shared connection instead of checking one out, so no caller
//!   ever queues behind another. After a command fails on it the next caller
//!   connects anew (in a task of its own, which a timed-out caller does not
//!   cancel).

pub mod link;
mod pool;
pub mod revocation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{FromRedisValue, Script};
use serde::Serialize;

use crate::home::Home;
pub use link::{Link, Target};
use pool::{Checkout, Links, LogSink, Manager, Shared};

use crate::metrics::Metrics;
use crate::settings::RedisSettings;

/// How often the probe retries an open circuit.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Why an L2 call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("redis circuit open")]
    Open,
    #[error("redis timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
}

/// Redis connections each replica keeps open however idle (fewer if
/// `REDIS_POOL_SIZE` is smaller): enough for a new replica's first burst.
const WARM_CONNECTIONS: u32 = 8;

/// Redis as `/health/detailed` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct RedisHealth {
    pub status: &'static str,
    pub response_time_ms: Option<f64>,
}

/// What the breaker calls: when it opens, and before it closes (the close waits
/// until `recover` succeeds; it returns how many things it replayed).
pub(crate) struct Hooks {
    pub on_trip: Box<dyn Fn() + Send + Sync>,
    pub recover: Box<dyn Fn() -> BoxFuture<'static, Result<usize, Failure>> + Send + Sync>,
}

/// The service's Redis: connections, timeouts, the circuit breaker.
pub struct Redis {
    links: Links,
    target: Target,
    prefix: String,
    timeout: Duration,
    open: AtomicBool,
    probing: AtomicBool,
    hooks: OnceLock<Hooks>,
    /// Lua sources loaded at start and after each outage ([`Redis::preload_scripts`]).
    scripts: OnceLock<Vec<&'static str>>,
    metrics: Metrics,
    /// `kai_redis_commands_total{outcome="sent"}` and `{outcome="skipped"}`.
    sent: prometheus::IntCounter,
    skipped: prometheus::IntCounter,
}

impl Redis {
    /// From `REDIS_CLUSTER_NODES` or `REDIS_URL`; `None` when neither is set.
    pub fn from_settings(
        settings: &RedisSettings,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let target = Target::from_settings(settings).map_err(anyhow::Error::msg)?;
        Ok(target.map(|target| {
            Arc::new(Self::new(
                target,
                settings.pool_size,
                settings.timeout,
                settings.prefix.clone(),
                metrics.clone(),
            ))
        }))
    }

    pub fn new(
        target: Target,
        pool_size: u32,
        timeout: Duration,
        prefix: String,
        metrics: Metrics,
    ) -> Self {
        let links = match &target {
            Target::Cluster(_) => Links::Shared(Shared::new(target.clone())),
            Target::Node(client) => Links::Pool(
                bb8::Pool::builder()
                    .max_size(pool_size)
                    // Opened in the background as the pool is built and kept
                    // open: a replica's first burst (a rolling update's share
                    // arriving at once) finds them ready instead of waiting on
                    // connects, where a wait past REDIS_TIMEOUT_MS opened the
                    // circuit at start (kai-load soak's first second).
                    .min_idle(Some(pool_size.min(WARM_CONNECTIONS)))
                    // A short wait (REDIS_TIMEOUT_MS), not bb8's 30 s, and the
                    // connect errors logged: with Redis down a checkout fails
                    // fast and says why.
                    .connection_timeout(timeout)
                    // Off: a command that fails marks its connection broken
                    // (`Manager::has_broken`), so no PING before each checkout.
                    .test_on_check_out(false)
                    .retry_connection(false)
                    .error_sink(Box::new(LogSink))
                    .build_unchecked(
                        Manager::new(client, Home::here())
                            .expect("a client's own connection info is valid"),
                    ),
            ),
        };
        if let Links::Pool(pool) = &links {
            let _ = metrics
                .registry
                .register(Box::new(PoolCollector::new(pool.clone(), pool_size)));
        }
        let _ = metrics
            .registry
            .register(Box::new(metrics.redis_up.clone()));
        let _ = metrics
            .registry
            .register(Box::new(metrics.redis_commands.clone()));

        metrics.redis_up.set(1);
        Self {
            links,
            target,
            prefix,
            timeout,
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            hooks: OnceLock::new(),
            scripts: OnceLock::new(),
            sent: metrics.redis_commands.with_label_values(&["sent"]),
            skipped: metrics.redis_commands.with_label_values(&["skipped"]),
            metrics,
        }
    }

    /// Sets what the breaker calls when it opens and before it closes (the
    /// cache's; one cache per Redis, later calls are ignored).
    pub(crate) fn on_recovery(&self, hooks: Hooks) {
        let _ = self.hooks.set(hooks);
    }

    /// The variable that configured Redis (`REDIS_URL` or `REDIS_CLUSTER_NODES`).
    pub fn variable(&self) -> &'static str {
        self.target.variable()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The key prefix every key of this service starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bound on one command (`REDIS_TIMEOUT_MS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// False while the circuit is open: callers skip Redis entirely.
    pub fn available(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    pub(crate) async fn conn(&self) -> Result<Checkout<'_>, Failure> {
        self.checkout(self.timeout).await
    }

    pub(crate) async fn checkout(&self, patience: Duration) -> Result<Checkout<'_>, Failure> {
        match &self.links {
            Links::Pool(pool) => match tokio::time::timeout(patience, pool.get()).await {
                Ok(Ok(conn)) => Ok(Checkout::Pooled(conn)),
                Ok(Err(e)) => Err(Failure::Pool(e.to_string())),
                Err(_) => Err(Failure::Timeout),
            },
            Links::Shared(shared) => match tokio::time::timeout(patience, shared.get()).await {
                Ok(Ok(conn)) => Ok(Checkout::Shared(conn, shared)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Failure::Timeout),
            },
        }
    }

    /// Runs one command within the timeout; any failure marks the connection
    /// broken and opens the circuit.
    pub(crate) async fn run<T: FromRedisValue>(
        self: &Arc<Self>,
        cmd: Command<'_>,
    ) -> Result<T, Failure> {
        if !self.available() {
            self.skipped.inc();
            return Err(Failure::Open);
        }
        self.sent.inc();
        let result = async {
            let mut conn = self.conn().await?;
            let outcome = tokio::time::timeout(self.timeout, cmd.query::<T>(&mut conn.inner)).await;
            match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    conn.broken = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    Err(Failure::Redis(e))
                }
                Err(_) => {
                    conn.broken = true;
                    Err(Failure::Timeout)
                }
            }
        }
        .await;
        if let Err(e) = &result {
            self.trip(e);
        }
        result
    }

    fn trip(self: &Arc<Self>, e: &Failure) {
        let connectivity = match e {
            Failure::Open => false,
            Failure::Timeout | Failure::Pool(_) => true,
            Failure::Redis(r) => {
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
            if let Some(hooks) = self.hooks.get() {
                (hooks.on_trip)();
            }
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.probe_until_recovered().await });
        }
    }

    /// PINGs until Redis answers, runs the recovery hook (the cache replays its
    /// pending invalidations), then closes the circuit.
    async fn probe_until_recovered(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if self.ping().await.is_err() {
                continue;
            }
            self.load_scripts().await;
            let recovered = match self.hooks.get() {
                Some(hooks) => (hooks.recover)().await,
                None => Ok(0),
            };
            match recovered {
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
            Ok(Err(e)) if link::is_configuration_error(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Round-trip time of a PING (detailed health, the probe); does not touch
    /// the circuit.
    pub async fn ping(&self) -> Result<Duration, Failure> {
        let started = std::time::Instant::now();
        self.run_quietly::<String>(self.timeout, Command::Plain(redis::cmd("PING")))
            .await?;
        Ok(started.elapsed())
    }

    /// Runs one command within `patience` without touching the circuit (health,
    /// the probe, the subscriber's reads): a failure only marks the connection
    /// broken.
    pub(crate) async fn run_quietly<T: FromRedisValue>(
        &self,
        patience: Duration,
        cmd: Command<'_>,
    ) -> Result<T, Failure> {
        let mut conn = self.checkout(patience).await?;
        match tokio::time::timeout(patience, cmd.query::<T>(&mut conn.inner)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                conn.broken = true;
                Err(e.into())
            }
            Err(_) => {
                conn.broken = true;
                Err(Failure::Timeout)
            }
        }
    }

    /// Loads `sources` into Redis's script cache now, and again whenever Redis
    /// answers after an outage (a restarted Redis starts with an empty one).
    /// Otherwise each script's first call on a fresh Redis takes three round
    /// trips (`EVALSHA`, refused `NOSCRIPT`; `SCRIPT LOAD`; `EVALSHA`) within one
    /// command's timeout, and under a start's first burst that passed
    /// `REDIS_TIMEOUT_MS` and opened the circuit (`kai-load soak` against a fresh
    /// Redis: 4 of 8 starts; against one that held the scripts, 0 of 4). One node
    /// only: a cluster's nodes each load a script on its first call there. A
    /// failure is not an error: every script still loads on its first call.
    pub async fn preload_scripts(&self, sources: Vec<&'static str>) {
        let _ = self.scripts.set(sources);
        self.load_scripts().await;
    }

    async fn load_scripts(&self) {
        let Some(sources) = self.scripts.get() else {
            return;
        };
        if self.target.is_cluster() || sources.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for source in sources.iter() {
            pipe.cmd("SCRIPT").arg("LOAD").arg(*source).ignore();
        }
        // A start waits at most this long for a Redis that does not answer.
        let patience = self.timeout.max(Duration::from_millis(500));
        if let Err(e) = self
            .run_quietly::<()>(patience, Command::Pipeline(pipe))
            .await
        {
            tracing::debug!(error = %e, "Lua scripts not preloaded: each loads on its first call");
        }
    }

    /// `/health/detailed`'s view: the PING's round trip and whether the circuit
    /// is closed.
    pub async fn health(&self) -> RedisHealth {
        match self.ping().await {
            Ok(rtt) if self.available() => RedisHealth {
                status: "healthy",
                response_time_ms: Some(crate::figures::millis(rtt)),
            },
            Ok(rtt) => RedisHealth {
                status: "recovering",
                response_time_ms: Some(crate::figures::millis(rtt)),
            },
            Err(_) => RedisHealth {
                status: "unhealthy",
                response_time_ms: None,
            },
        }
    }

    /// Stops the start, with one line naming the variable, when Redis answers
    /// that the configuration is wrong (ACL password, TLS trust). Never prints
    /// the URL.
    pub async fn check_configuration_at_start(&self) -> anyhow::Result<()> {
        self.check_configuration()
            .await
            .map_err(|e| anyhow::anyhow!("{}: Redis refused the connection: {e}", self.variable()))
    }
}

/// One command, pipeline or script invocation for [`Redis::run`].
pub(crate) enum Command<'a> {
    Plain(redis::Cmd),
    Pipeline(redis::Pipeline),
    /// A script, its keys and its arguments (bytes: text or binary values).
    Script(&'a Script, &'a [&'a str], &'a [&'a [u8]]),
}

impl Command<'_> {
    async fn query<T: FromRedisValue>(&self, link: &mut Link) -> redis::RedisResult<T> {
        match self {
            Self::Plain(c) => c.query_async::<T>(link).await,
            Self::Pipeline(p) => p.query_async::<T>(link).await,
            Self::Script(s, keys, args) => {
                let mut inv = s.prepare_invoke();
                for k in *keys {
                    inv.key(k);
                }
                for a in *args {
                    inv.arg(a);
                }
                inv.invoke_async::<T>(link).await
            }
        }
    }
}

/// `kai_redis_pool_connections{state}` (`idle`, `in_use`) and
/// `kai_redis_pool_max_connections` of a one-node pool, read at scrape time.
/// (A cluster shares one multiplexed connection: nothing to saturate.)
struct PoolCollector {
    pool: bb8::Pool<Manager>,
    gauge: prometheus::IntGaugeVec,
    max: prometheus::IntGauge,
}

impl PoolCollector {
    fn new(pool: bb8::Pool<Manager>, max_size: u32) -> Self {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "kai_redis_pool_connections",
                "Redis pool connections by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        let max = prometheus::IntGauge::new(
            "kai_redis_pool_max_connections",
            "The Redis pool's maximum size (REDIS_POOL_SIZE)",
        )
        .expect("valid metric");
        max.set(i64::from(max_size));
        Self { pool, gauge, max }
    }
}

impl prometheus::core::Collector for PoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut desc = self.gauge.desc();
        desc.extend(self.max.desc());
        desc
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let state = self.pool.state();
        let idle = i64::from(state.idle_connections);
        let open = i64::from(state.connections);
        self.gauge.with_label_values(&["idle"]).set(idle);
        self.gauge
            .with_label_values(&["in_use"])
            .set(open.saturating_sub(idle));
        let mut families = self.gauge.collect();
        families.extend(self.max.collect());
        families
    }
}
