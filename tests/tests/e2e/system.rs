//! All three services together, one user's whole story: register → login →
//! journal entry → conversation with a reply → profile change → logout → 401
//! everywhere.

use std::time::{Duration, Instant};

use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use serde_json::{Value, json};

pub struct System {
    pub profile: TestApp,
    pub journal: TestApp,
    pub conversation: TestApp,
    pub db: TestDb,
    _prefix: TestPrefix,
}

pub async fn start() -> System {
    start_with(&[]).await
}

/// All three services with extra settings.
pub async fn start_with(extra: &[(&str, &str)]) -> System {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = || testing::settings(&db.url, Some(&prefix.url), &prefix.prefix, extra);
    let profile = TestApp::start(profile_service::service(), settings()).await;
    let journal = TestApp::start(journal_service::service(), settings()).await;
    let llm = conversation_service::service(&testing::service_settings(extra));
    let conversation = TestApp::start(llm, settings()).await;
    System {
        profile,
        journal,
        conversation,
        db,
        _prefix: prefix,
    }
}

pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Registers `email` with `password` through profile-service and logs in;
/// returns the access token.
pub async fn register_and_login(s: &System, email: &str, password: &str) -> String {
    let creds = json!({"email": email, "password": password});
    let (status, body) = call(
        &s.profile,
        reqwest::Method::POST,
        "/api/auth/register",
        None,
        Some(creds.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, login) = call(
        &s.profile,
        reqwest::Method::POST,
        "/api/auth/login",
        None,
        Some(creds),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    login["access_token"].as_str().unwrap().to_owned()
}

/// Personal data the walk sends; none of it may appear in a log line.
struct Secrets {
    password: &'static str,
    journal: &'static str,
    message: &'static str,
}

const SECRETS: Secrets = Secrets {
    password: "pw-7f3a9c-correct-horse",
    journal: "journal-text-5b1e0d-I-cried-at-the-bus-stop",
    message: "message-text-c4d2aa-nobody-knows-this",
};

#[tokio::test]
async fn one_user_walks_through_every_service_and_logs_out_everywhere() {
    let s = start().await;
    walk(&s).await;
}

/// The same walk with every log line captured (at `debug`, the noisiest an operator
/// could choose) and scanned for personal data.
#[tokio::test]
async fn a_full_run_logs_no_journal_text_message_password_or_token() {
    let logs = crate::steady_state::Capture::install_at("debug");
    // Thresholds of 0: every statement is a "slow query" and every request a
    // "slow request", so those log lines are produced and scanned too.
    let s = start_with(&[
        ("SLOW_QUERY_THRESHOLD_MS", "0"),
        ("SLOW_REQUEST_THRESHOLD_MS", "0"),
    ])
    .await;
    let token = walk(&s).await;
    let text = logs.text();
    assert!(
        text.lines().count() > 50,
        "the run did log ({} lines)",
        text.lines().count()
    );
    assert!(
        text.contains("request_id"),
        "log lines carry the request id"
    );
    assert!(
        text.contains("slow query") && text.contains("INSERT INTO journal.journal_entries"),
        "slow queries are logged with their SQL"
    );
    assert!(text.contains("slow request"), "slow requests are logged");
    for (what, secret) in [
        ("password", SECRETS.password),
        ("journal text", SECRETS.journal),
        ("message", SECRETS.message),
        ("token", token.as_str()),
    ] {
        assert!(!text.contains(secret), "the logs contain the {what}");
    }
    // The token's signature alone is secret enough to look for.
    assert!(!text.contains(token.rsplit('.').next().unwrap()));
}

/// register → login → journal → conversation → profile → logout → 401 everywhere.
/// Returns the (revoked) access token.
async fn walk(s: &System) -> String {
    use reqwest::Method;
    let (status, _) = call(
        &s.profile,
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": "ada@example.com", "password": SECRETS.password})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, user) = call(&s.profile, Method::POST, "/api/auth/register", None, Some(json!({"email": "Ada@Example.com", "password": SECRETS.password, "display_name": "Ada"}))).await;
    assert_eq!(status, 409, "{user}");
    let (status, _) = call(
        &s.profile,
        Method::POST,
        "/api/auth/login",
        None,
        Some(
            json!({"email": "ada@example.com", "password": format!("{}-wrong", SECRETS.password)}),
        ),
    )
    .await;
    assert_eq!(status, 401);
    let (status, login) = call(
        &s.profile,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "ADA@example.com", "password": SECRETS.password})),
    )
    .await;
    let user = json!({"user_id": login["user_id"].clone()});
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["user_id"], user["user_id"]);
    let token = login["access_token"].as_str().unwrap().to_owned();
    let t = Some(token.as_str());

    let (status, entry) = call(
        &s.journal,
        Method::POST,
        "/api/journal/entries",
        t,
        Some(json!({"content": "First day with Kai.", "mood": 6})),
    )
    .await;
    assert_eq!(status, 201, "{entry}");
    let (_, list) = call(&s.journal, Method::GET, "/api/journal/entries", t, None).await;
    assert_eq!(list["total"], 1);

    let (status, conv) = call(
        &s.conversation,
        Method::POST,
        "/api/conversations",
        t,
        Some(json!({"title": "Evening"})),
    )
    .await;
    assert_eq!(status, 201, "{conv}");
    let path = format!(
        "/api/conversations/{}/messages",
        conv["id"].as_str().unwrap()
    );
    let (status, reply) = call(
        &s.conversation,
        Method::POST,
        &path,
        t,
        Some(json!({"content": "I felt calm today."})),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["assistant_message"]["role"], "assistant");
    assert!(
        !reply["assistant_message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    let (status, profile) = call(
        &s.profile,
        Method::PATCH,
        "/api/profile",
        t,
        Some(json!({"communication_style": "gentle", "traits": {"introvert": true}})),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    let (_, profile) = call(&s.profile, Method::GET, "/api/profile", t, None).await;
    assert_eq!(
        (
            profile["communication_style"].clone(),
            profile["traits"]["introvert"].clone()
        ),
        (json!("gentle"), json!(true))
    );

    let (status, _) = call(&s.profile, Method::POST, "/api/auth/logout", t, None).await;
    assert_eq!(status, 204);
    let logged_out = Instant::now();
    for (app, path) in [
        (&s.profile, "/api/profile"),
        (&s.journal, "/api/journal/entries"),
        (&s.conversation, "/api/conversations"),
    ] {
        loop {
            let (status, body) = call(app, Method::GET, path, t, None).await;
            if status == 401 {
                break;
            }
            assert!(
                logged_out.elapsed() < Duration::from_secs(1),
                "{path} still accepts a revoked token: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("revoked everywhere after {:?}", logged_out.elapsed());
    token
}
