use std::time::{Duration, Instant};

use kai_testing::TestApp;

use profile_service::sessions::MEMO_WINDOW;

use crate::helpers::{
    PASSWORD, assert_problem, read, session_checks, spawn, spawn_remembering_for_an_hour,
    spawn_with,
};

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

/// The other replica shares nothing with the first but the database: it learns
/// of the logout from the sessions table only, once its memo of the session
/// (`sessions::MEMO_WINDOW`) has run out — within the contract's second.
#[tokio::test]
async fn without_redis_profile_replicas_still_refuse_a_logged_out_token_within_a_second() {
    let p = spawn_with(None).await;
    let other = p.replica().await;
    let a = p.account().await;
    for _ in 0..3 {
        assert_eq!(read(&other, &a.token, "/api/profile").await.0, 200);
    }
    assert_eq!(p.logout(&a.token).await.status(), 204);
    assert_eq!(
        read(&p.app, &a.token, "/api/profile").await.0,
        401,
        "at once on the replica that logged out"
    );
    let took = refused_within(&other, &a.token, "/api/profile", Duration::from_secs(1)).await;
    eprintln!("logout refused by the other profile replica, without Redis, after {took:?}");
}

/// A hot session reaches PostgreSQL a few times a second, not once per request:
/// every check that asks PostgreSQL began at least `MEMO_WINDOW` after the one
/// before it, so 50 reads in `elapsed` cost at most 1 + elapsed / MEMO_WINDOW
/// `SESSION_LIVE` statements (one when the 50 take under a quarter second).
#[tokio::test]
async fn fifty_reads_of_one_session_check_it_in_postgresql_a_few_times_only() {
    let p = spawn().await;
    let a = p.account().await;
    let (memo_before, db_before) = session_checks(&p.app).await;
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(read(&p.app, &a.token, "/api/profile").await.0, 200);
    }
    let elapsed = started.elapsed();
    let (memo, db) = session_checks(&p.app).await;
    let (memo, db) = (memo - memo_before, db - db_before);
    assert_eq!(memo + db, 50, "every request's session is checked");
    let bound = 1 + (elapsed.as_nanos() / MEMO_WINDOW.as_nanos()) as u64;
    assert!(
        db <= bound,
        "{db} checks reached PostgreSQL in {elapsed:?}; at most {bound} may"
    );
    eprintln!(
        "50 reads in {elapsed:?}: {db} SESSION_LIVE statements, {memo} answered from the memo"
    );
}

/// However long the memo would keep a live session, the replica that ends it
/// refuses it on the very next request: the token's verification, which runs
/// before the session check, refuses every revocation the replica recorded —
/// a logout, and the user-wide watermark of log out everywhere, a password
/// change and an account deletion. No Redis: nothing but this replica's own
/// record does it.
#[tokio::test]
async fn a_session_the_memo_holds_is_refused_at_once_by_the_replica_that_ends_it() {
    let p = spawn_remembering_for_an_hour(None).await;
    let login = |email: String| {
        let p = &p;
        async move {
            let res: serde_json::Value = p.login(&email, PASSWORD).await.json().await.unwrap();
            res["access_token"].as_str().unwrap().to_owned()
        }
    };
    // Each token read twice: the second read is the memo's (an hour's window).
    let held = |token: String| {
        let app = &p.app;
        async move {
            assert_eq!(read(app, &token, "/api/profile").await.0, 200);
            let (memo, _) = session_checks(app).await;
            assert_eq!(read(app, &token, "/api/profile").await.0, 200);
            assert_eq!(
                session_checks(app).await.0,
                memo + 1,
                "answered from the memo"
            );
        }
    };
    let post = |path: &'static str, token: String, body: Option<serde_json::Value>| {
        let app = &p.app;
        async move {
            let mut req = app.client.post(app.url(path)).bearer_auth(&token);
            if let Some(body) = body {
                req = req.json(&body);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };

    // Logout.
    let a = p.account().await;
    held(a.token.clone()).await;
    assert_eq!(p.logout(&a.token).await.status(), 204);
    assert_eq!(
        read(&p.app, &a.token, "/api/profile").await.0,
        401,
        "logout"
    );

    // Log out everywhere: another session of the user, held by the memo.
    let b = p.account().await;
    let other = login(b.email.clone()).await;
    held(other.clone()).await;
    assert_eq!(
        post("/api/auth/logout-all", b.token.clone(), None).await,
        204
    );
    assert_eq!(
        read(&p.app, &other, "/api/profile").await.0,
        401,
        "logout-all"
    );
    assert_eq!(
        read(&p.app, &b.token, "/api/profile").await.0,
        401,
        "logout-all"
    );

    // A password change: every other session ends, the caller's stays.
    let c = p.account().await;
    let other = login(c.email.clone()).await;
    held(other.clone()).await;
    held(c.token.clone()).await;
    let change =
        serde_json::json!({"current_password": PASSWORD, "new_password": "a new passphrase"});
    assert_eq!(
        post("/api/auth/password", c.token.clone(), Some(change)).await,
        204
    );
    assert_eq!(
        read(&p.app, &other, "/api/profile").await.0,
        401,
        "password change"
    );
    assert_eq!(
        read(&p.app, &c.token, "/api/profile").await.0,
        200,
        "the caller's session stays"
    );

    // Account deletion.
    let d = p.account().await;
    let other = login(d.email.clone()).await;
    held(other.clone()).await;
    let res = p
        .app
        .client
        .delete(p.app.url("/api/account"))
        .bearer_auth(&d.token)
        .json(&serde_json::json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        read(&p.app, &other, "/api/profile").await.0,
        401,
        "deletion"
    );
}

/// A check that was reading PostgreSQL while the replica recorded a revocation
/// may have read the row before the revocation committed: what it found must
/// not stay in the memo. Made deterministic with a lock: the check's
/// `SESSION_LIVE` waits on `LOCK TABLE profile.sessions` while the replica
/// records the session's revocation; the lock is released without touching the
/// row, so the check reads "live" — as a read from before the commit would.
/// Without the guard, an hour's memo would answer the next check of the session.
#[tokio::test]
async fn a_check_that_overlapped_a_revocation_leaves_nothing_in_the_memo() {
    let p = spawn_remembering_for_an_hour(None).await;
    let a = p.account().await;
    let session = p.app.platform.auth.verify(&a.token).unwrap().sid;
    let locker = p.db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE profile.sessions IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let request = {
        let (client, url, token) = (
            p.app.client.clone(),
            p.app.url("/api/profile"),
            a.token.clone(),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Until the request's session check waits on the lock.
    let watcher = p.db.connect().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%FROM profile.sessions WHERE id = $1%'";
    let started = Instant::now();
    while watcher
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the check never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.app.platform.auth.mark_revoked(session);
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        request.await.unwrap(),
        200,
        "it began before the revocation"
    );

    let check = p.app.platform.gate.session_check.clone().unwrap();
    let (memo, db) = session_checks(&p.app).await;
    check(session).await.unwrap();
    assert_eq!(
        session_checks(&p.app).await,
        (memo, db + 1),
        "the next check asks PostgreSQL, not the memo"
    );
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
