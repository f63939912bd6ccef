//! All three services together, one user's whole story: register → login →
//! journal entry → conversation with a reply → profile change → logout → 401
//! everywhere.

use std::time::{Duration, Instant};

use kai_shared::testing::{self, TestApp, TestDb, TestPrefix};
use serde_json::{Value, json};

struct System {
    profile: TestApp,
    journal: TestApp,
    conversation: TestApp,
    _db: TestDb,
    _prefix: TestPrefix,
}

async fn start() -> System {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = || testing::settings(&db.url, Some(&prefix.url), &prefix.prefix, &[]);
    let profile = TestApp::start(profile_service::service(), settings()).await;
    let journal = TestApp::start(journal_service::service(), settings()).await;
    let conversation = TestApp::start(conversation_service::service(&settings()), settings()).await;
    System {
        profile,
        journal,
        conversation,
        _db: db,
        _prefix: prefix,
    }
}

async fn call(
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

#[tokio::test]
async fn one_user_walks_through_every_service_and_logs_out_everywhere() {
    use reqwest::Method;
    let s = start().await;
    let (status, user) = call(&s.profile, Method::POST, "/api/auth/register", None, Some(json!({"email": "Ada@Example.com", "password": "correct horse battery", "display_name": "Ada"}))).await;
    assert_eq!(status, 201, "{user}");
    let (status, login) = call(
        &s.profile,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": "ada@example.com", "password": "correct horse battery"})),
    )
    .await;
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
}
