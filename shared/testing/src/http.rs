//! Talking to a service under test: the client and the answer assertions.

/// An HTTP client for tests (installs the rustls crypto provider reqwest needs).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Asserts an RFC 9457 problem answer with the given status; returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    assert_eq!(
        res.headers().get("content-type").expect("content type"),
        "application/problem+json"
    );
    let body: serde_json::Value = res.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["type"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

/// Asserts that a `/metrics` text exports every metric the Grafana dashboard and
/// the alert rules query (`deploy-tests/metric_names.txt`), except those whose
/// name starts with one of `not_here` (another service's).
pub fn assert_exports_dashboard_metrics(metrics: &str, not_here: &[&str]) {
    let wanted = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy-tests/metric_names.txt"
    ))
    .expect("deploy-tests/metric_names.txt");
    for name in wanted
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if not_here.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        assert!(
            metrics.contains(name),
            "dashboard metric {name} is not exported"
        );
    }
}
