//! Input PostgreSQL cannot store, and bodies the platform refuses, against all
//! three services at once (SPEC §3): a NUL character in any stored text or JSON
//! (top level, nested, object keys) and in query strings, lone surrogates,
//! numbers beyond their column, pre-1970 imports — each a 400 naming the field,
//! with nothing stored (counted in PostgreSQL) — then the body rules of
//! `kai_http::Json`: objects only (400), 415, 413 at 64 KiB (4 MiB for the
//! batch import, which fits 1,000 realistic messages), 408 for a body that stalls.

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::system::{System, call, start, start_with};

const NUL: &str = "\u{0}";

/// Registers and logs in a user; returns the token.
async fn token(s: &System, email: &str) -> String {
    crate::system::register_and_login(s, email, "storable-password-1").await
}

async fn count(s: &System, sql: &str) -> i64 {
    s.db.connect()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// Every row of every table a user's text lands in.
async fn rows(s: &System) -> [i64; 5] {
    [
        count(s, "SELECT count(*) FROM journal.journal_entries").await,
        count(s, "SELECT count(*) FROM conversation.conversations").await,
        count(s, "SELECT count(*) FROM conversation.messages").await,
        count(s, "SELECT count(*) FROM profile.users").await,
        count(s, "SELECT count(*) FROM profile.profiles").await,
    ]
}

/// Asserts a 400 problem+json whose `errors` name exactly `fields`.
#[track_caller]
fn assert_fields(what: &str, status: u16, problem: &Value, fields: &[&str]) {
    assert_eq!(status, 400, "{what}: {problem}");
    let named: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no errors in {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(named, fields, "{what}: {problem}");
}

#[tokio::test]
async fn nul_in_any_stored_text_is_a_400_naming_the_field_and_nothing_is_stored() {
    let s = start().await;
    let t = token(&s, "nul@example.com").await;
    let t = Some(t.as_str());
    let (_, entry) = call(
        &s.journal,
        Method::POST,
        "/api/journal/entries",
        t,
        Some(json!({"content": "kept", "title": "kept"})),
    )
    .await;
    let entry_path = format!("/api/journal/entries/{}", entry["id"].as_str().unwrap());
    let (_, conv) = call(
        &s.conversation,
        Method::POST,
        "/api/conversations",
        t,
        Some(json!({"title": "kept"})),
    )
    .await;
    let conv_id = conv["id"].as_str().unwrap();
    let messages = format!("/api/conversations/{conv_id}/messages");
    let batch = format!("/api/conversations/{conv_id}/messages/batch");
    let (_, profile_before) = call(&s.profile, Method::GET, "/api/profile", t, None).await;
    let before = rows(&s).await;

    let nul = |s: &str| format!("{s}{NUL}{s}");
    // (method, path, token, body, fields the answer must name)
    type Case<'a> = (Method, String, Option<&'a str>, Value, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        // journal: create and patch, every text field
        (
            Method::POST,
            "/api/journal/entries".into(),
            t,
            json!({"content": nul("a")}),
            vec!["content"],
        ),
        (
            Method::POST,
            "/api/journal/entries".into(),
            t,
            json!({"content": "ok", "title": nul("t")}),
            vec!["title"],
        ),
        (
            Method::POST,
            "/api/journal/entries".into(),
            t,
            json!({"content": "ok", "tags": ["fine", nul("g")]}),
            vec!["tags[1]"],
        ),
        (
            Method::PATCH,
            entry_path.clone(),
            t,
            json!({"content": nul("c")}),
            vec!["content"],
        ),
        (
            Method::PATCH,
            entry_path.clone(),
            t,
            json!({"title": NUL}),
            vec!["title"],
        ),
        // conversation: title, message, style, batch
        (
            Method::POST,
            "/api/conversations".into(),
            t,
            json!({"title": nul("t")}),
            vec!["title"],
        ),
        (
            Method::POST,
            messages.clone(),
            t,
            json!({"content": nul("m")}),
            vec!["content"],
        ),
        (
            Method::POST,
            messages.clone(),
            t,
            json!({"content": "ok", "communication_style": NUL}),
            vec!["communication_style"],
        ),
        (
            Method::POST,
            batch.clone(),
            t,
            json!({"messages": [
                {"role": "user", "content": "fine"},
                {"role": "assistant", "content": nul("b")},
                {"role": nul("user"), "content": "x"}
            ]}),
            vec!["messages[1].content", "messages[2].role"],
        ),
        // profile: registration, login, every profile field, nested JSON keys and values
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            json!({"email": "n2@example.com", "password": "long-enough-1", "display_name": nul("d")}),
            vec!["display_name"],
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            json!({"email": nul("n3@example.com"), "password": "long-enough-1"}),
            vec!["email"],
        ),
        (
            Method::POST,
            "/api/auth/login".into(),
            None,
            json!({"email": nul("nul@example.com"), "password": "storable-password-1"}),
            vec!["email"],
        ),
        (
            Method::PATCH,
            "/api/profile".into(),
            t,
            json!({"display_name": nul("d")}),
            vec!["display_name"],
        ),
        (
            Method::PATCH,
            "/api/profile".into(),
            t,
            json!({"communication_style": nul("s")}),
            vec!["communication_style"],
        ),
        (
            Method::PATCH,
            "/api/profile".into(),
            t,
            json!({"traits": {"sleep": {"notes": ["ok", nul("v")]}}}),
            vec!["traits.sleep.notes[1]"],
        ),
        (
            Method::PATCH,
            "/api/profile".into(),
            t,
            json!({"traits": {nul("key"): true}}),
            vec!["traits[\"key\\u0000key\"]"],
        ),
        (
            Method::PATCH,
            "/api/profile".into(),
            t,
            json!({"preferences": {"reminders": {"text": NUL}}}),
            vec!["preferences.reminders.text"],
        ),
    ];
    for (method, path, tok, body, fields) in cases {
        let app = if path.starts_with("/api/journal") {
            &s.journal
        } else if path.starts_with("/api/conversations") {
            &s.conversation
        } else {
            &s.profile
        };
        let what = format!("{method} {path}");
        let (status, problem) = call(app, method, &path, tok, Some(body)).await;
        assert_fields(&what, status, &problem, &fields);
        assert!(
            problem["detail"].as_str().unwrap().contains("NUL"),
            "{what}: {problem}"
        );
    }
    assert_eq!(rows(&s).await, before, "nothing was stored");
    let (_, still) = call(&s.journal, Method::GET, &entry_path, t, None).await;
    assert_eq!(
        (still["content"].clone(), still["title"].clone()),
        (json!("kept"), json!("kept"))
    );
    let (_, profile_after) = call(&s.profile, Method::GET, "/api/profile", t, None).await;
    assert_eq!(profile_after, profile_before, "the profile is unchanged");
}

