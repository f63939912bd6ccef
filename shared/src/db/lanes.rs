//! Pipelined reads: a few of the pool's connections held open and shared by
//! concurrent short reads, through tokio-postgres's own pipelining.
//!
//! Why: a statement on a connection of its own costs PostgreSQL a sleep and a
//! wake-up of its backend process, a read and a write system call, on both sides
//! of the socket, per statement — more than the statement itself for a page read
//! by index. tokio-postgres sends the statements issued concurrently on one
//! `Client` back to back on its socket ("pipelining", its documentation's word),
//! so a busy backend finds the next statement already waiting, and both sides
//! read and write several per system call. Measured with `pgbench` on this
//! repository's development machine (docs/PERFORMANCE.md, "Round five"): 105 µs
//! of PostgreSQL CPU per 20-row statement from 32 connections one statement at a
//! time, 72 µs from 4, 31 µs pipelined 8 deep on 4.
//!
//! How: each HTTP worker thread (a single-threaded runtime) gets a lane of its
//! own, a connection opened by that thread and driven on its runtime, so the
//! worker that asks is the one that reads the answers: no hop to another
//! thread and back per statement. Up to `DB_PIPELINE_LANES` lanes (their
//! connections are part of `DB_POOL_SIZE`: the main pool has the rest). A
//! read takes its thread's lane if fewer than [`LANE_DEPTH`] reads are in
//! flight on it; else, on a thread without a lane (the main runtime, whose
//! tasks move between threads), or when every lane connection is taken, a
//! connection of its own from the main pool, as before — a burst deeper than
//! the lane degrades to the pool, never queues behind an unbounded pipeline. A
//! lane whose connection closed is forgotten and opened again by its thread's
//! next read; [`crate::db::Db::read_pipelined`] runs a read that failed on a
//! lane whose connection closed or ended under it again on a connection of its own (reads are
//! idempotent).
//!
//! Measured side by side (`scripts/bench-side-by-side --groups uncached
//! --kai-b-env DB_PIPELINE_LANES=0`, docs/PERFORMANCE.md "Round five"): lanes
//! shared round-robin and driven on the main runtime served 1.23 x the
//! uncached lists of no lanes; a lane per worker, driven there, 2.35 x.
//!
//! For short statements only (an index range with a LIMIT, a primary-key
//! lookup): statements on a lane run one after the other, so a slow one would
//! hold up the reads queued behind it. Transactions never run on a lane (a
//! [`Lease`] only lends `&Object`; `transaction()` needs `&mut`).

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::DbError;

/// Reads in flight on one lane before the next read takes another lane (or a
/// connection of its own).
const LANE_DEPTH: usize = 32;

/// A connection lent to one read: a lane's, shared with other reads in flight,
/// or one of its own from the pool.
pub struct Lease {
    conn: Conn,
}

enum Conn {
    /// The lane's connection, and this read's place among its reads in flight.
    Shared(Arc<Object>, OwnedSemaphorePermit),
    Own(Box<Object>),
}

impl Lease {
    pub(super) fn own(conn: Object) -> Self {
        Self {
            conn: Conn::Own(Box::new(conn)),
        }
    }

    /// Another handle on the lane's connection, when this read shares one.
    pub(super) fn lane(&self) -> Option<Arc<Object>> {
        match &self.conn {
            Conn::Shared(conn, _permit) => Some(conn.clone()),
            Conn::Own(_) => None,
        }
    }
}

impl Deref for Lease {
    type Target = Object;

    fn deref(&self) -> &Object {
        match &self.conn {
            Conn::Shared(conn, _) => conn,
            Conn::Own(conn) => conn,
        }
    }
}

pub(super) struct Lanes {
    /// The lanes' own pool (`lanes` connections, each driven on the runtime of
    /// the thread that opened it); the rest of `DB_POOL_SIZE` is the main pool's.
    pool: Pool,
    /// `DB_PIPELINE_LANES` (0: every read on a connection of its own).
    lanes: usize,
    /// The main pool: reads that find their thread's lane full, or no lane.
    fallback: Pool,
    /// One lane per thread that reads (an HTTP worker), opened by that thread.
    by_thread: Mutex<Vec<(ThreadId, Arc<Lane>)>>,
    /// Held while a lane is opened: the reads of a thread that arrive meanwhile
    /// wait for its one lane instead of each taking a lane connection.
    opening: tokio::sync::Mutex<()>,
    /// Attempts to open a lane that failed so far: a read that waited for
    /// `opening` while one failed does not try again (PostgreSQL unreachable:
    /// each waiting read would otherwise wait for one connect timeout after the
    /// other) — it takes a connection of its own, which fails as fast.
    failed_opens: std::sync::atomic::AtomicU64,
}

