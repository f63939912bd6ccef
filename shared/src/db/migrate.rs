//! Migrations: each service's refinery set, applied into its own schema with its
//! own history table (`<schema>.refinery_history`), so three services can share one
//! database without touching each other's tables.
//!
//! Migrators that start together (several Jobs, or `serve` with `RUN_MIGRATIONS`
//! left on) serialize on a PostgreSQL advisory lock keyed by the schema name: one
//! applies, the others find nothing pending. The lock is taken *first*: even
//! `CREATE SCHEMA IF NOT EXISTS` runs under it, because two sessions creating the
//! same schema concurrently can both pass the "not exists" check and one then
//! fails on the catalog's unique index (`pg_namespace_nspname_index`).

use anyhow::Context;

use super::Db;

/// Declares `pub const MIGRATIONS: MigrationSet`: the service's schema and the
/// refinery migrations of `dir` (relative to the service's crate), embedded in the
/// binary: `kai_shared::migrations!("<schema>", "../../migrations/<schema>");`.
#[macro_export]
macro_rules! migrations {
    ($schema:literal, $dir:literal) => {
        mod embedded_migrations {
            refinery::embed_migrations!($dir);
        }

        /// This service's schema and its embedded migrations.
        pub const MIGRATIONS: $crate::db::MigrationSet = $crate::db::MigrationSet {
            schema: $schema,
            runner: embedded_migrations::migrations::runner,
        };
    };
}

/// A service's migrations: its schema and the embedded refinery runner.
#[derive(Clone, Copy)]
pub struct MigrationSet {
    pub schema: &'static str,
    pub runner: fn() -> refinery::Runner,
}

impl MigrationSet {
    /// The newest version this binary embeds; readiness requires the database to have it.
    pub fn latest_version(&self) -> i32 {
        (self.runner)()
            .get_migrations()
            .iter()
            .map(|m| m.version())
            .max()
            .unwrap_or(0)
    }
}

/// Applies pending migrations; returns how many were applied.
pub async fn migrate(db: &Db, set: MigrationSet) -> anyhow::Result<usize> {
    let mut conn = db
        .conn()
        .await
        .context("connecting to PostgreSQL to migrate")?;
    let client: &mut tokio_postgres::Client = &mut conn;
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock(hashtext('kai-migrate-{}'))",
            set.schema
        ))
        .await
        .with_context(|| format!("waiting for the migration lock of {}", set.schema))?;
    let result = apply_locked(client, set).await;
    let unlock = client
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock(hashtext('kai-migrate-{}'))",
            set.schema
        ))
        .await;
    let report = result?;
    unlock.context("releasing the migration lock")?;
    for m in report.applied_migrations() {
        tracing::info!(
            schema = set.schema,
            version = m.version(),
            name = m.name(),
            "migration applied"
        );
    }
    Ok(report.applied_migrations().len())
}

/// Creates the schema and runs refinery; the caller holds the schema's advisory lock.
async fn apply_locked(
    client: &mut tokio_postgres::Client,
    set: MigrationSet,
) -> anyhow::Result<refinery::Report> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", set.schema))
        .await
        .with_context(|| format!("creating schema {}", set.schema))?;
    let mut runner = (set.runner)();
    runner.set_migration_table_name(format!("{}.refinery_history", set.schema));
    runner
        .run_async(client)
        .await
        .with_context(|| format!("applying migrations for schema {}", set.schema))
}

/// Whether the database has reached `version` in `schema` (readiness; the
/// expected version is computed once at start, not per probe).
pub async fn is_current(db: &Db, schema: &str, version: i32) -> Result<bool, super::DbError> {
    let conn = db.conn().await?;
    let sql = format!("SELECT coalesce(max(version), 0) FROM {schema}.refinery_history");
    let row = conn.query_one(sql.as_str(), &[]).await?;
    Ok(row.get::<_, i32>(0) >= version)
}
