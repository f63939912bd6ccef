//! Redis: a private key prefix on the shared server, a private `redis-server`
//! (pause, kill, restart, TLS + ACL), a private Redis Cluster, and the
//! pattern-unlink seam.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

use kai_platform::config::Settings;

use super::{TempDir, TestCa, free_low_port, free_port, run, signal};

/// The shared Redis (`TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
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

/// `redis-server` arguments: TLS on `tls_port` with a certificate from `ca`, and
/// the ACL user [`REDIS_ACL_USER`].
fn tls_and_acl_args(ca: &TestCa, tls_port: &str) -> Vec<String> {
    let (user, password) = REDIS_ACL_USER;
    [
        "--tls-port",
        tls_port,
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
    .collect()
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
        let mut extra = tls_and_acl_args(ca, "{port}");
        extra.extend(["--port".to_owned(), "0".to_owned()]);
        let pem = std::fs::read(ca.ca_file()).expect("CA file");
        Self::start_with(free_low_port(), extra, Some(pem))
    }

    /// A plaintext port and a TLS port (returned) on one server, both with the
    /// ACL user [`REDIS_ACL_USER`]: the same server measured both ways.
    pub fn start_plain_and_tls(ca: &TestCa) -> (Self, u16) {
        let plain = free_low_port();
        let tls = loop {
            let p = free_low_port();
            if p != plain {
                break p;
            }
        };
        let extra = tls_and_acl_args(ca, &tls.to_string());
        (Self::start_with(plain, extra, None), tls)
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
    let target = kai_shared::redis::Target::from_settings(&settings.redis)
        .expect("redis settings")
        .expect("redis configured");
    let mut link = target.connect().await?;
    link.unlink_matching(pattern, Duration::from_secs(5)).await
}