#[tokio::test]
async fn nul_in_a_query_parameter_is_a_400_that_never_reaches_postgresql() {
    let s = start().await;
    let t = token(&s, "query@example.com").await;
    let t = Some(t.as_str());
    for (app, path, field) in [
        (&s.journal, "/api/journal/search?q=river%00walk", "q"),
        (&s.journal, "/api/journal/search?q=%00", "q"),
        (
            &s.journal,
            "/api/journal/entries?limit=5&cursor=%00",
            "cursor",
        ),
        (&s.journal, "/api/journal/stats?days=3%00", "days"),
        (&s.conversation, "/api/conversations?cursor=a%00", "cursor"),
    ] {
        let (status, problem) = call(app, Method::GET, path, t, None).await;
        assert_fields(path, status, &problem, &[field]);
    }
    // Numbers beyond their type are named too (not "invalid digit", not 500).
    for (app, path, field) in [
        (
            &s.journal,
            "/api/journal/entries?page=99999999999999999999",
            "page",
        ),
        (&s.journal, "/api/journal/entries?limit=1e400", "limit"),
        (
            &s.journal,
            "/api/journal/search?q=x&limit=-99999999999999999999",
            "limit",
        ),
        (
            &s.conversation,
            "/api/conversations?limit=18446744073709551616",
            "limit",
        ),
    ] {
        let (status, problem) = call(app, Method::GET, path, t, None).await;
        assert_fields(path, status, &problem, &[field]);
    }
    // In a path: the id is a UUID, and the answer does not echo what was sent.
    for (app, method, path) in [
        (&s.journal, Method::GET, "/api/journal/entries/%00"),
        (
            &s.conversation,
            Method::POST,
            "/api/conversations/a%00b/messages",
        ),
    ] {
        let body = (method == Method::POST).then(|| json!({"content": "x"}));
        let (status, problem) = call(app, method, path, t, body).await;
        assert_fields(path, status, &problem, &["id"]);
        assert_eq!(problem["detail"], "`id` must be a UUID");
    }
    let (status, _) = call(
        &s.journal,
        Method::GET,
        "/api/journal/search?q=river",
        t,
        None,
    )
    .await;
    assert_eq!(status, 200);
}

