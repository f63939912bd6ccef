//! The PostgreSQL roles Kai ships (k8s/postgres/, SPEC §7 "Least privilege"):
//! every service serves as its own role with DML on its own tables only and
//! migrates as its own schema's owner only. Every other e2e test runs with these
//! roles too ([`kai_testing::roles`]); these show what each role may not do.

use kai_shared::db::{Db, MigrationSet, migrate};
use kai_shared::metrics::Metrics;
use kai_testing::roles::Role;
use kai_testing::{self as testing, TestApp, TestDb};
use tokio_postgres::error::SqlState;

const SETS: [MigrationSet; 3] = [
    journal_service::MIGRATIONS,
    conversation_service::MIGRATIONS,
    profile_service::MIGRATIONS,
];

/// Applies `set` as `role` through a pool of one connection.
async fn migrate_as(db: &TestDb, role: Role, set: MigrationSet) -> Result<usize, String> {
    let settings = testing::settings(&role.url(&db.url), None, "unused", &[("DB_POOL_SIZE", "1")]);
    let pool = Db::new(&settings.database, &Metrics::new(set.schema));
    migrate(&pool, set).await.map_err(|e| format!("{e:#}"))
}

/// A database with every service's schema migrated by its migration role.
async fn migrated() -> TestDb {
    let db = TestDb::create().await;
    for set in SETS {
        let role = Role::migration(set.schema).unwrap();
        let applied = migrate_as(&db, role, set).await.unwrap();
        assert!(applied > 0, "{} applied its migrations", role.name());
    }
    db
}

/// `sql` as `client` fails with "permission denied" (42501), nothing else.
async fn assert_denied(client: &tokio_postgres::Client, who: &str, sql: &str) {
    let err = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{who} may not: {sql}"));
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{who}: {sql}: {err:?}"
    );
}

#[tokio::test]
async fn journals_serving_role_is_denied_profiles_users_ddl_and_profiles_outbox() {
    let db = migrated().await;
    let journal = Role::serving("journal").unwrap().connect(&db.url).await;
    // What it may do: its own rows (the control that the denials are not a
    // connection or a typo).
    journal
        .batch_execute(
            "SELECT count(*) FROM journal.journal_entries; \
             SELECT coalesce(max(version), 0) FROM journal.refinery_history; \
             DELETE FROM journal.journal_entries WHERE user_id = gen_random_uuid()",
        )
        .await
        .expect("kai_journal reads and writes its own tables");
    let who = "kai_journal";
    assert_denied(&journal, who, "SELECT password_hash FROM profile.users").await;
    assert_denied(
        &journal,
        who,
        "UPDATE profile.users SET password_hash = 'attacker'",
    )
    .await;
    assert_denied(
        &journal,
        who,
        "INSERT INTO profile.outbox (id, topic, payload, awaiting) \
         VALUES (gen_random_uuid(), 'account-erased', gen_random_uuid()::text, '{journal}')",
    )
    .await;
    assert_denied(&journal, who, "DELETE FROM profile.outbox").await;
    assert_denied(&journal, who, "SELECT * FROM conversation.messages").await;
    // No DDL, not even in its own schema.
    assert_denied(&journal, who, "CREATE TABLE journal.not_allowed (id int)").await;
    assert_denied(
        &journal,
        who,
        "ALTER TABLE journal.journal_entries ADD COLUMN not_allowed int",
    )
    .await;
    assert_denied(&journal, who, "DROP TABLE journal.journal_entries").await;
    assert_denied(&journal, who, "CREATE SCHEMA not_allowed").await;
    assert_denied(&journal, who, "CREATE TABLE public.not_allowed (id int)").await;
    assert_denied(&journal, who, "CREATE TEMPORARY TABLE not_allowed (id int)").await;
}

#[tokio::test]
async fn journals_migration_role_cannot_touch_profiles_schema() {
    let db = migrated().await;
    let migrator = Role::migration("journal").unwrap().connect(&db.url).await;
    migrator
        .batch_execute("CREATE TABLE journal.scratch (id int); DROP TABLE journal.scratch")
        .await
        .expect("kai_journal_migrate owns its own schema");
    let who = "kai_journal_migrate";
    assert_denied(&migrator, who, "SELECT * FROM profile.users").await;
    assert_denied(
        &migrator,
        who,
        "UPDATE profile.users SET password_hash = 'x'",
    )
    .await;
    assert_denied(&migrator, who, "ALTER TABLE profile.users ADD COLUMN x int").await;
    assert_denied(&migrator, who, "DROP TABLE profile.outbox").await;
    assert_denied(&migrator, who, "CREATE TABLE profile.planted (id int)").await;
    assert_denied(&migrator, who, "ALTER SCHEMA profile RENAME TO gone").await;
    assert_denied(&migrator, who, "DROP SCHEMA conversation CASCADE").await;
    // Nor run another service's migrations.
    let err = migrate_as(&db, Role::migration("journal").unwrap(), SETS[2])
        .await
        .expect_err("journal's migration role cannot migrate profile");
    assert!(err.contains("permission denied"), "{err}");
}

#[tokio::test]
async fn a_serving_role_cannot_migrate_and_starts_read_only_once_the_schema_is_current() {
    let db = TestDb::create().await;
    let serving = Role::serving("journal").unwrap();
    let err = migrate_as(&db, serving, journal_service::MIGRATIONS)
        .await
        .expect_err("the serving role cannot apply migrations");
    assert!(err.contains("permission denied"), "{err}");
    migrate_as(
        &db,
        Role::migration("journal").unwrap(),
        journal_service::MIGRATIONS,
    )
    .await
    .unwrap();
    // `serve` with RUN_MIGRATIONS left on (the default) as the serving role: the
    // schema is current, so its start reads the history and changes nothing.
    let settings = testing::settings(&serving.url(&db.url), None, "unused", &[]);
    assert!(settings.server.run_migrations);
    let app = TestApp::start(journal_service::service(), settings).await;
    assert_eq!(app.status("/health/ready").await, 200);
    let user: String = app
        .platform
        .db
        .conn()
        .await
        .unwrap()
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "kai_journal");
}

#[tokio::test]
async fn every_test_service_migrates_as_its_migration_role_and_serves_as_its_serving_role() {
    let s = crate::system::start().await;
    for (app, schema) in [
        (&s.journal, "journal"),
        (&s.conversation, "conversation"),
        (&s.profile, "profile"),
    ] {
        let conn = app.platform.db.conn().await.unwrap();
        let user: String = conn
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, format!("kai_{schema}"));
        // Every table of the schema (history included) belongs to its
        // migration role: the migrations ran as it.
        let owners: Vec<String> =
            s.db.connect()
                .await
                .query(
                    "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = $1",
                    &[&schema],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(owners, [format!("kai_{schema}_migrate")], "{schema}");
    }
}
