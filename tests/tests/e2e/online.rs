//! Online-safe schema changes (SPEC §7): the migration runner's timeouts, a
//! migration that runs outside a transaction (`CREATE INDEX CONCURRENTLY`), and
//! release N's binaries serving on release N+1's schema (expand, then contract).

use kai_shared::db::{Db, LOCK_TIMEOUT, STATEMENT_TIMEOUT, migrate};
use kai_shared::metrics::Metrics;
use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use serde_json::{Value, json};
use uuid::Uuid;

mod online_set {
    kai_shared::migrations!("online_test", "migrations/online");
}

fn pool(db: &TestDb) -> Db {
    let settings = testing::settings(&db.url, None, "unused", &[("DB_POOL_SIZE", "1")]);
    Db::new(&settings.database, &Metrics::new("online"))
}

#[tokio::test]
async fn migrations_run_with_lock_and_statement_timeouts_that_end_with_them() {
    let db = TestDb::create().await;
    let pool = pool(&db);
    migrate(&pool, online_set::MIGRATIONS)
        .await
        .expect("migrate");
    let conn = db.connect().await;
    let row = conn
        .query_one(
            "SELECT lock_timeout, statement_timeout FROM online_test.session",
            &[],
        )
        .await
        .unwrap();
    let (lock, statement): (String, String) = (row.get(0), row.get(1));
    assert_eq!(lock, format!("{}s", LOCK_TIMEOUT.as_secs()));
    assert_eq!(
        statement,
        format!("{}min", STATEMENT_TIMEOUT.as_secs() / 60)
    );
    // The pooled connection the runner used serves requests next: reset.
    let pooled = pool.conn().await.unwrap();
    let lock: String = pooled
        .query_one("SHOW lock_timeout", &[])
        .await
        .unwrap()
        .get(0);
    let statement: String = pooled
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((lock.as_str(), statement.as_str()), ("0", "0"));
}

