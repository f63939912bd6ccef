//! Read replicas (SPEC §7, issue 31) against a real streaming replica the
//! harness makes (`ReplicatedPostgres`: a private primary and a
//! `pg_basebackup -R` replica of it): read-your-writes and no stale fill with
//! replay paused, fallback without errors when the replica is stopped, return
//! to the replica once it caught up or came back, `/health/detailed` and the
//! metrics. Every claim is a count (`kai_db_reads_total{target}`) or an answer.

use std::time::{Duration, Instant};

use kai_testing::{self as testing, ReplicatedPostgres, TestApp, TestPrefix};
use serde_json::{Value, json};
use uuid::Uuid;

struct Cluster {
    pg: ReplicatedPostgres,
    a: TestApp,
    b: TestApp,
    _prefix: TestPrefix,
}

async fn cluster() -> Cluster {
    let pg = tokio::task::spawn_blocking(ReplicatedPostgres::start)
        .await
        .expect("replicated PostgreSQL");
    let prefix = TestPrefix::new(&testing::redis_url());
    let replica = pg.replica_url();
    let settings = || {
        testing::settings(
            &pg.primary_url(),
            Some(&prefix.url),
            &prefix.prefix,
            &[("DATABASE_REPLICA_URLS", replica.as_str())],
        )
    };
    let a = TestApp::start(journal_service::service(), settings()).await;
    let b = TestApp::start(journal_service::service(), settings()).await;
    let c = Cluster {
        pg,
        a,
        b,
        _prefix: prefix,
    };
    c.wait_state(&c.a, "streaming").await;
    c.wait_state(&c.b, "streaming").await;
    c
}

