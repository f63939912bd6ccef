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
//! How: `lanes` connections are taken from the pool on first use and kept; a
//! read takes the next lane round-robin if fewer than `depth` reads are in
//! flight on it, else the next, else a pooled connection of its own as before
//! (so a burst deeper than the lanes degrades to the pool, never queues behind
//! an unbounded pipeline). A lane whose connection closed is emptied and opened
//! again by the next read; [`crate::db::Db::read_pipelined`] runs a read that
//! failed on a lane whose connection closed again on a connection of its own
//! (reads are idempotent).
//!
//! For short statements only (an index range with a LIMIT, a primary-key
//! lookup): statements on a lane run one after the other, so a slow one would
//! hold up the reads queued behind it. Transactions never run on a lane (a
//! [`Lease`] only lends `&Object`; `transaction()` needs `&mut`).

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::DbError;

/// Reads in flight on one lane before the next read takes another lane (or a
/// connection of its own).
pub const LANE_DEPTH: usize = 16;

/// A connection lent to one read: a lane's, shared with other reads in flight,
/// or one of its own from the pool.
pub struct Lease {
    conn: Conn,
}

enum Conn {
    Shared(Arc<Object>, #[allow(dead_code)] OwnedSemaphorePermit),
    Own(Object),
}

impl Lease {
    pub(super) fn own(conn: Object) -> Self {
        Self {
            conn: Conn::Own(conn),
        }
    }

    /// True when this read shares a lane.
    pub fn is_shared(&self) -> bool {
        matches!(self.conn, Conn::Shared(..))
    }

    /// Another handle on the lane's connection, when this read shares one.
    pub(super) fn lane(&self) -> Option<Arc<Object>> {
        match &self.conn {
            Conn::Shared(conn, _) => Some(conn.clone()),
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
    pool: Pool,
    lanes: Box<[Lane]>,
    next: AtomicUsize,
}

struct Lane {
    conn: Mutex<Option<Arc<Object>>>,
    in_flight: Arc<Semaphore>,
    /// Held while this lane's connection is taken from the pool, so that one
    /// read opens it and the others arriving meanwhile wait for that one.
    opening: tokio::sync::Mutex<()>,
}

impl Lanes {
    pub(super) fn new(pool: Pool, lanes: usize) -> Self {
        Self {
            pool,
            lanes: (0..lanes)
                .map(|_| Lane {
                    conn: Mutex::new(None),
                    in_flight: Arc::new(Semaphore::new(LANE_DEPTH)),
                    opening: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many lanes hold an open connection now.
    pub(super) fn open(&self) -> usize {
        self.lanes
            .iter()
            .filter(|lane| lane.current().is_some())
            .count()
    }

    /// A lane with room, else a pooled connection of its own (waiting for one as
    /// [`crate::db::Db::conn`] does).
    pub(super) async fn lease(&self) -> Result<Lease, DbError> {
        let n = self.lanes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let lane = &self.lanes[(start + i) % n];
            let Ok(permit) = lane.in_flight.clone().try_acquire_owned() else {
                continue;
            };
            if let Some(conn) = lane.current() {
                return Ok(Lease {
                    conn: Conn::Shared(conn, permit),
                });
            }
            let _opening = lane.opening.lock().await;
            if let Some(conn) = lane.current() {
                return Ok(Lease {
                    conn: Conn::Shared(conn, permit),
                });
            }
            let conn = Arc::new(self.pool.get().await?);
            *lane.conn.lock().expect("lane lock") = Some(conn.clone());
            return Ok(Lease {
                conn: Conn::Shared(conn, permit),
            });
        }
        Ok(Lease::own(self.pool.get().await?))
    }
}

impl Lane {
    /// The lane's connection, if it has one that is still open.
    fn current(&self) -> Option<Arc<Object>> {
        let mut slot = self.conn.lock().expect("lane lock");
        match &*slot {
            Some(conn) if !conn.is_closed() => Some(conn.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }
}