#[tokio::test]
async fn a_no_transaction_migration_builds_its_index_concurrently_and_is_recorded_as_refinery_would()
 {
    let db = TestDb::create().await;
    let pool = pool(&db);
    assert_eq!(
        migrate(&pool, online_set::MIGRATIONS)
            .await
            .expect("migrate"),
        3
    );
    let conn = db.connect().await;
    // Both of the file's statements ran, each on its own (a multi-statement
    // query would be an implicit transaction, which CONCURRENTLY refuses).
    let valid: Vec<(String, bool)> = conn
        .query(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname IN ('items_label', 'items_id_label') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        valid,
        [
            ("items_id_label".to_owned(), true),
            ("items_label".to_owned(), true)
        ],
        "the concurrently built indexes exist and are valid"
    );
    let versions: Vec<i32> = conn
        .query(
            "SELECT version FROM online_test.refinery_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    // refinery itself, run again, finds every migration applied with the
    // checksum it computes: nothing divergent, nothing to do.
    assert_eq!(
        migrate(&pool, online_set::MIGRATIONS).await.expect("again"),
        0
    );
    let mut runner = (online_set::MIGRATIONS.runner)();
    runner.set_migration_table_name("online_test.refinery_history");
    let mut client = pool.conn().await.unwrap();
    let client: &mut tokio_postgres::Client = &mut client;
    let report = runner
        .run_async(client)
        .await
        .expect("refinery accepts the recorded history");
    assert!(report.applied_migrations().is_empty());
}

/// A `CREATE INDEX CONCURRENTLY` that failed half-way leaves an INVALID index
/// behind; a retried no-transaction migration's `IF NOT EXISTS` would skip it
/// and record itself as applied. The runner stops before such a migration,
/// naming the index and its `DROP`, and applies it once the index is gone.
#[tokio::test]
async fn a_no_transaction_migration_waits_until_an_invalid_index_is_dropped() {
    let db = TestDb::create().await;
    let pool = pool(&db);
    let conn = db.connect().await;
    // A real failed concurrent build in the set's schema: a unique index over
    // duplicate values.
    conn.batch_execute(
        "CREATE SCHEMA online_test; \
         CREATE TABLE online_test.other (x int); \
         INSERT INTO online_test.other VALUES (1), (1);",
    )
    .await
    .unwrap();
    conn.batch_execute("CREATE UNIQUE INDEX CONCURRENTLY other_x ON online_test.other (x)")
        .await
        .expect_err("duplicate values: the build fails");
    let err = format!(
        "{:#}",
        migrate(&pool, online_set::MIGRATIONS)
            .await
            .expect_err("an invalid index stops the no-transaction migration")
    );
    assert!(err.contains("V2__items_label"), "{err}");
    assert!(
        err.contains("DROP INDEX CONCURRENTLY online_test.other_x"),
        "{err}"
    );
    let versions = |conn: tokio_postgres::Client| async move {
        conn.query(
            "SELECT version FROM online_test.refinery_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect::<Vec<_>>()
    };
    assert_eq!(versions(db.connect().await).await, [1], "V1 only");
    let built: i64 = conn
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'items_label'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(built, 0, "V2's statements did not run");
    conn.batch_execute("DROP INDEX CONCURRENTLY online_test.other_x")
        .await
        .unwrap();
    assert_eq!(
        migrate(&pool, online_set::MIGRATIONS)
            .await
            .expect("migrate"),
        2
    );
    assert_eq!(versions(db.connect().await).await, [1, 2, 3]);
}

#[tokio::test]
async fn release_n_serves_on_release_n_plus_1s_schema() {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = || testing::settings(&db.url, Some(&prefix.url), &prefix.prefix, &[]);
    // Release N migrates and serves.
    let before = TestApp::start(journal_service::service(), settings()).await;
    let user = Uuid::new_v4();
    let token = testing::token(user);
    let created = before
        .client
        .post(before.url("/api/journal/entries"))
        .bearer_auth(&token)
        .json(&json!({"content": "before the expand", "mood": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Release N+1's migration Job expands the schema (a column the new code
    // writes, a table it reads) before its pods start.
    let newest = journal_service::MIGRATIONS.latest_version();
    let conn = db.connect().await;
    conn.batch_execute(&format!(
        "ALTER TABLE journal.journal_entries ADD COLUMN sentiment real; \
         CREATE TABLE journal.entry_links (entry_id uuid NOT NULL, url text NOT NULL); \
         INSERT INTO journal.refinery_history (version, name, applied_on, checksum) \
         VALUES ({}, 'expand_sentiment', '2026-12-07T00:00:00Z', '1')",
        newest + 1
    ))
    .await
    .unwrap();

    // Release N's pods keep serving, and one that restarts now (a crash, the
    // autoscaler) migrates at start as before: the schema is ahead of it, which
    // is not an error.
    let restarted = TestApp::start(journal_service::service(), settings()).await;
    for app in [&before, &restarted] {
        assert_eq!(app.status("/health/ready").await, 200);
        let res = app
            .client
            .post(app.url("/api/journal/entries"))
            .bearer_auth(&token)
            .json(&json!({"content": "after the expand", "tags": ["n"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let entry: Value = res.json().await.unwrap();
        let id = entry["id"].as_str().unwrap();
        let res = app
            .client
            .patch(app.url(&format!("/api/journal/entries/{id}")))
            .bearer_auth(&token)
            .json(&json!({"mood": 8}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        for path in [
            format!("/api/journal/entries/{id}"),
            "/api/journal/entries".to_owned(),
            "/api/journal/entries?limit=5".to_owned(),
            "/api/journal/search?q=expand".to_owned(),
            "/api/journal/stats".to_owned(),
            "/api/journal/export".to_owned(),
        ] {
            let (status, _, _) = app.read(&token, &path).await;
            assert_eq!(status, 200, "{path}");
        }
    }
    let (_, _, page) = restarted.read(&token, "/api/journal/entries").await;
    assert_eq!(page["total"], 3, "{page}");
}
