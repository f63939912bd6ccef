use serde_json::{Value, json};

use crate::helpers::{User, assert_problem, read, spawn};

#[tokio::test]
async fn created_entries_read_back_with_every_field() {
    let j = spawn().await;
    let user = User::new();
    let res = j.create(&user, json!({"content": "Walked by the sea.", "title": "Sunday", "mood": 7, "tags": ["calm", "sea", "calm"]})).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(
        created["tags"],
        json!(["calm", "sea"]),
        "tags are trimmed and de-duplicated"
    );
    let id = created["id"].as_str().unwrap();
    let (status, _, body) = read(&j.app, &user, &format!("/api/journal/entries/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, created);
    assert_eq!(body["mood"], 7);
    assert!(
        body["created_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC"
    );
}

#[tokio::test]
async fn invalid_entries_get_field_errors() {
    let j = spawn().await;
    let user = User::new();
    for (body, field) in [
        (json!({"content": ""}), "content"),
        (json!({"content": "x".repeat(20_001)}), "content"),
        (json!({"content": "ok", "mood": 11}), "mood"),
        (json!({"content": "ok", "mood": 0}), "mood"),
        (
            json!({"content": "ok", "tags": (0..21).map(|i| i.to_string()).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"content": "ok", "title": "t".repeat(201)}), "title"),
    ] {
        let problem = assert_problem(j.create(&user, body).await, 400).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // Exactly at the limits is fine (20,000 multi-byte characters fits the 64 KiB body).
    assert_eq!(
        j.create(&user, json!({"content": "é".repeat(20_000), "mood": 10}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn clients_cannot_assign_ids_owners_or_timestamps() {
    let j = spawn().await;
    let user = User::new();
    for extra in ["id", "user_id", "created_at", "updated_at", "deleted_at"] {
        let mut body = json!({"content": "hello"});
        body[extra] = json!("2020-01-01T00:00:00Z");
        let problem = assert_problem(j.create(&user, body).await, 400).await;
        assert!(problem.to_string().contains(extra), "{problem}");
    }
    let entry = j.entry(&user, "hello").await;
    let res = j
        .patch(
            &user,
            entry["id"].as_str().unwrap(),
            json!({"user_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_problem(res, 400).await;
}

#[tokio::test]
async fn malformed_bodies_get_problem_details() {
    let j = spawn().await;
    let user = User::new();
    let url = j.app.url("/api/journal/entries");
    let res = j
        .app
        .client
        .post(&url)
        .bearer_auth(&user.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
    let res = j
        .app
        .client
        .post(&url)
        .bearer_auth(&user.token)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_problem(res, 415).await;
    let huge = json!({"content": "x".repeat(70 * 1024)});
    let res = j
        .app
        .client
        .post(&url)
        .bearer_auth(&user.token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;
    let res = j
        .app
        .client
        .post(&url)
        .bearer_auth(&user.token)
        .json(&json!({"content": 42}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthorized() {
    let j = spawn().await;
    let url = j.app.url("/api/journal/entries");
    assert_problem(j.app.client.get(&url).send().await.unwrap(), 401).await;
    assert_problem(
        j.app
            .client
            .get(&url)
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(
        j.app
            .client
            .get(&url)
            .header("authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let mut forged = User::new().token;
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_problem(
        j.app
            .client
            .get(&url)
            .bearer_auth(forged)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn patch_changes_only_the_fields_given_and_can_clear_optional_ones() {
    let j = spawn().await;
    let user = User::new();
    let e: Value = j
        .create(&user, json!({"content": "first", "title": "T", "mood": 3}))
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap();
    let res = j.patch(&user, id, json!({"mood": 9})).await;
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(
        (
            patched["mood"].clone(),
            patched["title"].clone(),
            patched["content"].clone()
        ),
        (json!(9), json!("T"), json!("first"))
    );
    let cleared: Value = j
        .patch(&user, id, json!({"title": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["title"], Value::Null);
    assert_eq!(cleared["mood"], 9);
    assert_problem(j.patch(&user, id, json!({})).await, 400).await;
    assert_problem(j.patch(&user, id, json!({"content": null})).await, 400).await;
    assert_problem(j.patch(&user, id, json!({"mood": 12})).await, 400).await;
}

#[tokio::test]
async fn another_users_entry_is_not_found_for_every_operation() {
    let j = spawn().await;
    let (alice, bob) = (User::new(), User::new());
    let e = j.entry(&alice, "alice's secret").await;
    let id = e["id"].as_str().unwrap();
    let path = format!("/api/journal/entries/{id}");
    assert_problem(j.get(&bob, &path).send().await.unwrap(), 404).await;
    assert_problem(j.patch(&bob, id, json!({"content": "mine now"})).await, 404).await;
    assert_problem(j.delete(&bob, id).await, 404).await;
    let (_, _, list) = read(&j.app, &bob, "/api/journal/entries").await;
    assert_eq!(list["total"], 0);
    let (_, _, found) = read(&j.app, &bob, "/api/journal/search?q=secret").await;
    assert_eq!(found["entries"], json!([]));
    // Alice still has it, unchanged.
    let (status, _, body) = read(&j.app, &alice, &path).await;
    assert_eq!(
        (status, body["content"].clone()),
        (200, json!("alice's secret"))
    );
}

#[tokio::test]
async fn deleted_entries_disappear_from_every_read() {
    let j = spawn().await;
    let user = User::new();
    let e: Value = j
        .create(&user, json!({"content": "regret this hedgehog", "mood": 2}))
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap();
    // Warm every cache first.
    read(&j.app, &user, &format!("/api/journal/entries/{id}")).await;
    read(&j.app, &user, "/api/journal/entries").await;
    read(&j.app, &user, "/api/journal/stats").await;
    assert_eq!(j.delete(&user, id).await.status(), 204);
    assert_eq!(
        read(&j.app, &user, &format!("/api/journal/entries/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        read(&j.app, &user, "/api/journal/entries").await.2["total"],
        0
    );
    assert_eq!(
        read(&j.app, &user, "/api/journal/entries?limit=10").await.2["entries"],
        json!([])
    );
    assert_eq!(
        read(&j.app, &user, "/api/journal/search?q=hedgehog")
            .await
            .2["entries"],
        json!([])
    );
    assert_eq!(
        read(&j.app, &user, "/api/journal/stats").await.2["total_entries"],
        0
    );
    assert_eq!(
        j.delete(&user, id).await.status(),
        404,
        "a second delete finds nothing"
    );
    // The row is kept (soft delete).
    let conn = j.db.connect().await;
    let row = conn
        .query_one(
            "SELECT deleted_at IS NOT NULL FROM journal.journal_entries WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn search_ranks_the_best_match_first() {
    let j = spawn().await;
    let user = User::new();
    j.create(&user, json!({"content": "a quiet day at work"}))
        .await;
    j.create(&user, json!({"title": "Garden garden", "content": "the garden was in bloom, garden roses everywhere"})).await;
    j.create(&user, json!({"content": "passed a garden on the way home"}))
        .await;
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=garden").await;
    assert_eq!(status, 200);
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["title"], "Garden garden");
    assert_problem(
        j.get(&user, "/api/journal/search?q=").send().await.unwrap(),
        400,
    )
    .await;
    assert_problem(
        j.get(&user, "/api/journal/search").send().await.unwrap(),
        400,
    )
    .await;
    assert_problem(
        j.get(&user, "/api/journal/search?q=x&limit=0")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn stats_count_entries_and_average_mood_per_day() {
    let j = spawn().await;
    let user = User::new();
    for mood in [4, 8] {
        j.create(&user, json!({"content": "day", "mood": mood}))
            .await;
    }
    j.create(&user, json!({"content": "no mood"})).await;
    // An entry 40 days ago falls outside the default 30-day window.
    let conn = j.db.connect().await;
    conn.execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, mood, created_at) VALUES (gen_random_uuid(), $1, 'old', 1, now() - interval '40 days')",
        &[&user.id],
    )
    .await
    .unwrap();
    let (status, _, stats) = read(&j.app, &user, "/api/journal/stats?days=30").await;
    assert_eq!(status, 200);
    assert_eq!(stats["total_entries"], 3);
    assert_eq!(stats["average_mood"], 6.0);
    assert_eq!(stats["days"].as_array().unwrap().len(), 1);
    assert_eq!(stats["days"][0]["count"], 3);
    let (_, _, wide) = read(&j.app, &user, "/api/journal/stats?days=60").await;
    assert_eq!(wide["total_entries"], 4);
    assert_problem(
        j.get(&user, "/api/journal/stats?days=0")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        j.get(&user, "/api/journal/stats?days=abc")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

/// Creates are limited per user (a burst, then a steady rate): 429 with
/// `Retry-After`, counted, nothing stored; another user is not affected.
#[tokio::test]
async fn creates_are_limited_per_user() {
    let j = crate::helpers::spawn_limited(&[("JOURNAL_CREATES_PER_MINUTE", "3")]).await;
    let (user, other) = (User::new(), User::new());
    for i in 0..3 {
        assert_eq!(
            j.create(&user, json!({"content": format!("entry {i}")}))
                .await
                .status(),
            201
        );
    }
    let res = j.create(&user, json!({"content": "one too many"})).await;
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "one every 20 s: {wait}");
    assert_problem(res, 429).await;
    let (_, _, page) = read(&j.app, &user, "/api/journal/entries").await;
    assert_eq!(page["total"], 3, "the refused entry was not stored");
    assert!(
        j.app
            .metrics()
            .await
            .lines()
            .any(|l| l.starts_with("kai_rate_limited_total{")
                && l.contains("\"creates\"")
                && l.ends_with(" 1"))
    );
    assert_eq!(
        j.create(&other, json!({"content": "mine"})).await.status(),
        201
    );
}
