//! `kai-load soak`: the system left running under a realistic mix, checked
//! against what it promises over time (SPEC §6, §9).
//!
//! It starts (or targets) two journal replicas and one conversation and profile
//! service on one Redis, registers users through profile, and lets each user do
//! mixed reads and writes on every service, alternating journal replicas. Every
//! write is read back: on the replica that took it (must show it at once) and on
//! the other journal replica (polled; the delay is the cross-replica delay, and a
//! read more than 100 ms after the write that still misses it is stale, SPEC §6.1).
//! At the end it reports operations, stale reads, the delay's p50/p99, the
//! L1/L2/miss shares from `/health/detailed`, the invalidation subscribers Redis
//! saw replaced (`CLIENT LIST`, `INFO commandstats`), WARN/ERROR lines in each
//! service's log, and each process's RSS at start, peak and end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::report::Machine;
use crate::{parse_duration, spawn};

/// A write older than this must be visible on every replica (SPEC §6.1).
const CROSS_REPLICA_BOUND: Duration = Duration::from_millis(100);
/// How long a read-back polls the other replica before counting a failure.
const POLL_FOR: Duration = Duration::from_secs(2);
/// Tokens are re-minted (logged in again) well before AUTH_TOKEN_TTL_SECS.
const RELOGIN_AFTER: Duration = Duration::from_secs(30 * 60);

/// Runs the services under a mixed load for a while and reports what held.
#[derive(Parser, Debug, Clone)]
#[command(name = "kai-load soak")]
pub struct SoakArgs {
    /// How long to run (e.g. 5m, 10m, 1h)
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent users, each doing one operation at a time
    #[arg(long, default_value_t = 24)]
    pub users: usize,
    /// Share of operations that write
    #[arg(long, default_value_t = 0.2)]
    pub write_share: f64,
    /// Pause between one user's operations (ms)
    #[arg(long, default_value_t = 20)]
    pub think_ms: u64,
    /// Where the release binaries are (spawn mode)
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// PostgreSQL database for spawned services: dropped and created afresh
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/kai_soak")]
    pub database_url: String,
    /// Redis the services use; unset with spawn: a private redis-server on a free port
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Target running services instead of spawning: journal replica A
    #[arg(long, requires_all = ["journal_b", "conversation", "profile", "redis_url"])]
    pub journal_a: Option<String>,
    /// Journal replica B (targeting)
    #[arg(long)]
    pub journal_b: Option<String>,
    /// conversation-service (targeting)
    #[arg(long)]
    pub conversation: Option<String>,
    /// profile-service (targeting; must trust X-Forwarded-For from this machine
    /// to register more than 10 users)
    #[arg(long)]
    pub profile: Option<String>,
    /// Markdown report
    #[arg(long, default_value = "reports/soak/soak.md")]
    pub report: PathBuf,
    /// Directory for the spawned services' logs
    #[arg(long, default_value = "reports/soak/logs")]
    pub log_dir: PathBuf,
    /// Spawn mode: run on a private PostgreSQL primary with a streaming read
    /// replica (`DATABASE_REPLICA_URLS`; `--database-url`'s database name is
    /// kept), and report the reads each served
    #[arg(long, conflicts_with = "journal_a")]
    pub with_replica: bool,
}

/// One service process (spawned) or URL (targeted).
struct Node {
    name: &'static str,
    url: String,
    pid: Option<u32>,
    log: Option<PathBuf>,
    rss: Rss,
}

#[derive(Default, Clone, Copy)]
struct Rss {
    start: Option<f64>,
    peak: Option<f64>,
    end: Option<f64>,
}

/// A registered user and what the soak knows they have.
struct User {
    email: String,
    password: String,
    addr: String,
    token: String,
    minted: Instant,
    entries: i64,
    conversation: Option<(String, i64)>,
    display_name: String,
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    writes: AtomicU64,
    reads: AtomicU64,
    stale: AtomicU64,
    failures: AtomicU64,
}

