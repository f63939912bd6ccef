//! Creates combined into multi-row statements (`journal_service::writer`,
//! `queries::insert_entries`), against real PostgreSQL and Redis: a batch is one
//! statement and each create gets its own row back; an entry PostgreSQL refuses
//! fails alone; concurrent creates are all stored, counted and visible at once.

use journal_service::model::{CreateEntry, Entry};
use journal_service::queries::insert_entries;
use kai_http::Valid;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Journal, User, read, spawn};

fn new_entry(
    content: &str,
    title: Option<&str>,
    mood: Option<i16>,
    tags: &[&str],
) -> Valid<CreateEntry> {
    Valid::parse(CreateEntry {
        content: content.into(),
        title: title.map(Into::into),
        mood,
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })
    .expect("valid entry")
}

/// The value of the `/metrics` series `name` whose labels include all of `labels`.
fn series(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|lab| l.contains(lab))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} {labels:?} not in /metrics:\n{metrics}"))
}

/// Runs `batch` as the writer does and returns each result, committed.
async fn write(j: &Journal, batch: &[(Uuid, Valid<CreateEntry>)]) -> (Vec<Option<Entry>>, u64) {
    let p = &j.app.platform;
    let before = j.app.statements();
    let results = insert_entries(&p.db, batch).await;
    let statements = j.app.statements() - before;
    let mut out = Vec::new();
    for result in results {
        out.push(match result {
            Ok(written) => Some(p.cache.commit(written).await),
            Err(_) => None,
        });
    }
    (out, statements)
}

#[tokio::test]
async fn a_batch_of_several_users_entries_is_one_statement_and_each_gets_its_own_row() {
    let j = spawn().await;
    let (a, b) = (User::new(), User::new());
    let batch = vec![
        (
            a.id,
            new_entry("first", Some("a title"), Some(3), &["x", "y"]),
        ),
        (b.id, new_entry("second", None, None, &[])),
        (a.id, new_entry("third", None, Some(10), &["z"])),
        (
            b.id,
            new_entry("fourth", Some("t"), Some(1), &["p", "q", "r"]),
        ),
    ];
    let (stored, statements) = write(&j, &batch).await;
    assert_eq!(statements, 1, "four creates, one statement");
    let stored: Vec<Entry> = stored.into_iter().map(|e| e.expect("stored")).collect();
    let shapes: Vec<_> = stored
        .iter()
        .map(|e| {
            (
                e.content.as_str(),
                e.title.as_deref(),
                e.mood,
                e.tags.clone(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [
            (
                "first",
                Some("a title"),
                Some(3),
                vec!["x".to_string(), "y".into()]
            ),
            ("second", None, None, vec![]),
            ("third", None, Some(10), vec!["z".into()]),
            (
                "fourth",
                Some("t"),
                Some(1),
                vec!["p".into(), "q".into(), "r".into()]
            ),
        ],
        "each create gets its own row back, in order, tags included"
    );
    assert!(
        stored.windows(2).all(|w| w[0].id < w[1].id),
        "ids are taken in order"
    );

    // Each user sees their own, newest first (one created_at: the id orders them),
    // with the kept total.
    let (status, _, page) = read(&j.app, &a, "/api/journal/entries").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 2);
    let contents: Vec<_> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].clone())
        .collect();
    assert_eq!(contents, [json!("third"), json!("first")]);
    let (_, _, page) = read(&j.app, &b, "/api/journal/entries").await;
    assert_eq!(page["total"], 2);
    let (status, _, one) = read(
        &j.app,
        &b,
        &format!("/api/journal/entries/{}", stored[3].id),
    )
    .await;
    assert_eq!((status, one["tags"].clone()), (200, json!(["p", "q", "r"])));
}

