//! The PostgreSQL roles Kai ships (`k8s/postgres/`, SPEC §7 "Least
//! privilege"), in every test: [`super::TestDb::create`] makes sure the cluster's
//! roles exist and sets up the new database with the shipped SQL, and
//! [`super::TestApp::start`] migrates as the service's migration role and serves
//! as its serving role — every route of every test runs with the privileges a
//! real deployment has.

use kai_platform::config::Settings;

/// The cluster's roles (run once per cluster; idempotent, race-safe).
pub const CLUSTER_SQL: &str = include_str!("../../../k8s/postgres/01-roles.sql");
/// The schemas and grants of one database (idempotent).
pub const DATABASE_SQL: &str = include_str!("../../../k8s/postgres/02-database.sql");

/// The schemas the shipped SQL sets up, one per service.
pub const SCHEMAS: [&str; 3] = ["journal", "conversation", "profile"];

/// A role of the shipped SQL with its dev-only password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    pub schema: &'static str,
    pub migrates: bool,
}

impl Role {
    /// The serving role of `schema` (`kai_<schema>`), if the SQL ships one.
    pub fn serving(schema: &str) -> Option<Self> {
        let schema = *SCHEMAS.iter().find(|s| **s == schema)?;
        Some(Self {
            schema,
            migrates: false,
        })
    }

    /// The migration role of `schema` (`kai_<schema>_migrate`).
    pub fn migration(schema: &str) -> Option<Self> {
        Self::serving(schema).map(|r| Self {
            migrates: true,
            ..r
        })
    }

    pub fn name(&self) -> String {
        match self.migrates {
            true => format!("kai_{}_migrate", self.schema),
            false => format!("kai_{}", self.schema),
        }
    }

    /// The dev-only password `k8s/postgres/01-roles.sql` gives it.
    pub fn password(&self) -> String {
        match self.migrates {
            true => format!("kai-dev-{}-migrate-password", self.schema),
            false => format!("kai-dev-{}-password", self.schema),
        }
    }

    /// `url` with this role's name and password as its user.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
        let host_and_rest = rest.split_once('@').map_or(rest, |(_, r)| r);
        format!(
            "{scheme}://{}:{}@{host_and_rest}",
            self.name(),
            self.password()
        )
    }

    /// A direct connection as this role to `url`'s database.
    pub async fn connect(&self, url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(url), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {e}", self.name()));
        tokio::spawn(conn);
        client
    }
}

/// Creates the cluster's roles if missing: under an advisory lock of the
/// maintenance database, so parallel test processes take turns (the SQL alone is
/// race-safe too).
pub(crate) async fn ensure_cluster_roles(admin: &tokio_postgres::Client) {
    const KEY: i64 = 0x6b61_695f_726f_6c65; // "kai_role"
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .await
        .expect("take the roles' advisory lock");
    let created = admin.batch_execute(CLUSTER_SQL).await;
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
        .await
        .expect("release the roles' advisory lock");
    created.expect("k8s/postgres/01-roles.sql applies");
}

/// Runs the per-database SQL in the database of `url` (as the admin).
pub(crate) async fn prepare_database(url: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
        .batch_execute(DATABASE_SQL)
        .await
        .expect("k8s/postgres/02-database.sql applies");
}

/// For a service started on a test database as the admin: its migrations applied
/// as its migration role (unless the test turned `RUN_MIGRATIONS` off), and the
/// settings switched to its serving role. Other URLs (a private server, another
/// database) are left as they are.
pub(crate) async fn serve_as_roles(
    mut settings: Settings,
    service: &'static str,
    migrations: kai_shared::db::MigrationSet,
) -> Settings {
    use secrecy::ExposeSecret;
    let url = settings.database.url.expose_secret().to_owned();
    let Ok(cfg) = url.parse::<tokio_postgres::Config>() else {
        return settings;
    };
    let admin: tokio_postgres::Config = super::admin_url().parse().expect("admin URL parses");
    let on_test_db = cfg.get_dbname().is_some_and(|d| d.starts_with("kai_test_"))
        && cfg.get_user() == admin.get_user();
    let (Some(serving), Some(migration)) = (
        Role::serving(migrations.schema),
        Role::migration(migrations.schema),
    ) else {
        return settings;
    };
    if !on_test_db {
        return settings;
    }
    if settings.server.run_migrations {
        let mut as_migrator = settings.database.clone();
        as_migrator.url = migration.url(&url).into();
        let db = kai_shared::db::Db::new(&as_migrator, &kai_shared::metrics::Metrics::new(service));
        kai_shared::db::migrate(&db, migrations)
            .await
            .unwrap_or_else(|e| panic!("{service} migrates as {}: {e:#}", migration.name()));
    }
    settings.database.url = serving.url(&url).into();
    settings
}