impl Cluster {
    /// Polls `/health/detailed` until the replica has `state` (or fails after 20 s).
    async fn wait_state(&self, app: &TestApp, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = app.get_json("/health/detailed").await;
            let replica = health["database"]["replicas"][0].clone();
            if replica["state"] == state {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica never {state}: {replica}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn create(app: &TestApp, token: &str, title: &str) {
    let res = app
        .client
        .post(app.url("/api/journal/entries"))
        .bearer_auth(token)
        .json(&json!({"content": format!("text of {title}"), "title": title}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
}

/// The titles of a list page of `size` entries (each size its own cache key:
/// a fresh size is a miss, loaded from the database).
async fn titles(app: &TestApp, token: &str, size: u32) -> (String, Vec<String>) {
    let (status, cache, page) = app
        .read(
            token,
            &format!("/api/journal/entries?page=1&page_size={size}"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let titles = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_owned())
        .collect();
    (cache, titles)
}

/// `(primary, replica)` reads of the app since start.
fn reads(app: &TestApp) -> (u64, u64) {
    app.platform.db.reads()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_serves_no_stale_read_and_parks_nothing_old() {
    let c = cluster().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (ta, tb) = (testing::token(alice), testing::token(bob));
    create(&c.a, &ta, "alice-1").await;
    create(&c.a, &tb, "bob-1").await;
    c.pg.wait_caught_up().await;
    // Caught up: a miss is served by the replica.
    let before = reads(&c.a);
    assert_eq!(titles(&c.a, &ta, 2).await.1, ["alice-1"]);
    assert_eq!(reads(&c.a).1, before.1 + 1, "served by the replica");

    c.pg.pause_replay().await;
    create(&c.a, &ta, "alice-2").await;
    // The writer's replica reads its write at once; the replica, behind, is
    // not asked for it.
    let before = reads(&c.a);
    let (cache, got) = titles(&c.a, &ta, 3).await;
    assert_eq!(
        (cache.as_str(), got),
        ("MISS", vec!["alice-2".to_owned(), "alice-1".into()])
    );
    assert_eq!(
        reads(&c.a),
        (before.0 + 1, before.1),
        "the primary served it"
    );
    // The other service replica too, through the position in Redis (a page
    // size of its own: a miss there too).
    let before_b = reads(&c.b);
    assert_eq!(titles(&c.b, &ta, 6).await.1, ["alice-2", "alice-1"]);
    assert_eq!(reads(&c.b), (before_b.0 + 1, before_b.1));
    // A page that was cached before the write is not served old, on either.
    assert_eq!(titles(&c.a, &ta, 2).await.1, ["alice-2", "alice-1"]);
    assert_eq!(titles(&c.b, &ta, 2).await.1, ["alice-2", "alice-1"]);
    // Search and export (uncached) see it as well.
    let (status, _, found) = c.b.read(&ta, "/api/journal/search?q=alice").await;
    assert_eq!(status, 200);
    assert_eq!(found["entries"].as_array().unwrap().len(), 2, "{found}");
    let export =
        c.b.get(&ta, "/api/journal/export")
            .await
            .text()
            .await
            .unwrap();
    assert!(export.contains("alice-2"), "{export}");
    // Bob wrote nothing since the replica replayed his entry: his reads still
    // go to the paused replica.
    let before = reads(&c.b);
    assert_eq!(titles(&c.b, &tb, 4).await.1, ["bob-1"]);
    assert_eq!(
        reads(&c.b).1,
        before.1 + 1,
        "a paused replica still serves what it replayed"
    );
    // The replica, asked directly, is still behind: what the services answered
    // did not come from it.
    let on_replica: i64 =
        c.pg.replica()
            .await
            .query_one(
                "SELECT count(*) FROM journal.journal_entries WHERE title = 'alice-2'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(on_replica, 0, "replay is paused");

    c.pg.resume_replay().await;
    c.pg.wait_caught_up().await;
    // Nothing older was parked: every cached page, on both, holds the write.
    for app in [&c.a, &c.b] {
        for size in [2, 3, 6] {
            let (cache, got) = titles(app, &ta, size).await;
            assert_eq!(cache, "HIT");
            assert_eq!(got, ["alice-2", "alice-1"]);
        }
    }
    // And reads return to the replica.
    let before = reads(&c.a);
    assert_eq!(titles(&c.a, &ta, 5).await.1, ["alice-2", "alice-1"]);
    assert_eq!(reads(&c.a).1, before.1 + 1, "back on the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_costs_no_failed_request_and_is_used_again_once_back() {
    let mut c = cluster().await;
    let user = Uuid::new_v4();
    let token = testing::token(user);
    create(&c.a, &token, "one").await;
    c.pg.wait_caught_up().await;
    c.pg.stop_replica();
    // Every read answers, from the primary, within the request.
    let before = reads(&c.a);
    for size in 1..=10 {
        assert_eq!(titles(&c.a, &token, size).await.1, ["one"]);
    }
    let after = reads(&c.a);
    assert_eq!(after.1, before.1, "nothing ran on the stopped replica");
    assert_eq!(after.0, before.0 + 10);
    let down = c.wait_state(&c.a, "down").await;
    assert!(down["lag_bytes"].is_null(), "{down}");
    // Writes while it is down, then it comes back and catches up.
    create(&c.a, &token, "two").await;
    c.pg.start_replica();
    c.wait_state(&c.a, "streaming").await;
    c.pg.wait_caught_up().await;
    let before = reads(&c.a);
    assert_eq!(titles(&c.a, &token, 11).await.1, ["two", "one"]);
    assert_eq!(reads(&c.a).1, before.1 + 1, "back on the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_list_the_replica_without_credentials() {
    let c = cluster().await;
    let replica = c.wait_state(&c.a, "streaming").await;
    assert_eq!(
        replica["address"],
        format!("127.0.0.1:{}/postgres", c.pg.replica_port())
    );
    assert!(replica["lag_bytes"].is_u64(), "{replica}");
    assert!(replica["lag_seconds"].is_number(), "{replica}");
    c.pg.pause_replay().await;
    c.wait_state(&c.a, "paused").await;
    let token = testing::token(Uuid::new_v4());
    create(&c.a, &token, "x").await;
    titles(&c.a, &token, 1).await;
    let metrics = c.a.metrics().await;
    for series in [
        "kai_db_reads_total{target=\"primary\",service=\"journal\"}",
        "kai_db_reads_total{target=\"replica\",service=\"journal\"}",
        "kai_db_replica_lag_bytes{replica=\"0\",service=\"journal\"}",
        "kai_db_replica_lag_seconds{replica=\"0\",service=\"journal\"}",
        "kai_db_replica_up{replica=\"0\",service=\"journal\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(!metrics.contains("postgres@"), "no URL in the metrics");
    c.pg.resume_replay().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_reads_its_writes_on_both_service_replicas_with_replay_paused() {
    let pg = tokio::task::spawn_blocking(ReplicatedPostgres::start)
        .await
        .expect("replicated PostgreSQL");
    let prefix = TestPrefix::new(&testing::redis_url());
    let replica = pg.replica_url();
    let settings = || {
        testing::settings(
            &pg.primary_url(),
            Some(&prefix.url),
            &prefix.prefix,
            &[("DATABASE_REPLICA_URLS", replica.as_str())],
        )
    };
    let service = || conversation_service::service(&testing::service_settings(&[]));
    let a = TestApp::start(service(), settings()).await;
    let b = TestApp::start(service(), settings()).await;
    let token = testing::token(Uuid::new_v4());
    let start = |app: &TestApp, title: &str| {
        app.client
            .post(app.url("/api/conversations"))
            .bearer_auth(&token)
            .json(&json!({ "title": title }))
            .send()
    };
    assert_eq!(start(&a, "first").await.unwrap().status().as_u16(), 201);
    pg.wait_caught_up().await;
    // Wait until the watcher saw the replica, then a miss runs on it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut size = 1;
    loop {
        let before = reads(&a);
        assert_eq!(conversation_titles(&a, &token, size).await, ["first"]);
        size += 1;
        if reads(&a).1 > before.1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never served a read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.pause_replay().await;
    assert_eq!(start(&b, "second").await.unwrap().status().as_u16(), 201);
    // The writer (b) and the other (a) both see it, from the primary.
    let (before_a, before_b) = (reads(&a), reads(&b));
    assert_eq!(
        conversation_titles(&b, &token, 50).await,
        ["second", "first"]
    );
    assert_eq!(
        conversation_titles(&a, &token, 49).await,
        ["second", "first"]
    );
    assert_eq!(reads(&a).1, before_a.1);
    assert_eq!(reads(&b).1, before_b.1);
    let export = b
        .get(&token, "/api/conversations/export")
        .await
        .text()
        .await
        .unwrap();
    assert!(export.contains("second"), "{export}");
    pg.resume_replay().await;
}

async fn conversation_titles(app: &TestApp, token: &str, limit: u32) -> Vec<String> {
    let (status, _, page) = app
        .read(token, &format!("/api/conversations?limit={limit}"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap().to_owned())
        .collect()
}

/// At shutdown a service closes its read replicas' pools as it closes the
/// primary's: each replica connection ends with the protocol's goodbye
/// (Terminate), so the replica counts none of them as abandoned (the log line
/// `could not receive data from client: Connection reset by peer` otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_database_ends_the_replica_connections_with_a_goodbye() {
    let c = cluster().await;
    let token = testing::token(Uuid::new_v4());
    create(&c.a, &token, "one").await;
    c.pg.wait_caught_up().await;
    let before = reads(&c.a);
    for size in 1..=4 {
        assert_eq!(titles(&c.a, &token, size).await.1, ["one"]);
    }
    assert!(reads(&c.a).1 > before.1, "reads ran on the replica");
    let (replica, conn) = tokio_postgres::connect(&c.pg.replica_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let open = testing::service_backends(&replica).await;
    assert!(open >= 1, "the services hold {open} replica connections");
    let was = testing::sessions_abandoned(&replica).await;

    tokio::join!(
        c.a.platform.db.close(Duration::from_secs(1)),
        c.b.platform.db.close(Duration::from_secs(1)),
    );
    testing::until_no_service_backends(&replica).await;
    assert_eq!(
        testing::sessions_abandoned(&replica).await - was,
        0,
        "replica sessions abandoned instead of ended"
    );
}
