//! Graceful shutdown of the real binary: SIGTERM under 16 concurrent request
//! loops. Every request that started before the signal completes, the process
//! exits 0, and every acknowledged write is in PostgreSQL.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kai_shared::testing::{self, TEST_SECRET, TestDb};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_loses_no_acknowledged_write() {
    let db = TestDb::create().await;
    let port = testing::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_journal-service"))
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("AUTH_SECRET", TEST_SECRET)
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
    let signalled = Arc::new(AtomicBool::new(false));
    let started_at = Instant::now();
    let loops: Vec<_> = (0..16)
        .map(|l| {
            let (client, base, token, signalled) = (
                client.clone(),
                base.clone(),
                token.clone(),
                signalled.clone(),
            );
            tokio::spawn(async move {
                // (acknowledged, failures of requests started before the signal, failures after)
                let (mut acked, mut failed_before, mut failed_after) = (0u32, 0u32, 0u32);
                for i in 0..10_000 {
                    let before = !signalled.load(Ordering::SeqCst);
                    // A fresh connection per request: keep-alive races are the client's
                    // problem to retry, not what this test measures.
                    let res = client
                        .post(format!("{base}/api/journal/entries"))
                        .header("connection", "close")
                        .bearer_auth(&token)
                        .json(&json!({"content": format!("loop {l} request {i}")}))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == 201 => acked += 1,
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(e) if e.is_connect() => break, // no longer accepting: stop this loop
                        Err(_) if before => failed_before += 1,
                        Err(_) => {
                            failed_after += 1;
                            break;
                        }
                    }
                }
                (acked, failed_before, failed_after)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signalled.store(true, Ordering::SeqCst);
    // Requests in flight at this instant must still be answered.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let signal_at = started_at.elapsed();

    let (mut acked, mut failed_before, mut failed_after) = (0, 0, 0);
    for l in loops {
        let (a, b, c) = l.await.unwrap();
        acked += a;
        failed_before += b;
        failed_after += c;
    }
    let exit_deadline = Instant::now() + Duration::from_secs(35);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "the service did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "SIGTERM at {signal_at:?}: {acked} writes acknowledged, {failed_after} refused after the signal"
    );
    assert!(status.success(), "exit status {status:?}");
    assert!(acked > 16, "the loops did run ({acked})");
    assert_eq!(
        failed_before, 0,
        "a request that started before SIGTERM failed"
    );
    let stored: i64 = db
        .connect()
        .await
        .query_one(
            "SELECT count(*) FROM journal.journal_entries WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    // Every acknowledged write is stored; a request cut after the signal may or may
    // not have committed, but never more than one per loop.
    assert!(
        stored >= i64::from(acked) && stored <= i64::from(acked + failed_after),
        "stored {stored}, acknowledged {acked}"
    );
}
