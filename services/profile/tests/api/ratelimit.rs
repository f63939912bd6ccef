use serde_json::json;

use crate::helpers::{PASSWORD, assert_problem, email, spawn, spawn_behind_proxy, spawn_with};

#[tokio::test]
async fn repeated_failed_logins_for_one_email_are_rate_limited_across_replicas() {
    let p = spawn().await;
    let other = p.replica().await;
    let account = p.account().await;
    // Five attempts are allowed (the bucket's capacity), whichever replica takes
    // them; `account()` logged in once already.
    for i in 0..4 {
        let app = if i % 2 == 0 { &p.app } else { &other };
        let res = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&json!({"email": account.email, "password": "wrong password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    // The sixth, even with the right password and different case, is refused.
    let res = other
        .client
        .post(other.url("/api/auth/login"))
        .json(&json!({"email": account.email.to_uppercase(), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert_problem(res, 429).await;
    // Another e-mail is not affected.
    assert_eq!(p.login(&email(), PASSWORD).await.status(), 401);
}

#[tokio::test]
async fn one_client_address_cannot_spray_many_emails() {
    let p = spawn_behind_proxy().await;
    // The bucket holds 20 and refills one a second; password work makes each
    // allowed attempt take a while on a loaded machine, so count the refills the
    // elapsed time allows instead of assuming a fast run.
    let started = std::time::Instant::now();
    let mut allowed = 0;
    loop {
        let res = p
            .app
            .client
            .post(p.app.url("/api/auth/login"))
            .header("x-forwarded-for", "203.0.113.7")
            .json(&json!({"email": email(), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(res.status(), 401);
        allowed += 1;
        assert!(allowed <= 200, "never rate limited");
    }
    let refills = started.elapsed().as_secs() + 1;
    assert!(
        (20..=20 + refills).contains(&allowed),
        "{allowed} attempts allowed in {:?}: the bucket holds 20 plus one a second",
        started.elapsed()
    );
    // A different client address still gets through.
    let res = p
        .app
        .client
        .post(p.app.url("/api/auth/login"))
        .header("x-forwarded-for", "203.0.113.8")
        .json(&json!({"email": email(), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn without_redis_the_limit_holds_per_replica() {
    let p = spawn_with(None).await;
    let target = email();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(p.login(&target, "nope nope nope").await.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
}

async fn login_from(
    p: &crate::helpers::Profiles,
    address: &str,
    email: &str,
    password: &str,
) -> u16 {
    p.app
        .client
        .post(p.app.url("/api/auth/login"))
        .header("x-forwarded-for", address)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn guesses_from_other_addresses_never_lock_the_owner_out() {
    let p = spawn_behind_proxy().await;
    let account = p.account().await;
    // Five addresses each guess five times, then keep going: their own buckets
    // for this e-mail run dry.
    for i in 1..=5 {
        let attacker = format!("203.0.113.{i}");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(login_from(&p, &attacker, &account.email, "wrong password").await);
        }
        assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429], "{attacker}");
    }
    // The owner, from an address that is not flooding, gets in at once.
    assert_eq!(
        login_from(&p, "198.51.100.20", &account.email, PASSWORD).await,
        200
    );
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // No TRUSTED_PROXIES (the default): a client rotating the header is still one
    // address, and its bucket runs dry.
    let p = spawn().await;
    let target = email();
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(login_from(&p, &format!("203.0.113.{i}"), &target, "nope nope nope").await);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
}

#[tokio::test]
async fn registration_is_rate_limited_per_client_address() {
    let p = spawn_behind_proxy().await;
    let register = |address: &'static str| {
        let app = &p.app;
        async move {
            app.client
                .post(app.url("/api/auth/register"))
                .header("x-forwarded-for", address)
                .json(&json!({"email": email(), "password": PASSWORD}))
                .send()
                .await
                .unwrap()
        }
    };
    // The bucket holds 10 and refills one a minute.
    for i in 0..10 {
        assert_eq!(
            register("203.0.113.50").await.status(),
            201,
            "registration {i}"
        );
    }
    let res = register("203.0.113.50").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 429).await;
    // Another address is not affected.
    assert_eq!(register("203.0.113.51").await.status(), 201);
}
