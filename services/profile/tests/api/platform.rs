use serde_json::Value;

use crate::helpers::spawn;

#[tokio::test]
async fn metrics_count_profile_cache_hits_by_namespace() {
    let p = spawn().await;
    let a = p.account().await;
    for _ in 0..2 {
        crate::helpers::read(&p.app, &a.token, "/api/profile").await;
    }
    let text = p.app.metrics().await;
    assert!(
        text.contains(r#"kai_cache_hits_total{namespace="user_profile",service="profile"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kai_cache_misses_total{namespace="user_profile",service="profile"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"endpoint="/api/profile""#),
        "route pattern label"
    );
    assert!(text.contains(r#"endpoint="/api/auth/login""#));
    assert!(
        !text.contains(&a.token) && !text.contains(&a.email),
        "no personal data in metrics"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_auth_and_profile_paths() {
    let p = spawn().await;
    let doc = p
        .app
        .assert_openapi_documents(&[
            "/api/auth/register",
            "/api/auth/login",
            "/api/auth/logout",
            "/api/profile",
        ])
        .await;
    assert!(doc["paths"]["/api/profile"]["patch"].is_object());
    // Register and login are the routes that need no token.
    assert_eq!(
        doc["paths"]["/api/auth/login"]["post"]["security"],
        serde_json::json!([{}])
    );
}

#[tokio::test]
async fn health_reports_the_profile_service_ready() {
    let p = spawn().await;
    assert_eq!(p.app.status("/health/ready").await, 200);
    let d: Value = p.app.get_json("/health/detailed").await;
    assert_eq!(d["service"], "profile");
    assert_eq!(d["status"], "healthy", "{d}");
}

#[tokio::test]
async fn hot_queries_use_indexes_on_a_large_table() {
    let p = spawn().await;
    let conn = p.db.connect().await;
    // 100k users, profiles and sessions, as SPEC §7 asks.
    conn.batch_execute(
        "INSERT INTO profile.users (id, email, email_key, password_hash)
         SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid, 'User' || g || '@example.org', 'user' || g || '@example.org', '$argon2id$v=19$x'
         FROM generate_series(1, 100000) g;
         INSERT INTO profile.profiles (user_id, traits) SELECT id, jsonb_build_object('n', random()) FROM profile.users;
         INSERT INTO profile.sessions (id, user_id, token_hash, expires_at)
         SELECT gen_random_uuid(), id, encode(sha256(id::text::bytea), 'hex'), now() + interval '1 hour' FROM profile.users;
         ANALYZE profile.users; ANALYZE profile.profiles; ANALYZE profile.sessions;",
    )
    .await
    .unwrap();
    let probe = uuid::Uuid::parse_str("00000000-0000-0000-0000-000000000042").unwrap();
    kai_testing::assert_plans_use_indexes(
        &conn,
        profile_service::queries::HOT_QUERIES,
        |_| vec![probe],
        "User42@example.org",
    )
    .await;
}
