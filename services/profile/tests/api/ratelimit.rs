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

/// Logs in from `address`, with a device token if given: status and body.
async fn login_with(
    p: &crate::helpers::Profiles,
    address: &str,
    email: &str,
    password: &str,
    device_token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut body = json!({"email": email, "password": password});
    if let Some(t) = device_token {
        body["device_token"] = json!(t);
    }
    let res = p
        .app
        .client
        .post(p.app.url("/api/auth/login"))
        .header("x-forwarded-for", address)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

/// argon2 verifications that did not match (`kai_password_verifications_total`).
async fn mismatches(p: &crate::helpers::Profiles) -> u64 {
    p.app
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("kai_password_verifications_total{") && l.contains("\"mismatch\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// SPEC §4's proof: 100 wrong passwords for one account from 100 addresses reach
/// the password check at most the unknown-device budget's number of times (10,
/// plus one per 90 s the run takes), while the owner's device, presenting its
/// device token, logs in at once throughout.
#[tokio::test]
async fn a_hundred_addresses_guessing_one_account_reach_the_password_check_ten_times() {
    let p = spawn_behind_proxy().await;
    let account = p.account().await;
    // The owner's device logged in before: it holds a device token.
    let (status, token) = login_with(&p, "192.0.2.10", &account.email, PASSWORD, None).await;
    assert_eq!(status, 200);
    let mut device = token["device_token"].as_str().unwrap().to_owned();
    assert_eq!(
        token["device_token"].as_str().unwrap().split('.').count(),
        3
    );
    let started = std::time::Instant::now();
    let before = mismatches(&p).await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..100u32 {
        // Half IPv4, half IPv6 addresses in 50 different /64s.
        let attacker = if i % 2 == 0 {
            format!("198.51.100.{i}")
        } else {
            format!("2001:db8:{i:x}::1")
        };
        let (status, body) =
            login_with(&p, &attacker, &account.email, "wrong password", None).await;
        *statuses.entry(status).or_default() += 1;
        if status == 429 {
            assert_eq!(body["status"], 429, "{body}");
        }
        if i % 25 == 24 {
            // The owner's device, throughout: in at once, its token renewed.
            let (status, token) =
                login_with(&p, "192.0.2.10", &account.email, PASSWORD, Some(&device)).await;
            assert_eq!(status, 200, "the owner at attempt {i}: {token}");
            device = token["device_token"].as_str().unwrap().to_owned();
        }
    }
    let checked = mismatches(&p).await - before;
    let refills = started.elapsed().as_secs() / 90 + 1;
    // The budget holds 10; the owner's first two logins (registration's and the
    // one above, without a device token yet) took two of them.
    assert!(
        checked <= 8 + refills,
        "{checked} wrong passwords reached argon2 ({statuses:?})"
    );
    assert!(checked >= 8, "the budget admits 8 more: {checked}");
    assert_eq!(statuses.get(&401).copied().unwrap_or(0) as u64, checked);
    // A wrong password with the owner's device token is still a 401 (its own
    // bucket), and a device token of another account earns nothing.
    let (status, _) = login_with(
        &p,
        "192.0.2.10",
        &account.email,
        "wrong password",
        Some(&device),
    )
    .await;
    assert_eq!(status, 401);
    let other = p.account().await;
    let (_, other_token) = login_with(&p, "192.0.2.11", &other.email, PASSWORD, None).await;
    let foreign = other_token["device_token"].as_str().unwrap();
    let (status, _) = login_with(&p, "192.0.2.12", &account.email, PASSWORD, Some(foreign)).await;
    assert_eq!(
        status, 429,
        "another account's device token is no device of this one"
    );
    // Nor is an access token a device token.
    let (status, _) = login_with(
        &p,
        "192.0.2.13",
        &account.email,
        PASSWORD,
        Some(&account.token),
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn guesses_from_other_addresses_never_lock_the_owner_out() {
    let p = spawn_behind_proxy().await;
    let account = p.account().await;
    let (_, token) = login_with(&p, "198.51.100.20", &account.email, PASSWORD, None).await;
    let device = token["device_token"].as_str().unwrap().to_owned();
    // Five addresses each guess five times, then keep going: their own buckets
    // for this e-mail run dry, and so does the account's budget for unknown
    // devices (10, two of which the owner's logins took).
    let mut statuses = Vec::new();
    for i in 1..=5 {
        let attacker = format!("203.0.113.{i}");
        for _ in 0..6 {
            statuses.push(login_from(&p, &attacker, &account.email, "wrong password").await);
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        8,
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|&s| s == 401 || s == 429));
    // The owner's device gets in at once, from any address.
    for address in ["198.51.100.20", "203.0.113.1"] {
        let (status, _) = login_with(&p, address, &account.email, PASSWORD, Some(&device)).await;
        assert_eq!(status, 200, "{address}");
    }
}

/// An IPv6 client is one bucket per /64: rotating the low 64 bits buys nothing.
#[tokio::test]
async fn ipv6_clients_share_one_bucket_per_64() {
    let p = spawn_behind_proxy().await;
    let mut allowed = 0;
    let started = std::time::Instant::now();
    for i in 1..=60u32 {
        let address = format!("2001:db8:aa:bb:{i:x}::{i:x}");
        let status = login_from(&p, &address, &email(), PASSWORD).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 401);
        allowed += 1;
    }
    let refills = started.elapsed().as_secs() + 1;
    assert!(
        (20..=20 + refills).contains(&allowed),
        "{allowed} attempts from one /64: the client bucket holds 20 plus one a second"
    );
    // Another /64 is another client.
    assert_eq!(
        login_from(&p, "2001:db8:aa:bc::1", &email(), PASSWORD).await,
        401
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
