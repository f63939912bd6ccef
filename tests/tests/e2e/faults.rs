//! Faults: PostgreSQL unreachable, the pool exhausted, Redis paused — against the
//! real journal-service. Each test owns the fault (a TCP proxy it cuts, a private
//! redis-server it pauses) and counts every acknowledged write afterwards.

use std::time::{Duration, Instant};

use kai_testing::{self as testing, PrivateRedis, TcpProxy, TestApp, TestDb, TestPrefix};
use serde_json::{Value, json};
use uuid::Uuid;

async fn post_entry(app: &TestApp, token: &str, content: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/journal/entries"))
        .bearer_auth(token)
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap()
}

async fn assert_unavailable(res: reqwest::Response) {
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], 503);
}

async fn live_entries(db: &TestDb, user: Uuid) -> i64 {
    db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM journal.journal_entries WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn postgresql_down_means_503_with_retry_after_then_recovery_without_restart() {
    let db = TestDb::create().await;
    let proxy = TcpProxy::start(&testing::postgres_address()).await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = testing::settings(
        &testing::via_proxy(&db, &proxy),
        Some(&prefix.url),
        &prefix.prefix,
        &[
            ("DB_POOL_TIMEOUT_SECS", "1"),
            ("READINESS_GRACE_MS", "3000"),
        ],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    assert_eq!(app.status("/health/ready").await, 200);
    let user = Uuid::new_v4();
    let token = testing::token(user);
    let mut acknowledged = 0;
    for i in 0..3 {
        assert_eq!(
            post_entry(&app, &token, &format!("before {i}"))
                .await
                .status(),
            201
        );
        acknowledged += 1;
    }

    proxy.cut();
    let started = Instant::now();
    // A blip takes no pod out: readiness stays 200 within READINESS_GRACE_MS
    // of PostgreSQL's last answer, and says so.
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["database"]
            .as_str()
            .is_some_and(|d| d.contains("no answer")),
        "{ready}"
    );
    assert_unavailable(post_entry(&app, &token, "during").await).await;
    let fresh_reader = testing::token(Uuid::new_v4());
    for path in [
        "/api/journal/entries",
        "/api/journal/entries?limit=5",
        "/api/journal/stats",
        "/api/journal/search?q=before",
    ] {
        assert_unavailable(
            app.client
                .get(app.url(path))
                .bearer_auth(&fresh_reader)
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    eprintln!(
        "6 requests answered 503 in {:?} (DB_POOL_TIMEOUT_SECS=1)",
        started.elapsed()
    );
    // Past the grace, the outage takes the pod out (and pages: KaiServiceDown).
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.status("/health/ready").await != 503 {
        assert!(Instant::now() < deadline, "readiness never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.status("/health").await, 200);
    let detailed: Value = app.get_json("/health/detailed").await;
    assert_eq!(detailed["status"], "unhealthy");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = post_entry(&app, &token, "after").await;
        if res.status() == 201 {
            acknowledged += 1;
            break;
        }
        assert_eq!(res.status(), 503);
        assert!(Instant::now() < deadline, "the service never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.status("/health/ready").await != 200 {
        assert!(Instant::now() < deadline, "readiness never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        live_entries(&db, user).await,
        acknowledged,
        "every acknowledged write, and only those, is stored"
    );
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_after_the_pool_timeout_and_recovers() {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = testing::settings(
        &db.url,
        Some(&prefix.url),
        &prefix.prefix,
        // No pipelined lanes: the whole DB_POOL_SIZE is the pool writes wait
        // for (with lanes, those connections are the lanes' and reads'; see
        // shared/src/db/lanes.rs).
        &[
            ("DB_POOL_SIZE", "2"),
            ("DB_POOL_TIMEOUT_SECS", "1"),
            ("DB_PIPELINE_LANES", "0"),
        ],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    let token = testing::token(Uuid::new_v4());
    // Something slow holds both connections.
    let held = (
        app.platform.db.conn().await.unwrap(),
        app.platform.db.conn().await.unwrap(),
    );
    let requests: Vec<_> = (0..10)
        .map(|i| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/api/journal/entries"),
                token.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"content": format!("queued {i}")}))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in requests {
        assert_unavailable(
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("nothing hangs")
                .unwrap(),
        )
        .await;
    }
    let detailed: Value = app.get_json("/health/detailed").await;
    assert_eq!(detailed["database"]["pool"]["available"], 0, "{detailed}");
    // Readiness asks on a connection of its own: the exhausted serving pool
    // neither delays it nor takes the pod out of the Service.
    assert_eq!(app.status("/health/ready").await, 200);
    drop(held);
    assert_eq!(
        post_entry(&app, &token, "after").await.status(),
        201,
        "the pool recovers"
    );
}

#[tokio::test]
async fn a_paused_redis_costs_nothing_but_latency_and_serves_nothing_stale() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let settings = || {
        testing::settings(
            &db.url,
            Some(&redis.url()),
            "pause",
            &[("REDIS_TIMEOUT_MS", "100")],
        )
    };
    let app = TestApp::start(journal_service::service(), settings()).await;
    let user = Uuid::new_v4();
    let token = testing::token(user);
    let created: Value = post_entry(&app, &token, "v1").await.json().await.unwrap();
    let path = format!("/api/journal/entries/{}", created["id"].as_str().unwrap());
    for _ in 0..2 {
        app.client
            .get(app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    redis.pause();
    let res = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&token)
        .json(&json!({"content": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "writes succeed with Redis paused");
    // The write's bump timed out and opened the circuit: from here on, reads go
    // to PostgreSQL without a Redis round trip — the breaker's own count of
    // commands sent stays where it is (and the reads do not wait on Redis).
    assert_eq!(app.platform.cache.redis_available(), Some(false));
    let sent = |app: &TestApp| {
        app.platform
            .metrics
            .redis_commands
            .with_label_values(&["sent"])
            .get()
    };
    let sent_before = sent(&app);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        let body: Value = app
            .client
            .get(app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        slowest = slowest.max(asked.elapsed());
        assert_eq!(body["content"], "v2");
    }
    assert_eq!(
        sent(&app) - sent_before,
        0,
        "no command reached Redis while the circuit was open"
    );
    assert_eq!(app.platform.cache.redis_available(), Some(false));
    eprintln!("20 reads with Redis paused and the circuit open; slowest {slowest:?}");
    let d: Value = app.get_json("/health/detailed").await;
    assert_eq!(d["status"], "degraded");
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.platform.cache.redis_available() != Some(true) {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = TestApp::start(journal_service::service(), settings()).await;
    for replica in [&app, &other] {
        let body: Value = replica
            .client
            .get(replica.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["content"], "v2",
            "the entry cached before the pause is never served"
        );
    }
    assert_eq!(live_entries(&db, user).await, 1);
}

/// Reads alone (no write to trip the breaker) while Redis is paused: L1 answers
/// until the silent subscription makes it untrusted (≤ 250 ms), then one read
/// asks Redis, times out and opens the circuit; every later read goes straight to
/// PostgreSQL. The breaker's own count: once open, no command reaches Redis
/// however many reads follow, and the circuit stays open while Redis is paused.
#[tokio::test]
async fn with_redis_paused_reads_alone_open_the_circuit_once_and_then_skip_redis() {
    let redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let settings = testing::settings(
        &db.url,
        Some(&redis.url()),
        "pause-reads",
        &[("REDIS_TIMEOUT_MS", "100")],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    let user = Uuid::new_v4();
    let token = testing::token(user);
    let created: Value = post_entry(&app, &token, "v1").await.json().await.unwrap();
    let path = format!("/api/journal/entries/{}", created["id"].as_str().unwrap());
    let read = || async {
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    };
    read().await;
    read().await;
    redis.pause();
    let sent = || {
        app.platform
            .metrics
            .redis_commands
            .with_label_values(&["sent"])
            .get()
    };
    // Read until the circuit opens (a read that found L1 untrusted asked Redis).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.platform.cache.redis_available() != Some(false) {
        assert!(Instant::now() < deadline, "the circuit never opened");
        read().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_at = sent();
    for _ in 0..40 {
        read().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sent(),
        opened_at,
        "no command reached Redis once the circuit was open"
    );
    assert_eq!(app.platform.cache.redis_available(), Some(false));
    redis.resume();
}

/// Which of the Lua scripts Kai runs Redis's script cache holds.
fn scripts_loaded(redis: &PrivateRedis) -> Vec<bool> {
    let hashes: Vec<String> = kai_shared::lua_scripts()
        .into_iter()
        .map(|source| redis::Script::new(source).get_hash().to_owned())
        .collect();
    redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&hashes)
        .query(&mut redis.connection())
        .unwrap()
}

/// The service loads every Lua script it runs into Redis at start — so a fresh
/// Redis's first burst does not pay three round trips per script within one
/// command's timeout (which opened the circuit in `kai-load soak`'s first
/// seconds) — and again once a restarted Redis (an empty script cache) answers.
/// The read-replica positions' scripts prove it: this service, without
/// replicas, never calls them.
#[tokio::test]
async fn lua_scripts_are_loaded_at_start_and_after_redis_comes_back() {
    let mut redis = PrivateRedis::start();
    let db = TestDb::create().await;
    let settings = testing::settings(&db.url, Some(&redis.url()), "scripts", &[]);
    let app = TestApp::start(journal_service::service(), settings).await;
    assert_eq!(
        scripts_loaded(&redis),
        vec![true; kai_shared::lua_scripts().len()],
        "loaded before any request"
    );

    redis.restart();
    assert_eq!(
        scripts_loaded(&redis),
        vec![false; kai_shared::lua_scripts().len()]
    );
    // The first write finds its connection gone: the circuit opens, and the
    // probe that closes it loads the scripts again.
    let token = testing::token(Uuid::new_v4());
    post_entry(&app, &token, "after the restart").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while scripts_loaded(&redis).contains(&false) {
        assert!(
            Instant::now() < deadline,
            "still missing after 15 s: {:?}",
            scripts_loaded(&redis)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = post_entry(&app, &token, "once Redis answers").await;
    assert_eq!(res.status(), 201);
}
