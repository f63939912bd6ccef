//! The account's own routes: export, password change, log out everywhere, and
//! account deletion.

use serde_json::{Value, json};

use crate::helpers::spawn;

#[tokio::test]
async fn profile_export_holds_the_account_and_profile_uncached() {
    let p = spawn().await;
    let a = p.account().await;
    assert_eq!(
        p.patch(
            &a.token,
            json!({"display_name": "Ada", "traits": {"calm": true}})
        )
        .await
        .status(),
        200
    );
    let res = p
        .app
        .client
        .get(p.app.url("/api/profile/export"))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().get("x-cache").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user_id"], a.id.to_string());
    assert_eq!(body["email"], a.email);
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(body["traits"], json!({"calm": true}));
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
}

use std::time::{Duration, Instant};

use crate::helpers::{PASSWORD, Profiles, assert_problem};

async fn post(p: &Profiles, path: &str, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = p.app.client.post(p.app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn delete_account(p: &Profiles, token: &str, password: &str) -> reqwest::Response {
    p.app
        .client
        .delete(p.app.url("/api/account"))
        .bearer_auth(token)
        .json(&json!({ "password": password }))
        .send()
        .await
        .unwrap()
}

/// Waits (at most 1 s) until `app` answers `token` with 401 on `path`.
async fn refused_within_a_second(app: &kai_testing::TestApp, token: &str, path: &str) {
    let started = Instant::now();
    loop {
        let (status, _, _) = app.read(token, path).await;
        if status == 401 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} still accepts a revoked token ({status})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_everywhere() {
    let p = spawn().await;
    let journal = p.journal().await;
    let a = p.account().await;
    let other: Value = p.login(&a.email, PASSWORD).await.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap().to_owned();
    assert_eq!(journal.read(&other, "/api/journal/entries").await.0, 200);

    let wrong = post(
        &p,
        "/api/auth/password",
        &a.token,
        Some(json!({"current_password": "not it at all", "new_password": "a new passphrase"})),
    )
    .await;
    assert_problem(wrong, 401).await;
    let short = post(
        &p,
        "/api/auth/password",
        &a.token,
        Some(json!({"current_password": PASSWORD, "new_password": "short"})),
    )
    .await;
    assert_eq!(
        assert_problem(short, 400).await["errors"][0]["field"],
        "new_password"
    );
    // Common, breached and guessable passwords, and a variation of the current
    // one, are refused with the rule named.
    for weak in [
        "password",
        "12345678",
        "Password123!",
        "correct horse battery staple1",
    ] {
        let res = post(
            &p,
            "/api/auth/password",
            &a.token,
            Some(json!({"current_password": PASSWORD, "new_password": weak})),
        )
        .await;
        let problem = assert_problem(res, 400).await;
        assert_eq!(problem["errors"][0]["field"], "new_password", "{weak}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("common-password rule"),
            "{weak}: {message}"
        );
    }

    let res = post(
        &p,
        "/api/auth/password",
        &a.token,
        Some(json!({"current_password": PASSWORD, "new_password": "a new passphrase"})),
    )
    .await;
    assert_eq!(res.status(), 204);
    refused_within_a_second(&p.app, &other, "/api/profile").await;
    refused_within_a_second(&journal, &other, "/api/journal/entries").await;
    assert_eq!(
        p.app.read(&a.token, "/api/profile").await.0,
        200,
        "the caller's session lives on"
    );
    assert_eq!(journal.read(&a.token, "/api/journal/entries").await.0, 200);
    assert_eq!(p.login(&a.email, PASSWORD).await.status(), 401);
    let fresh: Value = p
        .login(&a.email, "a new passphrase")
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap();
    assert_eq!(
        journal.read(fresh, "/api/journal/entries").await.0,
        200,
        "a later login works everywhere"
    );
}

#[tokio::test]
async fn logout_all_ends_every_session_everywhere_and_a_new_login_works() {
    let p = spawn().await;
    let journal = p.journal().await;
    let a = p.account().await;
    let other: Value = p.login(&a.email, PASSWORD).await.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        post(&p, "/api/auth/logout-all", &a.token, None)
            .await
            .status(),
        204
    );
    for token in [&a.token, &other] {
        refused_within_a_second(&p.app, token, "/api/profile").await;
        refused_within_a_second(&journal, token, "/api/journal/entries").await;
    }
    let db = p.db.connect().await;
    let live: i64 = db
        .query_one(
            "SELECT count(*) FROM profile.sessions WHERE user_id = $1 AND revoked_at IS NULL",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh: Value = p.login(&a.email, PASSWORD).await.json().await.unwrap();
    let fresh = fresh["access_token"].as_str().unwrap();
    assert_eq!(p.app.read(fresh, "/api/profile").await.0, 200);
    assert_eq!(journal.read(fresh, "/api/journal/entries").await.0, 200);
}

#[tokio::test]
async fn deleting_an_account_needs_the_password_and_removes_it_at_once() {
    let p = spawn().await;
    let journal = p.journal().await;
    let a = p.account().await;
    assert_problem(delete_account(&p, &a.token, "not the password").await, 401).await;
    assert_eq!(
        p.app.read(&a.token, "/api/profile").await.0,
        200,
        "still there"
    );

    assert_eq!(delete_account(&p, &a.token, PASSWORD).await.status(), 204);
    refused_within_a_second(&p.app, &a.token, "/api/profile").await;
    refused_within_a_second(&journal, &a.token, "/api/journal/entries").await;
    assert_eq!(p.login(&a.email, PASSWORD).await.status(), 401);
    let db = p.db.connect().await;
    for table in ["users", "profiles", "sessions"] {
        let column = if table == "users" { "id" } else { "user_id" };
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM profile.{table} WHERE {column} = $1"),
                &[&a.id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
    // The erasure event waits in the outbox for every service that holds data:
    // profile-service's own consumer acknowledges its part; journal and
    // conversation are not running here (their purges: tests/ e2e `erasure`).
    let started = Instant::now();
    loop {
        let row = db
            .query_one("SELECT payload, awaiting FROM profile.outbox", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), a.id.to_string());
        let mut awaiting: Vec<String> = row.get(1);
        awaiting.sort();
        if awaiting == ["conversation", "journal"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "profile never acknowledged: {awaiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        p.app
            .metrics()
            .await
            .contains("kai_account_purges_total{service=\"profile\"} 1")
    );
}

/// The services an erasure waits for are a fixed list, not the consumer groups
/// found on the stream: a group of another name (a forged one, or a service
/// nobody added to the list) is never awaited — the event does not even name
/// it, so it handles nothing — and the row waits for journal and conversation
/// only.
#[tokio::test]
async fn a_consumer_group_that_is_no_participant_is_never_awaited() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let p = spawn().await;
    let a = p.account().await;
    let purged = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = purged.clone();
    let user = a.id;
    let verify: kai_shared::erasure::Verify = Arc::new(|id: &str, payload: &str| {
        let control = kai_testing::test_authenticator()
            .verify_control(payload, &[kai_http::auth::control::Kind::AccountErased])
            .map_err(|_| "bad")?;
        let (event, user) = control.body.split_once(' ').ok_or("bad")?;
        if event != id {
            return Err("bad");
        }
        user.parse().map_err(|_| "bad")
    });
    kai_shared::erasure::consume(
        (),
        &p.app.platform.settings.redis,
        &p.app.platform.metrics,
        stop.clone(),
        "insights",
        verify,
        move |_, id| {
            let seen = seen.clone();
            async move {
                assert_eq!(id, user);
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            }
        },
    )
    .expect("Redis is configured");

    assert_eq!(delete_account(&p, &a.token, PASSWORD).await.status(), 204);
    let db = p.db.connect().await;
    // Profile acknowledges; journal and conversation are not running here, so
    // they are still owed; the outsider is not.
    let started = Instant::now();
    loop {
        let row = db
            .query_one("SELECT awaiting FROM profile.outbox", &[])
            .await
            .unwrap();
        let awaiting: Vec<String> = row.get(0);
        assert!(!awaiting.contains(&"insights".to_owned()), "{awaiting:?}");
        if awaiting == ["conversation", "journal"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not acknowledged: {awaiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(purged.load(Ordering::SeqCst), 0, "not named, not handled");
    stop.cancel();
}

#[tokio::test]
async fn password_guessing_on_a_stolen_token_is_rate_limited() {
    let p = spawn().await;
    let a = p.account().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            delete_account(&p, &a.token, "guess guess guess")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let res = delete_account(&p, &a.token, PASSWORD).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 429).await;
    let res = post(
        &p,
        "/api/auth/password",
        &a.token,
        Some(json!({"current_password": PASSWORD, "new_password": "whatever it is"})),
    )
    .await;
    assert_problem(res, 429).await;
    assert_eq!(
        p.app.read(&a.token, "/api/profile").await.0,
        200,
        "nothing was deleted"
    );
}

/// The re-entry bucket is the session's: a thief's stolen token drains its own,
/// and the owner, in another session, changes the password at once (ending the
/// thief's session) — or could delete the account.
#[tokio::test]
async fn a_stolen_session_cannot_lock_the_owner_out_of_password_change() {
    let p = spawn().await;
    let thief = p.account().await;
    let res = p.login(&thief.email, PASSWORD).await;
    assert_eq!(res.status(), 200);
    let owner: Value = res.json().await.unwrap();
    let owner = owner["access_token"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let res = post(
            &p,
            "/api/auth/password",
            &thief.token,
            Some(json!({"current_password": "guess guess guess", "new_password": "the thief's own phrase"})),
        )
        .await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(&statuses[..6], [401, 401, 401, 401, 401, 429]);
    assert!(statuses[6..].iter().all(|&s| s == 429), "{statuses:?}");
    let res = post(
        &p,
        "/api/auth/password",
        &owner,
        Some(json!({"current_password": PASSWORD, "new_password": "the owner's fresh phrase"})),
    )
    .await;
    assert_eq!(res.status(), 204);
    refused_within_a_second(&p.app, &thief.token, "/api/profile").await;
    assert_eq!(p.app.read(&owner, "/api/profile").await.0, 200);
}

/// Argon2 saturation by anonymous logins: the overflow is refused at once with
/// 503 + `Retry-After` (the queue is bounded), and a logged-in user's password
/// change in the middle of it succeeds, as does a login from the owner's device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_login_flood_never_fails_a_logged_in_users_password_change() {
    let p = crate::helpers::spawn_behind_proxy().await;
    let a = p.account().await;
    let device_login = |password: &'static str, device: Option<String>| {
        let (client, url, email) = (
            p.app.client.clone(),
            p.app.url("/api/auth/login"),
            a.email.clone(),
        );
        async move {
            let mut body = json!({"email": email, "password": password});
            if let Some(d) = device {
                body["device_token"] = json!(d);
            }
            let res = client
                .post(url)
                .header("x-forwarded-for", "192.0.2.77")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, token) = device_login(PASSWORD, None).await;
    assert_eq!(status, 200);
    let device = token["device_token"].as_str().unwrap().to_owned();
    let flood: Vec<_> = (0..120u32)
        .map(|i| {
            let client = p.app.client.clone();
            let url = p.app.url("/api/auth/login");
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("x-forwarded-for", format!("10.9.{}.{}", i / 200, i % 200))
                    .json(&json!({"email": crate::helpers::email(), "password": "any password at all"}))
                    .send()
                    .await
                    .unwrap();
                let retry = res.headers().contains_key("retry-after");
                (res.status().as_u16(), retry)
            })
        })
        .collect();
    let res = post(
        &p,
        "/api/auth/password",
        &a.token,
        Some(json!({"current_password": PASSWORD, "new_password": "a calm new passphrase"})),
    )
    .await;
    assert_eq!(res.status(), 204);
    let (status, _) = device_login("a calm new passphrase", Some(device)).await;
    assert_eq!(status, 200, "the owner's device during the flood");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for f in flood {
        let (status, retry) = f.await.unwrap();
        assert!(status == 401 || (status == 503 && retry), "{status}");
        *statuses.entry(status).or_default() += 1;
    }
    // More logins than the slots and the queue hold: some were turned away.
    assert!(statuses.contains_key(&503), "{statuses:?}");
    eprintln!("flood of 120 anonymous logins: {statuses:?}");
}
