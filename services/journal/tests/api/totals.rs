//! The per-user live totals (`journal.entry_totals`, migrations V4 and V5), against real
//! PostgreSQL: whatever writes the entries — the API, concurrent writers, soft
//! deletes, batch inserts of many users, account erasure — each user's kept total
//! equals a fresh count(*) of their live entries, and the list's `total` says so.

use std::collections::HashMap;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Journal, User, read, spawn};

/// Every user's kept total next to a fresh count, for the users given (a user
/// with neither shows as (0, 0): no row means 0).
async fn kept_and_counted(j: &Journal, users: &[Uuid]) -> HashMap<Uuid, (i64, i64)> {
    let conn = j.db.connect().await;
    let rows = conn
        .query(
            "SELECT u,
                    coalesce((SELECT sum(live) FROM journal.entry_totals WHERE user_id = u), 0)::bigint,
                    (SELECT count(*) FROM journal.journal_entries WHERE user_id = u AND deleted_at IS NULL)
             FROM unnest($1::uuid[]) AS u",
            &[&users],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// How many rows of `journal.entry_total_shards` hold `user`'s total.
async fn total_rows(j: &Journal, user: Uuid) -> i64 {
    j.db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM journal.entry_total_shards WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

async fn assert_totals_exact(j: &Journal, users: &[Uuid]) {
    for (user, (kept, counted)) in kept_and_counted(j, users).await {
        assert_eq!(kept, counted, "user {user}: kept total vs count(*)");
    }
    // No user anywhere with a drifted or negative total.
    let conn = j.db.connect().await;
    let drifted: i64 = conn
        .query_one(
            "SELECT count(*) FROM (
                 SELECT user_id, count(*) AS n FROM journal.journal_entries
                 WHERE deleted_at IS NULL GROUP BY user_id) c
             FULL JOIN (SELECT user_id, sum(live) AS live FROM journal.entry_totals
                        GROUP BY user_id) t USING (user_id)
             WHERE coalesce(c.n, 0) <> coalesce(t.live, 0) OR t.live <= 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(drifted, 0, "users whose kept total is off");
}

async fn list_total(j: &Journal, user: &User) -> serde_json::Value {
    let (status, _, page) = read(&j.app, user, "/api/journal/entries?page_size=5").await;
    assert_eq!(status, 200);
    page["total"].clone()
}

#[tokio::test]
async fn api_writes_soft_deletes_and_restores_keep_the_total() {
    let j = spawn().await;
    let user = User::new();
    assert_eq!(list_total(&j, &user).await, json!(0));
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(j.entry(&user, &format!("entry {i}")).await["id"].clone());
    }
    assert_eq!(list_total(&j, &user).await, json!(7));
    for id in &ids[..3] {
        assert_eq!(j.delete(&user, id.as_str().unwrap()).await.status(), 204);
    }
    // Deleting twice, and patching, change nothing.
    assert_eq!(
        j.delete(&user, ids[0].as_str().unwrap()).await.status(),
        404
    );
    let patched = j
        .patch(
            &user,
            ids[5].as_str().unwrap(),
            json!({"content": "changed"}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    assert_eq!(list_total(&j, &user).await, json!(4));
    // A restore (deleted_at back to NULL) by SQL counts again.
    let conn = j.db.connect().await;
    conn.execute(
        "UPDATE journal.journal_entries SET deleted_at = NULL WHERE id = $1::text::uuid",
        &[&ids[1].as_str().unwrap()],
    )
    .await
    .unwrap();
    assert_totals_exact(&j, &[user.id]).await;
}

#[tokio::test]
async fn concurrent_writers_of_one_user_keep_an_exact_total() {
    let j = spawn().await;
    let user = User::new();
    // 40 creates from 8 concurrent clients, then 15 concurrent deletes while 10
    // more creates run.
    let created: Vec<String> = futures_util::future::join_all((0..40).map(|i| {
        let (j, user) = (&j, &user);
        async move {
            j.entry(user, &format!("c{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    }))
    .await;
    let (jr, ur) = (&j, &user);
    let deletes = futures_util::future::join_all(
        created[..15]
            .iter()
            .map(|id| async move { jr.delete(ur, id).await.status().as_u16() }),
    );
    let creates = futures_util::future::join_all((0..10).map(|i| async move {
        jr.create(ur, json!({"content": format!("d{i}")}))
            .await
            .status()
            .as_u16()
    }));
    let (d, c) = tokio::join!(deletes, creates);
    assert!(d.iter().all(|s| *s == 204), "{d:?}");
    assert!(c.iter().all(|s| *s == 201), "{c:?}");
    assert_totals_exact(&j, &[user.id]).await;
    assert_eq!(list_total(&j, &user).await, json!(35));
}

#[tokio::test]
async fn concurrent_batch_statements_over_many_users_keep_every_total() {
    let j = spawn().await;
    let users: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    // Four connections, each one multi-user INSERT … SELECT of 500 rows, then one
    // multi-user soft delete and one hard delete, all at once: the same 50 users
    // in every statement (the per-user rows are upserted in user order, so these
    // cannot deadlock on each other).
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (conn, users) = (j.db.connect().await, users.clone());
        tasks.push(tokio::spawn(async move {
            // Each task's rows are its own (`batch k-g`), so the only rows the
            // tasks share are the users' totals: the thing under test.
            conn.execute(
                "INSERT INTO journal.journal_entries (id, user_id, content)
                 SELECT gen_random_uuid(), ($1::uuid[])[1 + g % 50], $2 || g
                 FROM generate_series(1, 500) g",
                &[&users, &format!("batch {k}-")],
            )
            .await
            .unwrap();
            conn.execute(
                "UPDATE journal.journal_entries SET deleted_at = now()
                 WHERE id IN (SELECT id FROM journal.journal_entries
                              WHERE user_id = ANY($1) AND deleted_at IS NULL AND content LIKE $2
                              LIMIT 40)",
                &[&users, &format!("batch {k}-1%")],
            )
            .await
            .unwrap();
            conn.execute(
                "DELETE FROM journal.journal_entries
                 WHERE id IN (SELECT id FROM journal.journal_entries
                              WHERE user_id = ANY($1) AND content LIKE $2 LIMIT 30)",
                &[&users, &format!("batch {k}-2%")],
            )
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_totals_exact(&j, &users).await;
    let kept: i64 = kept_and_counted(&j, &users)
        .await
        .values()
        .map(|(k, _)| k)
        .sum();
    assert!(kept > 1_500, "most of the 2,000 rows are live: {kept}");
}

#[tokio::test]
async fn account_erasure_leaves_no_total_behind() {
    let j = spawn().await;
    let (gone, stays) = (User::new(), User::new());
    for i in 0..6 {
        j.entry(&gone, &format!("g{i}")).await;
        j.entry(&stays, &format!("s{i}")).await;
    }
    let first = j.entry(&gone, "deleted before erasure").await;
    assert_eq!(
        j.delete(&gone, first["id"].as_str().unwrap())
            .await
            .status(),
        204
    );
    let deleted = journal_service::erasure::purge(&j.app.platform, gone.id)
        .await
        .unwrap();
    assert_eq!(deleted, 7);
    let rows = total_rows(&j, gone.id).await;
    assert_eq!(rows, 0, "the erased user's total row is gone");
    assert_totals_exact(&j, &[gone.id, stays.id]).await;
    assert_eq!(list_total(&j, &gone).await, json!(0));
    assert_eq!(list_total(&j, &stays).await, json!(6));
}

async fn shard_of(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid() % 16", &[])
        .await
        .unwrap()
        .get(0)
}

/// Two connections whose backends write to different shards of a user's total.
async fn connections_in_two_shards(
    j: &Journal,
) -> (tokio_postgres::Client, tokio_postgres::Client) {
    let first = j.db.connect().await;
    let mut second = j.db.connect().await;
    while shard_of(&second).await == shard_of(&first).await {
        second = j.db.connect().await;
    }
    (first, second)
}

/// V5: writers of one user on different connections add to different rows of
/// the user's total, so one does not wait for the other's commit. (With V4's one
/// row per user, the second INSERT below blocks on the first transaction's row
/// lock and fails on `lock_timeout`.)
#[tokio::test]
async fn writers_of_one_user_on_different_connections_do_not_wait_for_each_other() {
    let j = spawn().await;
    let user = User::new();
    let (first, second) = connections_in_two_shards(&j).await;
    let insert = "INSERT INTO journal.journal_entries (id, user_id, content)
                  VALUES (gen_random_uuid(), $1, 'concurrent')";
    first.batch_execute("BEGIN").await.unwrap();
    first.execute(insert, &[&user.id]).await.unwrap();
    // The first transaction is open and holds its shard's row.
    second
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    second
        .execute(insert, &[&user.id])
        .await
        .expect("the second writer does not wait for the first");
    second.batch_execute("COMMIT").await.unwrap();
    first.batch_execute("COMMIT").await.unwrap();
    let rows = total_rows(&j, user.id).await;
    assert_eq!(rows, 2, "one row per shard written");
    assert_totals_exact(&j, &[user.id]).await;
    assert_eq!(list_total(&j, &user).await, json!(2));
}

/// A rolling update runs the previous release's replicas on V5's schema: their
/// page statement reads `journal.entry_totals` as one row per user (V4), which
/// is now a view summing the shards — exact, and never "more than one row
/// returned by a subquery" for a user whose total spans several shards.
#[tokio::test]
async fn the_previous_releases_total_statement_still_reads_an_exact_total() {
    const V4_TOTAL: &str =
        "SELECT coalesce((SELECT live FROM journal.entry_totals WHERE user_id = $1), 0)::bigint";
    let j = spawn().await;
    let user = User::new();
    let (first, second) = connections_in_two_shards(&j).await;
    let insert = "INSERT INTO journal.journal_entries (id, user_id, content)
                  VALUES (gen_random_uuid(), $1, 'from an old replica')";
    for conn in [&first, &second, &second] {
        conn.execute(insert, &[&user.id]).await.unwrap();
    }
    assert_eq!(total_rows(&j, user.id).await, 2, "two shards");
    let total: i64 = first
        .query_one(V4_TOTAL, &[&user.id])
        .await
        .expect("V4's statement on V5's schema")
        .get(0);
    assert_eq!(total, 3);
    assert_totals_exact(&j, &[user.id]).await;
}
