//! One canonical e-mail address: variants of a taken address are a 409 or a 400,
//! never a new account; login finds the account from any variant and the limiter
//! counts the variants as one address; accounts written before V5 are keyed by
//! the migration (ASCII) and by the service at start (the rest), with the same
//! function.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, spawn};

#[tokio::test]
async fn variants_of_a_taken_address_are_refused_and_log_in_to_the_same_account() {
    let p = spawn().await;
    let res = p
        .register(json!({"email": "José.Sam@Example.org", "password": PASSWORD}))
        .await;
    assert_eq!(res.status(), 201);
    let registered: Value = res.json().await.unwrap();
    assert_eq!(
        registered["email"], "José.Sam@Example.org",
        "shown as typed"
    );
    for taken in [
        "josé.sam@example.org",
        "JOSÉ.SAM@EXAMPLE.ORG",
        "  jose\u{301}.sam@example.org  ",
        "ｊｏｓé.ｓａｍ＠ｅｘａｍｐｌｅ．ｏｒｇ",
        "josé.sam@example.org.",
    ] {
        let res = p
            .register(json!({"email": taken, "password": PASSWORD}))
            .await;
        assert_problem(res, 409).await;
    }
    for refused in [
        "jos\u{e9}.sam\u{200B}@example.org",
        "\u{202E}jos\u{e9}.sam@example.org",
        "jos\u{e9}.s\u{430}m@example.org",
        "jos\u{e9}.sam@ex\u{430}mple.org",
    ] {
        let res = p
            .register(json!({"email": refused, "password": PASSWORD}))
            .await;
        let problem = assert_problem(res, 400).await;
        assert_eq!(problem["errors"][0]["field"], "email", "{problem}");
    }
    // Each variant logs in to the one account.
    for variant in ["JOSE\u{301}.SAM@example.org.", "ｊｏｓé.sam@example.org"] {
        let res = p.login(variant, PASSWORD).await;
        assert_eq!(res.status(), 200, "{variant}");
        let token: Value = res.json().await.unwrap();
        assert_eq!(token["user_id"], registered["user_id"]);
    }
}

#[tokio::test]
async fn the_login_limiter_counts_variants_as_one_address() {
    let p = spawn().await;
    let address = email();
    let upper = address.to_uppercase();
    let fullwidth: String = address
        .chars()
        .map(|c| match c {
            'a'..='z' => char::from_u32(c as u32 - 'a' as u32 + 0xFF41).unwrap(),
            c => c,
        })
        .collect();
    let variants = [
        address.clone(),
        upper,
        fullwidth,
        format!("{address}."),
        format!(" {address} "),
    ];
    // Five wrong passwords, each through another variant, drain the (e-mail,
    // address) bucket of five: the sixth is refused whatever the variant.
    for v in &variants {
        assert_eq!(p.login(v, "wrong password").await.status(), 401, "{v}");
    }
    assert_problem(
        p.login(&address.to_uppercase(), "wrong password").await,
        429,
    )
    .await;
}

#[tokio::test]
async fn accounts_written_before_the_canonical_key_are_keyed_by_migration_and_at_start() {
    use kai_testing::{TestApp, TestDb, TestPrefix};
    let db = TestDb::create().await;
    let conn = db.connect().await;
    // The schema of the previous release (V1–V4), applied as a deployment
    // applies it (profile's migration role), and its rows.
    let mut migrator = kai_testing::roles::Role::migration("profile")
        .unwrap()
        .connect(&db.url)
        .await;
    let mut runner =
        (profile_service::MIGRATIONS.runner)().set_target(refinery::Target::Version(4));
    runner.set_migration_table_name("profile.refinery_history");
    runner.run_async(&mut migrator).await.unwrap();
    let hash = profile_service::password::hash(
        profile_service::password::Caller::Anonymous,
        PASSWORD.into(),
    )
    .await
    .unwrap();
    for (n, address) in [
        "Sam@Example.org",
        "ＪＯ@example.org",
        "STRASSE@x.de",
        "Straße@x.de",
        "İlker@x.tr",
    ]
    .iter()
    .enumerate()
    {
        conn.execute(
            "INSERT INTO profile.users (id, email, password_hash, created_at)
             VALUES (gen_random_uuid(), $1, $2, now() - make_interval(mins => 10 - $3))",
            &[address, &hash, &(n as i32)],
        )
        .await
        .unwrap();
    }
    let prefix = TestPrefix::new(&kai_testing::redis_url());
    let settings = kai_testing::settings(
        &db.url,
        Some(&kai_testing::redis_url()),
        &prefix.prefix,
        &[],
    );
    let app = TestApp::start(profile_service::service(), settings).await;
    // The start-up pass runs beside serving, in id (random) order: wait for
    // every row it keys.
    let key_of = |address: &'static str| {
        let conn = &conn;
        async move {
            conn.query_one(
                "SELECT email_key FROM profile.users WHERE email = $1",
                &[&address],
            )
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
        }
    };
    for address in [
        "Sam@Example.org",
        "ＪＯ@example.org",
        "STRASSE@x.de",
        "İlker@x.tr",
    ] {
        while key_of(address).await.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        key_of("Sam@Example.org").await.as_deref(),
        Some("sam@example.org")
    );
    assert_eq!(
        key_of("ＪＯ@example.org").await.as_deref(),
        Some("jo@example.org")
    );
    assert_eq!(
        key_of("STRASSE@x.de").await.as_deref(),
        Some("strasse@x.de")
    );
    assert_eq!(
        key_of("İlker@x.tr").await.as_deref(),
        Some("i\u{307}lker@x.tr")
    );
    // A variant registered before V5 loses to the older account: no key, logged.
    assert_eq!(key_of("Straße@x.de").await, None);

    let login = |address: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/auth/login"))
                .json(&json!({"email": address, "password": PASSWORD}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(login("sam@EXAMPLE.org.").await, 200);
    assert_eq!(login("jo@example.org").await, 200);
    assert_eq!(login("İLKER@X.TR").await, 200);
    assert_eq!(login("strasse@x.de").await, 200);
    let res = app
        .client
        .post(app.url("/api/auth/register"))
        .json(&json!({"email": "ｓａｍ@example.org", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409).await;
}
