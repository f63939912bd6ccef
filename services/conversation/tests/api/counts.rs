//! Each conversation's message count (`conversation.message_counts`, migration V4),
//! against real PostgreSQL: whatever writes or deletes the messages — the API (as
//! the serving role), a multi-conversation SQL statement, a conversation's
//! deletion, account erasure — the kept count equals a fresh count(*), and the
//! list and the detail say so without counting.

use kai_shared::db::ToSql;
use kai_testing as testing;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Service, User, batch_of, read, spawn_offline, spawn_with};

/// Conversations whose kept count differs from a fresh count(*) (no row = 0), or
/// that kept a row at 0 or below; anywhere in the database.
async fn drifted(s: &Service) -> i64 {
    s.db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM (
                 SELECT conversation_id, count(*) AS n FROM conversation.messages
                 GROUP BY conversation_id) c
             FULL JOIN conversation.message_counts k USING (conversation_id)
             WHERE coalesce(c.n, 0) <> coalesce(k.messages, 0) OR k.messages <= 0",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The kept count rows of `ids` (how many exist).
async fn count_rows(s: &Service, ids: &[Uuid]) -> i64 {
    s.db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM conversation.message_counts WHERE conversation_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0)
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap()
}

async fn detail_count(s: &Service, user: &User, id: &str) -> Value {
    let (status, _, d) = read(&s.app, user, &format!("/api/conversations/{id}")).await;
    assert_eq!(status, 200);
    d["message_count"].clone()
}

#[tokio::test]
async fn api_messages_and_batches_count_at_once_in_the_detail_and_the_list() {
    let s = spawn_offline().await;
    let user = User::new();
    let (a, b, empty) = (
        s.conversation(&user, "a").await,
        s.conversation(&user, "b").await,
        s.conversation(&user, "empty").await,
    );
    // A conversation without messages has no count row: 0.
    assert_eq!(count_rows(&s, &[uuid(&empty)]).await, 0);
    assert_eq!(detail_count(&s, &user, &empty).await, json!(0));
    // Each exchange stores the user's message and the (offline) assistant's.
    for i in 0..3 {
        s.say(&user, &a, &format!("hello {i}")).await;
    }
    assert_eq!(detail_count(&s, &user, &a).await, json!(6));
    assert_eq!(s.batch(&user, &b, batch_of(250)).await.status(), 201);
    assert_eq!(detail_count(&s, &user, &b).await, json!(250));
    s.say(&user, &b, "one more").await;
    assert_eq!(detail_count(&s, &user, &b).await, json!(252));
    let (_, _, list) = read(&s.app, &user, "/api/conversations").await;
    let counts: Vec<(String, Value)> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["title"].as_str().unwrap().to_owned(),
                c["message_count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("b".to_owned(), json!(252)),
            ("a".to_owned(), json!(6)),
            ("empty".to_owned(), json!(0))
        ]
    );
    assert_eq!(count_rows(&s, &[uuid(&a), uuid(&b)]).await, 2);
    assert_eq!(drifted(&s).await, 0);
}

#[tokio::test]
async fn deleting_a_conversation_removes_its_count_and_no_other() {
    let s = spawn_offline().await;
    let user = User::new();
    let (gone, stays) = (
        s.conversation(&user, "gone").await,
        s.conversation(&user, "stays").await,
    );
    assert_eq!(s.batch(&user, &gone, batch_of(40)).await.status(), 201);
    assert_eq!(s.batch(&user, &stays, batch_of(3)).await.status(), 201);
    assert_eq!(s.delete(&user, &gone).await.status(), 204);
    assert_eq!(
        count_rows(&s, &[uuid(&gone)]).await,
        0,
        "the count went with it"
    );
    assert_eq!(detail_count(&s, &user, &stays).await, json!(3));
    assert_eq!(drifted(&s).await, 0);
}