/// `kai-load soak [options]`.
pub async fn main(argv: Vec<String>) -> Result<()> {
    let args = SoakArgs::parse_from(argv);
    let machine = Machine::detect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.users * 2)
        .timeout(Duration::from_secs(10))
        .build()?;

    // 1. The system: spawned (fresh database, private Redis) or targeted.
    let mut keep: Vec<spawn::Spawned> = Vec::new();
    let mut _redis_child: Option<PrivateRedisServer> = None;
    let mut _postgres: Option<crate::replica::Replicated> = None;
    let (mut nodes, redis_url) = if let Some(a) = &args.journal_a {
        let url = |s: &Option<String>| s.clone().expect("clap requires it");
        let nodes = vec![
            node("journal-a", a.clone()),
            node("journal-b", url(&args.journal_b)),
            node("conversation", url(&args.conversation)),
            node("profile", url(&args.profile)),
        ];
        (nodes, url(&args.redis_url))
    } else {
        let redis_url = match &args.redis_url {
            Some(u) => u.clone(),
            None => {
                let server = PrivateRedisServer::start()?;
                let url = server.url();
                _redis_child = Some(server);
                url
            }
        };
        let (database_url, replica_url) = if args.with_replica {
            let pg = crate::replica::Replicated::start()?;
            let config: tokio_postgres::Config =
                args.database_url.parse().context("--database-url")?;
            let db = config.get_dbname().unwrap_or("kai_soak").to_owned();
            let urls = (
                crate::replica::Replicated::url(pg.primary_port, &db),
                Some(crate::replica::Replicated::url(pg.replica_port, &db)),
            );
            eprintln!(
                "soak: private primary on port {}, streaming replica on port {}",
                pg.primary_port, pg.replica_port
            );
            _postgres = Some(pg);
            urls
        } else {
            (args.database_url.clone(), None)
        };
        fresh_database(&database_url).await?;
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url.clone()),
            ("REDIS_URL".to_owned(), redis_url.clone()),
            ("TRUSTED_PROXIES".to_owned(), "127.0.0.0/8".to_owned()),
            ("LOG_FORMAT".to_owned(), "json".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
            // A few users write for minutes at load-test rates: the per-user
            // abuse limits (conversation-service) are lifted, not measured, here.
            ("ASSISTANT_MESSAGE_BURST".to_owned(), "1000000".to_owned()),
            (
                "ASSISTANT_MESSAGES_PER_MINUTE".to_owned(),
                "1000000".to_owned(),
            ),
            (
                "ASSISTANT_MESSAGES_PER_DAY".to_owned(),
                "1000000".to_owned(),
            ),
            ("CREATES_PER_MINUTE".to_owned(), "1000000".to_owned()),
            (
                "JOURNAL_CREATES_PER_MINUTE".to_owned(),
                "1000000".to_owned(),
            ),
        ];
        if let Some(url) = replica_url {
            env.push(("DATABASE_REPLICA_URLS".to_owned(), url));
        }
        env.extend(crate::dev_auth_env());
        for bin in ["journal-service", "conversation-service", "profile-service"] {
            spawn::migrate(&spawn::binary(&args.bin_dir, bin)?, &env).await?;
        }
        let mut nodes = Vec::new();
        // profile first: it marks the revoked set complete in Redis, which
        // journal and conversation wait for before they are ready (they fail
        // closed without it).
        for (name, bin) in [
            ("profile", "profile-service"),
            ("journal-a", "journal-service"),
            ("journal-b", "journal-service"),
            ("conversation", "conversation-service"),
        ] {
            let s = spawn::start(
                name,
                &spawn::binary(&args.bin_dir, bin)?,
                &env,
                &args.log_dir,
            )
            .await?;
            eprintln!("started {name} (pid {}) on {}", s.pid, s.target.url());
            nodes.push(Node {
                name,
                url: s.target.url(),
                pid: Some(s.pid),
                log: Some(args.log_dir.join(format!("{name}.log"))),
                rss: Rss::default(),
            });
            keep.push(s);
        }
        // The report's order: journal-a, journal-b, conversation, profile.
        nodes.rotate_left(1);
        (nodes, redis_url)
    };
    let redis = redis::Client::open(redis_url.as_str())?;
    let mut rconn = redis.get_multiplexed_async_connection().await?;

    // 2. Users, registered and logged in through profile.
    let run_id: u32 = rand::random();
    let profile = nodes[3].url.clone();
    let mut users = Vec::new();
    for i in 0..args.users {
        let email = format!("soak-{run_id:08x}-{i}@example.com");
        let password = format!("soak-password-{run_id:08x}-{i}");
        let addr = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let r = http
            .post(format!("{profile}/api/auth/register"))
            .header("X-Forwarded-For", &addr)
            .json(
                &json!({"email": email, "password": password, "display_name": format!("Soak {i}")}),
            )
            .send()
            .await?;
        if r.status() != 201 {
            bail!("register user {i} → {}: {}", r.status(), r.text().await?);
        }
        let token = login(&http, &profile, &email, &password, &addr).await?;
        users.push(Arc::new(Mutex::new(User {
            email,
            password,
            addr,
            token,
            minted: Instant::now(),
            entries: 0,
            conversation: None,
            display_name: format!("Soak {i}"),
        })));
    }
    eprintln!(
        "soak: {} users, {:?}, {:.0} % writes, on {} × {}",
        users.len(),
        args.duration,
        args.write_share * 100.0,
        machine.cpus,
        machine.cpu_model
    );

    // 3. Evidence before.
    let subscribers_before = subscribers(&mut rconn).await?;
    let subscribe_calls_before = subscribe_calls(&mut rconn).await?;
    let connections_before = connections_received(&mut rconn).await?;
    let cache_before = cache_totals(&http, &nodes).await?;
    for n in &mut nodes {
        let now = n.pid.and_then(spawn::rss_mib);
        n.rss = Rss {
            start: now,
            peak: now,
            end: now,
        };
    }

    // 4. The run.
    let counters = Arc::new(Counters::default());
    let delays = Arc::new(std::sync::Mutex::new(crate::report::histogram()));
    let stop = Arc::new(AtomicBool::new(false));
    let urls = Arc::new(nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>());
    let mut tasks = Vec::new();
    for user in &users {
        let (user, http, counters, delays, stop, urls) = (
            user.clone(),
            http.clone(),
            counters.clone(),
            delays.clone(),
            stop.clone(),
            urls.clone(),
        );
        let (share, think) = (args.write_share, Duration::from_millis(args.think_ms));
        tasks.push(tokio::spawn(async move {
            let mut turn = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut u = user.lock().await;
                let outcome = step(&http, &urls, &mut u, share, turn, &counters, &delays).await;
                if let Err(e) = outcome {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: {e:#}");
                }
                drop(u);
                turn += 1;
                tokio::time::sleep(think).await;
            }
        }));
    }
    let started = Instant::now();
    let mut last_print = Instant::now();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for n in &mut nodes {
            if let Some(now) = n.pid.and_then(spawn::rss_mib) {
                n.rss.peak = Some(n.rss.peak.map_or(now, |p: f64| p.max(now)));
                n.rss.end = Some(now);
            }
        }
        if last_print.elapsed() >= Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!(
                "soak: {:>4} s, {} operations, {} stale, {} failures",
                started.elapsed().as_secs(),
                counters.ops.load(Ordering::Relaxed),
                counters.stale.load(Ordering::Relaxed),
                counters.failures.load(Ordering::Relaxed)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let ran = started.elapsed();

    // 5. Evidence after.
    let subscribers_after = subscribers(&mut rconn).await?;
    let subscribe_calls_after = subscribe_calls(&mut rconn).await?;
    let connections_after = connections_received(&mut rconn).await?;
    let cache_after = cache_totals(&http, &nodes).await?;
    let reads = reads_by_target(&http, &nodes).await;
    for n in &mut nodes {
        if let Some(now) = n.pid.and_then(spawn::rss_mib) {
            n.rss.end = Some(now);
        }
    }
    let replaced = subscribers_before
        .iter()
        .filter(|id| !subscribers_after.contains(id))
        .count();
    // Stopped (SIGTERM, as an orchestrator stops them) before their logs are read:
    // a warning at shutdown counts like any other.
    spawn::stop_all(keep).await;

    let report = render(&Render {
        args: &args,
        machine: &machine,
        ran,
        users: users.len(),
        counters: &counters,
        delays: &delays.lock().expect("delays"),
        nodes: &nodes,
        cache_before: &cache_before,
        cache_after: &cache_after,
        subscribers: (subscribers_before.len(), subscribers_after.len(), replaced),
        subscribe_calls: subscribe_calls_after.saturating_sub(subscribe_calls_before),
        connections_opened: connections_after.saturating_sub(connections_before),
        reads: &reads,
    });
    println!("{report}");
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, &report)
        .with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!("soak: report written to {}", args.report.display());
    if counters.stale.load(Ordering::Relaxed) > 0 || counters.failures.load(Ordering::Relaxed) > 0 {
        bail!("stale reads or failed operations: see the report");
    }
    Ok(())
}

