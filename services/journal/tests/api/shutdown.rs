//! Graceful shutdown of the real binary. Seventeen requests are made to be in
//! flight for certain — sixteen PATCHes and a create, each waiting in PostgreSQL
//! on a table lock the test holds (creates queue behind a running one in the
//! writer's combiner, out of PostgreSQL's sight, so one create is what the test
//! can see waiting) — then SIGTERM arrives: the service stops accepting, every
//! one of them completes once the lock is released, the process exits 0, and
//! every acknowledged write is in PostgreSQL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kai_shared::testing::{self, TestDb};
use serde_json::json;
use uuid::Uuid;

const IN_FLIGHT: usize = 16;

#[tokio::test]
async fn sigterm_stops_accepting_and_completes_every_in_flight_request() {
    let db = TestDb::create().await;
    let port = testing::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_journal-service"))
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

    // Hold a lock that makes every INSERT and UPDATE wait.
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE journal.journal_entries IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", &[])
            .await
            .unwrap()
            .get(0);
        if waiting as usize == IN_FLIGHT + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} requests reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // Draining: no longer accepting, but not gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get(format!("{base}/health")).send().await {
            Err(e) if e.is_connect() => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting connections after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
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
    let deadline = Instant::now() + Duration::from_secs(35);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
