//! Graceful shutdown of the real binary. Sixteen requests are made to be
//! in flight for certain — their INSERTs wait on a table lock the test holds —
//! then SIGTERM arrives: the service stops accepting, every one of the sixteen
//! completes with 201 once the lock is released, the process exits 0, and every
//! acknowledged write is in PostgreSQL.

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

    // Hold a lock that makes every INSERT wait.
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE journal.journal_entries IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let user = Uuid::new_v4();
    let token = testing::token(user);
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            tokio::spawn(async move {
                client
                    .post(format!("{base}/api/journal/entries"))
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("in flight {i}")}))
                    .send()
                    .await
            })
        })
        .collect();
    // Wait until all of them are inside the service, blocked in PostgreSQL.
    let observer = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", &[])
            .await
            .unwrap()
            .get(0);
        if waiting as usize == IN_FLIGHT {
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
    for r in requests {
        let res = r.await.unwrap().expect("an in-flight request was reset");
        assert_eq!(res.status(), 201);
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
    let stored: i64 = observer
        .query_one(
            "SELECT count(*) FROM journal.journal_entries WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored as usize, IN_FLIGHT,
        "every acknowledged write is stored"
    );
}
