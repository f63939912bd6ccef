//! Test helpers: every test gets its own PostgreSQL database (created empty,
//! migrated by the application under test, dropped afterwards) and its own Redis
//! key prefix (deleted afterwards), so tests run in parallel and leave nothing
//! behind. [`PrivateRedis`] starts a redis-server of the test's own, which the test
//! may pause, kill and restart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::config::Settings;
use crate::server::{Application, RunOptions, ServiceDef};

/// The test key pair: derived from a fixed seed, so every test process (and every
/// binary a test spawns) shares one pair, written once under the temp directory.
pub fn test_keys() -> &'static (crate::auth::keys::KeyPair, String, String) {
    static KEYS: std::sync::OnceLock<(crate::auth::keys::KeyPair, String, String)> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        use sha2::Digest;
        let seed: [u8; 32] =
            sha2::Sha256::digest(b"kai test signing key, never in production").into();
        let pair = crate::auth::keys::KeyPair::from_seed(seed);
        let dir = std::env::temp_dir().join(format!("kai-test-keys-{}", pair.kid));
        let (signing, verifying) = pair.write_to(&dir).expect("write the test key pair");
        (
            pair,
            signing.display().to_string(),
            verifying.display().to_string(),
        )
    })
}

/// The key-file variables every service under test gets (profile signs with the
/// private key; all verify with the public one).
pub fn auth_env() -> [(&'static str, String); 2] {
    let (_, signing, verifying) = test_keys();
    [
        ("AUTH_SIGNING_KEY_FILE", signing.clone()),
        ("AUTH_VERIFYING_KEYS_FILE", verifying.clone()),
    ]
}

/// An authenticator holding the test signing key (mints tokens the services accept).
pub fn test_authenticator() -> &'static crate::auth::Authenticator {
    static AUTH: std::sync::OnceLock<crate::auth::Authenticator> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let (pair, _, _) = test_keys();
        crate::auth::Authenticator::new(
            Some(crate::auth::keys::parse_signing_pem(&pair.private_pem).expect("test key")),
            crate::auth::keys::parse_verifying_pems(&pair.public_pem).expect("test key"),
            Duration::from_secs(3600),
        )
    })
}

/// The maintenance database URL (`TEST_DATABASE_URL`, default local trust auth).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared Redis (`TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A throwaway database, dropped (with its connections) when this is dropped.
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
        let base = admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => base,
        };
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

/// A private key prefix on a Redis server; its keys are deleted on drop.
pub struct TestPrefix {
    pub prefix: String,
    pub url: String,
}