#[tokio::test]
async fn account_erasure_leaves_no_count_behind() {
    let s = spawn_offline().await;
    let (erased, other) = (User::new(), User::new());
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = s.conversation(&erased, &format!("e{i}")).await;
        assert_eq!(s.batch(&erased, &id, batch_of(5 + i)).await.status(), 201);
        ids.push(uuid(&id));
    }
    let kept = s.conversation(&other, "kept").await;
    assert_eq!(s.batch(&other, &kept, batch_of(7)).await.status(), 201);
    assert_eq!(count_rows(&s, &ids).await, 4);
    let deleted = conversation_service::erasure::purge(&s.app.platform, erased.id)
        .await
        .unwrap();
    assert_eq!(deleted, 4);
    assert_eq!(
        count_rows(&s, &ids).await,
        0,
        "no count of an erased account"
    );
    assert_eq!(detail_count(&s, &other, &kept).await, json!(7));
    assert_eq!(drifted(&s).await, 0);
}

/// Writers other than this release's API — the previous release (which still
/// counts with count(*)), a bulk load, an operator's SQL — are counted by the
/// triggers too: multi-conversation INSERT … SELECT, DELETE of some messages, a
/// message moved to another conversation. (Without caching: these writes do not
/// go through the service, so nothing would tell its cache.)
#[tokio::test]
async fn every_sql_writer_keeps_the_counts_exact() {
    let s = spawn_with(
        Some(&testing::redis_url()),
        false,
        &[("CACHE_ENABLED", "false")],
    )
    .await;
    let user = User::new();
    let ids: Vec<Uuid> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(uuid(&s.conversation(&user, &format!("c{i}")).await));
        }
        ids
    };
    let conn = s.db.connect().await;
    // 500 messages over the 5 conversations in one statement (100 each).
    conn.execute(
        "INSERT INTO conversation.messages (id, conversation_id, role, content)
         SELECT gen_random_uuid(), ($1::uuid[])[1 + g % 5], 'user', 'bulk ' || g
         FROM generate_series(1, 500) g",
        &[&ids],
    )
    .await
    .unwrap();
    assert_eq!(drifted(&s).await, 0);
    // 30 messages of the first conversation and 10 of the second deleted at once.
    conn.execute(
        "DELETE FROM conversation.messages WHERE id IN (
             (SELECT id FROM conversation.messages WHERE conversation_id = $1 LIMIT 30)
             UNION ALL
             (SELECT id FROM conversation.messages WHERE conversation_id = $2 LIMIT 10))",
        &[&ids[0], &ids[1]],
    )
    .await
    .unwrap();
    // Every message of the third conversation moved to the fourth.
    conn.execute(
        "UPDATE conversation.messages SET conversation_id = $2 WHERE conversation_id = $1",
        &[&ids[2], &ids[3]],
    )
    .await
    .unwrap();
    assert_eq!(drifted(&s).await, 0);
    assert_eq!(count_rows(&s, &[ids[2]]).await, 0, "emptied: no row");
    let expected = [70, 90, 0, 200, 100];
    for (id, n) in ids.iter().zip(expected) {
        assert_eq!(detail_count(&s, &user, &id.to_string()).await, json!(n));
    }
    let (_, _, list) = read(&s.app, &user, "/api/conversations").await;
    let mut listed: Vec<i64> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message_count"].as_i64().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, [0, 70, 90, 100, 200]);
}

