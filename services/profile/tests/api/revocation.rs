use std::time::{Duration, Instant};

use kai_testing::TestApp;

use crate::helpers::{assert_problem, read, spawn, spawn_with};

/// Polls `path` on `app` until it answers 401; returns how long that took.
async fn refused_within(app: &TestApp, token: &str, path: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _, body) = read(app, token, path).await;
        if status == 401 {
            return started.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < limit,
            "{path} still accepts a logged-out token after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn after_logout_every_replica_of_every_service_refuses_the_token_within_a_second() {
    let p = spawn().await;
    let other = p.replica().await;
    let journal = p.journal().await;
    let a = p.account().await;
    assert_eq!(read(&p.app, &a.token, "/api/profile").await.0, 200);
    assert_eq!(read(&other, &a.token, "/api/profile").await.0, 200);
    assert_eq!(
        read(&journal, &a.token, "/api/journal/entries").await.0,
        200,
        "journal accepts profile's tokens"
    );

    assert_eq!(p.logout(&a.token).await.status(), 204);
    assert_eq!(
        read(&p.app, &a.token, "/api/profile").await.0,
        401,
        "at once on the replica that logged out"
    );
    let on_replica = refused_within(&other, &a.token, "/api/profile", Duration::from_secs(1)).await;
    let on_journal = refused_within(
        &journal,
        &a.token,
        "/api/journal/entries",
        Duration::from_secs(1),
    )
    .await;
    eprintln!(
        "logout refused by the other profile replica after {on_replica:?}, by journal after {on_journal:?}"
    );
    let res = journal
        .client
        .get(journal.url("/api/journal/entries"))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
}

#[tokio::test]
async fn without_redis_profile_replicas_still_refuse_a_logged_out_token() {
    let p = spawn_with(None).await;
    // This replica shares nothing with the first but the database: it can only
    // learn of the logout from the sessions table.
    let other = p.replica().await;
    let a = p.account().await;
    assert_eq!(read(&other, &a.token, "/api/profile").await.0, 200);
    assert_eq!(p.logout(&a.token).await.status(), 204);
    assert_eq!(read(&other, &a.token, "/api/profile").await.0, 401);
    assert_eq!(read(&p.app, &a.token, "/api/profile").await.0, 401);
}

#[tokio::test]
async fn logging_out_one_session_leaves_the_others_working() {
    let p = spawn().await;
    let a = p.account().await;
    let second: serde_json::Value = p
        .login(&a.email, crate::helpers::PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let second = second["access_token"].as_str().unwrap();
    assert_eq!(p.logout(&a.token).await.status(), 204);
    assert_eq!(read(&p.app, &a.token, "/api/profile").await.0, 401);
    assert_eq!(read(&p.app, second, "/api/profile").await.0, 200);
}
