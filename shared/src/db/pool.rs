//! The pool ([`Db`]) and the timing wrapper around every statement.
//!
//! Connections go over rustls whenever `sslmode` asks for TLS (libpq's default,
//! `prefer`, tries TLS first). What is verified follows libpq: see [`crate::tls`].
//! A TLS failure is a configuration error, not an outage: [`Db::check_tls`] turns it
//! into one line naming `DATABASE_URL` at start, and no mode but `prefer` (whose
//! whole meaning is "plaintext if the server offers no TLS") ever falls back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Object, Pool, PoolError};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::connect::{Drivers, build_pool_counted};
use super::error::DbError;
use super::lanes::{Lanes, Lease};
use crate::metrics::Metrics;
use crate::settings::DatabaseSettings;

/// How many recent slow queries `/health/detailed` shows.
const SLOW_LOG_LEN: usize = 20;

/// One slow statement, as `/health/detailed` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SlowQuery {
    pub sql: String,
    pub duration_ms: f64,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Pool occupancy, as `/health/detailed` reports it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolStatus {
    pub size: usize,
    pub max_size: usize,
    pub available: usize,
    pub waiting: usize,
}

/// The PostgreSQL pool plus statement instrumentation. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// The main pool and, with pipelined lanes, the lanes' (see
    /// [`super::lanes`]): `DB_POOL_SIZE` connections in all.
    pools: Arc<[Pool]>,
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Metrics,
    slow_threshold: Duration,
    statements: AtomicU64,
    slow_log: Mutex<VecDeque<SlowQuery>>,
    /// `kai_db_reads_total{target}` (SPEC §5).
    reads: prometheus::IntCounterVec,
    /// The read replicas (`DATABASE_REPLICA_URLS`), once [`Db::attach_replicas`] ran.
    replicas: std::sync::OnceLock<Arc<super::replicas::Replicas>>,
    /// The primary's connections shared by pipelined reads (`DB_PIPELINE_LANES`).
    lanes: Lanes,
    /// The connections each pool's tasks drive (the main pool's, the lanes'),
    /// which [`Db::close`] and [`Db::close_lanes`] wait for.
    drivers: Drivers,
    lane_drivers: Drivers,
}

impl Db {
    /// Builds the pool (connections are opened lazily) and registers its gauges.
    pub fn new(settings: &DatabaseSettings, metrics: &Metrics) -> Self {
        // A stopped PostgreSQL must turn into a 503 within the pool timeout, not a hang.
        let connect = settings.pool_timeout.min(Duration::from_secs(5));
        // DB_POOL_SIZE in all: the pipelined lanes' connections, the rest the
        // main pool's.
        let lanes = settings.lanes();
        let main = DatabaseSettings {
            pool_size: settings.pool_size - lanes,
            ..settings.clone()
        };
        let (pool, drivers) = build_pool_counted(&main, connect, settings.pool_timeout);
        let (lane_pool, lane_drivers) = super::connect::build_pool_driven_where_opened(
            settings,
            lanes.max(1),
            connect,
            settings.pool_timeout,
        );
        let pools = if lanes > 0 {
            vec![pool.clone(), lane_pool.clone()]
        } else {
            vec![pool.clone()]
        };
        let _ = metrics
            .registry
            .register(Box::new(PoolCollector::new(pools.clone())));
        let reads = prometheus::IntCounterVec::new(
            Opts::new(
                "kai_db_reads_total",
                "Reads that may use a read replica, by where they ran (primary, replica)",
            ),
            &["target"],
        )
        .expect("valid metric");
        for target in ["primary", "replica"] {
            reads.with_label_values(&[target]);
        }
        let _ = metrics.registry.register(Box::new(reads.clone()));
        Self {
            pool: pool.clone(),
            pools: pools.into(),
            inner: Arc::new(Inner {
                metrics: metrics.clone(),
                slow_threshold: settings.slow_query_threshold,
                statements: AtomicU64::new(0),
                slow_log: Mutex::new(VecDeque::with_capacity(SLOW_LOG_LEN)),
                reads,
                replicas: std::sync::OnceLock::new(),
                lanes: Lanes::new(lane_pool.clone(), pool.clone(), lanes),
                drivers,
                lane_drivers,
            }),
        }
    }

