//! The documents and the routers agree: every `/api/**` route actix serves is in the
//! service's OpenAPI document with exactly the methods it answers, and nothing is
//! documented that is not served. actix has no public list of its routes, so the
//! patterns come from the resource map's `Debug` form (the tree of resources and
//! scopes) and the methods from asking each resource every method: a method the
//! resource does not have is answered 405 by actix itself, before any extractor.

use std::collections::BTreeSet;

use actix_web::test as actix_test;
use actix_web::{App, HttpRequest, HttpResponse, web};
use kai_platform::ServiceDef;
use kai_testing as testing;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn services() -> Vec<ServiceDef> {
    vec![
        journal_service::service(),
        conversation_service::service(&testing::service_settings(&[])),
        profile_service::service(),
    ]
}

/// Full patterns of the leaf resources in a `ResourceMap`'s `Debug` text: each
/// `ResourceMap {` opens a node whose first `patterns: Single("…")` is its own
/// pattern, relative to its parent's; nodes with `nodes: None` are resources.
fn patterns_of(debug: &str) -> BTreeSet<String> {
    struct Node {
        depth: usize,
        full: Option<String>,
        leaf: bool,
    }
    let mut out = BTreeSet::new();
    let mut stack: Vec<Node> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let bytes = debug.as_bytes();
    while i < bytes.len() {
        let rest = &debug[i..];
        if rest.starts_with("ResourceMap {") {
            depth += 1;
            stack.push(Node {
                depth,
                full: None,
                leaf: false,
            });
            i += "ResourceMap {".len();
            continue;
        }
        if let Some(after) = rest.strip_prefix("patterns: Single(\"") {
            let end = after.find('"').expect("closing quote");
            let own = &after[..end];
            let parent = stack
                .iter()
                .rev()
                .skip(1)
                .find_map(|n| n.full.clone())
                .unwrap_or_default();
            if let Some(top) = stack.last_mut()
                && top.full.is_none()
            {
                top.full = Some(format!("{parent}{own}"));
            }
            i += "patterns: Single(\"".len() + end;
            continue;
        }
        if rest.starts_with("nodes: None") {
            if let Some(top) = stack.last_mut() {
                top.leaf = true;
            }
            i += "nodes: None".len();
            continue;
        }
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                if stack.last().is_some_and(|n| n.depth == depth) {
                    let node = stack.pop().expect("node");
                    if node.leaf
                        && let Some(full) = node.full
                    {
                        out.insert(full);
                    }
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

async fn served_operations(def: &ServiceDef) -> BTreeSet<(String, String)> {
    let routes = def.routes.clone();
    let app = actix_test::init_service(App::new().configure(|cfg| routes(cfg)).route(
        "/__routes",
        web::get().to(|req: HttpRequest| async move {
            HttpResponse::Ok().body(format!("{:?}", req.resource_map()))
        }),
    ))
    .await;
    let res = actix_test::call_service(
        &app,
        actix_test::TestRequest::get().uri("/__routes").to_request(),
    )
    .await;
    let debug = String::from_utf8(actix_test::read_body(res).await.to_vec()).expect("utf-8");
    let patterns: BTreeSet<String> = patterns_of(&debug)
        .into_iter()
        .filter(|p| p.starts_with("/api/"))
        .collect();
    assert!(!patterns.is_empty(), "no /api routes found in {debug}");
    let mut ops = BTreeSet::new();
    for pattern in patterns {
        let concrete = pattern.replace("{id}", "00000000-0000-0000-0000-000000000001");
        assert!(!concrete.contains('{'), "unexpected parameter in {pattern}");
        for method in METHODS {
            let req = actix_test::TestRequest::default()
                .method(method.parse().expect("method"))
                .uri(&concrete)
                .to_request();
            // Registered methods fail later (no platform in this app) or succeed;
            // only an unregistered one is actix's own 405.
            let res = actix_test::call_service(&app, req).await;
            if res.status() != 405 {
                ops.insert((pattern.clone(), method.to_owned()));
            }
        }
    }
    ops
}

fn documented_operations(def: &ServiceDef) -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(&def.openapi).expect("document serializes");
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                ops.insert((path.clone(), method.to_owned()));
            }
        }
    }
    ops
}

#[actix_web::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    for def in services() {
        let served = served_operations(&def).await;
        let documented = documented_operations(&def);
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "{}: served but not documented: {undocumented:?}; documented but not served: {unserved:?}",
            def.name
        );
    }
}

#[test]
fn route_patterns_are_read_from_nested_scopes() {
    let debug = r#"ResourceMap { pattern: ResourceDef { patterns: Single("") }, nodes: Some([ResourceMap { pattern: ResourceDef { patterns: Single("/api/x") }, nodes: Some([ResourceMap { pattern: ResourceDef { patterns: Single("") }, nodes: None }, ResourceMap { pattern: ResourceDef { patterns: Single("/{id}") }, nodes: None }]) }, ResourceMap { pattern: ResourceDef { patterns: Single("/api/y") }, nodes: None }]) }"#;
    let got: Vec<_> = patterns_of(debug).into_iter().collect();
    assert_eq!(got, ["/api/x", "/api/x/{id}", "/api/y"]);
}

/// Writes each service's document to `target/openapi/<service>.json` for tools
/// (`scripts/check-api` validates the served ones; this copy is for client
/// generators and for reading).
#[test]
fn documents_are_written_for_tools_and_read_back_whole() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../openapi");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for def in services() {
        let doc = kai_http::openapi::complete(&def.openapi);
        let json = serde_json::to_string_pretty(&doc).expect("document serializes");
        let file = dir.join(format!("{}.json", def.name));
        std::fs::write(&file, json).expect("write");
        // What a generator reads is the document the service serves, whole.
        let read: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read back"))
                .expect("the file is JSON");
        assert_eq!(read, doc, "{}", def.name);
        assert!(
            read["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}: {}",
            def.name,
            read["openapi"]
        );
        assert!(
            read["paths"].as_object().is_some_and(|p| !p.is_empty()),
            "{} documents no path",
            def.name
        );
    }
}

