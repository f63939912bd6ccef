//! Security round two (issue 12), from outside, as an attacker would try it:
//! unbounded metric labels, headers that let personal data be stored, HEAD and
//! 405 semantics, the docs page's CSP, cache pollution by page numbers, search
//! cost. Token forgery is in `hostile.rs`; lockout, registration limits and
//! `TRUSTED_PROXIES` in profile-service's `ratelimit` tests.

use kai_testing::{TestApp, TestUser};
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};

use crate::system::{call, start};

fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("kai_http_"))
        .count()
}

#[tokio::test]
async fn a_thousand_random_long_methods_leave_metrics_and_stats_bounded() {
    let s = start().await;
    let app = &s.journal;
    // One request of each kind first, so every series that may legitimately
    // appear (OTHER, 400, 404, 405) exists before the baseline.
    for m in ["PROPFIND", "BREW"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        app.client
            .request(method.clone(), app.url("/api/journal/entries"))
            .send()
            .await
            .unwrap();
        app.client
            .request(method, app.url("/no/such/path"))
            .send()
            .await
            .unwrap();
    }
    let long = Method::from_bytes("X".repeat(100).as_bytes()).unwrap();
    app.client
        .request(long, app.url("/health"))
        .send()
        .await
        .unwrap();
    // The scrape and the stats page count themselves: once each before the baseline.
    app.metrics().await;
    let detailed_before = app.get_json("/health/detailed").await.to_string().len();
    let before = app.metrics().await;

    let mut rng = rand::rng();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let len = if i % 100 == 0 {
            60_000
        } else {
            rng.random_range(1..2_000)
        };
        let name: String = (0..len)
            .map(|_| (b'A' + rng.random_range(0..26)) as char)
            .collect();
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let path = if i % 2 == 0 {
            "/api/journal/entries".to_owned()
        } else {
            format!("/random/{}", rng.random::<u64>())
        };
        let res = app
            .client
            .request(method, app.url(&path))
            .send()
            .await
            .unwrap();
        *statuses.entry(res.status().as_u16()).or_insert(0) += 1;
    }
    // Long ones are refused early; short unknown ones are one `OTHER` method.
    assert!(
        statuses.keys().all(|s| [400, 404, 405].contains(s)),
        "{statuses:?}"
    );

    let detailed_after = app.get_json("/health/detailed").await.to_string().len();
    let after = app.metrics().await;
    assert!(
        series(&after) <= series(&before) + 4,
        "series grew from {} to {}",
        series(&before),
        series(&after)
    );
    assert!(
        after.len() <= before.len() + 4096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        !after.contains("XXXXXXXXXXXXXXXXX"),
        "a raw method reached a label"
    );
    assert!(
        detailed_after <= detailed_before + 1024,
        "/health/detailed grew from {detailed_before} to {detailed_after}"
    );
}

#[tokio::test]
async fn head_works_wherever_get_does_and_405_lists_allow() {
    let s = start().await;
    let user = TestUser::new();
    for (app, path) in [
        (&s.journal, "/api/journal/entries"),
        (&s.conversation, "/api/conversations"),
        (&s.journal, "/health"),
        (&s.profile, "/openapi.json"),
    ] {
        let get = app.get(&user.token, path).await;
        let head = app
            .client
            .head(app.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
    let res = s
        .journal
        .client
        .delete(s.journal.url("/api/journal/search"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn auth_answers_and_uncached_personal_data_are_never_stored() {
    let s = start().await;
    let creds = json!({"email": "store@example.com", "password": "a long enough password"});
    let register = s
        .profile
        .client
        .post(s.profile.url("/api/auth/register"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    assert_eq!(register.headers()["cache-control"], "no-store");
    let login = s
        .profile
        .client
        .post(s.profile.url("/api/auth/login"))
        .json(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let token = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &s.journal,
        Method::POST,
        "/api/journal/entries",
        Some(&token),
        Some(json!({"title": "t", "content": "a private thought", "mood": 5})),
    )
    .await;
    assert_eq!(status, 201);
    let search = s
        .journal
        .client
        .get(s.journal.url("/api/journal/search?q=private"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 200);
    assert_eq!(
        search.headers()["cache-control"],
        "no-store",
        "uncached journal text"
    );
    // A cached read keeps its own revalidation policy.
    let list = s
        .journal
        .client
        .get(s.journal.url("/api/journal/entries"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.headers()["cache-control"], "private, no-cache");
}

#[tokio::test]
async fn the_docs_page_has_a_strict_csp_and_no_inline_script() {
    let s = start().await;
    let app = &s.journal;
    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    // The policy works only because the page has no inline script: every
    // <script> loads a file of its own origin.
    let html = res.text().await.unwrap();
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for s in scripts {
        let tag = &s[..s.find('>').unwrap()];
        assert!(
            tag.contains("src=\"./"),
            "inline or foreign script: <script{tag}>"
        );
        let body = &s[s.find('>').unwrap() + 1..s.find("</script>").unwrap()];
        assert!(body.trim().is_empty(), "inline script body");
    }
    for asset in ["swagger-initializer.js", "swagger-ui-bundle.js"] {
        let res = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
}

async fn list(app: &TestApp, token: &str, query: &str) -> (u16, String, Value) {
    let res = app
        .client
        .get(app.url(&format!("/api/journal/entries?{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (res.status().as_u16(), cache, res.json().await.unwrap())
}

#[tokio::test]
async fn pages_beyond_the_last_are_answered_but_not_cached() {
    let s = start().await;
    let user = TestUser::new();
    for i in 0..3 {
        let (status, _) = call(
            &s.journal,
            Method::POST,
            "/api/journal/entries",
            Some(&user.token),
            Some(json!({"title": format!("e{i}"), "content": "text", "mood": 5})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let loads = |app: &TestApp| {
        app.platform
            .metrics
            .cache_misses
            .with_label_values(&["journal_list"])
            .get()
    };
    let (status, _, first) = list(&s.journal, &user.token, "page=2&page_size=2").await;
    assert_eq!(
        (status, first["entries"].as_array().unwrap().len()),
        (200, 1)
    );
    let misses = loads(&s.journal);
    for page in 3..200 {
        let (status, cache, body) =
            list(&s.journal, &user.token, &format!("page={page}&page_size=2")).await;
        assert_eq!(status, 200);
        assert_eq!(cache, "BYPASS", "page {page}");
        assert_eq!(body["entries"], json!([]));
        assert_eq!(
            (body["total"].as_i64(), body["has_more"].as_bool()),
            (Some(3), Some(false))
        );
    }
    assert_eq!(
        loads(&s.journal),
        misses,
        "no page beyond the last was loaded into the cache"
    );
}

#[tokio::test]
async fn search_is_rate_limited_per_user() {
    let s = start().await;
    let (greedy, other) = (TestUser::new(), TestUser::new());
    let search = |token: String| {
        let app = &s.journal;
        async move {
            app.client
                .get(app.url("/api/journal/search?q=one+two+three"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..20 {
        assert_eq!(
            search(greedy.token.clone()).await.status(),
            200,
            "search {i}"
        );
    }
    let res = search(greedy.token.clone()).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        search(other.token.clone()).await.status(),
        200,
        "another user is not affected"
    );
}
