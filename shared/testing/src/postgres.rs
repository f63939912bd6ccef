//! PostgreSQL: a throwaway database per test, a private server (TLS or not),
//! the shared server's address through a [`super::TcpProxy`], and the index-plan
//! assertion.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::{TcpProxy, TempDir, TestCa, free_low_port, run, signal};

/// The maintenance database URL (`TEST_DATABASE_URL`, default local trust auth).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A throwaway database, dropped (with its connections) when this is dropped;
/// set up with the shipped roles' SQL ([`super::roles`]).
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("kai_test_{}", Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running (see README: scripts/test starts it)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        super::roles::ensure_cluster_roles(&client).await;
        let base = admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => base,
        };
        super::roles::prepare_database(&url).await;
        Self { name, url }
    }

    /// A direct connection for assertions (outside the pool under test).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Sessions of `client`'s database that PostgreSQL counted as abandoned: their
/// client's socket closed or reset without the protocol's goodbye (Terminate),
/// which its log reports as `could not receive data from client: Connection
/// reset by peer` (`pg_stat_database.sessions_abandoned`).
pub async fn sessions_abandoned(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("pg_stat_database")
        .get(0)
}

/// How many backends of `client`'s database a Kai service holds (its
/// connections' `application_name` is `kai`).
pub async fn service_backends(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'kai'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Waits until no Kai service holds a backend of `client`'s database (each
/// backend reports its session's end, abandoned or not, as it exits); fails
/// after 10 s.
pub async fn until_no_service_backends(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = service_backends(client).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} backends of the service still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PostgreSQL's `host:port` from the test configuration (the proxy's target).
pub fn postgres_address() -> String {
    let cfg: tokio_postgres::Config = admin_url().parse().expect("TEST_DATABASE_URL parses");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    format!(
        "{host}:{}",
        cfg.get_ports().first().copied().unwrap_or(5432)
    )
}

/// The test database's URL, routed through `proxy`.
pub fn via_proxy(db: &TestDb, proxy: &TcpProxy) -> String {
    let cfg: tokio_postgres::Config = db.url.parse().expect("test URL parses");
    let user = cfg.get_user().unwrap_or("postgres");
    let password = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!(
        "postgres://{user}{password}@127.0.0.1:{}/{}",
        proxy.port, db.name
    )
}

/// Asserts that PostgreSQL plans each `(name, sql)` with an index and no
/// sequential scan. Parameters get sample values by type: `uuid` parameters take
/// `uuids_for(name)` in order (the last repeats), `text` parameters take `text`.
pub async fn assert_plans_use_indexes(
    conn: &tokio_postgres::Client,
    queries: &[(&str, &str)],
    uuids_for: impl Fn(&str) -> Vec<Uuid>,
    text: &str,
) {
    use tokio_postgres::types::ToSql;
    for (name, sql) in queries {
        let stmt = conn
            .prepare(&format!("EXPLAIN (FORMAT JSON) {sql}"))
            .await
            .expect("prepare EXPLAIN");
        let uuids = uuids_for(name);
        let mut next_uuid = 0;
        let params: Vec<Box<dyn ToSql + Sync>> = stmt
            .params()
            .iter()
            .map(|t| -> Box<dyn ToSql + Sync> {
                match t.name() {
                    "uuid" => {
                        let u = uuids[next_uuid.min(uuids.len() - 1)];
                        next_uuid += 1;
                        Box::new(u)
                    }
                    "int8" => Box::new(20i64),
                    "int4" => Box::new(30i32),
                    "int2" => Box::new(5i16),
                    "text" => Box::new(text.to_owned()),
                    "bool" => Box::new(true),
                    "timestamptz" => Box::new(chrono::Utc::now()),
                    "_text" => Box::new(vec!["a".to_owned()]),
                    other => panic!("no sample value for a {other} parameter in {name}"),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let plan: serde_json::Value = conn.query_one(&stmt, &refs).await.expect("EXPLAIN").get(0);
        let text = plan.to_string();
        assert!(
            !text.contains("\"Seq Scan\""),
            "{name} scans a table: {text}"
        );
        assert!(text.contains("Index"), "{name} uses no index: {text}");
    }
}

/// A PostgreSQL server of the test's own (initdb into a temp dir, trust auth on
/// loopback), optionally with `ssl=on` and a certificate from `ca`; stopped and
/// deleted on drop. Started as the `postgres` user when the test runs as root
/// (PostgreSQL refuses to run as root).
pub struct PrivatePostgres {
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl PrivatePostgres {
    pub fn start(tls: Option<&TestCa>) -> Self {
        let bin = postgres_bin();
        let dir = TempDir::new("pg");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let command = |program: &str| {
            let program = bin.join(program).to_string_lossy().into_owned();
            if as_root {
                // setpriv execs (no fork): signals reach the server itself.
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ]);
                c.arg(&program);
                c
            } else {
                Command::new(program)
            }
        };
        if as_root {
            run(Command::new("chown").args(["postgres:postgres", &dir.file("")]));
        }
        let data = dir.file("data");
        run(command("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["--no-instructions", "-E", "UTF8"]));
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", dir.file("")),
            "fsync=off".to_owned(),
            "max_connections=40".to_owned(),
            "shared_buffers=16MB".to_owned(),
        ];
        if let Some(ca) = tls {
            // The key must belong to the server's user and be private to it.
            for f in ["server.crt", "server.key"] {
                std::fs::copy(ca.dir.file(f), dir.path.join("data").join(f)).expect("copy");
            }
            if as_root {
                run(Command::new("chown").args([
                    "postgres:postgres",
                    &format!("{data}/server.crt"),
                    &format!("{data}/server.key"),
                ]));
            }
            run(Command::new("chmod").args(["600", &format!("{data}/server.key")]));
            settings.extend([
                "ssl=on".to_owned(),
                "ssl_cert_file=server.crt".to_owned(),
                "ssl_key_file=server.key".to_owned(),
            ]);
        }
        let port = free_low_port();
        let mut cmd = command("postgres");
        cmd.args(["-D", &data, "-p", &port.to_string()]);
        for s in &settings {
            cmd.args(["-c", s]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let me = Self { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://postgres@<host>:<port>/postgres?<query>`
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGINT = fast shutdown: backends end, shared memory is released.
        signal(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/<v>/bin).
pub(crate) fn postgres_bin() -> std::path::PathBuf {
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql")
        .1
}
