//! `GET /api/conversations/export`: every conversation, oldest first, one per
//! line with all its messages — across several batches of conversations and of
//! messages.

use serde_json::Value;

use crate::helpers::{User, batch_of, spawn_offline};

#[tokio::test]
async fn export_streams_every_conversation_with_all_its_messages() {
    let s = spawn_offline().await;
    let (user, other) = (User::new(), User::new());
    // Older conversations straight into PostgreSQL: more than one batch of them.
    let older = 2 * conversation_service::export::CONVERSATIONS_PER_BATCH as i32 + 7;
    s.db.connect()
        .await
        .execute(
            "INSERT INTO conversation.conversations (id, user_id, title, created_at, updated_at)
             SELECT gen_random_uuid(), $1, 'old ' || i, timestamptz '2025-01-01 00:00:00Z' + (i / 2) * interval '1 hour', now()
             FROM generate_series(1, $2) i",
            &[&user.id, &older],
        )
        .await
        .unwrap();
    let empty = s.conversation(&user, "empty").await;
    let long = s.conversation(&user, "long").await;
    // More messages than one batch of the export reads.
    let n = 2 * conversation_service::export::MESSAGES_PER_BATCH as usize + 31;
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(1000);
        assert_eq!(s.batch(&user, &long, batch_of(k)).await.status(), 201);
        sent += k;
    }
    let chat = s.conversation(&user, "chat").await;
    s.say(&user, &chat, "hello").await;
    s.conversation(&other, "not yours").await;

    let res = s
        .get(&user, "/api/conversations/export")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), older as usize + 3);
    let keys: Vec<(chrono::DateTime<chrono::Utc>, String)> = lines
        .iter()
        .map(|c| {
            (
                c["created_at"].as_str().unwrap().parse().unwrap(),
                c["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "oldest first, no repeats");
    let by_id = |id: &str| lines.iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(by_id(&empty)["messages"], serde_json::json!([]));
    let exported: Vec<(String, String)> = by_id(&long)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(exported.len(), n);
    assert_eq!(
        exported,
        s.stored_messages(&long).await,
        "every message, oldest first"
    );
    let chat = by_id(&chat);
    assert_eq!(chat["title"], "chat");
    assert_eq!(chat["messages"][0]["content"], "hello");
    assert_eq!(chat["messages"][1]["role"], "assistant");
    assert!(lines.iter().all(|c| c["title"] != "not yours"));

    let res = s
        .get(&User::new(), "/api/conversations/export")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "");
}
