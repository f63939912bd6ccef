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
//!
//! **Online-safe.** Under the lock, every statement runs with
//! [`LOCK_TIMEOUT`] and [`STATEMENT_TIMEOUT`]: a migration that would queue
//! behind a long transaction for a table's lock (and make every request queue
//! behind *it*) fails fast instead, and is retried by the next Job. A migration
//! whose first line is [`NO_TRANSACTION`] runs outside a transaction — what
//! `CREATE INDEX CONCURRENTLY` needs to build an index on a live table without
//! blocking writes — and is recorded in the history exactly as refinery records
//! its own. A database *ahead* of this binary (release N restarted after release
//! N+1's migration Job: expand, then contract) is not an error: everything this
//! binary knows is applied, so it serves.

use std::time::Duration;

use anyhow::Context;

use super::Db;

/// How long a migration statement may wait for a lock before it fails.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one migration statement may run (an index built concurrently on a
/// large table included).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The first line of a migration that must run outside a transaction.
pub const NO_TRANSACTION: &str = "-- kai:no-transaction";

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
///
/// A database that already has every migration this binary embeds is found so
/// with two reads and nothing else — no lock, no DDL — so `serve` with
/// `RUN_MIGRATIONS` left on starts under a serving role that may not change the
/// schema (SPEC §7); only a pending migration needs the migration role.
pub async fn migrate(db: &Db, set: MigrationSet) -> anyhow::Result<usize> {
    let mut conn = db
        .conn()
        .await
        .context("connecting to PostgreSQL to migrate")?;
    let client: &mut tokio_postgres::Client = &mut conn;
    if all_applied(client, set).await? {
        return Ok(0);
    }
    // Polled, not waited for in `pg_advisory_lock`: a session blocked there is
    // an open transaction, and `CREATE INDEX CONCURRENTLY` in the lock holder
    // waits for every open transaction to end — a deadlock between migrators.
    let lock = format!(
        "SELECT pg_try_advisory_lock(hashtext('kai-migrate-{}'))",
        set.schema
    );
    let waiting_since = std::time::Instant::now();
    loop {
        let got: bool = client
            .query_one(lock.as_str(), &[])
            .await
            .with_context(|| format!("taking the migration lock of {}", set.schema))?
            .get(0);
        if got {
            break;
        }
        anyhow::ensure!(
            waiting_since.elapsed() < STATEMENT_TIMEOUT,
            "another migrator of {} held the lock for {STATEMENT_TIMEOUT:?}",
            set.schema
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = apply_bounded(client, set).await;
    let unlock = client
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock(hashtext('kai-migrate-{}'))",
            set.schema
        ))
        .await;
    let applied = result?;
    unlock.context("releasing the migration lock")?;
    for (version, name) in &applied {
        tracing::info!(
            schema = set.schema,
            version,
            name = name.as_str(),
            "migration applied"
        );
    }
    Ok(applied.len())
}

/// Whether the history already has every migration `set` embeds (read-only).
async fn all_applied(client: &tokio_postgres::Client, set: MigrationSet) -> anyhow::Result<bool> {
    let applied = applied_versions(client, &format!("{}.refinery_history", set.schema)).await?;
    let runner = (set.runner)();
    let known = runner.get_migrations();
    let Some(&newest) = applied.iter().max() else {
        return Ok(false);
    };
    if !known.iter().all(|m| applied.contains(&m.version())) {
        return Ok(false);
    }
    let binary = set.latest_version();
    if binary < newest {
        tracing::info!(
            schema = set.schema,
            database = newest,
            binary,
            "the schema is ahead of this binary (a newer release migrated): nothing to apply"
        );
    }
    Ok(true)
}

/// [`apply_locked`] with the timeouts set for this session, and reset after
/// (the connection goes back to the pool).
async fn apply_bounded(
    client: &mut tokio_postgres::Client,
    set: MigrationSet,
) -> anyhow::Result<Vec<(i32, String)>> {
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'",
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis()
        ))
        .await
        .context("setting the migration timeouts")?;
    let result = apply_locked(client, set).await;
    let reset = client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await;
    let applied = result?;
    reset.context("resetting the migration timeouts")?;
    Ok(applied)
}