/// Sends `body` as written (no re-encoding): JSON that `serde_json::Value`
/// could not even hold.
async fn raw_json(
    app: &kai_testing::TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn lone_surrogates_huge_numbers_and_old_timestamps_are_400s_naming_the_field() {
    let s = start().await;
    let token = token(&s, "surrogate@example.com").await;
    let t = Some(token.as_str());
    let (_, conv) = call(
        &s.conversation,
        Method::POST,
        "/api/conversations",
        t,
        Some(json!({})),
    )
    .await;
    let batch = format!(
        "/api/conversations/{}/messages/batch",
        conv["id"].as_str().unwrap()
    );
    let before = rows(&s).await;
    let cases: Vec<(&kai_testing::TestApp, Method, &str, &str, &str)> = vec![
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "\ud800"}"#,
            "content",
        ),
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "x\udc00y"}"#,
            "content",
        ),
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "x", "tags": ["\ud83d"]}"#,
            "tags[0]",
        ),
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "x", "mood": 1e400}"#,
            "mood",
        ),
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "x", "mood": 40000}"#,
            "mood",
        ),
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            r#"{"content": "x", "mood": 123456789012345678901234567890}"#,
            "mood",
        ),
        (
            &s.conversation,
            Method::POST,
            "/api/conversations",
            r#"{"title": "\ud800"}"#,
            "title",
        ),
        (
            &s.conversation,
            Method::POST,
            &batch,
            r#"{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\udfff"}]}"#,
            "messages[1].content",
        ),
        (
            &s.conversation,
            Method::POST,
            &batch,
            r#"{"messages": [{"role": "user", "content": "old", "created_at": "0000-01-01T00:00:00Z"}]}"#,
            "messages[0].created_at",
        ),
        (
            &s.conversation,
            Method::POST,
            &batch,
            r#"{"messages": [{"role": "user", "content": "old", "created_at": "1899-12-31T23:59:59Z"}]}"#,
            "messages[0].created_at",
        ),
        (
            &s.conversation,
            Method::POST,
            &batch,
            r#"{"messages": [{"role": "user", "content": "far", "created_at": "99999-01-01T00:00:00Z"}]}"#,
            "messages[0].created_at",
        ),
        (
            &s.profile,
            Method::PATCH,
            "/api/profile",
            r#"{"traits": {"a": "\ud800"}}"#,
            "traits.a",
        ),
        (
            &s.profile,
            Method::PATCH,
            "/api/profile",
            r#"{"preferences": {"n": 1e400}}"#,
            "preferences.n",
        ),
        (
            &s.profile,
            Method::PATCH,
            "/api/profile",
            r#"{"display_name": "\udbff"}"#,
            "display_name",
        ),
        (
            &s.profile,
            Method::POST,
            "/api/auth/login",
            r#"{"email": "\ud800@example.com", "password": "x"}"#,
            "email",
        ),
    ];
    for (app, method, path, body, field) in cases {
        let needs_token = !path.starts_with("/api/auth");
        let (status, problem) = raw_json(
            app,
            method,
            path,
            needs_token.then_some(token.as_str()),
            body,
        )
        .await;
        assert_fields(body, status, &problem, &[field]);
        let text = problem.to_string();
        for jargon in ["invalid type", "expected i16", "at line"] {
            assert!(!text.contains(jargon), "{body}: {jargon} in {text}");
        }
    }
    assert_eq!(rows(&s).await, before, "nothing was stored");
}

/// `n` messages of about `size` bytes each (a realistic mix of text).
fn messages(n: usize, size: usize) -> Value {
    let sentence = "Today I walked by the river and thought about what we said last week. ";
    let text: String = sentence.chars().cycle().take(size).collect();
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "role": if i % 2 == 0 { "user" } else { "assistant" },
                    "content": format!("{i}: {text}"),
                    "created_at": "2025-06-01T12:00:00Z",
                })
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_batch_of_1000_realistic_messages_fits_and_more_than_4_mib_is_413() {
    let s = start().await;
    let t = token(&s, "batch@example.com").await;
    let t = Some(t.as_str());
    let (_, conv) = call(
        &s.conversation,
        Method::POST,
        "/api/conversations",
        t,
        Some(json!({})),
    )
    .await;
    let id = conv["id"].as_str().unwrap();
    let path = format!("/api/conversations/{id}/messages/batch");
    let body = json!({ "messages": messages(1000, 2000) });
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(
        size > 2_000_000 && size < conversation_service::model::MAX_BATCH_BODY_BYTES,
        "{size}"
    );
    let (status, answer) = call(&s.conversation, Method::POST, &path, t, Some(body)).await;
    assert_eq!(
        (status, answer),
        (201, json!({"inserted": 1000})),
        "a {size}-byte batch"
    );
    let stored = count(
        &s,
        &format!("SELECT count(*) FROM conversation.messages WHERE conversation_id = '{id}'"),
    )
    .await;
    assert_eq!(stored, 1000);

    // 1,000 messages of 4.5 KB: every message valid, the body over 4 MiB.
    let body = json!({ "messages": messages(1000, 4500) });
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(
        size > conversation_service::model::MAX_BATCH_BODY_BYTES,
        "{size}"
    );
    let (status, problem) = call(&s.conversation, Method::POST, &path, t, Some(body)).await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["status"], 413);
    let stored = count(
        &s,
        &format!("SELECT count(*) FROM conversation.messages WHERE conversation_id = '{id}'"),
    )
    .await;
    assert_eq!(stored, 1000, "nothing of the refused batch is stored");
}

