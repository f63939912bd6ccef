//! Streaming read replicas (`DATABASE_REPLICA_URLS`, SPEC §7 "Read replicas").
//!
//! A read may run on a replica only when the replica has replayed past the last
//! write of what is read. Writes record their position — the primary's WAL
//! insert position read right after they committed ([`Replicas::after_commit`]),
//! which is at or past the end of their commit record whatever
//! `synchronous_commit` says — with their cache scope in Redis (`cache::positions`,
//! max-merged, before the scope's generation moves). A read takes its scope's
//! position ([`read_at`]) *after* it read the scope's generation, so the position
//! covers every write that generation includes; [`Db::read`](super::Db::read) then
//! uses a replica whose `pg_last_wal_replay_lsn()` is at or past it. An unknown
//! position (no Redis, Redis down, no task position) means the primary.
//!
//! Each read asks the replica connection it is about to use how far that
//! server has replayed (`pg_last_wal_replay_lsn()`: one cheap round trip to
//! the replica, none to the primary) — per connection, since one URL may be a
//! managed reader endpoint whose connections land on different servers, each
//! at its own position, and a server restarted from an older restart point
//! replays again from there. A watcher refreshes each replica's state and lag
//! every [`WATCH_EVERY`] for `/health/detailed` and the metrics. A
//! replica that fails, times out or cannot be connected to within
//! [`CONNECT_TIMEOUT`] is marked down and skipped until the watcher reaches it
//! again; the read runs on the primary in the same request.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use prometheus::{GaugeVec, IntGaugeVec, Opts};
use serde::Serialize;
use tokio_postgres::types::PgLsn;
use tokio_util::sync::CancellationToken;

use super::DbError;
use crate::metrics::Metrics;
use crate::settings::DatabaseSettings;

/// How long opening a connection to a replica may take before the replica is
/// marked down (the read then runs on the primary).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a read waits for one of a busy replica's pooled connections before
/// it runs on the primary instead.
pub const WAIT_TIMEOUT: Duration = Duration::from_millis(100);
/// A read on a replica slower than this (a partition, a replica that stopped
/// answering) is abandoned and run on the primary; the replica is marked down.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often each replica's replay position, lag and state are refreshed (and a
/// replica marked down is tried again).
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

tokio::task_local! {
    static READ_AT: Option<u64>;
}

/// Runs `work` with its [`Db::read`](super::Db::read)s allowed on a replica that
/// has replayed up to `position` (a WAL position; `None`: the primary).
pub async fn read_at<F: Future>(position: Option<u64>, work: F) -> F::Output {
    READ_AT.scope(position, work).await
}

/// The position this task's reads must see, if one was set.
pub(super) fn position() -> Option<u64> {
    READ_AT.try_with(|p| *p).ok().flatten()
}

/// One replica, as `/health/detailed` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaHealth {
    /// `host:port/database`, never the user or password.
    pub address: String,
    /// `streaming`, `lagging` (more than a second behind), `paused` (replay
    /// paused), `down` (unreachable) or `not_a_replica` (not in recovery).
    pub state: &'static str,
    /// WAL bytes the primary wrote that the replica has not replayed yet.
    pub lag_bytes: Option<u64>,
    /// Seconds since the last transaction it replayed was committed, while it
    /// has WAL left to replay (0 when it replayed everything it received).
    pub lag_seconds: Option<f64>,
}

/// The service's read replicas. See the module documentation.
pub struct Replicas {
    list: Vec<Arc<Replica>>,
    /// The primary's pool (not the `Db`, which holds these replicas).
    primary: Pool,
    /// The primary's WAL insert position, as last seen by the watcher.
    primary_position: AtomicU64,
    next: AtomicUsize,
}

pub struct Replica {
    index: usize,
    address: String,
    pool: Pool,
    /// Its pool's connections, which [`Replicas::close`] waits for.
    drivers: super::connect::Drivers,
    up: AtomicBool,
    in_recovery: AtomicBool,
    paused: AtomicBool,
    lag_bytes: AtomicU64,
    /// Lag in microseconds.
    lag_micros: AtomicU64,
}

