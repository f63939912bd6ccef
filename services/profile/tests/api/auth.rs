use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, read, spawn, verifications};

#[tokio::test]
async fn register_login_and_logout() {
    let p = spawn().await;
    let address = email();
    let res = p
        .register(json!({"email": address, "password": PASSWORD, "display_name": "Ada"}))
        .await;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    assert_eq!(
        (user["email"].as_str(), user["display_name"].as_str()),
        (Some(address.as_str()), Some("Ada"))
    );
    assert!(
        user["created_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC"
    );
    assert!(
        user.get("password").is_none() && user.get("password_hash").is_none(),
        "{user}"
    );

    let res = p.login(&address, PASSWORD).await;
    assert_eq!(res.status(), 200);
    let token: Value = res.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    assert_eq!(token["user_id"], user["user_id"]);
    let access = token["access_token"].as_str().unwrap();

    let (status, _, profile) = read(&p.app, access, "/api/profile").await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["user_id"], user["user_id"]);

    assert_eq!(p.logout(access).await.status(), 204);
    assert_problem(
        p.app
            .client
            .get(p.app.url("/api/profile"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(p.logout(access).await, 401).await;
    // Logging in again opens a new, working session.
    let again: Value = p.login(&address, PASSWORD).await.json().await.unwrap();
    assert_eq!(
        read(
            &p.app,
            again["access_token"].as_str().unwrap(),
            "/api/profile"
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn an_email_is_taken_whatever_its_case() {
    let p = spawn().await;
    let local = uuid::Uuid::new_v4().simple().to_string();
    let res = p
        .register(json!({"email": format!("Ada.{local}@Example.org"), "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), 201);
    let res = p
        .register(
            json!({"email": format!("ada.{local}@EXAMPLE.ORG"), "password": "another password"}),
        )
        .await;
    let problem = assert_problem(res, 409).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{problem}"
    );
    // And login finds the account in any case.
    assert_eq!(
        p.login(&format!("ADA.{local}@example.ORG"), PASSWORD)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn invalid_registrations_get_field_errors() {
    let p = spawn().await;
    for (body, field) in [
        (
            json!({"email": "not-an-address", "password": PASSWORD}),
            "email",
        ),
        (json!({"email": "a@b", "password": PASSWORD}), "email"),
        (json!({"email": email(), "password": "seven77"}), "password"),
        (
            json!({"email": email(), "password": "x".repeat(1025)}),
            "password",
        ),
        (
            json!({"email": email(), "password": PASSWORD, "display_name": "n".repeat(101)}),
            "display_name",
        ),
        (
            json!({"email": email(), "password": PASSWORD, "display_name": "  "}),
            "display_name",
        ),
        (json!({"email": email()}), "password"),
        // Common and breached passwords: the bundled lists (zxcvbn).
        (
            json!({"email": email(), "password": "12345678"}),
            "password",
        ),
        (
            json!({"email": email(), "password": "password"}),
            "password",
        ),
        (
            json!({"email": email(), "password": "iloveyou123"}),
            "password",
        ),
        // The user's own address as the password.
        (
            json!({"email": "samwise.gamgee@example.org", "password": "samwise.gamgee"}),
            "password",
        ),
    ] {
        let problem = assert_problem(p.register(body).await, 400).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // Exactly eight characters is enough.
    assert_eq!(
        p.register(json!({"email": email(), "password": "Kx8#qZ2m"}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn registration_cannot_assign_ids_or_timestamps() {
    let p = spawn().await;
    for extra in ["user_id", "id", "created_at", "password_hash"] {
        let mut body = json!({"email": email(), "password": PASSWORD});
        body[extra] = json!("00000000-0000-0000-0000-000000000001");
        let problem = assert_problem(p.register(body).await, 400).await;
        assert!(problem.to_string().contains(extra), "{problem}");
    }
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let p = spawn().await;
    let account = p.account().await;
    let (mut unknown_times, mut wrong_times) = (Vec::new(), Vec::new());
    let (mut unknown_body, mut wrong_body) = (Value::Null, Value::Null);
    for _ in 0..3 {
        let started = Instant::now();
        unknown_body = assert_problem(p.login(&email(), PASSWORD).await, 401).await;
        unknown_times.push(started.elapsed());
        let started = Instant::now();
        wrong_body = assert_problem(p.login(&account.email, "not the password").await, 401).await;
        wrong_times.push(started.elapsed());
    }
    assert_eq!(unknown_body, wrong_body, "one message for both");
    assert!(
        !unknown_body
            .to_string()
            .to_lowercase()
            .contains("not found")
    );
    // Both run exactly one argon2id verification (a counted fact, not a timing):
    // without the dummy hash an unknown e-mail would run none and answer ~30x faster.
    let before = verifications(&p).await;
    assert_problem(p.login(&email(), PASSWORD).await, 401).await;
    let after_unknown = verifications(&p).await;
    assert_problem(p.login(&account.email, "not the password").await, 401).await;
    let after_wrong = verifications(&p).await;
    assert_eq!(
        (after_unknown - before, after_wrong - after_unknown),
        (1, 1)
    );
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[1]
    };
    eprintln!(
        "login 401: unknown e-mail {:?}, wrong password {:?}",
        median(unknown_times),
        median(wrong_times)
    );
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_and_tokens_as_sha256() {
    let p = spawn().await;
    let account = p.account().await;
    let conn = p.db.connect().await;
    let hash: String = conn
        .query_one(
            "SELECT password_hash FROM profile.users WHERE id = $1",
            &[&account.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    let stored: String = conn
        .query_one(
            "SELECT token_hash FROM profile.sessions WHERE user_id = $1",
            &[&account.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 64);
    assert!(stored.chars().all(|c| c.is_ascii_hexdigit()), "{stored}");
    assert_ne!(stored, account.token);
    assert_eq!(
        stored,
        profile_service::sessions::token_hash(&account.token)
    );
    let leaks: i64 = conn
        .query_one(
            "SELECT count(*) FROM profile.sessions s, profile.users u
             WHERE s.token_hash = $1 OR u.password_hash = $2",
            &[&account.token, &PASSWORD],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0, "neither the token nor the password is stored");
}

#[tokio::test]
async fn logins_with_oversized_or_missing_fields_are_refused() {
    let p = spawn().await;
    let account = p.account().await;
    assert_problem(p.login(&account.email, &"x".repeat(2000)).await, 401).await;
    let url = p.app.url("/api/auth/login");
    assert_problem(
        p.app
            .client
            .post(&url)
            .json(&json!({"email": account.email}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let res = p
        .app
        .client
        .post(&url)
        .json(&json!({"email": account.email, "password": PASSWORD, "user_id": account.id}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
}