fn node(name: &'static str, url: String) -> Node {
    Node {
        name,
        url: url.trim_end_matches('/').to_owned(),
        pid: None,
        log: None,
        rss: Rss::default(),
    }
}

async fn login(
    http: &reqwest::Client,
    profile: &str,
    email: &str,
    password: &str,
    addr: &str,
) -> Result<String> {
    let r = http
        .post(format!("{profile}/api/auth/login"))
        .header("X-Forwarded-For", addr)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("login → {}", r.status());
    }
    let body: Value = r.json().await?;
    Ok(body["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned())
}

/// One operation of one user, checked against what the user is known to have.
async fn step(
    http: &reqwest::Client,
    urls: &[String],
    u: &mut User,
    write_share: f64,
    turn: usize,
    counters: &Counters,
    delays: &std::sync::Mutex<hdrhistogram::Histogram<u64>>,
) -> Result<()> {
    if u.minted.elapsed() > RELOGIN_AFTER {
        u.token = login(http, &urls[3], &u.email, &u.password, &u.addr).await?;
        u.minted = Instant::now();
    }
    let (mine, other) = if turn.is_multiple_of(2) {
        (&urls[0], &urls[1])
    } else {
        (&urls[1], &urls[0])
    };
    let (writing, pick) = {
        let mut rng = rand::rng();
        (
            rng.random_bool(write_share.clamp(0.0, 1.0)),
            rng.random::<f64>(),
        )
    };
    counters.ops.fetch_add(1, Ordering::Relaxed);
    if writing {
        counters.writes.fetch_add(1, Ordering::Relaxed);
        if pick < 0.6 {
            // A journal entry on one replica, read back on both.
            let body = json!({"content": format!("soak entry {turn}: a quiet evening, some rain"), "mood": 1 + (turn % 10)});
            let r = http
                .post(format!("{mine}/api/journal/entries"))
                .bearer_auth(&u.token)
                .json(&body)
                .send()
                .await?;
            if r.status() != 201 {
                bail!("journal write → {}", r.status());
            }
            let acked = Instant::now();
            u.entries += 1;
            counters.reads.fetch_add(1, Ordering::Relaxed);
            if journal_total(http, mine, &u.token).await? != u.entries {
                counters.stale.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: stale read on the writing replica");
            }
            loop {
                let asked = Instant::now();
                counters.reads.fetch_add(1, Ordering::Relaxed);
                if journal_total(http, other, &u.token).await? == u.entries {
                    let delay = acked.elapsed().as_micros() as u64;
                    let _ = delays.lock().expect("delays").record(delay.max(1));
                    break;
                }
                if asked.duration_since(acked) > CROSS_REPLICA_BOUND {
                    counters.stale.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "soak: stale read on the other replica {:?} after the write",
                        asked.duration_since(acked)
                    );
                }
                if acked.elapsed() > POLL_FOR {
                    bail!("the other replica never showed the write");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else if pick < 0.85 {
            // A message in the user's conversation (created on first use).
            let conv = match &u.conversation {
                Some((id, _)) => id.clone(),
                None => {
                    let r = http
                        .post(format!("{}/api/conversations", urls[2]))
                        .bearer_auth(&u.token)
                        .json(&json!({"title": "Soak"}))
                        .send()
                        .await?;
                    if r.status() != 201 {
                        bail!("conversation create → {}", r.status());
                    }
                    let v: Value = r.json().await?;
                    let id = v["id"].as_str().context("conversation id")?.to_owned();
                    u.conversation = Some((id.clone(), 0));
                    id
                }
            };
            let r = http
                .post(format!("{}/api/conversations/{conv}/messages", urls[2]))
                .bearer_auth(&u.token)
                .json(&json!({"content": format!("turn {turn}: I slept better")}))
                .send()
                .await?;
            if r.status() != 201 {
                bail!("message → {}", r.status());
            }
            if let Some((_, n)) = &mut u.conversation {
                *n += 2; // the user's message and the reply
            }
            check_conversation(http, &urls[2], u, counters).await?;
        } else {
            u.display_name = format!("Soak {turn}");
            let r = http
                .patch(format!("{}/api/profile", urls[3]))
                .bearer_auth(&u.token)
                .json(&json!({"display_name": u.display_name}))
                .send()
                .await?;
            if r.status() != 200 {
                bail!("profile write → {}", r.status());
            }
            check_profile(http, &urls[3], u, counters).await?;
        }
    } else if pick < 0.7 {
        counters.reads.fetch_add(1, Ordering::Relaxed);
        if journal_total(http, mine, &u.token).await? != u.entries {
            counters.stale.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: stale journal list");
        }
    } else if pick < 0.85 {
        check_conversation(http, &urls[2], u, counters).await?;
    } else {
        check_profile(http, &urls[3], u, counters).await?;
    }
    Ok(())
}

async fn journal_total(http: &reqwest::Client, base: &str, token: &str) -> Result<i64> {
    let r = http
        .get(format!("{base}/api/journal/entries?page_size=5"))
        .bearer_auth(token)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("journal list → {}", r.status());
    }
    let v: Value = r.json().await?;
    v["total"].as_i64().context("total")
}

async fn check_conversation(
    http: &reqwest::Client,
    base: &str,
    u: &User,
    counters: &Counters,
) -> Result<()> {
    let Some((id, expected)) = &u.conversation else {
        return Ok(());
    };
    counters.reads.fetch_add(1, Ordering::Relaxed);
    let r = http
        .get(format!("{base}/api/conversations/{id}"))
        .bearer_auth(&u.token)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("conversation read → {}", r.status());
    }
    let v: Value = r.json().await?;
    let got = v["messages"].as_array().map_or(0, |m| m.len() as i64);
    // The read shows at most the newest page of messages.
    if got < (*expected).min(50) {
        counters.stale.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: stale conversation ({got} of {expected} messages)");
    }
    Ok(())
}

async fn check_profile(
    http: &reqwest::Client,
    base: &str,
    u: &User,
    counters: &Counters,
) -> Result<()> {
    counters.reads.fetch_add(1, Ordering::Relaxed);
    let r = http
        .get(format!("{base}/api/profile"))
        .bearer_auth(&u.token)
        .send()
        .await?;
    if r.status() != 200 {
        bail!("profile read → {}", r.status());
    }
    let v: Value = r.json().await?;
    if v["display_name"] != json!(u.display_name) {
        counters.stale.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: stale profile");
    }
    Ok(())
}

/// Ids of the connections in subscribed mode.
async fn subscribers(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<u64>> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
    Ok(list
        .lines()
        .filter(|l| l.contains(" sub=") && !l.contains(" sub=0 "))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
        })
        .collect())
}