    /// Opens one connection at start and stops the service, with one line naming
    /// `DATABASE_URL`, when TLS is what failed: a certificate naming another host,
    /// an untrusted chain, a server without TLS under `require`. Other failures
    /// (PostgreSQL not up yet) are left to migrations and readiness, as before.
    pub async fn check_tls(&self, settings: &DatabaseSettings) -> anyhow::Result<()> {
        let Err(e) = self.conn().await else {
            return Ok(());
        };
        let Some(tls) = tls_failure(&e) else {
            return Ok(());
        };
        let pg = settings.pg_config();
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "the database host".to_owned(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let ca = match &settings.ca {
            Some(ca) => format!("DATABASE_CA_FILE {}", ca.path.display()),
            None => "the system roots".to_owned(),
        };
        anyhow::bail!(
            "DATABASE_URL: TLS to {host}:{port} failed (sslmode={}, trusting {ca}): {tls}",
            settings.ssl_mode.as_str()
        )
    }

    /// A pooled connection; waits at most `DB_POOL_TIMEOUT_SECS`, then 503.
    pub async fn conn(&self) -> Result<Object, DbError> {
        Ok(self.pool.get().await?)
    }

    pub async fn query(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        self.timed(sql, async {
            let stmt = c.prepare_cached(sql).await?;
            c.query(&stmt, params).await
        })
        .await
    }

    /// [`Db::query`] planned for its parameters' values at every execution: sent
    /// as the unnamed statement (Parse, Bind, Execute in one round trip, the
    /// parameters' types given), never as the connection's cached prepared
    /// statement. PostgreSQL may switch a prepared statement to a generic plan
    /// after five executions, and a generic plan cannot see the values — for a
    /// full-text search, how many rows a word matches, which decides between
    /// walking an index and a bitmap of the word's matches. For the few
    /// statements whose best plan depends on the values; costs a parse and a
    /// plan per execution (a custom plan is made per execution anyway).
    pub async fn query_planned_per_values(
        &self,
        c: &tokio_postgres::Client,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, DbError> {
        self.timed(sql, c.query_typed(sql, params)).await
    }

    pub async fn query_opt(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        self.timed(sql, async {
            let stmt = c.prepare_cached(sql).await?;
            c.query_opt(&stmt, params).await
        })
        .await
    }

    pub async fn query_one(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        self.timed(sql, async {
            let stmt = c.prepare_cached(sql).await?;
            c.query_one(&stmt, params).await
        })
        .await
    }

    pub async fn execute(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        self.timed(sql, async {
            let stmt = c.prepare_cached(sql).await?;
            c.execute(&stmt, params).await
        })
        .await
    }

    async fn timed<T>(
        &self,
        sql: &str,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let started = Instant::now();
        let result = work.await;
        let elapsed = started.elapsed();
        self.inner.statements.fetch_add(1, Ordering::Relaxed);
        self.inner
            .metrics
            .db_query_duration
            .observe(elapsed.as_secs_f64());
        if elapsed >= self.inner.slow_threshold {
            self.record_slow(sql, elapsed);
        }
        Ok(result?)
    }

    fn record_slow(&self, sql: &str, elapsed: Duration) {
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let duration_ms = crate::figures::millis(elapsed);
        // The SQL text only: parameters carry personal data and never reach a log.
        tracing::warn!(sql = %sql, duration_ms, "slow query");
        self.inner.metrics.db_slow_queries.inc();
        let mut log = self.inner.slow_log.lock().expect("slow log lock");
        if log.len() == SLOW_LOG_LEN {
            log.pop_front();
        }
        log.push_back(SlowQuery {
            sql,
            duration_ms,
            at: chrono::Utc::now(),
        });
    }

    /// Statements run since start (every `query*`/`execute` counts one).
    pub fn statements_executed(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    pub fn slow_queries(&self) -> (u64, Vec<SlowQuery>) {
        let log = self.inner.slow_log.lock().expect("slow log lock");
        (
            self.inner.metrics.db_slow_queries.get(),
            log.iter().cloned().collect(),
        )
    }

    /// Both pools together (the main one and the lanes'): `max_size` is
    /// `DB_POOL_SIZE`.
    pub fn status(&self) -> PoolStatus {
        combined(&self.pools)
    }

    /// Round trip to PostgreSQL (readiness, detailed health).
    pub async fn ping(&self) -> Result<Duration, DbError> {
        let started = Instant::now();
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1").await?;
        Ok(started.elapsed())
    }

    /// Adds the read replicas `settings` names (`DATABASE_REPLICA_URLS`; none:
    /// nothing changes) and starts watching them until `stop`. Reads through
    /// [`Db::read`] may then run on one of them (see [`super::replicas`]).
    pub fn attach_replicas(
        &self,
        settings: &DatabaseSettings,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if settings.replica_urls.is_empty() {
            return;
        }
        let replicas =
            super::replicas::Replicas::start(self.pool(), settings, &self.inner.metrics, stop);
        let _ = self.inner.replicas.set(replicas);
    }

    /// The read replicas, if any are configured.
    pub fn replicas(&self) -> Option<&Arc<super::replicas::Replicas>> {
        self.inner.replicas.get()
    }

    /// A read that may run on a replica: on one that has replayed past the
    /// position [`super::read_at`] set for this task (none set: the primary),
    /// else — and whenever the replica fails or is too slow — on the primary,
    /// in the same call. Counted in `kai_db_reads_total{target}`.
    ///
    /// `work` gets the connection it runs on (and may be called twice: on the
    /// replica, then on the primary).
    pub async fn read<T, Fut>(&self, work: impl Fn(Object) -> Fut) -> Result<T, DbError>
    where
        Fut: Future<Output = Result<T, DbError>>,
    {
        if let Some(value) = self.on_replica(&work).await {
            return Ok(value);
        }
        self.count_read("primary");
        let conn = self.conn().await?;
        work(conn).await
    }

    /// `work` on a replica that has replayed past the position [`super::read_at`]
    /// set for this task, if there is one and it answers in time (a failure or a
    /// timeout marks the replica, and the caller goes to the primary).
    async fn on_replica<T, Fut>(&self, work: impl FnOnce(Object) -> Fut) -> Option<T>
    where
        Fut: Future<Output = Result<T, DbError>>,
    {
        let replicas = self.inner.replicas.get()?;
        let position = super::replicas::position()?;
        let (replica, conn) = replicas.pick(position).await?;
        match tokio::time::timeout(super::replicas::READ_TIMEOUT, work(conn)).await {
            Ok(Ok(value)) => {
                self.count_read("replica");
                Some(value)
            }
            Ok(Err(e)) => {
                replica.failed(&e);
                None
            }
            Err(_) => {
                replica.timed_out();
                None
            }
        }
    }

    /// [`Db::read`] for a short read — statements each bounded by an index and a
    /// LIMIT, or a primary-key lookup — that on the primary shares one of the
    /// pool's pipelined connections with other reads in flight (see
    /// [`super::lanes`]; `DB_PIPELINE_LANES`, 0: a connection of its own, as
    /// [`Db::read`]). Never for a statement that may take long (a search, an
    /// export's batch): the reads queued behind it on its lane would wait for it.
    ///
    /// `work` may be called twice: on a replica then on the primary, as
    /// [`Db::read`], or on a lane whose connection closed under it, then on a
    /// connection of its own.
    pub async fn read_pipelined<T, Fut>(&self, work: impl Fn(Lease) -> Fut) -> Result<T, DbError>
    where
        Fut: Future<Output = Result<T, DbError>>,
    {
        if let Some(value) = self.on_replica(|conn| work(Lease::own(conn))).await {
            return Ok(value);
        }
        self.count_read("primary");
        let lease = self.inner.lanes.lease().await?;
        let lane = lease.lane();
        match work(lease).await {
            // The lane's connection ended under this read (the error may come
            // before the lane's task has seen the socket close: `is_closed` alone
            // raced with it, and a read killed with its backend answered 500).
            Err(e) if lane.is_some_and(|conn| conn.is_closed() || e.ended_its_connection()) => {
                work(Lease::own(self.conn().await?)).await
            }
            done => done,
        }
    }

    /// Closes the pipelined lanes (shutdown, while the HTTP workers that drive
    /// them still run): later reads take a connection of their own, and each
    /// lane's connection ends with PostgreSQL's Terminate message once the reads
    /// on it are done. Waits up to `within` for that.
    pub async fn close_lanes(&self, within: Duration) {
        self.inner.lanes.close();
        self.inner.lane_drivers.ended(within).await;
    }

    /// Closes every pool — the primary's, the lanes', each read replica's
    /// (shutdown, once nothing serves requests): each connection ends with
    /// PostgreSQL's Terminate message instead of a socket dropped with the
    /// process. Waits up to `within` for that.
    pub async fn close(&self, within: Duration) {
        self.inner.lanes.close();
        for pool in self.pools.iter() {
            pool.close();
        }
        let replicas = async {
            if let Some(replicas) = self.inner.replicas.get() {
                replicas.close(within).await;
            }
        };
        tokio::join!(
            self.inner.drivers.ended(within),
            self.inner.lane_drivers.ended(within),
            replicas,
        );
    }

    /// How many pipelined lanes hold an open connection (at most
    /// `DB_PIPELINE_LANES`).
    pub fn lanes_open(&self) -> usize {
        self.inner.lanes.open()
    }

    /// A connection for a long read (an export's stream): a replica's that
    /// replayed past this task's [`super::read_at`] position, else the primary's.
    /// Counted like [`Db::read`]. (A replica failing mid-stream fails the stream,
    /// as the primary would.)
    pub async fn read_conn(&self) -> Result<Object, DbError> {
        if let Some(replicas) = self.inner.replicas.get()
            && let Some(position) = super::replicas::position()
            && let Some((_, conn)) = replicas.pick(position).await
        {
            self.count_read("replica");
            return Ok(conn);
        }
        self.count_read("primary");
        self.conn().await
    }

    fn count_read(&self, target: &str) {
        self.inner.reads.with_label_values(&[target]).inc();
    }

    /// Reads counted per target since start: (primary, replica).
    pub fn reads(&self) -> (u64, u64) {
        (
            self.inner.reads.with_label_values(&["primary"]).get(),
            self.inner.reads.with_label_values(&["replica"]).get(),
        )
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// The TLS part of a connection failure, if TLS is what failed.
fn tls_failure(e: &DbError) -> Option<String> {
    let pg = match e {
        DbError::Pool(PoolError::Backend(pg)) | DbError::Query(pg) => pg,
        DbError::Pool(_) => return None,
    };
    // tokio-postgres says "error performing TLS handshake" (the cause, e.g. the
    // rustls certificate error, is its source; "server does not support TLS"
    // under `require`).
    if !pg.to_string().contains("TLS") {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(pg);
    while let Some(err) = next {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    Some(parts.join(": "))
}

/// The occupancy of `pools` together.
fn combined(pools: &[Pool]) -> PoolStatus {
    pools.iter().map(Pool::status).fold(
        PoolStatus {
            size: 0,
            max_size: 0,
            available: 0,
            waiting: 0,
        },
        |sum, s| PoolStatus {
            size: sum.size + s.size,
            max_size: sum.max_size + s.max_size,
            available: sum.available + s.available,
            waiting: sum.waiting + s.waiting,
        },
    )
}

/// Reports `kai_db_pool_connections{state}` from the pools' own counters at
/// scrape time, so the gauge is never stale and costs nothing between scrapes.
struct PoolCollector {
    pools: Vec<Pool>,
    gauge: IntGaugeVec,
    /// The pool's maximum: saturation is `in_use / max`, not `in_use` over the
    /// connections opened so far (a pool that opened 2 of 20 is not saturated).
    max: IntGauge,
}

impl PoolCollector {
    fn new(pools: Vec<Pool>) -> Self {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "kai_db_pool_connections",
                "PostgreSQL pool connections by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        let max = IntGauge::new(
            "kai_db_pool_max_connections",
            "The PostgreSQL pool's maximum size (DB_POOL_SIZE)",
        )
        .expect("valid metric");
        Self { pools, gauge, max }
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut desc = self.gauge.desc();
        desc.extend(self.max.desc());
        desc
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = combined(&self.pools);
        let in_use = s.size.saturating_sub(s.available);
        self.gauge
            .with_label_values(&["idle"])
            .set(s.available as i64);
        self.gauge.with_label_values(&["in_use"]).set(in_use as i64);
        self.gauge
            .with_label_values(&["waiting"])
            .set(s.waiting as i64);
        self.max.set(s.max_size as i64);
        let mut families = self.gauge.collect();
        families.extend(self.max.collect());
        families
    }
}