struct Lane {
    conn: Arc<Object>,
    in_flight: Arc<Semaphore>,
}

impl Lanes {
    pub(super) fn new(pool: Pool, fallback: Pool, lanes: usize) -> Self {
        Self {
            pool,
            lanes,
            fallback,
            by_thread: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            failed_opens: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// No lane from now on: the lanes' pool is closed (a lane's connection
    /// is dropped once the reads holding it are done), and reads take a
    /// connection of their own (an attempt to open a lane fails at once).
    pub(super) fn close(&self) {
        self.pool.close();
        self.by_thread.lock().expect("lanes lock").clear();
    }

    /// How many lanes hold an open connection now.
    pub(super) fn open(&self) -> usize {
        let lanes = self.by_thread.lock().expect("lanes lock");
        lanes.iter().filter(|(_, l)| !l.conn.is_closed()).count()
    }

    /// This thread's lane if it has room (opened first if the lanes' pool has a
    /// connection left), else a connection of its own from the main pool
    /// (waiting for one as [`crate::db::Db::conn`] does).
    pub(super) async fn lease(&self) -> Result<Lease, DbError> {
        if self.lanes == 0 || !on_a_worker() {
            return Ok(Lease::own(self.fallback.get().await?));
        }
        let here = std::thread::current().id();
        let lane = self.lane(here);
        let lane = match lane {
            Some(lane) => Some(lane),
            None => self.open_here(here).await,
        };
        if let Some(lane) = lane
            && let Ok(permit) = lane.in_flight.clone().try_acquire_owned()
        {
            return Ok(Lease {
                conn: Conn::Shared(lane.conn.clone(), permit),
            });
        }
        Ok(Lease::own(self.fallback.get().await?))
    }

    /// `thread`'s lane, if it has one still open (a closed one is forgotten by
    /// [`Lanes::open_here`], which opens its replacement).
    fn lane(&self, thread: ThreadId) -> Option<Arc<Lane>> {
        let lanes = self.by_thread.lock().expect("lanes lock");
        lanes
            .iter()
            .find(|(t, l)| *t == thread && !l.conn.is_closed())
            .map(|(_, l)| l.clone())
    }

    /// Opens a lane for `thread` (driven on this thread's runtime), unless
    /// every lane connection is taken.
    async fn open_here(&self, thread: ThreadId) -> Option<Arc<Lane>> {
        use std::sync::atomic::Ordering;
        let seen = self.failed_opens.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        if let Some(lane) = self.lane(thread) {
            return Some(lane);
        }
        if self.failed_opens.load(Ordering::Acquire) != seen {
            // An attempt failed while this read waited: not another one now.
            return None;
        }
        // Closed lanes go (their connections back to the lanes' pool, which
        // drops them) before a new one takes a connection.
        self.by_thread
            .lock()
            .expect("lanes lock")
            .retain(|(_, l)| !l.conn.is_closed());
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(std::time::Duration::ZERO),
            ..self.pool.timeouts()
        };
        let conn = match self.pool.timeout_get(&timeouts).await {
            Ok(conn) => conn,
            Err(_) => {
                self.failed_opens.fetch_add(1, Ordering::AcqRel);
                return None;
            }
        };
        let lane = Arc::new(Lane {
            conn: Arc::new(conn),
            in_flight: Arc::new(Semaphore::new(LANE_DEPTH)),
        });
        self.by_thread
            .lock()
            .expect("lanes lock")
            .push((thread, lane.clone()));
        Some(lane)
    }
}

/// Whether this read runs on a single-threaded runtime — an HTTP worker's —
/// whose thread keeps running it: a lane is driven there. Not on the main
/// runtime, whose tasks move between its threads (a batch's refresh, say):
/// those take a connection of their own, so the lanes stay the workers'.
fn on_a_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}
