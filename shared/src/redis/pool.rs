//! How a call gets a connection: one node through a bb8 pool of multiplexed
//! connections (bb8-redis's `RedisConnectionManager`; each connection held by one
//! call, dropped when a command broke it), a cluster through one shared
//! multiplexed connection that every call clones.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bb8_redis::RedisConnectionManager;

use super::Failure;
use super::link::{Link, Target};
use crate::home::Home;

/// A pooled connection that remembers whether a command failed on it.
pub struct Conn {
    pub(crate) inner: Link,
    pub(crate) broken: bool,
}

/// The pool's manager: bb8-redis's [`RedisConnectionManager`] opens and checks
/// the connections; this wraps it for two things it does not do.
///
/// - Connections are opened at `home` (the runtime that built the pool), so the
///   task that drives each one runs there, not on the HTTP worker that happened
///   to need it (see [`Home`]).
/// - `has_broken`: bb8-redis always answers false, so a connection a restarted
///   Redis broke would go back to the pool and fail the next caller too. A
///   command that fails on a connection marks it ([`Conn::broken`], set by the
///   caller), and bb8 drops it instead of returning it. That flag is why the
///   pool can leave `test_on_check_out` off: no PING round trip before every
///   command, and a broken connection fails one command, not every later one.
///
/// The TLS roots (`REDIS_CA_FILE`) travel in the client's connection info
/// ([`redis::Client::build_with_tls`], see `link::client`), which the manager
/// is made from.
pub struct Manager {
    redis: RedisConnectionManager,
    home: Home,
}

impl Manager {
    /// A manager for `client`'s node (its URL, ACL user, TLS roots), opening
    /// connections on `home`.
    pub(super) fn new(client: &redis::Client, home: Home) -> redis::RedisResult<Self> {
        Ok(Self {
            redis: RedisConnectionManager::new(client.get_connection_info().clone())?,
            home,
        })
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        let redis = self.redis.clone();
        let opened = match self.home.spawn(async move { redis.connect().await }).await {
            Ok(opened) => opened?,
            // That runtime is shutting down: open it on this one.
            Err(_) => self.redis.connect().await?,
        };
        Ok(Conn {
            inner: Link::Node(opened),
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        match &mut conn.inner {
            Link::Node(c) => self.redis.is_valid(c).await,
            // `connect` opens nothing else.
            _ => Err((redis::ErrorKind::Client, "not a pooled node connection").into()),
        }
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        let Link::Node(c) = &mut conn.inner else {
            return true;
        };
        conn.broken || self.redis.has_broken(c)
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
        let client = redis::Client::open(url).unwrap();
        let manager = Manager::new(&client, home.block_on(async { Home::here() })).unwrap();
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
