//! Opening connections: a pool on one server (the primary's, or a replica's),
//! TLS as its `sslmode` says, each connection driven on the runtime that built
//! the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::home::Home;
use crate::settings::{DatabaseSettings, SslMode};

/// A pooled connection unused for this long is verified (an empty query, one
/// round trip) before it is handed out; one used more recently only has to be
/// open. HikariCP's `aliveBypassWindowMs` is the same idea with 500 ms: a
/// connection that answered a moment ago is alive, and verifying it on every
/// checkout cost a round trip per write and per cache miss (a fifth of the
/// statements PostgreSQL ran in the 90/10 benchmark).
pub const VERIFY_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// How long a connection whose client is gone may take to say goodbye
/// (PostgreSQL's Terminate message, then closing the socket) before its task
/// drops it anyway.
const GOODBYE: Duration = Duration::from_secs(1);

/// The connections a pool's tasks drive, counted: shutdown closes the pool and
/// waits for them to end ([`Drivers::ended`]).
#[derive(Clone, Default)]
pub(super) struct Drivers(Arc<AtomicUsize>);

/// One driven connection, counted while its task runs.
struct Driving(Arc<AtomicUsize>);

impl Drivers {
    fn enter(&self) -> Driving {
        self.0.fetch_add(1, Ordering::AcqRel);
        Driving(self.0.clone())
    }

    /// How many connections are driven now.
    pub(super) fn live(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Waits until no connection is driven, or `within` passed.
    pub(super) async fn ended(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        while self.live() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pool on `settings`' server (`connect` bounds opening a connection, `wait`
/// waiting for one), and the count of the connections it drives.
pub(super) fn build_pool_counted(
    settings: &DatabaseSettings,
    connect: Duration,
    wait: Duration,
) -> (Pool, Drivers) {
    build_pool_driven(settings, settings.pool_size, connect, wait, Home::here())
}

/// A pool of `size` whose connections are each driven on the runtime that
/// opens it (the thread of the read that needed it: see [`super::lanes`]).
pub(super) fn build_pool_driven_where_opened(
    settings: &DatabaseSettings,
    size: usize,
    connect: Duration,
    wait: Duration,
) -> (Pool, Drivers) {
    build_pool_driven(settings, size, connect, wait, Home::caller())
}

fn build_pool_driven(
    settings: &DatabaseSettings,
    size: usize,
    connect: Duration,
    wait: Duration,
    home: Home,
) -> (Pool, Drivers) {
    let drivers = Drivers::default();
    let mut pg = settings.pg_config();
    pg.connect_timeout(connect);
    if pg.get_application_name().is_none() {
        pg.application_name("kai");
    }
    let manager = Manager::from_connect(
        pg,
        DrivenAtHome {
            tls: tls_connector(settings),
            home,
            drivers: drivers.clone(),
        },
        ManagerConfig {
            // Closed connections are dropped here; the hook below verifies
            // the ones that sat idle.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let verify_idle = Hook::async_fn(
        |client: &mut ClientWrapper, metrics: &deadpool_postgres::Metrics| {
            Box::pin(async move {
                if metrics.last_used() < VERIFY_IF_IDLE_FOR {
                    return Ok(());
                }
                match tokio::time::timeout(Duration::from_secs(5), client.simple_query("")).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(HookError::Backend(e)),
                    Err(_) => Err(HookError::message("verification timed out")),
                }
            })
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(connect.max(wait)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .post_recycle(verify_idle)
        .runtime(Runtime::Tokio1)
        .build()
        .expect("pool settings validated at start");
    (pool, drivers)
}

/// Opens each connection, and runs the task that drives it (the socket's reads
/// and writes), on the runtime that built the pool (see [`Home`]) instead of on
/// whichever HTTP worker first needed the connection.
///
/// deadpool aborts the task whose handle it is given when it drops a
/// connection: given the driver's, PostgreSQL saw the socket reset mid-session
/// and logged `could not receive data from client: Connection reset by peer`
/// for every connection of every service that stopped. It is given a
/// watchdog's instead: the watchdog's end tells the driver its client is gone,
/// and the driver lets tokio-postgres send Terminate and close the socket (at
/// most [`GOODBYE`]).
struct DrivenAtHome {
    tls: MakeRustlsConnect,
    home: Home,
    drivers: Drivers,
}

impl deadpool_postgres::Connect for DrivenAtHome {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        // The socket belongs to the runtime it is opened on: open it there too.
        let (opened, client) = tokio::sync::oneshot::channel();
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        let (tls, config) = (self.tls.clone(), pg.clone());
        let driving = self.drivers.enter();
        let open_and_drive = async move {
            match config.connect(tls).await {
                Ok((client, connection)) => {
                    let _ = opened.send(Ok(client));
                    drive(connection, gone, driving).await;
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            }
        };
        drop(self.home.spawn(open_and_drive));
        let pg = pg.clone();
        Box::pin(async move {
            if let Ok(opened) = client.await {
                return opened.map(|client| (client, self.home.spawn(watchdog(alive))));
            }
            // That runtime is shutting down: open it on this one.
            let (client, connection) = pg.connect(self.tls.clone()).await?;
            let (alive, gone) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(drive(connection, gone, self.drivers.enter()));
            Ok((client, tokio::spawn(watchdog(alive))))
        })
    }
}

/// The task deadpool holds for a connection: it ends only when deadpool aborts
/// it (dropping the connection), and its end (`alive` dropped) is what the
/// driver hears as "the client is gone".
async fn watchdog(alive: tokio::sync::oneshot::Sender<()>) {
    let _alive = alive;
    std::future::pending::<()>().await
}

/// Drives `connection` until it ends; once its client is gone (`gone`: the
/// watchdog deadpool holds ended), for at most [`GOODBYE`] more, in which
/// tokio-postgres, its client dropped, sends Terminate and closes the socket.
/// Counted (`_driving`) until it returns.
async fn drive<S, T>(
    connection: tokio_postgres::Connection<S, T>,
    gone: tokio::sync::oneshot::Receiver<()>,
    _driving: Driving,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = &mut connection => ended,
        _ = gone => match tokio::time::timeout(GOODBYE, &mut connection).await {
            Ok(ended) => ended,
            Err(_) => Ok(()),
        },
    };
    if let Err(e) = ended {
        tracing::warn!(target: "deadpool.postgres", "Connection error: {e}");
    }
}

/// The rustls connector for `sslmode` (under `disable` it is never called).
fn tls_connector(settings: &DatabaseSettings) -> MakeRustlsConnect {
    use crate::tls::Verify;
    let verify = match settings.ssl_mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        // libpq: a root certificate file upgrades require (and prefer) to verify-ca.
        SslMode::Require | SslMode::Prefer if settings.ca.is_some() => Verify::Chain,
        SslMode::Require | SslMode::Prefer | SslMode::Disable => Verify::Nothing,
    };
    MakeRustlsConnect::new(crate::tls::client_config(settings.ca.as_ref(), verify))
}
