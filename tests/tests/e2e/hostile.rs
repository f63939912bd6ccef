//! Hostile input against all three services at once: generated bodies, query
//! strings and ids for every operation in each service's own `/openapi.json`
//! (never a 5xx, every error problem+json), and every kind of bad token (401).
//!
//! The alphabets include what PostgreSQL cannot store — NUL (`\u0000`, `%00`),
//! lone UTF-16 surrogates (`"\ud800"`, which no Rust string can hold, so they are
//! spliced into the serialized body), numbers past `f64` (`1e400`) — in values
//! and in object keys. `KAI_FUZZ_CASES` sets the generated requests per operation
//! (default 40); the seed is fixed, so a run is reproducible.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

use crate::system::{System, call, start};

/// Field names the services know, mixed with junk, so generated bodies reach the
/// validation code and not only serde's "unknown field".
const FIELDS: &[&str] = &[
    "content",
    "title",
    "mood",
    "tags",
    "email",
    "password",
    "display_name",
    "traits",
    "preferences",
    "communication_style",
    "messages",
    "role",
    "created_at",
    "id",
    "user_id",
    "updated_at",
    "x",
    "__proto__",
    "",
    "\u{0}",
    "a\u{0}b",
    "\u{E000}",
];
const PARAMS: &[&str] = &["page", "page_size", "limit", "cursor", "q", "days", "zzz"];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(10),
            Just(11),
            Just(-1),
            Just(1000),
            Just(1001)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("x".repeat(20_001))),
        Just(Value::from("user@example.com")),
        Just(Value::from("2026-01-01T00:00:00Z")),
        Just(Value::from("\u{0000}\u{202e}💥")),
        Just(Value::from("\u{0}")),
        Just(Value::from(LONE_HIGH)),
        Just(Value::from(format!("ok{LONE_LOW}ok"))),
        Just(Value::from(HUGE_NUMBER)),
        Just(Value::from("1970-01-01T00:00:00Z")),
        Just(Value::from("0000-01-01T00:00:00Z")),
        Just(Value::from(u64::MAX)),
        hostile_text().prop_map(Value::from),
    ]
}

/// Stand-ins for what a Rust string cannot hold, replaced in the serialized
/// body by [`render`]: a lone high surrogate, a lone low one (as JSON escapes),
/// and a number no `f64` holds.
const LONE_HIGH: &str = "\u{E000}";
const LONE_LOW: &str = "\u{E001}";
const HUGE_NUMBER: &str = "\u{E002}";

/// Text from a small alphabet heavy in what storage refuses.
fn hostile_text() -> impl Strategy<Value = String> {
    const ALPHABET: &[&str] = &[
        "a", "Z", " ", "é", "💥", "\u{0}", "\u{0}", "\u{1}", "\n", "\"", "\\", "\u{202e}",
        "\u{FEFF}", LONE_HIGH, LONE_LOW, "%00", "'", ";--",
    ];
    prop::collection::vec(prop::sample::select(ALPHABET), 0..24).prop_map(|parts| parts.concat())
}

/// The body as sent: `value` serialized, with the stand-ins spliced in.
fn render(value: &Value) -> String {
    serde_json::to_string(value)
        .unwrap()
        .replace(&format!("\"{HUGE_NUMBER}\""), "1e400")
        .replace(HUGE_NUMBER, "1e400")
        .replace(LONE_HIGH, "\\ud800")
        .replace(LONE_LOW, "\\udfff")
}

/// Generated requests per operation (`KAI_FUZZ_CASES`, default 40).
fn cases_per_operation() -> usize {
    std::env::var("KAI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn body() -> impl Strategy<Value = Value> {
    let leaf = scalar();
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(FIELDS).prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        prop::collection::btree_map(
            prop::sample::select(FIELDS).prop_map(str::to_owned),
            value.clone(),
            0..6
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
        value,
    ]
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just(String::new()),
        Just("1e309".to_owned()),
        Just("%00".to_owned()),
        Just("a%00b".to_owned()),
        Just("%ED%A0%80".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("%ZZ".to_owned()),
        "[a-zA-Z0-9 _\\-]{0,30}",
        ".{0,20}".prop_map(|s| s
            .chars()
            .map(|c| format!("%{:02X}", c as u32 % 256))
            .collect()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(PARAMS), query_value()), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn path_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("OWN".to_owned()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        Just("not-a-uuid".to_owned()),
        Just("..%2F..%2Fetc%2Fpasswd".to_owned()),
        Just("%00".to_owned()),
        Just("a".repeat(300)),
    ]
}

struct Operation {
    method: Method,
    template: String,
    body: bool,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            ops.push(Operation {
                method,
                template: template.clone(),
                body: op.get("requestBody").is_some(),
            });
        }
    }
    ops
}

