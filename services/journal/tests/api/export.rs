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

/// Per-user export limits: one streaming at once (configured), freed when its
/// client leaves or it ends, and a rate per minute; 429 + `Retry-After`, counted.
#[tokio::test]
async fn exports_are_limited_while_running_and_per_minute() {
    use kai_testing::{TestApp, TestDb, TestPrefix};
    let env = [
        ("JOURNAL_EXPORTS_RUNNING_PER_USER", "1"),
        ("JOURNAL_EXPORTS_PER_MINUTE", "3"),
    ];
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&kai_testing::redis_url());
    let settings = kai_testing::settings(
        &db.url,
        Some(&kai_testing::redis_url()),
        &prefix.prefix,
        &env,
    );
    let app = TestApp::start(
        journal_service::service_with(&kai_testing::service_settings(&env)),
        settings,
    )
    .await;
    let user = crate::helpers::User::new();
    // About 24 MB of entries: more than the socket buffers hold, so an export
    // whose client does not read stays running.
    db.connect()
        .await
        .execute(
            "INSERT INTO journal.journal_entries (id, user_id, content)
             SELECT gen_random_uuid(), $1, repeat('river walk ', 400) FROM generate_series(1, 6000)",
            &[&user.id],
        )
        .await
        .unwrap();
    let refused = |limit: &'static str| {
        let app = &app;
        async move {
            let series = format!("outcome=\"{limit}\"");
            app.metrics()
                .await
                .lines()
                .find(|l| l.starts_with("kai_rate_limited_total{") && l.contains(&series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {limit} series")) as u64
        }
    };
    assert_eq!(refused("exports-running").await, 0);
    let export = || app.get(&user.token, "/api/journal/export");
    let held = export().await;
    assert_eq!(held.status(), 200);
    let res = export().await;
    assert!(res.headers().contains_key("retry-after"));
    crate::helpers::assert_problem(res, 429).await;
    assert_eq!(refused("exports-running").await, 1);
    // Its client goes away: the slot is freed (when the server notices).
    drop(held);
    let second = loop {
        let res = export().await;
        if res.status() == 200 {
            break res;
        }
        assert_eq!(res.status(), 429);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(second.text().await.unwrap().lines().count(), 6000);
    // Read to the end, the slot is free: the third export this minute runs.
    let third = export().await;
    assert_eq!(third.status(), 200);
    assert_eq!(third.text().await.unwrap().lines().count(), 6000);
    // The fourth is refused by the rate.
    crate::helpers::assert_problem(export().await, 429).await;
    assert_eq!(refused("exports").await, 1);
}
