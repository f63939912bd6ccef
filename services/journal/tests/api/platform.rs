use std::io::Read;

use serde_json::Value;

use crate::helpers::{User, assert_problem, read, spawn};

#[tokio::test]
async fn every_response_carries_request_id_and_response_time() {
    let j = spawn().await;
    let res = j
        .app
        .client
        .get(j.app.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-42");
    let took = res.headers()["x-response-time"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        took.ends_with("ms") && took.trim_end_matches("ms").parse::<f64>().is_ok(),
        "{took}"
    );
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let res = j
        .app
        .client
        .get(j.app.url("/api/journal/entries"))
        .send()
        .await
        .unwrap();
    assert!(
        !res.headers()["x-request-id"].is_empty(),
        "generated when absent, errors included"
    );
}

#[tokio::test]
async fn large_responses_are_compressed_and_small_ones_are_not() {
    let j = spawn().await;
    let user = User::new();
    for i in 0..10 {
        j.entry(
            &user,
            &format!("a long enough entry number {i} to make the list big"),
        )
        .await;
    }
    let res = j
        .get(&user, "/api/journal/entries")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let raw = res.bytes().await.unwrap();
    let mut text = String::new();
    flate2_free_gunzip(&raw, &mut text);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["total"], 10);
    let res = j
        .app
        .client
        .get(j.app.url("/health"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(
        res.headers().get("content-encoding").is_none(),
        "tiny bodies stay uncompressed"
    );
    let res = j
        .get(&user, "/api/journal/entries")
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "br");
}

/// gunzip through the system `gzip` (keeps the test free of another crate).
fn flate2_free_gunzip(raw: &[u8], out: &mut String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw).unwrap();
    child.stdout.take().unwrap().read_to_string(out).unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn unknown_routes_get_a_problem_404_and_unknown_methods_a_problem_405() {
    let j = spawn().await;
    let res = j
        .app
        .client
        .put(j.app.url("/api/journal/entries"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 405).await;
    assert_problem(
        j.app
            .client
            .get(j.app.url("/api/nope"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let user = User::new();
    assert_problem(
        j.get(&user, "/api/journal/entries/not-a-uuid")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn health_endpoints_report_liveness_readiness_and_details() {
    let j = spawn().await;
    let user = User::new();
    j.entry(&user, "x").await;
    read(&j.app, &user, "/api/journal/entries").await;
    read(&j.app, &user, "/api/journal/entries").await;
    let live: Value = j.app.get_json("/health").await;
    assert_eq!(live, serde_json::json!({"status": "ok"}));
    assert_eq!(j.app.status("/health/ready").await, 200);
    let d: Value = j.app.get_json("/health/detailed").await;
    assert_eq!(d["status"], "healthy", "{d}");
    assert_eq!(d["service"], "journal");
    assert_eq!(d["database"]["status"], "healthy");
    assert!(d["database"]["pool"]["max_size"].as_u64().unwrap() > 0);
    assert_eq!(d["redis"]["status"], "healthy");
    assert_eq!(d["cache"]["hits"], 1);
    assert_eq!(d["cache"]["misses"], 1);
    let list = &d["performance"]["endpoints"]["GET /api/journal/entries"];
    assert_eq!(list["count"], 2, "{d}");
    assert!(list["max_time_ms"].as_f64().unwrap() >= list["min_time_ms"].as_f64().unwrap());
    assert!(d["performance"]["slow_query_count"].is_u64());
}

#[tokio::test]
async fn readiness_fails_when_migrations_are_missing() {
    let j = spawn().await;
    let conn = j.db.connect().await;
    conn.execute(
        "DELETE FROM journal.refinery_history WHERE version = (SELECT max(version) FROM journal.refinery_history)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(j.app.status("/health/ready").await, 503);
    assert_eq!(j.app.status("/health").await, 200);
}

#[tokio::test]
async fn metrics_carry_the_spec_names_and_route_patterns() {
    let j = spawn().await;
    let user = User::new();
    let e = j.entry(&user, "m").await;
    read(
        &j.app,
        &user,
        &format!("/api/journal/entries/{}", e["id"].as_str().unwrap()),
    )
    .await;
    read(
        &j.app,
        &user,
        &format!("/api/journal/entries/{}", e["id"].as_str().unwrap()),
    )
    .await;
    let text = j.app.metrics().await;
    for name in [
        "kai_http_requests_total",
        "kai_http_requests_duration_seconds_bucket",
        "kai_cache_hits_total",
        "kai_cache_misses_total",
        "kai_db_query_duration_seconds_bucket",
        "kai_db_slow_queries_total",
        "kai_db_pool_connections",
        "kai_redis_up",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(
        text.contains(r#"endpoint="/api/journal/entries/{id}""#),
        "route pattern label"
    );
    assert!(
        !text.contains(e["id"].as_str().unwrap()),
        "raw ids never become labels"
    );
    assert!(
        text.contains(r#"kai_cache_hits_total{namespace="journal_entry",service="journal"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"state="in_use""#));
    // Every metric the dashboards and alerts query is exported (kai_llm_*: conversation only).
    kai_testing::assert_exports_dashboard_metrics(&text, &["kai_llm"]);
}

#[tokio::test]
async fn the_openapi_document_and_docs_ui_are_served() {
    let j = spawn().await;
    j.app
        .assert_openapi_documents(&[
            "/api/journal/entries",
            "/api/journal/entries/{id}",
            "/api/journal/search",
            "/api/journal/stats",
        ])
        .await;
    let bare = j.app.client.get(j.app.url("/docs")).send().await.unwrap();
    assert!(
        bare.status().is_redirection() || bare.status() == 200,
        "GET /docs → {}",
        bare.status()
    );
    if bare.status().is_redirection() {
        assert_eq!(bare.headers()["location"], "/docs/");
    }
    let ui = j.app.client.get(j.app.url("/docs/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(
        ui.text().await.unwrap().contains("swagger"),
        "the vendored Swagger UI is served"
    );
}

#[tokio::test]
async fn slow_queries_are_counted_and_shown_with_their_sql_but_not_their_parameters() {
    let j = crate::helpers::spawn_with(
        Some(&kai_testing::redis_url()),
        &[("SLOW_QUERY_THRESHOLD_MS", "0")],
    )
    .await;
    let user = User::new();
    j.entry(&user, "a very private sentence").await;
    let d: Value = j.app.get_json("/health/detailed").await;
    assert!(
        d["performance"]["slow_query_count"].as_u64().unwrap() >= 1,
        "{d}"
    );
    let shown = d["performance"]["slow_queries"].to_string();
    assert!(
        shown.contains("INSERT INTO journal.journal_entries"),
        "{shown}"
    );
    assert!(!shown.contains("a very private sentence"));
    let metrics = j.app.metrics().await;
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("kai_db_slow_queries_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap();
    assert!(counted >= 1.0);
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let j = crate::helpers::spawn_with(
        Some(&kai_testing::redis_url()),
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example, https://admin.example",
        )],
    )
    .await;
    let preflight = |origin: &'static str| {
        j.app
            .client
            .request(reqwest::Method::OPTIONS, j.app.url("/api/journal/entries"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let user = User::new();
    let res = j
        .get(&user, "/api/journal/entries")
        .header("origin", "https://admin.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://admin.example"
    );
    assert!(
        res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
}