/// `total_connections_received` of `INFO stats`: connections Redis ever accepted.
async fn connections_received(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

async fn subscribe_calls(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_subscribe:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// `(l1_hits, l2_hits, misses, l1_entries, l1_bytes)` per node, from `/health/detailed`.
async fn cache_totals(
    http: &reqwest::Client,
    nodes: &[Node],
) -> Result<Vec<(u64, u64, u64, u64, u64)>> {
    let mut out = Vec::new();
    for n in nodes {
        let v: Value = http
            .get(format!("{}/health/detailed", n.url))
            .send()
            .await?
            .json()
            .await?;
        let c = &v["cache"];
        let get = |k: &str| c[k].as_u64().unwrap_or(0);
        out.push((
            get("l1_hits"),
            get("l2_hits"),
            get("misses"),
            get("l1_entries"),
            get("l1_bytes"),
        ));
    }
    Ok(out)
}

/// WARN and ERROR lines of a log file, and the first few of their messages.
fn warnings(log: &Path) -> (usize, Vec<String>) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return (0, Vec::new());
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect();
    let mut messages: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["message"]
                .as_str()
                .or_else(|| v["fields"]["message"].as_str())
                .map(str::to_owned)
        })
        .collect();
    messages.sort();
    messages.dedup();
    messages.truncate(3);
    (lines.len(), messages)
}