impl Replicas {
    pub(super) fn start(
        primary: &Pool,
        settings: &DatabaseSettings,
        metrics: &Metrics,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let list = settings
            .replica_settings()
            .into_iter()
            .enumerate()
            .map(|(index, replica)| {
                let (pool, drivers) =
                    super::connect::build_pool_counted(&replica, CONNECT_TIMEOUT, WAIT_TIMEOUT);
                Arc::new(Replica {
                    index,
                    address: address(&replica),
                    pool,
                    drivers,
                    up: AtomicBool::new(false),
                    in_recovery: AtomicBool::new(false),
                    paused: AtomicBool::new(false),
                    lag_bytes: AtomicU64::new(0),
                    lag_micros: AtomicU64::new(0),
                })
            })
            .collect();
        let replicas = Arc::new(Self {
            list,
            primary: primary.clone(),
            primary_position: AtomicU64::new(0),
            next: AtomicUsize::new(0),
        });
        let _ = metrics
            .registry
            .register(Box::new(LagCollector::new(Arc::downgrade(&replicas))));
        tokio::spawn(watch_primary(Arc::downgrade(&replicas), stop.clone()));
        for replica in &replicas.list {
            tokio::spawn(watch(
                Arc::downgrade(&replicas),
                replica.clone(),
                stop.clone(),
            ));
        }
        replicas
    }

    /// The primary's WAL insert position now: after a write committed, at or
    /// past its commit record. `None` if the primary did not answer.
    pub async fn after_commit(&self) -> Option<u64> {
        let conn = self.primary.get().await.ok()?;
        let row = conn
            .query_one("SELECT pg_current_wal_insert_lsn()", &[])
            .await
            .ok()?;
        let position = u64::from(row.get::<_, PgLsn>(0));
        self.primary_position.fetch_max(position, Ordering::AcqRel);
        Some(position)
    }

    /// A position at or past every write committed before the watcher last
    /// asked the primary (`None` before it first did): what a scope whose own
    /// position Redis no longer holds (never recorded since the service started
    /// recording, or older than the record's seven days) must wait for.
    pub fn floor(&self) -> Option<u64> {
        Some(self.primary_position.load(Ordering::Acquire)).filter(|&p| p != 0)
    }

    /// A replica that has replayed up to `position`, and one of its connections.
    pub(super) async fn pick(&self, position: u64) -> Option<(Arc<Replica>, Object)> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let replica = &self.list[(start + i) % n];
            if !replica.up.load(Ordering::Acquire) || !replica.in_recovery.load(Ordering::Acquire) {
                continue;
            }
            let conn = match replica.pool.get().await {
                Ok(conn) => conn,
                // Every connection busy: this read goes elsewhere, the replica
                // is not down for it.
                Err(deadpool_postgres::PoolError::Timeout(
                    deadpool_postgres::TimeoutType::Wait,
                )) => {
                    continue;
                }
                Err(e) => {
                    replica.mark_down(&format!("{e}"));
                    continue;
                }
            };
            // Asked on the connection the read will use: behind one URL there
            // may be several servers (a managed reader endpoint), each at its
            // own position, so no position remembered for the URL is trusted.
            match tokio::time::timeout(READ_TIMEOUT, replay_position(&conn)).await {
                Ok(Ok(Some(now))) => {
                    if now >= position {
                        return Some((replica.clone(), conn));
                    }
                }
                Ok(Ok(None)) => replica.in_recovery.store(false, Ordering::Release),
                Ok(Err(e)) => replica.failed(&DbError::Query(e)),
                Err(_) => replica.timed_out(),
            }
        }
        None
    }

    /// Closes every replica's pool (shutdown): each connection ends with
    /// PostgreSQL's Terminate message (see [`super::Db::close`]); waits up to
    /// `within` for them.
    pub(super) async fn close(&self, within: std::time::Duration) {
        for replica in &self.list {
            replica.pool.close();
        }
        futures_util::future::join_all(self.list.iter().map(|r| r.drivers.ended(within))).await;
    }

    /// Every replica, for `/health/detailed`.
    pub fn health(&self) -> Vec<ReplicaHealth> {
        self.list.iter().map(|r| r.health()).collect()
    }
}

impl Replica {
    /// A read on this replica failed: marked down if it could not be reached
    /// (the read runs on the primary either way).
    pub(super) fn failed(&self, e: &DbError) {
        if e.is_unavailable() {
            self.mark_down("connection lost");
        } else {
            tracing::debug!(
                replica = self.index,
                "read on a replica failed; retried on the primary"
            );
        }
    }

    pub(super) fn timed_out(&self) {
        self.mark_down("read timed out");
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::info!(replica = self.index, address = %self.address, why, "read replica down; reads go to the primary");
        }
    }

    fn state(&self) -> &'static str {
        if !self.up.load(Ordering::Acquire) {
            "down"
        } else if !self.in_recovery.load(Ordering::Acquire) {
            "not_a_replica"
        } else if self.paused.load(Ordering::Acquire) {
            "paused"
        } else if self.lag_micros.load(Ordering::Acquire) > 1_000_000 {
            "lagging"
        } else {
            "streaming"
        }
    }

    fn health(&self) -> ReplicaHealth {
        let up = self.up.load(Ordering::Acquire);
        ReplicaHealth {
            address: self.address.clone(),
            state: self.state(),
            lag_bytes: up.then(|| self.lag_bytes.load(Ordering::Acquire)),
            lag_seconds: up.then(|| {
                crate::figures::round_to(self.lag_micros.load(Ordering::Acquire) as f64 / 1e6, 3)
            }),
        }
    }
}