impl TestPrefix {
    pub fn new(url: &str) -> Self {
        Self {
            prefix: format!("kai-test-{}", Uuid::new_v4().simple()),
            url: url.to_owned(),
        }
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        // Cleanup only, never a request path: SCAN (not KEYS, which would block a
        // shared Redis other tests are using).
        let keys: Vec<String> =
            match redis::TypedCommands::scan_match(&mut conn, format!("{}:*", self.prefix)) {
                Ok(iter) => iter.filter_map(Result::ok).collect(),
                Err(_) => return,
            };
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A redis-server of the test's own, on a free port; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
    /// Extra `redis-server` arguments (TLS, ACL users), kept for restarts.
    extra: Vec<String>,
    /// PEM of the CA to trust when the server speaks TLS only.
    tls_ca: Option<Vec<u8>>,
}

/// The ACL user [`PrivateRedis::start_tls`] creates, and its password.
pub const REDIS_ACL_USER: (&str, &str) = ("kai", "kai-acl-password-1");

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(free_port(), Vec::new(), None)
    }

    /// TLS only (no plaintext port), a certificate from `ca`, and an ACL user
    /// [`REDIS_ACL_USER`] next to the default user.
    pub fn start_tls(ca: &TestCa) -> Self {
        let (user, password) = REDIS_ACL_USER;
        let extra = [
            "--tls-port",
            "{port}",
            "--port",
            "0",
            "--tls-cert-file",
            &ca.dir.file("server.crt"),
            "--tls-key-file",
            &ca.dir.file("server.key"),
            "--tls-ca-cert-file",
            &ca.ca_file(),
            "--tls-auth-clients",
            "no",
            "--user",
            user,
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let pem = std::fs::read(ca.ca_file()).expect("CA file");
        Self::start_with(free_low_port(), extra, Some(pem))
    }

    /// A server on `port` with `extra` arguments (`{port}` is replaced).
    pub fn start_with(port: u16, extra: Vec<String>, tls_ca: Option<Vec<u8>>) -> Self {
        let child = Self::spawn(port, &extra);
        let me = Self {
            port,
            child,
            extra,
            tls_ca,
        };
        me.wait_ready();
        me
    }

    fn spawn(port: u16, extra: &[String]) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra.iter().map(|a| a.replace("{port}", &port.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(client) = self.client()
                && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    /// `redis://127.0.0.1:<port>`, or for a TLS server `rediss://127.0.0.1:<port>`
    /// (trust the test CA: `REDIS_CA_FILE`).
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client for assertions (the default user; the test CA for a TLS server).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls_ca {
            None => redis::Client::open(self.url()),
            Some(pem) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
    }

    /// SIGSTOP: the process keeps its sockets and data but answers nothing.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Kills the server (its data is lost).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.port, &self.extra);
        self.wait_ready();
    }

    /// A synchronous connection for assertions (`INFO commandstats`, …).
    pub fn connection(&self) -> redis::Connection {
        let c = self
            .client()
            .expect("url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        c
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Settings for a test: port 0, quiet pool timeouts, a private cache prefix.
pub fn settings(
    database_url: &str,
    redis_url: Option<&str>,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Settings {
    let mut env: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DB_POOL_SIZE", "8"),
        ("DB_POOL_TIMEOUT_SECS", "5"),
        ("REDIS_TIMEOUT_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(auth_env().map(|(k, v)| (k.to_owned(), v)))
    .collect();
    if let Some(url) = redis_url {
        env.insert("REDIS_URL".into(), url.into());
    }
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let mut s = Settings::from_lookup(0, |k| env.get(k).cloned()).expect("valid test settings");
    s.cache_prefix = prefix.to_owned();
    s
}

/// A service's own settings (`S`, e.g. conversation's `LlmSettings`) from `pairs`.
pub fn service_settings<S: clap::Args>(pairs: &[(&str, &str)]) -> S {
    crate::config::args_from_lookup(crate::config::command::<S>(), |k| {
        pairs
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("valid test service settings")
}

/// A user as journal and conversation see one: an id and a token for it.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub token: String,
}

impl TestUser {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            token: token(id),
        }
    }
}

/// Mints an access token the services accept.
pub fn token(user_id: Uuid) -> String {
    test_authenticator()
        .mint(user_id, Uuid::now_v7())
        .expect("mint")
        .0
}

/// One running service under test.
pub struct TestApp {
    pub address: String,
    pub platform: actix_web::web::Data<crate::Platform>,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl TestApp {
    /// Builds and starts `def` with `settings` (migrations applied) on a free port.
    pub async fn start(def: ServiceDef, settings: Settings) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let app = Application::build(
            settings,
            def,
            RunOptions {
                handle_signals: false,
                workers: Some(2),
            },
        )
        .await
        .expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let platform = app.platform();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let me = Self {
            address,
            platform,
            client,
            handle,
        };
        me.wait_for_redis_subscription().await;
        me
    }

    /// With Redis, waits until the invalidation subscription is up, so a test's
    /// first cross-replica write is heard.
    async fn wait_for_redis_subscription(&self) {
        if self.platform.cache.redis_available().is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.platform.cache.l1_trusted() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Statements this service has run so far.
    pub fn statements(&self) -> u64 {
        self.platform.db.statements_executed()
    }

    /// GET `path` as the holder of `token`: status, `X-Cache` (empty if absent)
    /// and the JSON body (`Null` if none).
    pub async fn read(&self, token: &str, path: &str) -> (u16, String, serde_json::Value) {
        let res = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let cache = res
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        (
            status,
            cache,
            res.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Follows `next_cursor` from `first` (a list path with `limit=`) to the last
    /// page, checking `has_more` agrees on every page; returns each item of
    /// `items` as (`time_field`, id) in the order served, and the page count.
    pub async fn walk_cursor_pages(
        &self,
        token: &str,
        first: &str,
        items: &str,
        time_field: &str,
    ) -> (Vec<(chrono::DateTime<chrono::Utc>, String)>, usize) {
        let (mut seen, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
        loop {
            let path = match &cursor {
                None => first.to_owned(),
                Some(c) => format!("{first}&cursor={c}"),
            };
            let (status, _, page) = self.read(token, &path).await;
            assert_eq!(status, 200, "{path}: {page}");
            pages += 1;
            for item in page[items].as_array().expect("items array") {
                let at = item[time_field]
                    .as_str()
                    .expect("timestamp")
                    .parse()
                    .expect("RFC 3339");
                seen.push((at, item["id"].as_str().expect("id").to_owned()));
            }
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(page["has_more"], true, "{page}");
                    cursor = Some(c.to_owned());
                }
                None => {
                    assert_eq!(page["has_more"], false, "{page}");
                    return (seen, pages);
                }
            }
            assert!(pages < 1000, "paging does not terminate");
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    /// GET `path` without credentials; the status code (health probes).
    pub async fn status(&self, path: &str) -> u16 {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// GET `path` without credentials and parse the JSON answer (health, docs).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON body")
    }

    /// Asserts that `/openapi.json` is an OpenAPI 3 document listing `paths` and
    /// the bearer scheme; returns it.
    pub async fn assert_openapi_documents(&self, paths: &[&str]) -> serde_json::Value {
        let doc = self.get_json("/openapi.json").await;
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{doc}"
        );
        for path in paths {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from /openapi.json"
            );
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        doc
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// A TCP forwarder a test can cut and restore, to make a dependency (PostgreSQL)
/// unreachable without stopping the shared server: `cut` drops every forwarded
/// connection and refuses new ones; `restore` forwards again.
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    links: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TcpProxy {
    /// Forwards 127.0.0.1:<port> to `target` ("host:port").
    pub async fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let (target, shared) = (target.to_owned(), state.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if shared.cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                shared
                    .links
                    .lock()
                    .expect("links")
                    .push(link.abort_handle());
            }
        });
        Self { port, state }
    }

    /// The dependency is gone: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.state.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
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

/// An HTTP client for tests (installs the rustls crypto provider reqwest needs).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Asserts an RFC 9457 problem answer with the given status; returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    assert_eq!(
        res.headers().get("content-type").expect("content type"),
        "application/problem+json"
    );
    let body: serde_json::Value = res.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["type"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
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

/// Asserts that a `/metrics` text exports every metric the Grafana dashboard and
/// the alert rules query (`deploy-tests/metric_names.txt`), except those whose
/// name starts with one of `not_here` (another service's).
pub fn assert_exports_dashboard_metrics(metrics: &str, not_here: &[&str]) {
    let wanted = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy-tests/metric_names.txt"
    ))
    .expect("deploy-tests/metric_names.txt");
    for name in wanted
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if not_here.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        assert!(
            metrics.contains(name),
            "dashboard metric {name} is not exported"
        );
    }
}

/// A free TCP port below the ephemeral range (so no client socket holds it later)
/// whose `+ 10000` twin is free too (a Redis Cluster node's bus port).
pub fn free_low_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port: u16 = rng.random_range(20_000..22_700);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("kai-{tag}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority of the test's own (openssl), and one server certificate
/// it signed, for `localhost` and 127.0.0.1. `ca.crt` is what `DATABASE_CA_FILE` /
/// `REDIS_CA_FILE` point at; `server.crt` / `server.key` are the server's.
pub struct TestCa {
    pub dir: TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = TempDir::new("ca");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &dir.file("ca.key"), "-out", &dir.file("ca.crt")])
            .args(["-days", "2", "-subj", "/CN=kai-test-ca"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args([
                "-keyout",
                &dir.file("server.key"),
                "-out",
                &dir.file("server.csr"),
            ])
            .args(["-subj", "/CN=localhost"]));
        std::fs::write(
            dir.file("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        run(Command::new("openssl")
            .args(["x509", "-req", "-in", &dir.file("server.csr")])
            .args(["-CA", &dir.file("ca.crt"), "-CAkey", &dir.file("ca.key")])
            .args([
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &dir.file("server.crt"),
            ])
            .args(["-extfile", &dir.file("server.ext")]));
        Self { dir }
    }

    pub fn ca_file(&self) -> String {
        self.dir.file("ca.crt")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
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
fn postgres_bin() -> std::path::PathBuf {
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

/// A Redis Cluster of the test's own: three primaries and three replicas
/// (`redis-server --cluster-enabled yes` ×6 on ports below the ephemeral range, so
/// each bus port, +10000, is free too; `redis-cli --cluster create
/// --cluster-replicas 1`). Nodes can be paused and killed; a killed primary's
/// replica takes over after `cluster-node-timeout` (1 s). Killed on drop.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateRedis>,
    _dir: TempDir,
}

impl PrivateCluster {
    pub fn start() -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes: Vec<PrivateRedis> = Vec::new();
        while nodes.len() < 6 {
            let port = free_low_port();
            if nodes
                .iter()
                .any(|n| n.port.abs_diff(port) == 10_000 || n.port == port)
            {
                continue;
            }
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.file(&format!("nodes-{port}.conf")),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--cluster-allow-reads-when-down",
                "no",
                "--dir",
                &dir.file(""),
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            nodes.push(PrivateRedis::start_with(port, extra, None));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        run(Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null()));
        let me = Self { nodes, _dir: dir };
        me.wait_converged(&(0..6).collect::<Vec<_>>());
        me
    }

    /// `REDIS_CLUSTER_NODES`: every node as a seed.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every node in `alive` says `cluster_state:ok`, sees three
    /// primaries covering all slots, and every live replica is in sync.
    pub fn wait_converged(&self, alive: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = alive.iter().all(|&i| {
                let Ok(client) = self.nodes[i].client() else {
                    return false;
                };
                let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(500))
                else {
                    return false;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not converge"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node that serves `key`'s slot as primary now, asked of node `ask`.
    pub fn primary_for(&self, key: &str, ask: usize) -> usize {
        let mut c = self.nodes[ask].connection();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut c)
            .expect("NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("node address");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("known node");
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// Sums `INFO commandstats` calls of `command` over every node in `alive`.
    pub fn calls(&self, command: &str, alive: &[usize]) -> u64 {
        alive
            .iter()
            .map(|&i| {
                let stats: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut self.nodes[i].connection())
                    .expect("INFO");
                stats
                    .lines()
                    .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
                    .and_then(|l| l.split("calls=").nth(1))
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// `CONFIG RESETSTAT` on every node in `alive`.
    pub fn reset_stats(&self, alive: &[usize]) {
        for &i in alive {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query(&mut self.nodes[i].connection())
                .expect("RESETSTAT");
        }
    }
}

/// Test seam for the recovery path that drops every key matching `pattern` (the
/// cache's "too many pending invalidations" fallback): connects as the service
/// would (`REDIS_URL` or `REDIS_CLUSTER_NODES` in `settings`) and runs it.
pub async fn unlink_matching(settings: &Settings, pattern: &str) -> redis::RedisResult<u64> {
    let target = crate::cache::connect::Target::from_settings(settings)
        .expect("redis settings")
        .expect("redis configured");
    let mut link = target.connect().await?;
    link.unlink_matching(pattern, Duration::from_secs(5)).await
}