struct Render<'a> {
    args: &'a SoakArgs,
    machine: &'a Machine,
    ran: Duration,
    users: usize,
    counters: &'a Counters,
    delays: &'a hdrhistogram::Histogram<u64>,
    nodes: &'a [Node],
    cache_before: &'a [(u64, u64, u64, u64, u64)],
    cache_after: &'a [(u64, u64, u64, u64, u64)],
    subscribers: (usize, usize, usize),
    subscribe_calls: u64,
    connections_opened: u64,
    /// `kai_db_reads_total` per node: (primary, replica).
    reads: &'a [(u64, u64)],
}

fn render(r: &Render<'_>) -> String {
    let c = r.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Soak: {} users for {:.0} s ({:.0} % writes), two journal replicas, one conversation \
         and one profile service, one Redis; {} × {}.\n\
         Command: `kai-load soak --duration {} --users {}{}`\n",
        r.users,
        r.ran.as_secs_f64(),
        r.args.write_share * 100.0,
        r.machine.cpus,
        r.machine.cpu_model,
        humantime(r.args.duration),
        r.args.users,
        if r.args.with_replica {
            " --with-replica"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "| what | value |\n|---|---:|");
    let _ = writeln!(
        out,
        "| operations | {} ({} writes, {} checked reads; {:.0}/s) |",
        load(&c.ops),
        load(&c.writes),
        load(&c.reads),
        load(&c.ops) as f64 / r.ran.as_secs_f64()
    );
    let _ = writeln!(out, "| failed operations | {} |", load(&c.failures));
    let _ = writeln!(out, "| stale reads | {} |", load(&c.stale));
    let _ = writeln!(
        out,
        "| cross-replica delay (write ack → other replica shows it), n = {} | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        r.delays.len(),
        ms(r.delays.value_at_quantile(0.5)),
        ms(r.delays.value_at_quantile(0.99)),
        ms(r.delays.max())
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let (b, a) = (r.cache_before[i], r.cache_after[i]);
        let (l1, l2, miss) = (a.0 - b.0, a.1 - b.1, a.2 - b.2);
        let all = (l1 + l2 + miss).max(1) as f64;
        let _ = writeln!(
            out,
            "| {} cache lookups | {} : L1 {:.1} %, L2 {:.1} %, miss {:.1} %; L1 at the end {} entries, {:.1} MiB |",
            n.name,
            l1 + l2 + miss,
            l1 as f64 * 100.0 / all,
            l2 as f64 * 100.0 / all,
            miss as f64 * 100.0 / all,
            a.3,
            a.4 as f64 / 1_048_576.0
        );
    }
    if r.args.with_replica {
        for (n, (primary, replica)) in r.nodes.iter().zip(r.reads) {
            let all = (primary + replica).max(1) as f64;
            let _ = writeln!(
                out,
                "| {} reads that may use the replica (`kai_db_reads_total`) | {} : replica {} ({:.1} %), primary {} |",
                n.name,
                primary + replica,
                replica,
                *replica as f64 * 100.0 / all,
                primary
            );
        }
    }
    let (before, after, replaced) = r.subscribers;
    let _ = writeln!(
        out,
        "| Redis subscriber connections (start → end), replaced | {before} → {after}, {replaced} replaced |"
    );
    let _ = writeln!(
        out,
        "| SUBSCRIBE commands during the run | {} |",
        r.subscribe_calls
    );
    let _ = writeln!(
        out,
        "| Redis connections opened during the run (`total_connections_received`) | {} |",
        r.connections_opened
    );
    for n in r.nodes {
        if let Some(log) = &n.log {
            let (count, messages) = warnings(log);
            let _ = writeln!(
                out,
                "| {} WARN/ERROR log lines (through its SIGTERM) | {count}{} |",
                n.name,
                if messages.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", messages.join("; "))
                }
            );
        }
    }
    for n in r.nodes {
        let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} RSS MiB (start / peak / end) | {} / {} / {} |",
            n.name,
            f(n.rss.start),
            f(n.rss.peak),
            f(n.rss.end)
        );
    }
    out
}

