use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{User, assert_problem, read, spawn};

/// Inserts `n` conversations for `user`, conversation `i` holding `i % 4` messages.
async fn seed(s: &crate::helpers::Service, user: &User, n: i32) {
    let conn = s.db.connect().await;
    conn.execute(
        "INSERT INTO conversation.conversations (id, user_id, title, created_at, updated_at)
         SELECT gen_random_uuid(), $1, 'conversation ' || g, now() - g * interval '1 minute', now() - g * interval '1 minute'
         FROM generate_series(1, $2::int) g",
        &[&user.id, &n],
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO conversation.messages (id, conversation_id, role, content, created_at)
         SELECT gen_random_uuid(), c.id, CASE WHEN k % 2 = 1 THEN 'user' ELSE 'assistant' END,
                c.title || ' message ' || k, c.updated_at - (10 - k) * interval '1 second'
         FROM conversation.conversations c, generate_series(1, 3) k
         WHERE c.user_id = $1 AND k <= (split_part(c.title, ' ', 2)::int % 4)",
        &[&user.id],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_list_page_costs_the_same_statements_whatever_it_holds() {
    let s = spawn().await;
    let (few, many) = (User::new(), User::new());
    seed(&s, &few, 5).await;
    seed(&s, &many, 40).await;
    let mut costs = Vec::new();
    for (user, path, expected) in [
        (&few, "/api/conversations?limit=100", 5),
        (&many, "/api/conversations?limit=100", 40),
    ] {
        let before = s.app.statements();
        let (status, cache, body) = read(&s.app, user, path).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        costs.push(s.app.statements() - before);
        assert_eq!(body["conversations"].as_array().unwrap().len(), expected);
    }
    assert_eq!(costs[0], costs[1], "no N+1: {costs:?}");
    assert_eq!(costs[0], 1, "one statement per page: {costs:?}");

    // And the page says the right things about each conversation.
    let (_, _, body) = read(&s.app, &many, "/api/conversations?limit=100").await;
    for c in body["conversations"].as_array().unwrap() {
        let i: i64 = c["title"]
            .as_str()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let count = i % 4;
        assert_eq!(c["message_count"], count, "{c}");
        if count == 0 {
            assert_eq!(c["last_message"], Value::Null);
        } else {
            let last = &c["last_message"];
            assert_eq!(last["content"], format!("conversation {i} message {count}"));
            assert_eq!(
                last["role"],
                if count % 2 == 1 { "user" } else { "assistant" }
            );
            assert!(last["created_at"].is_string());
        }
    }
    let titles: Vec<_> = body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(titles[0], "conversation 1", "most recently updated first");
    assert_eq!(titles[39], "conversation 40");
    // A hit costs none.
    let before = s.app.statements();
    assert_eq!(
        read(&s.app, &many, "/api/conversations?limit=100").await.1,
        "HIT"
    );
    assert_eq!(s.app.statements(), before);
}

#[tokio::test]
async fn cursor_paging_never_skips_or_repeats_even_with_equal_timestamps() {
    let s = spawn().await;
    let user = User::new();
    let conn = s.db.connect().await;
    conn.execute(
        "INSERT INTO conversation.conversations (id, user_id, title, created_at, updated_at)
         SELECT gen_random_uuid(), $1::uuid, 'same ' || g, timestamptz '2026-01-01 12:00:00+00', timestamptz '2026-01-01 12:00:00+00'
         FROM generate_series(1, 23) g
         UNION ALL
         SELECT gen_random_uuid(), $1::uuid, 'other ' || g, now(), timestamptz '2026-01-01 12:00:00+00' + g * interval '1 hour' * (CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END)
         FROM generate_series(1, 4) g",
        &[&user.id],
    )
    .await
    .unwrap();
    let (seen, pages) = s
        .app
        .walk_cursor_pages(
            &user.token,
            "/api/conversations?limit=7",
            "conversations",
            "updated_at",
        )
        .await;
    assert_eq!(seen.len(), 27, "every conversation exactly once");
    assert_eq!(
        seen.iter().map(|(_, id)| id).collect::<HashSet<_>>().len(),
        27
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        seen, sorted,
        "most recently updated first, id descending within a timestamp"
    );
    assert_eq!(pages, 4);
}

#[tokio::test]
async fn bad_list_parameters_are_rejected() {
    let s = spawn().await;
    let user = User::new();
    for q in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=bogus",
        "page=2",
        "user_id=someone",
    ] {
        assert_problem(
            s.get(&user, &format!("/api/conversations?{q}"))
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
    }
    let (_, _, empty) = read(&s.app, &user, "/api/conversations").await;
    assert_eq!(
        empty,
        json!({ "conversations": [], "next_cursor": null, "has_more": false })
    );
}

#[tokio::test]
async fn hot_queries_use_indexes_on_a_large_table() {
    let s = spawn().await;
    let conn = s.db.connect().await;
    // 100k conversations over 1,000 users and 100k messages, as SPEC §7 asks.
    conn.batch_execute(
        "INSERT INTO conversation.conversations (id, user_id, title, updated_at)
         SELECT ('00000000-0000-0000-0001-' || lpad(g::text, 12, '0'))::uuid,
                ('00000000-0000-0000-0000-' || lpad((g % 1000)::text, 12, '0'))::uuid,
                'talk ' || g, now() - g * interval '1 minute'
         FROM generate_series(1, 100000) g;
         INSERT INTO conversation.messages (id, conversation_id, role, content, created_at)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0001-' || lpad((1 + g % 100000)::text, 12, '0'))::uuid,
                'user', 'message ' || g, now() - g * interval '1 second'
         FROM generate_series(1, 100000) g;
         ANALYZE conversation.conversations;
         ANALYZE conversation.messages;",
    )
    .await
    .unwrap();
    let user = Uuid::parse_str("00000000-0000-0000-0000-000000000042").unwrap();
    let conversation = Uuid::parse_str("00000000-0000-0000-0001-000000000042").unwrap();
    // Parameters are positional: list queries take the user first, the others the conversation.
    kai_testing::assert_plans_use_indexes(
        &conn,
        conversation_service::queries::HOT_QUERIES,
        |name| {
            if name.starts_with("list") {
                vec![user, conversation]
            } else {
                vec![conversation, user]
            }
        },
        "",
    )
    .await;
}