#[tokio::test]
async fn an_entry_the_database_refuses_fails_alone_and_the_rest_of_its_batch_is_stored() {
    let j = spawn().await;
    // A rule only PostgreSQL knows (validation lets the content through).
    j.db.connect()
        .await
        .batch_execute(
            "ALTER TABLE journal.journal_entries
             ADD CONSTRAINT test_refused CHECK (content <> 'refused by the database')",
        )
        .await
        .unwrap();
    let user = User::new();
    let batch = vec![
        (user.id, new_entry("kept one", None, None, &["a"])),
        (
            user.id,
            new_entry("refused by the database", None, None, &[]),
        ),
        (user.id, new_entry("kept two", None, Some(4), &[])),
    ];
    let (stored, statements) = write(&j, &batch).await;
    assert_eq!(
        stored
            .iter()
            .map(|e| e.as_ref().map(|e| e.content.as_str()))
            .collect::<Vec<_>>(),
        [Some("kept one"), None, Some("kept two")]
    );
    assert_eq!(
        statements, 4,
        "the refused batch, then one statement per entry"
    );
    let (_, _, page) = read(&j.app, &user, "/api/journal/entries").await;
    assert_eq!(
        page["total"], 2,
        "nothing of the refused statement was kept twice"
    );
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn concurrent_creates_of_one_user_are_all_stored_counted_and_read_at_once() {
    let j = spawn().await;
    let user = User::new();
    // A cached, empty list first: every batch must invalidate it.
    let (_, _, page) = read(&j.app, &user, "/api/journal/entries?page_size=100").await;
    assert_eq!(page["total"], 0);
    let (_, cache, _) = read(&j.app, &user, "/api/journal/entries?page_size=100").await;
    assert_eq!(cache, "HIT");

    let creates = (0..48).map(|i| {
        let (j, user) = (&j, &user);
        async move {
            let res = j
                .create(
                    user,
                    json!({ "content": format!("entry {i}"), "tags": [format!("t{i}")] }),
                )
                .await;
            assert_eq!(res.status(), 201);
            let location = res.headers()["location"].to_str().unwrap().to_string();
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["content"], format!("entry {i}"));
            assert_eq!(body["tags"], json!([format!("t{i}")]));
            assert_eq!(
                location,
                format!("/api/journal/entries/{}", body["id"].as_str().unwrap())
            );
            // Read-your-writes: the 201 came after the invalidation.
            let (status, _, page) = read(&j.app, user, "/api/journal/entries?page_size=100").await;
            assert_eq!(status, 200);
            assert!(
                page["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["id"] == body["id"]),
                "entry {i} is listed as soon as its create answered"
            );
            body["id"].as_str().unwrap().to_string()
        }
    });
    let mut ids = futures_util::future::join_all(creates).await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 48, "48 distinct entries");
    let (_, _, page) = read(&j.app, &user, "/api/journal/entries?page_size=100").await;
    assert_eq!(page["total"], 48);
    assert_eq!(page["entries"].as_array().unwrap().len(), 48);

    // Every create went through the writer's batches (however they combined).
    let metrics = j.app.metrics().await;
    let batch = [r#"batch="journal_entries""#];
    assert_eq!(
        series(&metrics, "kai_db_batch_size_sum", &batch),
        48.0,
        "48 creates in the batches"
    );
    let batches = series(&metrics, "kai_db_batch_size_count", &batch);
    assert!((1.0..=48.0).contains(&batches), "{batches} batches");
}

#[tokio::test]
async fn a_create_refreshes_the_first_pages_its_replica_holds_so_readers_wait_for_no_load() {
    let j = spawn().await;
    let other = j.replica().await;
    let user = User::new();
    let first = j.entry(&user, "first").await;
    // The first page in both modes, read (hot) on this replica.
    for path in ["/api/journal/entries", "/api/journal/entries?limit=20"] {
        let (_, cache, _) = read(&j.app, &user, path).await;
        assert_eq!(cache, "MISS", "{path}");
        let (_, cache, _) = read(&j.app, &user, path).await;
        assert_eq!(cache, "HIT", "{path}");
    }
    let before = j.app.statements();
    let second = j.entry(&user, "second").await;
    assert_eq!(
        j.app.statements() - before,
        2,
        "the insert, then the cursor mode's first page loaded by the create \
         (the page mode's is derived from the page it replaces)"
    );
    let before = j.app.statements();
    for app in [&j.app, &other] {
        let (status, cache, page) = read(app, &user, "/api/journal/entries").await;
        assert_eq!((status, cache.as_str()), (200, "HIT"));
        assert_eq!(page["total"], 2);
        assert_eq!(page["entries"][0]["id"], second["id"], "newest first");
        assert_eq!(page["entries"][1]["id"], first["id"]);
        let (_, cache, page) = read(app, &user, "/api/journal/entries?limit=20").await;
        assert_eq!(cache, "HIT");
        assert_eq!(page["entries"][0]["id"], second["id"]);
    }
    assert_eq!(
        j.app.statements() - before,
        0,
        "no reader loaded: the pages were stored with the new generation"
    );
    let stored = series(
        &j.app.metrics().await,
        "kai_cache_refills_total",
        &[r#"namespace="journal_list""#, r#"outcome="stored""#],
    );
    assert_eq!(stored, 2.0, "both first pages refilled, counted");

    // A user whose list no one reads: the create is its one statement.
    let quiet = User::new();
    let before = j.app.statements();
    j.entry(&quiet, "unread").await;
    assert_eq!(j.app.statements() - before, 1);
    let (_, cache, page) = read(&j.app, &quiet, "/api/journal/entries").await;
    assert_eq!((cache.as_str(), page["total"].clone()), ("MISS", json!(1)));
}

/// The body and ETag of a GET.
async fn fetch(app: &kai_testing::TestApp, user: &User, path: &str) -> (String, String, String) {
    let res = app.get(&user.token, path).await;
    assert_eq!(res.status(), 200);
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (cache, etag) = (header("x-cache"), header("etag"));
    (cache, etag, res.text().await.unwrap())
}

#[tokio::test]
async fn a_derived_first_page_is_byte_for_byte_the_page_postgresql_returns() {
    let j = spawn().await;
    // The same database, no cache: every answer straight from PostgreSQL.
    let plain = kai_testing::TestApp::start(
        journal_service::service(),
        kai_testing::settings(
            &j.db.url,
            None,
            &j.prefix.prefix,
            &[("CACHE_ENABLED", "false")],
        ),
    )
    .await;
    let user = User::new();
    for i in 0..25 {
        j.entry(&user, &format!("older {i}")).await;
    }
    let path = "/api/journal/entries";
    let agree = |label: String| {
        let (j, plain, user) = (&j, &plain, &user);
        async move {
            let (cache, etag, body) = fetch(&j.app, user, path).await;
            let (_, plain_etag, plain_body) = fetch(plain, user, path).await;
            assert_eq!(cache, "HIT", "{label}: the page was refreshed, not loaded");
            assert_eq!(body, plain_body, "{label}");
            assert_eq!(etag, plain_etag, "{label}");
        }
    };
    fetch(&j.app, &user, path).await; // hot
    // One create at a time: each page derived from the one before.
    for i in 0..5 {
        j.entry(&user, &format!("one at a time {i}")).await;
        agree(format!("after create {i}")).await;
    }
    // Creates at once, in batches, tags and moods included.
    let creates = (0..30).map(|i| {
        let (j, user) = (&j, &user);
        async move {
            let res = j
                .create(
                    user,
                    json!({ "content": format!("together {i}"), "mood": (i % 10) + 1,
                            "tags": [format!("t{i}"), "shared"], "title": format!("#{i}") }),
                )
                .await;
            assert_eq!(res.status(), 201);
        }
    });
    futures_util::future::join_all(creates).await;
    agree("after 30 concurrent creates".into()).await;
    let (_, _, page) = read(&j.app, &user, path).await;
    assert_eq!(
        (page["total"].clone(), page["has_more"].clone()),
        (json!(60), json!(true))
    );
}