/// The detail and the list of a conversation of 100,000 messages read its count
/// from one row: no scan of the conversation's messages returns more than the
/// one last message (the count(*) they replace read all 100,000 index entries).
#[tokio::test]
async fn a_conversation_of_100k_messages_is_counted_from_one_row() {
    let s = spawn_offline().await;
    let user = User::new();
    let id = uuid(&s.conversation(&user, "long").await);
    let conn = s.db.connect().await;
    // And 20,000 other conversations of a message each, so the counts are a
    // table worth an index to PostgreSQL.
    conn.batch_execute(&format!(
        "INSERT INTO conversation.messages (id, conversation_id, role, content, created_at)
         SELECT gen_random_uuid(), '{id}', 'user', 'message ' || g, now() - g * interval '1 second'
         FROM generate_series(1, 100000) g;
         INSERT INTO conversation.conversations (id, user_id, title)
         SELECT gen_random_uuid(), gen_random_uuid(), 'other ' || g FROM generate_series(1, 20000) g;
         INSERT INTO conversation.messages (id, conversation_id, role, content)
         SELECT gen_random_uuid(), c.id, 'user', 'hello' FROM conversation.conversations c
         WHERE c.title LIKE 'other %';
         ANALYZE conversation.conversations;
         ANALYZE conversation.messages;
         ANALYZE conversation.message_counts;"
    ))
    .await
    .unwrap();
    assert_eq!(
        detail_count(&s, &user, &id.to_string()).await,
        json!(100_000)
    );
    for (name, sql) in [
        ("get", conversation_service::queries::GET_CONVERSATION),
        ("list", conversation_service::queries::FIRST_PAGE),
    ] {
        let params: [&(dyn ToSql + Sync); 2] = if name == "get" {
            [&id, &user.id]
        } else {
            [&user.id, &21i64]
        };
        let plan: Value = conn
            .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), &params)
            .await
            .unwrap()
            .get(0);
        let mut scans = Vec::new();
        scans_of(&plan[0]["Plan"], &mut scans);
        assert!(
            scans
                .iter()
                .any(|(rel, index, rows)| rel == "message_counts"
                    && index == "message_counts_pkey"
                    && *rows == 1.0),
            "{name}: the count is one primary-key row: {scans:?}"
        );
        for (rel, _, rows) in &scans {
            if rel == "messages" {
                assert!(
                    *rows <= 1.0,
                    "{name}: a scan of messages returned {rows} rows: {scans:?}"
                );
            }
        }
    }
}

/// (relation, index, actual rows) of every scan in an `EXPLAIN (FORMAT JSON)` plan.
fn scans_of(node: &Value, out: &mut Vec<(String, String, f64)>) {
    if let Some(rel) = node["Relation Name"].as_str() {
        out.push((
            rel.to_owned(),
            node["Index Name"].as_str().unwrap_or("").to_owned(),
            node["Actual Rows"].as_f64().unwrap_or(0.0),
        ));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        scans_of(child, out);
    }
}

/// A rolling update runs the previous release's pods on V4's schema: they write
/// messages with the same statements, as the serving role — the triggers count
/// those writes with the serving role's privileges — and they read the count
/// with count(*), which agrees with the kept count.
#[tokio::test]
async fn the_previous_releases_statements_write_and_read_on_v4_as_the_serving_role() {
    const V3_GET: &str = "SELECT c.id, counted.message_count
         FROM conversation.conversations c
         CROSS JOIN LATERAL (SELECT count(*) AS message_count FROM conversation.messages m WHERE m.conversation_id = c.id) counted
         WHERE c.id = $1 AND c.user_id = $2";
    let s = spawn_offline().await;
    let user = User::new();
    let id = uuid(&s.conversation(&user, "rolling").await);
    let serving = kai_testing::roles::Role::serving("conversation")
        .unwrap()
        .connect(&s.db.url)
        .await;
    for i in 0..3 {
        let written = serving
            .query_opt(
                conversation_service::queries::APPEND_MESSAGE,
                &[&id, &user.id, &Uuid::now_v7(), &"user", &format!("m{i}")],
            )
            .await
            .expect("the serving role runs the insert and its trigger");
        assert!(written.is_some());
    }
    let old: i64 = serving
        .query_one(V3_GET, &[&id, &user.id])
        .await
        .unwrap()
        .get(1);
    let kept: i64 = serving
        .query_one(
            conversation_service::queries::GET_CONVERSATION,
            &[&id, &user.id],
        )
        .await
        .unwrap()
        .get("message_count");
    assert_eq!((old, kept), (3, 3));
    assert_eq!(drifted(&s).await, 0);
}
