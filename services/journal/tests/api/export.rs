//! `GET /api/journal/export`: every live entry, oldest first, one per line —
//! across several keyset batches, with ties on `created_at`.

use serde_json::Value;

use crate::helpers::{User, spawn};

/// Inserts `n` entries for `user` directly (three share each `created_at`, so the
/// order depends on the id tie-break), plus soft-deleted ones that must not appear.
async fn seed(j: &crate::helpers::Journal, user: &User, n: i32) {
    let db = j.db.connect().await;
    db.execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, created_at)
         SELECT gen_random_uuid(), $1, 'entry ' || i, timestamptz '2026-01-01 00:00:00Z' + (i / 3) * interval '1 minute'
         FROM generate_series(1, $2) i",
        &[&user.id, &n],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, deleted_at)
         SELECT gen_random_uuid(), $1, 'deleted ' || i, now() FROM generate_series(1, 5) i",
        &[&user.id],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn export_streams_every_live_entry_oldest_first_as_ndjson() {
    let j = spawn().await;
    let (user, other) = (User::new(), User::new());
    let n = 2 * journal_service::export::BATCH as i32 + 57;
    seed(&j, &user, n).await;
    seed(&j, &other, 3).await;
    j.entry(&user, "written through the API").await;

    let res = j.get(&user, "/api/journal/export").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(
        res.headers().get("x-cache").is_none(),
        "exports are not cached"
    );
    let text = res.text().await.unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), n as usize + 1, "every live entry, once");
    assert!(
        lines
            .iter()
            .all(|e| !e["content"].as_str().unwrap().starts_with("deleted")),
        "soft-deleted entries are not exported"
    );
    assert_eq!(lines.last().unwrap()["content"], "written through the API");
    let keys: Vec<(chrono::DateTime<chrono::Utc>, String)> = lines
        .iter()
        .map(|e| {
            let at: chrono::DateTime<chrono::Utc> =
                e["created_at"].as_str().unwrap().parse().unwrap();
            (at, e["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "oldest first, ties broken by id, no repeats");
    assert!(
        ["entry 1", "entry 2"].contains(&lines[0]["content"].as_str().unwrap()),
        "the two oldest share a created_at"
    );

    // Another user's export holds only their own entries; an empty one is empty.
    let text = j
        .get(&other, "/api/journal/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 3);
    let res = j
        .get(&User::new(), "/api/journal/export")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "");
}

#[tokio::test]
async fn export_needs_a_token() {
    let j = spawn().await;
    let res = j
        .app
        .client
        .get(j.app.url("/api/journal/export"))
        .send()
        .await
        .unwrap();
    kai_testing::assert_problem(res, 401).await;
}
