//! The documents and the routers agree: every `/api/**` route actix serves is in the
//! service's OpenAPI document with exactly the methods it answers, and nothing is
//! documented that is not served. actix has no public list of its routes, so the
//! patterns come from the resource map's `Debug` form (the tree of resources and
//! scopes) and the methods from asking each resource every method: a method the
//! resource does not have is answered 405 by actix itself, before any extractor.

use std::collections::BTreeSet;

use actix_web::test as actix_test;
use actix_web::{App, HttpRequest, HttpResponse, web};
use kai_shared::ServiceDef;
use kai_shared::testing;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn services() -> Vec<ServiceDef> {
    let settings = testing::settings("postgres://unused@127.0.0.1:1/unused", None, "unused", &[]);
    vec![
        journal_service::service(),
        conversation_service::service(&settings),
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
fn documents_are_written_for_tools() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../openapi");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for def in services() {
        let doc = kai_shared::http::openapi::complete(&def.openapi);
        let json = serde_json::to_string_pretty(&doc).expect("document serializes");
        std::fs::write(dir.join(format!("{}.json", def.name)), json).expect("write");
    }
}