#[tokio::test]
async fn generated_requests_never_cause_a_5xx_and_errors_are_problem_details() {
    let s = start().await;
    let token = login(&s).await;
    // Resources of the caller's own, so some generated ids hit real rows.
    let (_, entry) = call(
        &s.journal,
        Method::POST,
        "/api/journal/entries",
        Some(&token),
        Some(json!({"content": "mine"})),
    )
    .await;
    let (_, conv) = call(
        &s.conversation,
        Method::POST,
        "/api/conversations",
        Some(&token),
        Some(json!({})),
    )
    .await;
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 40,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut sent = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut failures = Vec::new();
    // How many requests carried what storage refuses (and were answered 4xx).
    let (mut with_nul, mut with_surrogate) = (0, 0);
    for (app, own) in [
        (&s.journal, entry["id"].as_str().unwrap().to_owned()),
        (&s.conversation, conv["id"].as_str().unwrap().to_owned()),
        (&s.profile, String::new()),
    ] {
        let doc: Value = app.get_json("/openapi.json").await;
        for op in operations(&doc) {
            if op.template.starts_with("/api/auth/logout") {
                continue; // it would end the session the rest of the run uses
            }
            for _ in 0..cases_per_operation() {
                let id = path_id()
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
                    .replace("OWN", &own);
                let q = query().new_tree(&mut runner).unwrap().current();
                let path = format!("{}?{q}", op.template.replace("{id}", &id));
                let mut req = app
                    .client
                    .request(op.method.clone(), app.url(&path))
                    .bearer_auth(&token);
                let sent_body = if op.body {
                    Some(body().new_tree(&mut runner).unwrap().current())
                } else {
                    None
                };
                let sent_body = sent_body.as_ref().map(render);
                if let Some(b) = &sent_body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.clone());
                }
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let content_type = res
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let text = res.text().await.unwrap();
                *statuses.entry(status).or_default() += 1;
                let body = sent_body.as_deref().unwrap_or("");
                if body.contains("\\u0000") || q.contains("%00") || path.contains("%00") {
                    with_nul += 1;
                }
                if body.contains("\\ud800") || body.contains("\\udfff") {
                    with_surrogate += 1;
                }
                let problem = serde_json::from_str::<Value>(&text).ok();
                let wrong = if status >= 500 {
                    Some("a 5xx")
                } else if status >= 400
                    && content_type.as_deref() != Some("application/problem+json")
                {
                    Some("an error that is not problem+json")
                } else if status >= 400 && problem.as_ref().is_none_or(|p| p["status"] != status) {
                    Some("a problem whose status is not the answer's")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    failures.push(format!(
                        "{wrong}: {} {path} {sent_body:?} → {status} {text}",
                        op.method
                    ));
                }
                sent += 1;
            }
        }
    }
    // Every method on every path: undocumented ones get a problem+json 405.
    for (app, own) in [
        (&s.journal, entry["id"].as_str().unwrap()),
        (&s.conversation, conv["id"].as_str().unwrap()),
        (&s.profile, ""),
    ] {
        let doc: Value = app.get_json("/openapi.json").await;
        for template in doc["paths"].as_object().unwrap().keys() {
            if template == "/api/auth/logout" {
                continue;
            }
            let path = template.replace("{id}", own);
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ] {
                let documented = doc["paths"][template]
                    .get(method.as_str().to_lowercase())
                    .is_some();
                let res = app
                    .client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                assert!(status < 500, "{method} {path} → {status}");
                if !documented {
                    assert_eq!(status, 405, "{method} {path}");
                }
                if status >= 400 {
                    assert_eq!(
                        res.headers()["content-type"],
                        "application/problem+json",
                        "{method} {path} → {status}"
                    );
                }
                sent += 1;
            }
        }
    }
    eprintln!(
        "{sent} generated requests ({with_nul} with NUL, {with_surrogate} with a lone surrogate); \
         answers by status: {statuses:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of them failed; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sent >= 600);
}

async fn login(s: &System) -> String {
    crate::system::register_and_login(s, "fuzz@example.com", "fuzz-password-123").await
}

