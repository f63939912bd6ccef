//! Pipelined reads (`DB_PIPELINE_LANES`, shared/src/db/lanes.rs): concurrent list
//! reads share at most that many PostgreSQL connections, each reader gets its own
//! answer, and a lane whose connection dies is replaced without failing a read.

use futures_util::future::join_all;

use crate::helpers::{User, read, spawn_with};

/// The PAGE statement's text, as `pg_stat_activity.query` shows it.
const PAGE_MARK: &str = "%LEFT JOIN LATERAL%";

/// Backends of the test's database whose last statement was the list's page.
async fn backends_that_read_pages(db: &kai_testing::TestDb) -> Vec<i32> {
    db.connect()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE $1
             ORDER BY pid",
            &[&PAGE_MARK],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Makes the pool hold `n` idle connections (deadpool hands them out first in,
/// first out: reads on connections of their own would spread over all of them).
async fn open_idle(j: &crate::helpers::Journal, n: usize) {
    let conns = join_all((0..n).map(|_| j.app.platform.db.conn())).await;
    assert!(conns.iter().all(Result::is_ok));
}

#[tokio::test]
async fn concurrent_reads_share_the_lanes_and_each_gets_its_own_page() {
    let j = spawn_with(
        Some(&kai_testing::redis_url()),
        &[("CACHE_ENABLED", "false"), ("DB_PIPELINE_LANES", "2")],
    )
    .await;
    let (a, b) = (User::new(), User::new());
    for i in 0..3 {
        j.entry(&a, &format!("a{i}")).await;
        j.entry(&b, &format!("b{i}")).await;
    }
    open_idle(&j, 6).await;
    let reads = join_all((0..24).map(|i| {
        let (j, user) = (&j, if i % 2 == 0 { &a } else { &b });
        async move { (i, read(&j.app, user, "/api/journal/entries").await) }
    }))
    .await;
    for (i, (status, cache, body)) in reads {
        assert_eq!((status, cache.as_str()), (200, "BYPASS"));
        let want = if i % 2 == 0 { "a2" } else { "b2" };
        assert_eq!(body["entries"][0]["content"], want, "read {i}");
        assert_eq!(body["total"], 3);
    }
    let readers = backends_that_read_pages(&j.db).await;
    assert!(
        !readers.is_empty() && readers.len() <= 2,
        "24 concurrent list reads ran on {} connections: {readers:?}",
        readers.len()
    );
    assert_eq!(j.app.platform.db.lanes_open(), readers.len());
}

#[tokio::test]
async fn without_lanes_each_read_takes_a_connection_of_its_own() {
    // The counterpart of the test above: the same reads with DB_PIPELINE_LANES=0
    // spread over the pool's idle connections (what the lanes are measured against).
    let j = spawn_with(
        Some(&kai_testing::redis_url()),
        &[("CACHE_ENABLED", "false"), ("DB_PIPELINE_LANES", "0")],
    )
    .await;
    let user = User::new();
    j.entry(&user, "x").await;
    open_idle(&j, 6).await;
    for _ in 0..12 {
        assert_eq!(read(&j.app, &user, "/api/journal/entries").await.0, 200);
    }
    assert!(backends_that_read_pages(&j.db).await.len() > 2);
    assert_eq!(j.app.platform.db.lanes_open(), 0);
}

#[tokio::test]
async fn a_lane_whose_connection_died_is_replaced_without_failing_a_read() {
    let j = spawn_with(
        Some(&kai_testing::redis_url()),
        &[("CACHE_ENABLED", "false"), ("DB_PIPELINE_LANES", "1")],
    )
    .await;
    let user = User::new();
    j.entry(&user, "kept").await;
    assert_eq!(read(&j.app, &user, "/api/journal/entries").await.0, 200);
    let lane = backends_that_read_pages(&j.db).await;
    assert_eq!(lane.len(), 1);
    let admin = j.db.connect().await;
    for pid in &lane {
        admin
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
    }
    // Every read after the kill is answered: on the dead lane's retry, or on a
    // new lane.
    for _ in 0..5 {
        let (status, _, body) = read(&j.app, &user, "/api/journal/entries").await;
        assert_eq!(status, 200);
        assert_eq!(body["entries"][0]["content"], "kept");
    }
    let now = backends_that_read_pages(&j.db).await;
    assert!(!now.is_empty() && !now.contains(&lane[0]), "{now:?}");
    assert_eq!(j.app.platform.db.lanes_open(), 1);
}

/// An operator who sets only `DB_POOL_SIZE`, small, keeps the default
/// `DB_PIPELINE_LANES` (2): the lanes take at most half the pool (1 of 2, none
/// of 1), and reads, writes and search arriving together all answer — none
/// waits out the pool timeout for a connection a lane holds.
#[tokio::test]
async fn a_small_db_pool_size_alone_serves_reads_writes_and_search_at_once() {
    for size in ["1", "2"] {
        let j = spawn_with(
            Some(&kai_testing::redis_url()),
            &[("CACHE_ENABLED", "false"), ("DB_POOL_SIZE", size)],
        )
        .await;
        let user = User::new();
        j.entry(&user, "a walk by the river").await;
        let reads = join_all((0..12).map(|i| {
            let path = match i % 3 {
                0 => "/api/journal/entries".to_string(),
                1 => format!("/api/journal/entries?limit={}", 1 + i % 4),
                _ => "/api/journal/search?q=river".to_string(),
            };
            let (app, user) = (&j.app, &user);
            async move { read(app, user, &path).await.0 }
        }));
        let writes = join_all(
            (0..4).map(|i| j.create(&user, serde_json::json!({ "content": format!("w{i}") }))),
        );
        let (reads, writes) = futures_util::join!(reads, writes);
        assert!(
            reads.iter().all(|s| *s == 200),
            "DB_POOL_SIZE={size}: {reads:?}"
        );
        assert!(
            writes.iter().all(|r| r.status() == 201),
            "DB_POOL_SIZE={size}: {:?}",
            writes.iter().map(|r| r.status()).collect::<Vec<_>>()
        );
        assert!(
            j.app.platform.db.lanes_open() <= 1,
            "DB_POOL_SIZE={size}: at most half the pool in lanes"
        );
        assert_eq!(
            j.app.platform.db.status().max_size,
            size.parse::<usize>().unwrap()
        );
    }
}
