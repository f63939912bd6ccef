//! How a call gets a connection: one node through a bb8 pool of multiplexed
//! connections (each held by one call, dropped when a command broke it), a
//! cluster through one shared multiplexed connection that every call clones.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Failure;
use super::link::{Link, Target};
use crate::home::Home;

/// A pooled connection that remembers whether a command failed on it.
pub struct Conn {
    pub(crate) inner: Link,
    pub(crate) broken: bool,
}

/// bb8 manager over a configured target (one node or a cluster; TLS roots, ACL
/// user), plus the broken flag.
///
/// Connections are opened at `home` (the runtime that built the pool), so the
/// task that drives each one runs there, not on the HTTP worker that happened to
/// need it (see [`Home`]).
pub struct Manager {
    pub(super) target: Target,
    pub(super) home: Home,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        let target = self.target.clone();
        let inner = match self.home.spawn(async move { target.connect().await }).await {
            Ok(opened) => opened?,
            // That runtime is shutting down: open it on this one.
            Err(_) => self.target.connect().await?,
        };
        Ok(Conn {
            inner,
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
pub(super) enum Links {
    /// One node: a pool of multiplexed connections, each held by one call.
    Pool(bb8::Pool<Manager>),
    /// A cluster: one connection shared by every call.
    Shared(Arc<Shared>),
}

/// The one cluster connection. Connecting (the seed's slot map, then a
/// connection per node) runs in a task of its own: a caller that gives up after
/// `REDIS_TIMEOUT_MS` does not cancel it, and concurrent callers wait for the same
/// attempt.
pub(crate) struct Shared {
    target: Target,
    /// Where connecting runs (the runtime that built it), so the connection's
    /// tasks live there (see [`Home`]).
    home: Home,
    current: Mutex<Option<Link>>,
    failure: Mutex<Option<String>>,
    connecting: AtomicBool,
    attempted: tokio::sync::Notify,
}

impl Shared {
    pub(super) fn new(target: Target) -> Arc<Self> {
        let shared = Arc::new(Self {
            target,
            home: Home::here(),
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
        let connect = async move {
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
        };
        drop(self.home.spawn(connect));
    }

    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn, Failure> {
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
            None => Err(Failure::Pool(
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
pub(crate) enum Checkout<'a> {
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
pub(super) struct LogSink;

impl bb8::ErrorSink<redis::RedisError> for LogSink {
    fn sink(&self, e: redis::RedisError) {
        tracing::debug!(error = %e, "redis pool could not connect");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<redis::RedisError>> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use bb8::ManageConnection;

    use super::*;

    /// A connection a worker opens is opened, and driven, on the pool's runtime:
    /// it still answers after the worker's runtime has ended.
    #[test]
    fn a_connection_a_worker_opened_outlives_the_worker() {
        let url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let manager = Manager {
            target: Target::Node(Box::new(redis::Client::open(url).unwrap())),
            home: home.block_on(async { Home::here() }),
        };
        let mut conn = {
            let worker = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let conn = worker
                .block_on(manager.connect())
                .expect("Redis must be running (scripts/test starts it)");
            drop(worker);
            conn
        };
        let pong: String = home
            .block_on(redis::cmd("PING").query_async(&mut conn.inner))
            .expect("the connection outlived the worker that opened it");
        assert_eq!(pong, "PONG");
    }
}
