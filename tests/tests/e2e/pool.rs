//! The PostgreSQL pool's recycling, observed from PostgreSQL's side
//! (`pg_stat_activity.query` is the last statement a backend ran): a connection
//! used a moment ago is handed out as it is; one idle for
//! `kai_shared::db::VERIFY_IF_IDLE_FOR` or longer is verified first (an empty
//! query), and one whose backend is gone is replaced, not handed out.

use std::time::{Duration, Instant};

use kai_shared::db::{Db, VERIFY_IF_IDLE_FOR};
use kai_shared::metrics::Metrics;
use kai_testing::{self as testing, TestDb};

fn pool(db: &TestDb) -> Db {
    let settings = testing::settings(&db.url, None, "unused", &[("DB_POOL_SIZE", "1")]);
    Db::new(&settings.database, &Metrics::new("pool"))
}

async fn backend_pid(conn: &tokio_postgres::Client) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("a working connection")
        .get(0)
}

/// The last statement backend `pid` ran, as PostgreSQL reports it.
async fn last_statement(observer: &tokio_postgres::Client, pid: i32) -> String {
    observer
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_connection_used_a_moment_ago_is_not_verified_and_an_idle_one_is() {
    let db = TestDb::create().await;
    let (pool, observer) = (pool(&db), db.connect().await);
    // The pool measures idleness from the last checkout: bracket it.
    let before_checkout = Instant::now();
    let conn = pool.conn().await.unwrap();
    let after_checkout = Instant::now();
    let pid = backend_pid(&conn).await;
    conn.simple_query("SELECT 'marker'").await.unwrap();
    drop(conn);
    // Handed out again at once: no round trip before it. (Should this machine
    // stall past the window in between, it was verified, as it must be.)
    let idle_at_least = after_checkout.elapsed();
    let again = pool.conn().await.unwrap();
    let idle_at_most = before_checkout.elapsed();
    let last = last_statement(&observer, pid).await;
    if idle_at_most < VERIFY_IF_IDLE_FOR {
        assert_eq!(last, "SELECT 'marker'", "used a moment ago: not verified");
    } else if idle_at_least >= VERIFY_IF_IDLE_FOR {
        assert_eq!(last, "", "idle past the window: verified");
    } else {
        assert!(last == "SELECT 'marker'" || last.is_empty(), "{last}");
    }
    drop(again);
    // Idle past the window: verified (PostgreSQL ran the empty query) first.
    tokio::time::sleep(VERIFY_IF_IDLE_FOR + Duration::from_millis(100)).await;
    let idle = pool.conn().await.unwrap();
    assert_eq!(last_statement(&observer, pid).await, "");
    assert_eq!(
        backend_pid(&idle).await,
        pid,
        "the verified connection itself is handed out"
    );
}

#[tokio::test]
async fn a_connection_whose_backend_was_terminated_is_replaced() {
    let db = TestDb::create().await;
    let (pool, observer) = (pool(&db), db.connect().await);
    let conn = pool.conn().await.unwrap();
    let pid = backend_pid(&conn).await;
    drop(conn);
    let terminated: bool = observer
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    tokio::time::sleep(VERIFY_IF_IDLE_FOR + Duration::from_millis(100)).await;
    let fresh = pool.conn().await.unwrap();
    assert_ne!(backend_pid(&fresh).await, pid, "not the terminated one");
}

/// Connections are driven on the runtime that built the pool (a service's main
/// runtime), not on the HTTP worker that first needed one: a worker's runtime
/// is one thread busy with requests, and it ends before the process does.
#[test]
fn a_connection_a_worker_opened_outlives_the_worker() {
    let home = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let db = home.block_on(TestDb::create());
    let pool = home.block_on(async { pool(&db) });
    let pid = {
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pid = worker.block_on(async { backend_pid(&pool.conn().await.unwrap()).await });
        drop(worker);
        pid
    };
    let again = home.block_on(async { backend_pid(&pool.conn().await.unwrap()).await });
    assert_eq!(
        again, pid,
        "the worker's connection is still open after its runtime ended, and handed out again"
    );
}
