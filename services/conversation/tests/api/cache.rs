use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{User, batch_of, read, spawn};

#[tokio::test]
async fn list_and_detail_are_a_miss_then_a_hit_with_the_same_etag() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "cached").await;
    for path in [
        "/api/conversations".to_owned(),
        format!("/api/conversations/{id}"),
    ] {
        let first = s.get(&user, &path).send().await.unwrap();
        assert_eq!(first.headers()["x-cache"], "MISS", "{path}");
        assert_eq!(first.headers()["cache-control"], "private, no-cache");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let before = s.app.statements();
        let second = s.get(&user, &path).send().await.unwrap();
        assert_eq!(second.headers()["x-cache"], "HIT", "{path}");
        assert_eq!(s.app.statements(), before, "a hit runs no SQL");
        assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
        let not_modified = s
            .get(&user, &path)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(not_modified.status(), 304);
    }
}

/// Reads the list and the detail until both are cache hits.
async fn warm(s: &crate::helpers::Service, user: &User, detail: &str) {
    for path in ["/api/conversations", detail] {
        read(&s.app, user, path).await;
        assert_eq!(read(&s.app, user, path).await.1, "HIT", "{path} warmed");
    }
}

#[tokio::test]
async fn every_write_is_seen_by_the_next_read() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "ryw").await;
    let detail = format!("/api/conversations/{id}");
    warm(&s, &user, &detail).await;
    s.say(&user, &id, "a new message").await;
    let (_, cache, d) = read(&s.app, &user, &detail).await;
    assert_eq!(
        (cache.as_str(), d["message_count"].clone()),
        ("MISS", json!(2))
    );
    assert_eq!(
        read(&s.app, &user, "/api/conversations").await.2["conversations"][0]["message_count"],
        2
    );

    warm(&s, &user, &detail).await;
    assert_eq!(s.batch(&user, &id, batch_of(3)).await.status(), 201);
    assert_eq!(read(&s.app, &user, &detail).await.2["message_count"], 5);
    assert_eq!(
        read(&s.app, &user, "/api/conversations").await.2["conversations"][0]["last_message"]["content"],
        "m2"
    );

    warm(&s, &user, &detail).await;
    let second = s.conversation(&user, "another").await;
    assert_eq!(
        read(&s.app, &user, "/api/conversations").await.2["conversations"][0]["id"],
        second
    );

    warm(&s, &user, &detail).await;
    assert_eq!(s.delete(&user, &id).await.status(), 204);
    assert_eq!(read(&s.app, &user, &detail).await.0, 404);
    let (_, _, list) = read(&s.app, &user, "/api/conversations").await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn another_replica_sees_a_new_message_within_a_second() {
    let s = spawn().await;
    let other = s.replica().await;
    let user = User::new();
    let id = s.conversation(&user, "replicated").await;
    let detail = format!("/api/conversations/{id}");
    // The other replica caches the old state in its L1.
    for path in [detail.as_str(), "/api/conversations"] {
        read(&other, &user, path).await;
        assert_eq!(read(&other, &user, path).await.1, "HIT");
    }
    s.say(&user, &id, "hello from replica one").await;
    let written = Instant::now();
    let mut fresh_after = None;
    while written.elapsed() < Duration::from_secs(1) {
        if read(&other, &user, &detail).await.2["message_count"] == 2 {
            fresh_after = Some(written.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fresh_after = fresh_after.expect("the other replica did not see the message within 1 s");
    eprintln!("cross-replica read-your-writes after {fresh_after:?}");
    let (_, _, list) = read(&other, &user, "/api/conversations").await;
    assert_eq!(
        list["conversations"][0]["last_message"]["role"],
        "assistant"
    );
    // The AI cache is shared too: the same message on the other replica is a hit.
    let exchange: serde_json::Value = other
        .client
        .post(other.url(&format!("/api/conversations/{id}/messages")))
        .bearer_auth(&user.token)
        .json(&json!({ "content": "hello from replica one" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(exchange["cached"], true);
    assert_eq!(s.llm().calls(), 1);
}

#[tokio::test]
async fn without_redis_the_in_process_cache_still_serves_and_sees_writes() {
    let s = crate::helpers::spawn_with(None, true, &[]).await;
    let user = User::new();
    let id = s.conversation(&user, "local").await;
    read(&s.app, &user, "/api/conversations").await;
    assert_eq!(read(&s.app, &user, "/api/conversations").await.1, "HIT");
    assert_eq!(s.say(&user, &id, "same").await["cached"], false);
    assert_eq!(s.say(&user, &id, "same").await["cached"], true);
    let (_, cache, list) = read(&s.app, &user, "/api/conversations").await;
    assert_eq!(
        (
            cache.as_str(),
            list["conversations"][0]["message_count"].clone()
        ),
        ("MISS", json!(4))
    );
}
