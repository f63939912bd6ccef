use serde_json::Value;

use crate::helpers::{User, read, spawn};

#[tokio::test]
async fn metrics_export_llm_outcomes_and_cache_namespaces() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "metrics").await;
    // Before any message: every outcome is exported at zero.
    let text = s.app.metrics().await;
    for outcome in ["success", "cached", "error", "timeout"] {
        assert!(
            text.contains(&format!(
                r#"kai_llm_requests_total{{outcome="{outcome}",service="conversation"}} 0"#
            )),
            "{outcome}: {text}"
        );
    }
    for ns in ["conversation_list", "conversation_detail", "ai_response"] {
        assert!(
            text.contains(&format!(
                r#"kai_cache_misses_total{{namespace="{ns}",service="conversation"}}"#
            )),
            "{ns}"
        );
    }
    s.say(&user, &id, "count me").await;
    s.say(&user, &id, "count me").await;
    read(&s.app, &user, &format!("/api/conversations/{id}")).await;
    let text = s.app.metrics().await;
    assert!(
        text.contains(r#"kai_llm_requests_total{outcome="success",service="conversation"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"kai_llm_requests_total{outcome="cached",service="conversation"} 1"#));
    assert!(
        text.contains(r#"kai_cache_hits_total{namespace="ai_response",service="conversation"} 1"#)
    );
    assert!(
        text.contains(r#"endpoint="/api/conversations/{id}/messages""#),
        "route pattern label"
    );
    assert!(!text.contains(&id), "raw ids never become labels");
    kai_testing::assert_exports_dashboard_metrics(&text, &[]);
}

#[tokio::test]
async fn the_openapi_document_and_health_describe_the_service() {
    let s = spawn().await;
    s.app
        .assert_openapi_documents(&[
            "/api/conversations",
            "/api/conversations/{id}",
            "/api/conversations/{id}/messages",
            "/api/conversations/{id}/messages/batch",
        ])
        .await;
    assert_eq!(s.app.status("/health/ready").await, 200);
    let d: Value = s.app.get_json("/health/detailed").await;
    assert_eq!(
        (d["status"].as_str(), d["service"].as_str()),
        (Some("healthy"), Some("conversation")),
        "{d}"
    );
}
