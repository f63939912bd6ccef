use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, email, read, spawn};

#[tokio::test]
async fn a_new_profile_reads_back_as_a_miss_then_a_hit() {
    let p = spawn().await;
    let address = email();
    let res = p
        .register(json!({"email": address, "password": PASSWORD, "display_name": "Grace"}))
        .await;
    assert_eq!(res.status(), 201);
    let token: Value = p.login(&address, PASSWORD).await.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();

    let first = p
        .app
        .client
        .get(p.app.url("/api/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(first.headers()["cache-control"], "private, no-cache");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["email"], address);
    assert_eq!(body["display_name"], "Grace");
    assert_eq!(
        (body["traits"].clone(), body["preferences"].clone()),
        (json!({}), json!({}))
    );
    assert_eq!(body["communication_style"], Value::Null);
    assert!(body["updated_at"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 7, "exactly the contract's fields: {keys:?}");

    let (status, cache, again) = read(&p.app, token, "/api/profile").await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(again, body);
    let res = p
        .app
        .client
        .get(p.app.url("/api/profile"))
        .bearer_auth(token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
}

#[tokio::test]
async fn a_patch_is_read_back_at_once_here_and_soon_on_another_replica() {
    let p = spawn().await;
    let other = p.replica().await;
    let a = p.account().await;
    for app in [&p.app, &other] {
        read(app, &a.token, "/api/profile").await;
        assert_eq!(read(app, &a.token, "/api/profile").await.1, "HIT", "warmed");
    }
    let change = json!({
        "display_name": "Ada L.",
        "traits": {"openness": 0.8, "interests": ["math", "poetry"]},
        "preferences": {"tone": "warm"},
        "communication_style": "brief and direct",
    });
    let res = p.patch(&a.token, change.clone()).await;
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    for field in [
        "display_name",
        "traits",
        "preferences",
        "communication_style",
    ] {
        assert_eq!(patched[field], change[field], "{field}");
    }
    assert_eq!(patched["email"], a.email);

    let (_, cache, here) = read(&p.app, &a.token, "/api/profile").await;
    assert_eq!(
        (cache.as_str(), &here),
        ("MISS", &patched),
        "read-your-writes on the writing replica"
    );

    let written = Instant::now();
    let mut seen = None;
    while written.elapsed() < Duration::from_secs(2) {
        if read(&other, &a.token, "/api/profile").await.2 == patched {
            seen = Some(written.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "cross-replica read-your-writes after {:?}",
        seen.expect("the other replica never saw the patch")
    );

    // Only what is given changes; null clears the nullable fields.
    let res = p
        .patch(
            &a.token,
            json!({"display_name": null, "communication_style": null}),
        )
        .await;
    let cleared: Value = res.json().await.unwrap();
    assert_eq!(
        (
            cleared["display_name"].clone(),
            cleared["communication_style"].clone()
        ),
        (Value::Null, Value::Null)
    );
    assert_eq!(cleared["traits"], change["traits"]);
    assert_eq!(read(&p.app, &a.token, "/api/profile").await.2, cleared);
}

#[tokio::test]
async fn invalid_patches_get_field_errors() {
    let p = spawn().await;
    let a = p.account().await;
    for (body, field) in [
        (json!({"traits": ["not", "an", "object"]}), "traits"),
        (json!({"traits": null}), "traits"),
        (json!({"preferences": "warm"}), "preferences"),
        (
            json!({"communication_style": "s".repeat(201)}),
            "communication_style",
        ),
        (json!({"display_name": "d".repeat(101)}), "display_name"),
        (json!({"display_name": ""}), "display_name"),
    ] {
        let problem = assert_problem(p.patch(&a.token, body).await, 400).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    assert_problem(p.patch(&a.token, json!({})).await, 400).await;
    assert_eq!(
        p.patch(&a.token, json!({"communication_style": "s".repeat(200)}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn identity_fields_cannot_be_mass_assigned() {
    let p = spawn().await;
    let a = p.account().await;
    let before = read(&p.app, &a.token, "/api/profile").await.2;
    for (field, value) in [
        ("user_id", json!(uuid::Uuid::new_v4())),
        ("email", json!("attacker@example.org")),
        ("id", json!(uuid::Uuid::new_v4())),
        ("updated_at", json!("2020-01-01T00:00:00Z")),
        ("password_hash", json!("$argon2id$v=19$forged")),
    ] {
        let mut body = json!({"display_name": "sneaky"});
        body[field] = value;
        let problem = assert_problem(p.patch(&a.token, body).await, 400).await;
        assert!(problem.to_string().contains(field), "{problem}");
    }
    assert_eq!(
        read(&p.app, &a.token, "/api/profile").await.2,
        before,
        "nothing changed"
    );
}

#[tokio::test]
async fn the_profile_needs_a_token_of_a_live_session() {
    let p = spawn().await;
    let url = p.app.url("/api/profile");
    assert_problem(p.app.client.get(&url).send().await.unwrap(), 401).await;
    assert_problem(
        p.app
            .client
            .get(&url)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    // Validly signed, but for a session profile-service never opened.
    let stranger = kai_testing::token(uuid::Uuid::new_v4());
    assert_problem(
        p.app
            .client
            .get(&url)
            .bearer_auth(stranger)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(
        p.app
            .client
            .patch(&url)
            .json(&json!({"display_name": "x"}))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}