#[tokio::test]
async fn other_routes_keep_64_kib_json_objects_and_json_content_types() {
    let s = start().await;
    let token = token(&s, "limits@example.com").await;
    let t = Some(token.as_str());
    let big = "x".repeat(70 * 1024);
    for (app, method, path, body) in [
        (
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            json!({"content": big}),
        ),
        (
            &s.conversation,
            Method::POST,
            "/api/conversations",
            json!({"title": big}),
        ),
        (
            &s.profile,
            Method::PATCH,
            "/api/profile",
            json!({"traits": {"notes": big}}),
        ),
        (
            &s.profile,
            Method::POST,
            "/api/auth/login",
            json!({"email": big, "password": "x"}),
        ),
    ] {
        let (status, problem) = call(app, method.clone(), path, t, Some(body)).await;
        assert_eq!(status, 413, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("64 KiB"),
            "{problem}"
        );
    }
    // Arrays (serde's sequence form of a struct) and other non-objects: 400.
    for (app, path, body) in [
        (
            &s.journal,
            "/api/journal/entries",
            r#"["array body", "t", 5, ["x"]]"#,
        ),
        (
            &s.profile,
            "/api/auth/login",
            r#"["email@example.com", "password"]"#,
        ),
        (&s.conversation, "/api/conversations", r#""a title""#),
        (&s.journal, "/api/journal/entries", "null"),
    ] {
        let (status, problem) = raw_json(app, Method::POST, path, t, body).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("JSON object"),
            "{problem}"
        );
    }
    assert_eq!(
        count(&s, "SELECT count(*) FROM journal.journal_entries").await,
        0
    );
    // A wrong (or missing) content type: 415, on every service.
    for (app, path) in [
        (&s.journal, "/api/journal/entries"),
        (&s.conversation, "/api/conversations"),
        (&s.profile, "/api/auth/login"),
    ] {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut req = app
                .client
                .post(app.url(path))
                .bearer_auth(&token)
                .body(r#"{"content": "hello", "email": "a@b.co", "password": "x"}"#);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 415, "{path} {content_type:?}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }
    }
}

/// Writes `head` and `body` on a fresh connection, then returns the status line
/// of the answer (or what came back instead).
async fn raw_http(
    address: &str,
    head: &str,
    body: &[u8],
    then: Option<std::time::Duration>,
) -> String {
    let addr = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    if let Some(pause) = then {
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head of the answer is in (or the server closes).
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_chunked_body_past_the_limit_is_413_while_it_streams() {
    let s = start().await;
    let t = token(&s, "chunked@example.com").await;
    // No Content-Length: the limit is enforced as the body arrives. The body
    // never ends (no last chunk): the answer must come anyway.
    let head = format!(
        "POST /api/journal/entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 70 * 1024, "x".repeat(70 * 1024));
    let status = raw_http(&s.journal.address, &head, chunk.as_bytes(), None).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
}

#[tokio::test]
async fn a_body_that_stalls_past_the_deadline_is_408() {
    // A short deadline keeps the test quick; the default is 10 s.
    let s = start_with(&[("REQUEST_BODY_TIMEOUT_MS", "300")]).await;
    let t = token(&s, "slow@example.com").await;
    let body = r#"{"content": "half a bo"#;
    for (app, path, auth) in [
        (&s.journal, "/api/journal/entries", true),
        (&s.profile, "/api/auth/register", false),
    ] {
        let auth = if auth {
            format!("Authorization: Bearer {t}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 200\r\n\r\n"
        );
        // Headers and part of the body, then nothing.
        let status = raw_http(&app.address, &head, body.as_bytes(), None).await;
        assert!(status.starts_with("HTTP/1.1 408"), "{path}: {status}");
    }
    // A body that arrives in time is unaffected.
    let (status, _) = call(
        &s.journal,
        Method::POST,
        "/api/journal/entries",
        Some(&t),
        Some(json!({"content": "on time"})),
    )
    .await;
    assert_eq!(status, 201);
}