/// `kai_db_reads_total{target}` of each node, (primary, replica), from `/metrics`.
async fn reads_by_target(http: &reqwest::Client, nodes: &[Node]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for n in nodes {
        let text = match http.get(format!("{}/metrics", n.url)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let count = |target: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("kai_db_reads_total{")
                        && l.contains(&format!("target=\"{target}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        out.push((count("primary"), count("replica")));
    }
    out
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A fresh database: dropped (with its connections) and created.
async fn fresh_database(url: &str) -> Result<()> {
    let config: tokio_postgres::Config = url.parse().context("--database-url")?;
    let name = config
        .get_dbname()
        .context("--database-url names no database")?
        .replace('"', "");
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = crate::seed::connect(&admin).await?;
    // Two statements, two calls: several in one string run as one transaction
    // block, where DROP/CREATE DATABASE are refused.
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("re-creating database {name}"))?;
    }
    Ok(())
}

/// A redis-server of the soak's own on a free loopback port (killed on drop).
struct PrivateRedisServer {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedisServer {
    fn start() -> Result<Self> {
        let port = spawn::free_port()?;
        let child = std::process::Command::new("redis-server")
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
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        let me = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(me.url())
                && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_warnings_and_their_messages() {
        let dir = std::env::temp_dir().join(format!("kai-soak-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        std::fs::write(
            &log,
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"ok\"}}\n\
             {\"level\":\"WARN\",\"fields\":{\"message\":\"lost\"}}\n\
             {\"level\":\"ERROR\",\"fields\":{\"message\":\"broken\"}}\n",
        )
        .unwrap();
        assert_eq!(
            warnings(&log),
            (2, vec!["broken".to_owned(), "lost".to_owned()])
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn parses_its_own_command_line() {
        let a = SoakArgs::parse_from(["kai-load soak", "--duration", "10m", "--users", "8"]);
        assert_eq!(a.duration, Duration::from_secs(600));
        assert_eq!(a.users, 8);
        assert_eq!(humantime(a.duration), "10m");
    }
}