/// Signs `claims` with the test key (or `other`), EdDSA, `kid` as given.
fn ed(claims: &Value, kid: Option<&str>, crit: bool, other: bool) -> String {
    use jsonwebtoken::{Algorithm, Header, encode};
    let (pair, _, _) = kai_testing::test_keys();
    let key = if other {
        kai_http::auth::keys::KeyPair::generate().private_pem
    } else {
        pair.private_pem.clone()
    };
    let signing = kai_http::auth::keys::parse_signing_pem(&key).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    if crit {
        header.crit = Some(vec!["exp".into()]);
    }
    encode(&header, claims, &signing.key).unwrap()
}

fn hs(alg: jsonwebtoken::Algorithm, claims: &Value, secret: &[u8]) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let mut header = Header::new(alg);
    header.kid = Some(kai_testing::test_keys().0.kid.clone());
    encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_by_every_service() {
    use jsonwebtoken::Algorithm::{HS256, HS512};
    let s = start().await;
    let valid = login(&s).await;
    let user = uuid::Uuid::new_v4();
    let now = chrono_free_now();
    let claims = |iat: i64, exp: i64, iss: &str, aud: &str| json!({"sub": user, "sid": uuid::Uuid::new_v4(), "iat": iat, "exp": exp, "iss": iss, "aud": aud});
    let good = claims(now, now + 600, "kai", "kai-api");
    let (pair, _, _) = kai_testing::test_keys();
    let kid = Some(pair.kid.as_str());
    let none_token = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(good.to_string())
    );
    let mut tampered = valid.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut nbf = good.clone();
    nbf["nbf"] = json!(now + 600);
    let bad: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt".into()),
        ("empty segments", "..".into()),
        ("tampered signature", tampered),
        ("alg none", none_token),
        // Algorithm confusion: HMAC keyed with the public key everyone can read.
        (
            "HS256 keyed with the public key",
            hs(HS256, &good, pair.public_pem.as_bytes()),
        ),
        (
            "HS512 with a secret",
            hs(HS512, &good, b"some-other-secret-some-other-secret"),
        ),
        ("another key claiming our kid", ed(&good, kid, false, true)),
        (
            "unknown kid",
            ed(&good, Some("ffffffffffffffff"), false, false),
        ),
        ("no kid", ed(&good, None, false, false)),
        ("a crit header", ed(&good, kid, true, false)),
        (
            "expired",
            ed(
                &claims(now - 60, now - 5, "kai", "kai-api"),
                kid,
                false,
                false,
            ),
        ),
        (
            "issued in the future",
            ed(
                &claims(now + 600, now + 900, "kai", "kai-api"),
                kid,
                false,
                false,
            ),
        ),
        ("not yet valid", ed(&nbf, kid, false, false)),
        (
            "ten years long",
            ed(
                &claims(now, now + 315_360_000, "kai", "kai-api"),
                kid,
                false,
                false,
            ),
        ),
        (
            "another audience",
            ed(
                &claims(now, now + 600, "kai", "kai-admin"),
                kid,
                false,
                false,
            ),
        ),
        (
            "another issuer",
            ed(
                &claims(now, now + 600, "evil", "kai-api"),
                kid,
                false,
                false,
            ),
        ),
    ];
    for (app, path) in [
        (&s.profile, "/api/profile"),
        (&s.journal, "/api/journal/entries"),
        (&s.conversation, "/api/conversations"),
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path} without a token");
        for (what, token) in &bad {
            let res = app
                .client
                .get(app.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 401, "{path} accepted a {what} token");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }
        assert_eq!(
            app.client
                .get(app.url(path))
                .bearer_auth(&valid)
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path} refuses a good token"
        );
    }
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn security_headers_and_no_version_banner_on_every_service() {
    let s = start().await;
    for app in [&s.profile, &s.journal, &s.conversation] {
        for path in ["/health", "/api/nope", "/api/journal/entries"] {
            let res = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.headers()["x-content-type-options"], "nosniff");
            assert!(res.headers().get("server").is_none(), "no server banner");
            assert!(res.headers().contains_key("x-request-id"));
        }
        // Header fields over 32 KiB are a 431 problem, before any handler runs…
        let res = app
            .client
            .get(app.url("/health"))
            .header("x-big", "a".repeat(40 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 431);
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "a problem body"
        );
        // …and a head over actix's 128 KiB buffer is a 431 too, whether it
        // arrives in one read (our bound) or in pieces (actix's, which may close
        // the connection first).
        let res = app
            .client
            .get(app.url("/health"))
            .header("x-big", "a".repeat(200 * 1024))
            .send()
            .await;
        if let Ok(res) = res {
            assert_eq!(res.status(), 431);
        }
    }
}
