//! Production connections: PostgreSQL over TLS, checked as libpq's `sslmode` says,
//! against a private PostgreSQL with `ssl=on` and a certificate from a CA the test
//! makes; Redis over TLS (`rediss://`) with an ACL user, against a private
//! TLS-only redis-server with a certificate from the same kind of CA. A
//! certificate that does not prove the server, or a wrong Redis password, stops
//! the service at start with one line naming the variable; nothing falls back to
//! plaintext, and no password reaches the message.

use kai_platform::server::{Application, RunOptions};
use kai_testing::{
    self as testing, PrivatePostgres, PrivateRedis, REDIS_ACL_USER, TestApp, TestCa, TestDb,
    TestUser,
};
use serde_json::json;

/// Whether the application's own pooled connection is encrypted (PostgreSQL's view).
async fn pool_connection_is_encrypted(app: &TestApp) -> bool {
    let db = &app.platform.db;
    let conn = db.conn().await.expect("pooled connection");
    let row = db
        .query_one(
            &conn,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    row.get(0)
}

#[tokio::test]
async fn postgresql_over_tls_with_verify_full_serves_requests_encrypted() {
    let ca = TestCa::new();
    let pg = PrivatePostgres::start(Some(&ca));
    let settings = testing::settings(
        &pg.url("127.0.0.1", "sslmode=verify-full"),
        None,
        "kai-tls",
        &[("DATABASE_CA_FILE", &ca.ca_file())],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    let user = TestUser::new();
    let res = app
        .client
        .post(app.url("/api/journal/entries"))
        .bearer_auth(&user.token)
        .json(&json!({"content": "written over TLS"}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 201);
    let (status, _, page) = app.read(&user.token, "/api/journal/entries").await;
    assert_eq!(status, 200);
    assert_eq!(page["entries"][0]["content"], "written over TLS");
    assert!(pool_connection_is_encrypted(&app).await);
    app.stop().await;

    // libpq's default (`prefer`) takes TLS when the server offers it.
    let settings = testing::settings(&pg.url("localhost", ""), None, "kai-tls", &[]);
    let app = TestApp::start(journal_service::service(), settings).await;
    assert!(pool_connection_is_encrypted(&app).await);
    app.stop().await;
}

/// Builds a journal-service and returns the start-up error's one line.
async fn start_error(database_url: &str, extra: &[(&str, &str)]) -> String {
    let settings = testing::settings(database_url, None, "kai-tls", extra);
    let result = Application::build(
        settings,
        journal_service::service(),
        RunOptions {
            handle_signals: false,
            workers: Some(1),
        },
    )
    .await;
    match result {
        Ok(_) => panic!("{database_url} connected; it must not"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_that_names_another_host_at_start() {
    let ca = TestCa::new();
    let pg = PrivatePostgres::start(Some(&ca));
    let ca_file = ca.ca_file();

    // The server's certificate names localhost and 127.0.0.1; we say the database
    // is db.example.internal (hostaddr routes the socket to the same server).
    let url = format!(
        "postgres://postgres@db.example.internal:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full",
        pg.port
    );
    let line = start_error(&url, &[("DATABASE_CA_FILE", &ca_file)]).await;
    assert!(
        line.starts_with(&format!(
            "DATABASE_URL: TLS to db.example.internal:{} failed (sslmode=verify-full",
            pg.port
        )),
        "{line}"
    );
    assert!(line.contains("not valid for name"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");

    // verify-ca checks the chain only: the same URL connects.
    let url = url.replace("verify-full", "verify-ca");
    let settings = testing::settings(&url, None, "kai-tls", &[("DATABASE_CA_FILE", &ca_file)]);
    let app = TestApp::start(journal_service::service(), settings).await;
    assert!(pool_connection_is_encrypted(&app).await);
    app.stop().await;

    // Without the private CA the chain leads nowhere trusted, under both modes.
    for mode in ["verify-full", "verify-ca"] {
        let line = start_error(&pg.url("127.0.0.1", &format!("sslmode={mode}")), &[]).await;
        assert!(
            line.starts_with("DATABASE_URL: TLS to 127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("UnknownIssuer"), "{line}");
    }
}

#[tokio::test]
async fn redis_over_tls_as_an_acl_user_caches_and_invalidates() {
    let ca = TestCa::new();
    let redis = PrivateRedis::start_tls(&ca);
    let db = TestDb::create().await;
    let (user, password) = REDIS_ACL_USER;
    let url = format!("rediss://{user}:{password}@127.0.0.1:{}", redis.port);
    let settings = testing::settings(
        &db.url,
        Some(&url),
        "kai-tls",
        &[("REDIS_CA_FILE", &ca.ca_file())],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    assert!(app.platform.cache.l1_trusted(), "subscribed over TLS");
    let reader = TestUser::new();
    let post = |content: &'static str| {
        app.client
            .post(app.url("/api/journal/entries"))
            .bearer_auth(&reader.token)
            .json(&json!({ "content": content }))
            .send()
    };
    assert_eq!(post("first").await.unwrap().status().as_u16(), 201);
    let (_, first, _) = app.read(&reader.token, "/api/journal/entries").await;
    let (_, second, page) = app.read(&reader.token, "/api/journal/entries").await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(post("second").await.unwrap().status().as_u16(), 201);
    // The create refilled the hot page with its bump (a script the ACL user may
    // run): a hit, with both entries.
    let (_, after, page) = app.read(&reader.token, "/api/journal/entries").await;
    assert_eq!(after, "HIT");
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let health = app.get_json("/health/detailed").await;
    assert_eq!(health["redis"]["status"], "healthy", "{health}");

    // Every connection the service holds is the ACL user's, over TLS.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.connection())
        .unwrap();
    let ours: Vec<&str> = clients
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .collect();
    assert!(!ours.is_empty(), "{clients}");
    for line in ours {
        assert!(line.contains(&format!("user={user}")), "{line}");
    }
    app.stop().await;
}

/// Builds a journal-service against `redis_url` and returns the start-up error's line.
async fn redis_start_error(redis_url: &str, extra: &[(&str, &str)]) -> String {
    let db = TestDb::create().await;
    let settings = testing::settings(&db.url, Some(redis_url), "kai-tls", extra);
    let result = Application::build(
        settings,
        journal_service::service(),
        RunOptions {
            handle_signals: false,
            workers: Some(1),
        },
    )
    .await;
    match result {
        Ok(_) => panic!("started against {redis_url}; it must not"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_wrong_redis_password_or_an_untrusted_certificate_stops_the_start() {
    let ca = TestCa::new();
    let redis = PrivateRedis::start_tls(&ca);
    let (user, _) = REDIS_ACL_USER;
    let wrong = "not-the-password-4711";
    let url = format!("rediss://{user}:{wrong}@127.0.0.1:{}", redis.port);
    let line = redis_start_error(&url, &[("REDIS_CA_FILE", &ca.ca_file())]).await;
    assert!(line.starts_with("REDIS_URL: "), "{line}");
    assert!(line.contains("AuthenticationFailed"), "{line}");
    assert!(!line.contains(wrong), "the password leaked: {line}");
    assert!(!line.contains('\n'), "one line: {line}");

    // The right password, but the system roots do not know the test CA.
    let (_, password) = REDIS_ACL_USER;
    let url = format!("rediss://{user}:{password}@127.0.0.1:{}", redis.port);
    let line = redis_start_error(&url, &[]).await;
    assert!(line.starts_with("REDIS_URL: "), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(!line.contains(password), "the password leaked: {line}");
}

#[tokio::test]
async fn only_prefer_falls_back_to_plaintext_and_disable_never_encrypts() {
    // A server without TLS: every mode that asks for TLS refuses to start.
    let plain = PrivatePostgres::start(None);
    for mode in ["require", "verify-ca", "verify-full"] {
        let line = start_error(&plain.url("127.0.0.1", &format!("sslmode={mode}")), &[]).await;
        assert!(line.starts_with("DATABASE_URL: "), "{mode}: {line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
    let settings = testing::settings(
        &plain.url("127.0.0.1", "sslmode=prefer"),
        None,
        "kai-tls",
        &[],
    );
    let app = TestApp::start(journal_service::service(), settings).await;
    assert!(
        !pool_connection_is_encrypted(&app).await,
        "prefer: plaintext when offered nothing"
    );
    app.stop().await;

    // A server with TLS: `disable` stays plaintext; `require` encrypts without a
    // CA (libpq: no check), and checks the chain once DATABASE_CA_FILE is given.
    let ca = TestCa::new();
    let tls = PrivatePostgres::start(Some(&ca));
    for (mode, extra, encrypted) in [
        ("disable", vec![], false),
        ("require", vec![], true),
        ("require", vec![("DATABASE_CA_FILE", ca.ca_file())], true),
    ] {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let settings = testing::settings(
            &tls.url("127.0.0.1", &format!("sslmode={mode}")),
            None,
            "kai-tls",
            &extra,
        );
        let app = TestApp::start(journal_service::service(), settings).await;
        assert_eq!(
            pool_connection_is_encrypted(&app).await,
            encrypted,
            "{mode}"
        );
        app.stop().await;
    }
    let other = TestCa::new();
    let line = start_error(
        &tls.url("127.0.0.1", "sslmode=require"),
        &[("DATABASE_CA_FILE", &other.ca_file())],
    )
    .await;
    // Both test CAs are named kai-test-ca: the chain is found, its signature fails.
    assert!(
        line.contains("invalid peer certificate"),
        "require + a CA file checks the chain: {line}"
    );
}