/// The replica's replay position (`None`: it is not in recovery).
async fn replay_position(conn: &Object) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = conn
        .query_one("SELECT pg_last_wal_replay_lsn()", &[])
        .await?;
    Ok(row.get::<_, Option<PgLsn>>(0).map(u64::from))
}

const WATCH_REPLICA: &str = "SELECT pg_last_wal_replay_lsn(),
        pg_is_in_recovery() AND pg_is_wal_replay_paused(),
        CASE WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
             THEN 0
             ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8";

async fn watch(replicas: Weak<Replicas>, replica: Arc<Replica>, stop: CancellationToken) {
    loop {
        let Some(all) = replicas.upgrade() else {
            return;
        };
        let asked = async {
            let conn = replica.pool.get().await.map_err(|e| e.to_string())?;
            conn.query_one(WATCH_REPLICA, &[])
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + READ_TIMEOUT, asked).await {
            Ok(Ok(row)) => {
                let replayed = row.get::<_, Option<PgLsn>>(0).map(u64::from);
                let paused: bool = row.get::<_, Option<bool>>(1).unwrap_or(false);
                let lag: f64 = row.get(2);
                replica
                    .in_recovery
                    .store(replayed.is_some(), Ordering::Release);
                replica.paused.store(paused, Ordering::Release);
                replica
                    .lag_micros
                    .store((lag.max(0.0) * 1e6) as u64, Ordering::Release);
                if let Some(replayed) = replayed {
                    let primary = all.primary_position.load(Ordering::Acquire);
                    replica
                        .lag_bytes
                        .store(primary.saturating_sub(replayed), Ordering::Release);
                }
                if !replica.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(replica = replica.index, address = %replica.address, "read replica up");
                }
            }
            Ok(Err(e)) => replica.mark_down(&e),
            Err(_) => replica.mark_down("no answer"),
        }
        drop(all);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

async fn watch_primary(replicas: Weak<Replicas>, stop: CancellationToken) {
    loop {
        let Some(all) = replicas.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(READ_TIMEOUT, all.after_commit()).await;
        drop(all);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// `host:port/database` of a replica: what operators need, no credentials.
fn address(settings: &DatabaseSettings) -> String {
    let pg = settings.pg_config();
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// `kai_db_replica_lag_bytes{replica}`, `kai_db_replica_lag_seconds{replica}` and
/// `kai_db_replica_up{replica}` (the replica's index in `DATABASE_REPLICA_URLS`:
/// bounded, and no address or credential in a label), read at scrape time.
struct LagCollector {
    replicas: Weak<Replicas>,
    bytes: IntGaugeVec,
    seconds: GaugeVec,
    up: IntGaugeVec,
}

impl LagCollector {
    fn new(replicas: Weak<Replicas>) -> Self {
        Self {
            replicas,
            bytes: IntGaugeVec::new(
                Opts::new(
                    "kai_db_replica_lag_bytes",
                    "WAL bytes a read replica has not replayed yet, by replica index",
                ),
                &["replica"],
            )
            .expect("valid metric"),
            seconds: GaugeVec::new(
                Opts::new(
                    "kai_db_replica_lag_seconds",
                    "Replay lag of a read replica in seconds (0 when it replayed all it received), by replica index",
                ),
                &["replica"],
            )
            .expect("valid metric"),
            up: IntGaugeVec::new(
                Opts::new(
                    "kai_db_replica_up",
                    "1 when a read replica answers and is in recovery, else 0, by replica index",
                ),
                &["replica"],
            )
            .expect("valid metric"),
        }
    }
}

impl prometheus::core::Collector for LagCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.bytes.desc();
        d.extend(self.seconds.desc());
        d.extend(self.up.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(replicas) = self.replicas.upgrade() {
            for r in &replicas.list {
                let label = r.index.to_string();
                let up = r.up.load(Ordering::Acquire) && r.in_recovery.load(Ordering::Acquire);
                self.up.with_label_values(&[&label]).set(i64::from(up));
                self.bytes
                    .with_label_values(&[&label])
                    .set(r.lag_bytes.load(Ordering::Acquire) as i64);
                self.seconds
                    .with_label_values(&[&label])
                    .set(r.lag_micros.load(Ordering::Acquire) as f64 / 1e6);
            }
        }
        let mut families = self.bytes.collect();
        families.extend(self.seconds.collect());
        families.extend(self.up.collect());
        families
    }
}