/// A request with the given method and headers; the status and the headers.
async fn raw(
    app: &kai_testing::TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, reqwest::header::HeaderMap) {
    let mut req = app
        .client
        .request(method.parse().expect("method"), app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    (res.status().as_u16(), res.headers().clone())
}

#[tokio::test]
async fn a_cursor_from_one_service_is_refused_by_another() {
    let s = crate::system::start().await;
    let user = testing::TestUser::new();
    let bearer = format!("Bearer {}", user.token);
    for _ in 0..2 {
        let body = serde_json::json!({ "content": "an entry" });
        raw(
            &s.journal,
            "POST",
            "/api/journal/entries",
            &[("authorization", &bearer)],
            Some(body),
        )
        .await;
        raw(
            &s.conversation,
            "POST",
            "/api/conversations",
            &[("authorization", &bearer)],
            Some(serde_json::json!({})),
        )
        .await;
    }
    let (_, journal_page) = crate::system::call(
        &s.journal,
        reqwest::Method::GET,
        "/api/journal/entries?limit=1",
        Some(&user.token),
        None,
    )
    .await;
    let cursor = journal_page["next_cursor"]
        .as_str()
        .expect("journal cursor");
    let (status, problem) = crate::system::call(
        &s.conversation,
        reqwest::Method::GET,
        &format!("/api/conversations?limit=1&cursor={cursor}"),
        Some(&user.token),
        None,
    )
    .await;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (400, Some("cursor"))
    );
    let (_, own) = crate::system::call(
        &s.conversation,
        reqwest::Method::GET,
        "/api/conversations?limit=1",
        Some(&user.token),
        None,
    )
    .await;
    let own = own["next_cursor"].as_str().expect("conversation cursor");
    let (status, _) = crate::system::call(
        &s.conversation,
        reqwest::Method::GET,
        &format!("/api/conversations?limit=1&cursor={own}"),
        Some(&user.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_201_carries_a_location_that_reads_the_resource() {
    let s = crate::system::start().await;
    let user = testing::TestUser::new();
    let bearer = format!("Bearer {}", user.token);
    let auth = [("authorization", bearer.as_str())];
    let mut locations = Vec::new();
    for (app, path, body) in [
        (
            &s.journal,
            "/api/journal/entries".to_owned(),
            serde_json::json!({ "content": "x" }),
        ),
        (
            &s.conversation,
            "/api/conversations".to_owned(),
            serde_json::json!({ "title": "t" }),
        ),
    ] {
        let (status, headers) = raw(app, "POST", &path, &auth, Some(body)).await;
        assert_eq!(status, 201);
        let location = headers["location"].to_str().unwrap().to_owned();
        let (status, _) = raw(app, "GET", &location, &auth, None).await;
        assert_eq!(status, 200, "{location}");
        locations.push(location);
    }
    let conversation = &locations[1];
    for (path, body) in [
        (
            format!("{conversation}/messages"),
            serde_json::json!({ "content": "hello" }),
        ),
        (
            format!("{conversation}/messages/batch"),
            serde_json::json!({ "messages": [{ "role": "user", "content": "hi" }] }),
        ),
    ] {
        let (status, headers) = raw(&s.conversation, "POST", &path, &auth, Some(body)).await;
        assert_eq!(
            (status, headers["location"].to_str().unwrap()),
            (201, conversation.as_str())
        );
    }
    let (status, headers) = raw(
        &s.profile,
        "POST",
        "/api/auth/register",
        &[],
        Some(serde_json::json!({ "email": "loc@example.org", "password": "long enough password" })),
    )
    .await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (201, "/api/profile")
    );
}

#[tokio::test]
async fn cors_exposes_what_clients_read_and_preflights_offer_only_the_routes_methods() {
    let origin = "https://app.example";
    let s = crate::system::start_with(&[("CORS_ALLOWED_ORIGINS", origin)]).await;
    let id = "/api/journal/entries/00000000-0000-0000-0000-000000000001";
    let preflight = |method: &'static str, headers: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ]
    };
    let (status, headers) = raw(
        &s.journal,
        "OPTIONS",
        id,
        &preflight("PATCH", "authorization, content-type"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-methods"],
        "DELETE, GET, PATCH"
    );
    let (status, headers) = raw(
        &s.journal,
        "OPTIONS",
        id,
        &preflight("PUT", "authorization"),
        None,
    )
    .await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "DELETE, GET, PATCH")
    );
    let (status, _) = raw(
        &s.journal,
        "OPTIONS",
        id,
        &preflight("GET", "x-not-allowed"),
        None,
    )
    .await;
    assert_ne!(status, 200, "a header no route accepts is refused");

    let (status, headers) = raw(
        &s.journal,
        "GET",
        "/api/journal/entries",
        &[("origin", origin)],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let exposed = headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in ["retry-after", "etag", "x-request-id", "x-cache", "location"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }

    // Outside CORS, a method a route lacks is a 405 that says which it has
    // (HEAD wherever GET is).
    let (status, headers) = raw(&s.journal, "PUT", "/api/journal/entries", &[], None).await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "GET, POST, HEAD")
    );
    let (status, headers) = raw(&s.profile, "DELETE", "/api/auth/login", &[], None).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (405, "POST"));
}
