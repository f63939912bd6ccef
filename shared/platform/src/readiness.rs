//! The readiness check behind `/health/ready` (see `health` for what it
//! promises): this binary's migrations applied, asked on a connection of its
//! own, with a grace for a PostgreSQL that stops answering.

use kai_shared::db::{Db, MigrationSet};
use kai_shared::metrics::Metrics;
use kai_shared::settings::DatabaseSettings;

/// How long the readiness probe may take to connect, and its statement to answer.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The readiness check: this binary's migrations applied, asked on a connection
/// of its own (see the module's docs).
pub struct Readiness {
    db: Db,
    migrations: MigrationSet,
    /// The newest migration this binary embeds (computed once, not per probe).
    version: i32,
    grace: std::time::Duration,
    /// When PostgreSQL last answered the probe.
    last_answer: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What [`Readiness::check`] found.
pub enum Ready {
    Yes,
    /// PostgreSQL has not answered for `since`, still within the grace.
    Unanswered {
        since: std::time::Duration,
    },
    MigrationsPending,
    No(anyhow::Error),
}

impl Readiness {
    pub fn new(
        settings: &DatabaseSettings,
        grace: std::time::Duration,
        migrations: MigrationSet,
        service: &str,
    ) -> Self {
        let probe = DatabaseSettings {
            pool_size: 1,
            pool_timeout: PROBE_TIMEOUT,
            ..settings.clone()
        };
        Self {
            // Its own registry: the probe's pool is not the serving pool, and its
            // gauges must not be read as if it were.
            db: Db::new(&probe, &Metrics::new(service)),
            migrations,
            version: migrations.latest_version(),
            grace,
            last_answer: std::sync::Mutex::new(None),
        }
    }

    /// Closes the probe's connection (shutdown; see [`Db::close`]).
    pub async fn close(&self, within: std::time::Duration) {
        self.db.close(within).await;
    }

    pub async fn check(&self) -> Ready {
        let asked = tokio::time::timeout(
            PROBE_TIMEOUT,
            kai_shared::db::is_current(&self.db, self.migrations.schema, self.version),
        )
        .await;
        let failure = match asked {
            Ok(Ok(true)) => {
                *self.last_answer.lock().expect("readiness lock") = Some(std::time::Instant::now());
                return Ready::Yes;
            }
            Ok(Ok(false)) => return Ready::MigrationsPending,
            Ok(Err(e)) => anyhow::Error::new(e),
            Err(_) => anyhow::anyhow!("PostgreSQL did not answer within {PROBE_TIMEOUT:?}"),
        };
        let last = *self.last_answer.lock().expect("readiness lock");
        match last.map(|at| at.elapsed()) {
            Some(since) if since < self.grace => Ready::Unanswered { since },
            _ => Ready::No(failure),
        }
    }
}
