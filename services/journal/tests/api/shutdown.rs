//! Graceful shutdown of the real binary. Seventeen requests are made to be in
//! flight for certain — sixteen PATCHes and a create, each waiting in PostgreSQL
//! on a table lock the test holds (creates queue behind a running one in the
//! writer's combiner, out of PostgreSQL's sight, so one create is what the test
//! can see waiting) — then SIGTERM arrives: the service stops accepting, every
//! one of them completes once the lock is released, the process exits 0, and
//! every acknowledged write is in PostgreSQL. A second signal during that drain
//! ends the process at once.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kai_testing::{self as testing, TestDb};
use serde_json::json;
use uuid::Uuid;

const IN_FLIGHT: usize = 16;

/// The service binary (this build) on `db`, ready: the process, its base URL, a client.
async fn start(db: &TestDb) -> (Child, String, reqwest::Client) {
    let port = testing::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_journal-service"))
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .envs(testing::auth_env())
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = testing::http_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "service never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, base, client)
}

/// A connection that holds a lock making every INSERT and UPDATE wait.
async fn lock_entries(db: &TestDb) -> tokio_postgres::Client {
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE journal.journal_entries IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

/// Waits until `n` statements of the test's database wait on a lock.
async fn until_waiting_on_the_lock(observer: &tokio_postgres::Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", &[])
            .await
            .unwrap()
            .get(0);
        if waiting as usize == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} requests reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until the server refuses connections (it is draining or gone).
async fn until_not_accepting(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get(format!("{base}/health")).send().await {
            Err(e) if e.is_connect() => return,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The process's exit status, waiting at most `within`.
async fn exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_stops_accepting_and_completes_every_in_flight_request() {
    let db = TestDb::create().await;
    let (mut child, base, client) = start(&db).await;

    let user = Uuid::new_v4();
    let token = testing::token(user);
    let mut ids = Vec::new();
    for i in 0..IN_FLIGHT {
        let res = client
            .post(format!("{base}/api/journal/entries"))
            .bearer_auth(&token)
            .json(&json!({"content": format!("written {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: serde_json::Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_string());
    }

    let locker = lock_entries(&db).await;
    let mut requests: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (client, token) = (client.clone(), token.clone());
            let url = format!("{base}/api/journal/entries/{id}");
            tokio::spawn(async move {
                client
                    .patch(url)
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("patched {i}")}))
                    .send()
                    .await
            })
        })
        .collect();
    requests.push(tokio::spawn({
        let (client, token) = (client.clone(), token.clone());
        let url = format!("{base}/api/journal/entries");
        async move {
            client
                .post(url)
                .bearer_auth(&token)
                .json(&json!({"content": "created in flight"}))
                .send()
                .await
        }
    }));
    // Wait until all of them are inside the service, blocked in PostgreSQL.
    let observer = db.connect().await;
    until_waiting_on_the_lock(&observer, IN_FLIGHT + 1).await;

    signal(&child, "TERM");
    // Draining: no longer accepting, but not gone.
    until_not_accepting(&client, &base).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with requests in flight"
    );

    locker.batch_execute("COMMIT").await.unwrap();
    let last = requests.len() - 1;
    for (i, r) in requests.into_iter().enumerate() {
        let res = r.await.unwrap().expect("an in-flight request was reset");
        assert_eq!(res.status(), if i == last { 201 } else { 200 });
    }
    let status = exit_within(&mut child, Duration::from_secs(35)).await;
    assert!(status.success(), "exit status {status:?}");
    let row = observer
        .query_one(
            "SELECT count(*) FILTER (WHERE content LIKE 'patched %'),
                    count(*) FILTER (WHERE content = 'created in flight')
             FROM journal.journal_entries WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let (patched, created): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (patched as usize, created),
        (IN_FLIGHT, 1),
        "every acknowledged write is stored"
    );
}

#[tokio::test]
async fn a_second_signal_during_the_drain_ends_the_process_at_once() {
    let db = TestDb::create().await;
    let (mut child, base, client) = start(&db).await;
    let locker = lock_entries(&db).await;
    let token = testing::token(Uuid::new_v4());
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/api/journal/entries"));
        async move {
            client
                .post(url)
                .bearer_auth(&token)
                .json(&json!({"content": "never answered"}))
                .send()
                .await
        }
    });
    let observer = db.connect().await;
    until_waiting_on_the_lock(&observer, 1).await;

    signal(&child, "TERM");
    until_not_accepting(&client, &base).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal drains: the request is still in flight"
    );
    // The operator does not want to wait for the drain (the lock is still held).
    signal(&child, "INT");
    let status = exit_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the in-flight request was cut, not answered"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
}

/// After SIGTERM every PostgreSQL connection the service held ends with the
/// protocol's goodbye (Terminate), so PostgreSQL counts none of its sessions as
/// abandoned (`pg_stat_database.sessions_abandoned`: a socket that closed or
/// reset without it, which PostgreSQL's log reports as `could not receive data
/// from client: Connection reset by peer` — every connection of every service
/// that stopped, before the pools were closed at shutdown).
#[tokio::test]
async fn sigterm_ends_every_postgresql_connection_with_a_goodbye() {
    let db = TestDb::create().await;
    let (mut child, base, client) = start(&db).await;
    let token = testing::token(Uuid::new_v4());
    // Connections of every kind: the pipelined lanes (concurrent reads on the
    // HTTP workers), the main pool (a create, the combiner's batch).
    let res = client
        .post(format!("{base}/api/journal/entries"))
        .bearer_auth(&token)
        .json(&json!({"content": "before the goodbye"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let reads: Vec<_> = (0..16)
        .map(|i| {
            let (client, token) = (client.clone(), token.clone());
            let url = format!("{base}/api/journal/entries?limit={}", 1 + i % 5);
            tokio::spawn(async move { client.get(url).bearer_auth(&token).send().await })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    let observer = db.connect().await;
    let open = testing::service_backends(&observer).await;
    assert!(open >= 2, "the service holds {open} connections");
    let before = testing::sessions_abandoned(&observer).await;

    signal(&child, "TERM");
    let status = exit_within(&mut child, Duration::from_secs(35)).await;
    assert!(status.success(), "exit status {status:?}");
    testing::until_no_service_backends(&observer).await;
    assert_eq!(
        testing::sessions_abandoned(&observer).await - before,
        0,
        "sessions of the service abandoned instead of ended ({open} were open)"
    );
}