/// Creates the schema and applies what is pending, in version order: runs of
/// ordinary migrations through refinery (each in its own transaction), a
/// [`NO_TRANSACTION`] one by itself. The caller holds the schema's advisory lock.
async fn apply_locked(
    client: &mut tokio_postgres::Client,
    set: MigrationSet,
) -> anyhow::Result<Vec<(i32, String)>> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", set.schema))
        .await
        .with_context(|| format!("creating schema {}", set.schema))?;
    let table = format!("{}.refinery_history", set.schema);
    let runner = (set.runner)();
    let mut known: Vec<(i32, String, u64, Option<String>)> = runner
        .get_migrations()
        .iter()
        .map(|m| {
            (
                m.version(),
                m.name().to_owned(),
                m.checksum(),
                m.sql().map(str::to_owned),
            )
        })
        .collect();
    known.sort_by_key(|m| m.0);
    let applied = applied_versions(client, &table).await?;
    if let Some(&newest) = applied.iter().max()
        && known.iter().all(|m| applied.contains(&m.0))
    {
        if known.last().is_some_and(|m| m.0 < newest) {
            tracing::info!(
                schema = set.schema,
                database = newest,
                binary = known.last().map_or(0, |m| m.0),
                "the schema is ahead of this binary (a newer release migrated): nothing to apply"
            );
        }
        return Ok(Vec::new());
    }
    let mut done = Vec::new();
    for (version, name, checksum, sql) in &known {
        if applied.contains(version) {
            continue;
        }
        let sql = sql.as_deref().unwrap_or_default();
        if sql.trim_start().starts_with(NO_TRANSACTION) {
            // Everything before it first, then it alone.
            done.extend(run_refinery(client, set, &table, version - 1).await?);
            refuse_invalid_indexes(client, set, *version, name).await?;
            // One statement at a time: a multi-statement query is an implicit
            // transaction, which CONCURRENTLY refuses.
            for statement in statements(sql) {
                client
                    .batch_execute(&statement)
                    .await
                    .with_context(|| format!("applying {}.V{version}__{name}", set.schema))?;
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO {table} (version, name, applied_on, checksum) \
                         VALUES ($1, $2, $3, $4)"
                    ),
                    &[
                        version,
                        name,
                        &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        &checksum.to_string(),
                    ],
                )
                .await
                .with_context(|| format!("recording {}.V{version}", set.schema))?;
            done.push((*version, name.clone()));
        }
    }
    let last = known.last().map_or(0, |m| m.0);
    done.extend(run_refinery(client, set, &table, last).await?);
    Ok(done)
}

/// Stops before a [`NO_TRANSACTION`] migration while the schema holds an index
/// PostgreSQL marked INVALID — what a `CREATE INDEX CONCURRENTLY` that failed
/// half-way leaves behind. Its retry's `IF NOT EXISTS` would skip the broken
/// index and record the migration as applied (and a statement after it, such
/// as dropping the index it replaces, would run), leaving the service on an
/// index PostgreSQL never uses. The error names each index and how to drop it.
async fn refuse_invalid_indexes(
    client: &tokio_postgres::Client,
    set: MigrationSet,
    version: i32,
    name: &str,
) -> anyhow::Result<()> {
    let invalid: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND NOT i.indisvalid ORDER BY 1",
            &[&set.schema],
        )
        .await
        .with_context(|| format!("looking for invalid indexes in schema {}", set.schema))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if invalid.is_empty() {
        return Ok(());
    }
    let drops: Vec<String> = invalid
        .iter()
        .map(|index| format!("DROP INDEX CONCURRENTLY {}.{index};", set.schema))
        .collect();
    anyhow::bail!(
        "not applying {}.V{version}__{name}: the schema holds invalid indexes (a concurrent \
         build that failed, or one still running): {}. Drop them, then migrate again: {}",
        set.schema,
        invalid.join(", "),
        drops.join(" ")
    )
}

/// The statements of a [`NO_TRANSACTION`] migration: split where a `;` ends a
/// line (outside comments), so write one statement per `;`-terminated line
/// group — no function bodies or `;` at a line's end inside a string.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let code = line.split("--").next().unwrap_or("").trim_end();
        current.push_str(line);
        current.push('\n');
        if code.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current
        .trim()
        .lines()
        .all(|l| l.trim().is_empty() || l.trim().starts_with("--"))
    {
        out.push(current);
    }
    out
}

/// refinery up to `target` (inclusive); what it applied.
async fn run_refinery(
    client: &mut tokio_postgres::Client,
    set: MigrationSet,
    table: &str,
    target: i32,
) -> anyhow::Result<Vec<(i32, String)>> {
    let mut runner = (set.runner)().set_target(refinery::Target::Version(target));
    runner.set_migration_table_name(table);
    let report = runner
        .run_async(client)
        .await
        .with_context(|| format!("applying migrations for schema {}", set.schema))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| (m.version(), m.name().to_owned()))
        .collect())
}

/// The versions in the history table (none before the first migration).
async fn applied_versions(
    client: &tokio_postgres::Client,
    table: &str,
) -> anyhow::Result<Vec<i32>> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .context("looking for the migration history")?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(&format!("SELECT version FROM {table}"), &[])
        .await
        .context("reading the migration history")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Whether the database has reached `version` in `schema` (readiness; the
/// expected version is computed once at start, not per probe).
pub async fn is_current(db: &Db, schema: &str, version: i32) -> Result<bool, super::DbError> {
    let conn = db.conn().await?;
    let sql = format!("SELECT coalesce(max(version), 0) FROM {schema}.refinery_history");
    let row = conn.query_one(sql.as_str(), &[]).await?;
    Ok(row.get::<_, i32>(0) >= version)
}
