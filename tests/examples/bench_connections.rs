//! What production connections cost (issue 13): TLS on vs off for PostgreSQL and
//! Redis, and a Redis Cluster vs one node, on the paths they sit on.
//!
//! Everything runs on loopback, started here as the tests start it: a private
//! PostgreSQL with `ssl=on` (certificate from a CA made for the run; the same
//! server answers `sslmode=disable` and `sslmode=verify-full`), a private
//! redis-server with a plaintext port and a TLS port (same server, same ACL
//! user on both), and a private Redis Cluster of 3 primaries + 3 replicas.
//!
//! Paths:
//! * `l2-hit`: `Cache::get_or_load` of a 16 KB entry with L1 emptied first, so
//!   every read is one Redis `GET` (the L2 hit path; an L1 hit touches no network
//!   and costs the same whatever the connection);
//! * `bump`: `Cache::invalidate` (the generation script; on a cluster plus `WAIT 1`);
//! * `uncached-list`: HTTP `GET /api/journal/entries` (20 entries, ~16 KB) on a
//!   journal-service with `CACHE_ENABLED=false`: one PostgreSQL statement per request;
//! * `write`: HTTP `POST /api/journal/entries` on a cached journal-service: an
//!   INSERT, then the bump;
//! * `pg-connect`: opening one pooled PostgreSQL connection (the handshake a pool
//!   pays once per connection).
//!
//! Configurations are interleaved round by round (A B C, A B C, …) and the median
//! round is reported, so a neighbour's compile lands on every configuration
//! alike. Run: `scripts/bench-connections` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kai_http::ApiError;
use kai_platform::config::Settings;
use kai_shared::cache::{Cache, Policy, Scope};
use kai_shared::db::Db;
use kai_shared::metrics::Metrics;
use kai_testing::{
    self as testing, PrivateCluster, PrivatePostgres, PrivateRedis, REDIS_ACL_USER, TestApp,
    TestCa, TestUser,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const POLICY: Policy = Policy::new("bench", Duration::from_secs(3600));
/// `l2-hit` reads that were not hits (printed: they would flatter or blur the figure).
static NOT_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Args {
    duration: Duration,
    rounds: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(2),
        rounds: 3,
        concurrency: 16,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.duration = Duration::from_secs_f64(value.parse().expect("seconds")),
            "--rounds" => a.rounds = value.parse().expect("rounds"),
            "--concurrency" => a.concurrency = value.parse().expect("concurrency"),
            other => panic!("unknown flag {other} (--seconds, --rounds, --concurrency)"),
        }
    }
    a
}

/// One measured run: operations per second and latency percentiles.
#[derive(Clone, Copy, Debug)]
struct Sample {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `op` on `tasks` concurrent tasks for `duration` (after a short warm-up).
async fn measure<F, Fut>(tasks: usize, duration: Duration, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let warm = Instant::now() + Duration::from_millis(300);
    let end = warm + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return lat;
                    }
                    op(t).await;
                    if started >= warm {
                        lat.push(started.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Sample {
        per_sec: all.len() as f64 / duration.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Settings for a cache-only replica (`database_url` is never used).
fn cache_settings(prefix: &str, redis: &RedisConfig) -> Settings {
    let (url, extra) = redis.settings();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    testing::settings(
        "postgres://postgres@127.0.0.1/unused",
        url.as_deref(),
        prefix,
        &extra,
    )
}

/// A Redis to measure against.
struct RedisConfig {
    name: &'static str,
    url: Option<String>,
    extra: Vec<(&'static str, String)>,
}

impl RedisConfig {
    fn settings(&self) -> (Option<String>, Vec<(&'static str, String)>) {
        let mut extra = self.extra.clone();
        // Generous: a loaded 2-core machine must not open the circuit and turn
        // every Redis path into "skip Redis".
        extra.push(("REDIS_TIMEOUT_MS", "2000".to_owned()));
        (self.url.clone(), extra)
    }
}

async fn cache_for(redis: &RedisConfig, stop: &CancellationToken) -> Cache {
    let prefix = format!("bench-{}", Uuid::new_v4().simple());
    let settings = cache_settings(&prefix, redis);
    let cache = Cache::new(
        "journal",
        &settings.cache,
        &settings.redis,
        &Metrics::new("bench"),
        Arc::new(|_: &str| {}),
        stop.clone(),
    )
    .expect("cache");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cache.l1_trusted() {
        assert!(
            Instant::now() < deadline,
            "{}: never subscribed",
            redis.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache
}

/// A page like the journal's: 20 entries of ~800 characters.
fn page() -> serde_json::Value {
    let entries: Vec<_> = (0..20)
        .map(|i| {
            serde_json::json!({
                "id": Uuid::new_v4(),
                "title": format!("Entry {i}"),
                "content": "Today I walked along the river and thought about what matters. ".repeat(12),
                "mood": 7,
                "tags": ["walk", "river"],
                "created_at": "2026-12-05T10:00:00Z",
                "updated_at": "2026-12-05T10:00:00Z",
            })
        })
        .collect();
    serde_json::json!({"entries": entries, "total": 20, "page": 1, "page_size": 20, "has_more": false})
}

async fn l2_hit(cache: &Cache, tasks: usize, duration: Duration) -> Sample {
    let scopes: Vec<Scope> = (0..tasks)
        .map(|_| Scope::user("bench", Uuid::new_v4()))
        .collect();
    let body = page();
    for s in &scopes {
        let body = body.clone();
        cache
            .get_or_load(s, &POLICY, "page", || async {
                Ok::<_, ApiError>(Some(body))
            })
            .await
            .expect("store");
    }
    let (cache, scopes) = (cache.clone(), Arc::new(scopes));
    measure(tasks, duration, move |t| {
        let (cache, scopes) = (cache.clone(), scopes.clone());
        async move {
            cache.clear_l1();
            let answer = cache
                .get_or_load(&scopes[t], &POLICY, "page", || async {
                    Ok::<Option<serde_json::Value>, ApiError>(None)
                })
                .await;
            if !matches!(&answer, Ok(hit) if hit.status.as_str() == "HIT") {
                NOT_HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await
}

async fn bump(cache: &Cache, tasks: usize, duration: Duration) -> Sample {
    let scopes: Arc<Vec<Scope>> = Arc::new(
        (0..tasks)
            .map(|_| Scope::user("bench", Uuid::new_v4()))
            .collect(),
    );
    let cache = cache.clone();
    measure(tasks, duration, move |t| {
        let (cache, scopes) = (cache.clone(), scopes.clone());
        async move { cache.invalidate(&scopes[t]).await }
    })
    .await
}

/// `tasks` users with 20 entries each on `app`, for the list scenario.
async fn seed(app: &TestApp, tasks: usize) -> Vec<TestUser> {
    let users: Vec<TestUser> = (0..tasks).map(|_| TestUser::new()).collect();
    let content = "Today I walked along the river and thought about what matters. ".repeat(12);
    for u in &users {
        for _ in 0..20 {
            let status = app
                .client
                .post(app.url("/api/journal/entries"))
                .bearer_auth(&u.token)
                .json(&serde_json::json!({"content": content, "mood": 7, "tags": ["walk"]}))
                .send()
                .await
                .expect("seed")
                .status();
            assert_eq!(status.as_u16(), 201);
        }
    }
    users
}

async fn http_list(app: &Arc<TestApp>, users: &Arc<Vec<TestUser>>, duration: Duration) -> Sample {
    let (app, users) = (app.clone(), users.clone());
    measure(users.len(), duration, move |t| {
        let (app, users) = (app.clone(), users.clone());
        async move {
            let res = app
                .client
                .get(app.url("/api/journal/entries?page=1&page_size=20"))
                .bearer_auth(&users[t].token)
                .send()
                .await
                .expect("list");
            assert_eq!(res.status().as_u16(), 200);
            assert_eq!(res.headers()["x-cache"], "BYPASS");
            res.bytes().await.expect("body");
        }
    })
    .await
}

async fn http_write(app: &Arc<TestApp>, tasks: usize, duration: Duration) -> Sample {
    let users: Arc<Vec<TestUser>> = Arc::new((0..tasks).map(|_| TestUser::new()).collect());
    let app = app.clone();
    measure(tasks, duration, move |t| {
        let (app, users) = (app.clone(), users.clone());
        async move {
            let res = app
                .client
                .post(app.url("/api/journal/entries"))
                .bearer_auth(&users[t].token)
                .json(
                    &serde_json::json!({"content": "A short note written under load.", "mood": 6}),
                )
                .send()
                .await
                .expect("write");
            assert_eq!(res.status().as_u16(), 201);
        }
    })
    .await
}

/// Time to open one pooled connection (a fresh pool each time, closed after).
async fn pg_connect(database_url: &str, ca: &str, n: usize) -> Sample {
    let settings = testing::settings(database_url, None, "bench", &[("DATABASE_CA_FILE", ca)]);
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let db = Db::new(&settings.database, &Metrics::new("bench"));
        let conn = db.conn().await.expect("connect");
        lat.push(t.elapsed());
        drop(conn);
        db.pool().close();
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    Sample {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        p50: lat[n / 2],
        p99: lat[(n * 99 / 100).min(n - 1)],
    }
}

/// Each configuration's median round (configurations named in the order of
/// `samples`), printed as a table against the first.
fn print_medians<'a>(
    title: &str,
    names: impl IntoIterator<Item = &'a str>,
    samples: Vec<Vec<Sample>>,
) {
    let rows: Vec<(&str, Sample)> = names
        .into_iter()
        .zip(samples)
        .map(|(n, s)| (n, median(s)))
        .collect();
    println!("\n{title}");
    println!(
        "| configuration | ops/s | p50 | p99 | throughput vs {} |",
        rows[0].0
    );
    println!("|---|--:|--:|--:|--:|");
    for (name, s) in &rows {
        println!(
            "| {name} | {:.0} | {} | {} | {:.2} |",
            s.per_sec,
            ms(s.p50),
            ms(s.p99),
            s.per_sec / rows[0].1.per_sec
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = testing::http_client(); // installs the rustls crypto provider
    kai_http::telemetry::init(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        kai_http::telemetry::LogFormat::Pretty,
    );
    let a = args();
    println!(
        "bench-connections: {} s per measurement, {} rounds (median reported), {} concurrent; nproc = {}",
        a.duration.as_secs_f64(),
        a.rounds,
        a.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // --- the servers -----------------------------------------------------------
    let ca = TestCa::new();
    let ca_file = ca.ca_file();
    let pg = PrivatePostgres::start(Some(&ca));
    let (user, password) = REDIS_ACL_USER;
    let (node, tls_port) = PrivateRedis::start_plain_and_tls(&ca);
    let plain_port = node.port;
    let cluster = PrivateCluster::start();
    eprintln!(
        "servers: PostgreSQL :{} (ssl=on), redis-server :{} plain + :{} TLS, cluster {}",
        pg.port,
        node.port,
        tls_port,
        cluster.seeds()
    );

    let redis_configs = [
        RedisConfig {
            name: "one node, plaintext",
            url: Some(format!("redis://{user}:{password}@127.0.0.1:{plain_port}")),
            extra: vec![],
        },
        RedisConfig {
            name: "one node, TLS",
            url: Some(format!("rediss://{user}:{password}@127.0.0.1:{tls_port}")),
            extra: vec![("REDIS_CA_FILE", ca_file.clone())],
        },
        RedisConfig {
            name: "cluster 3+3, plaintext",
            url: None,
            extra: vec![("REDIS_CLUSTER_NODES", cluster.seeds())],
        },
    ];

    // --- Redis paths (the cache API) --------------------------------------------
    let stop = CancellationToken::new();
    let mut caches = Vec::new();
    for r in &redis_configs {
        caches.push(cache_for(r, &stop).await);
    }
    for (label, tasks) in [("1 task", 1), ("concurrent", a.concurrency)] {
        for (path, which) in [("l2-hit", 0), ("bump", 1)] {
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); caches.len()];
            for _ in 0..a.rounds {
                for (i, cache) in caches.iter().enumerate() {
                    let errors = cache.totals().errors;
                    let not_hits = NOT_HITS.load(std::sync::atomic::Ordering::Relaxed);
                    let s = if which == 0 {
                        l2_hit(cache, tasks, a.duration).await
                    } else {
                        bump(cache, tasks, a.duration).await
                    };
                    // A number measured with the circuit open would be "skip Redis":
                    // say so next to the table (RUST_LOG=kai_shared::cache=debug
                    // shows the errors).
                    let new_errors = cache.totals().errors - errors;
                    if new_errors > 0 || cache.redis_available() != Some(true) {
                        println!(
                            "  ({}: {new_errors} Redis errors during {path}; circuit {})",
                            redis_configs[i].name,
                            if cache.redis_available() == Some(true) {
                                "closed"
                            } else {
                                "open"
                            }
                        );
                    }
                    let not_hits = NOT_HITS.load(std::sync::atomic::Ordering::Relaxed) - not_hits;
                    if not_hits > 0 {
                        println!(
                            "  ({}: {not_hits} of the {path} reads were not hits)",
                            redis_configs[i].name
                        );
                    }
                    samples[i].push(s);
                }
            }
            print_medians(
                &format!(
                    "{path}, {label}{}",
                    if tasks > 1 {
                        format!(" ({tasks} tasks)")
                    } else {
                        String::new()
                    }
                ),
                redis_configs.iter().map(|r| r.name),
                samples,
            );
        }
    }
    stop.cancel();
    drop(caches);

    // --- PostgreSQL paths (HTTP, journal-service) ---------------------------------
    let db_plain = pg.url("127.0.0.1", "sslmode=disable");
    let db_tls = pg.url("localhost", "sslmode=verify-full");
    let pg_configs = [
        ("sslmode=disable", &db_plain),
        ("TLS, sslmode=verify-full", &db_tls),
    ];

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 2];
    for _ in 0..a.rounds {
        for (i, (_, url)) in pg_configs.iter().enumerate() {
            samples[i].push(pg_connect(url, &ca_file, 30).await);
        }
    }
    print_medians(
        "pg-connect (one new pooled connection, sequential)",
        pg_configs.iter().map(|(n, _)| *n),
        samples,
    );

    // Uncached list: the same seeded users, read through each connection mode.
    let mut apps = Vec::new();
    for (_, url) in &pg_configs {
        let prefix = format!("bench-{}", Uuid::new_v4().simple());
        let settings = testing::settings(
            url,
            None,
            &prefix,
            &[
                ("DATABASE_CA_FILE", &ca_file),
                ("CACHE_ENABLED", "false"),
                ("DB_POOL_SIZE", "16"),
            ],
        );
        apps.push(Arc::new(
            TestApp::start(journal_service::service_with(&unlimited()), settings).await,
        ));
    }
    let users = Arc::new(seed(&apps[0], a.concurrency).await);
    analyze(&db_plain).await;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 2];
    for _ in 0..a.rounds {
        for (i, app) in apps.iter().enumerate() {
            samples[i].push(http_list(app, &users, a.duration).await);
        }
    }
    print_medians(
        &format!(
            "uncached-list over HTTP ({} connections, CACHE_ENABLED=false)",
            a.concurrency
        ),
        pg_configs.iter().map(|(n, _)| *n),
        samples,
    );
    for app in apps.drain(..) {
        app.stop().await;
        app.platform.db.pool().close();
    }

    // Writes: PostgreSQL INSERT + Redis bump, through each production combination.
    let combos: [(&str, &String, &RedisConfig); 3] = [
        (
            "PostgreSQL plaintext + Redis node plaintext",
            &db_plain,
            &redis_configs[0],
        ),
        (
            "PostgreSQL TLS + Redis node TLS",
            &db_tls,
            &redis_configs[1],
        ),
        (
            "PostgreSQL plaintext + Redis cluster",
            &db_plain,
            &redis_configs[2],
        ),
    ];
    for (_, url, redis) in &combos {
        let prefix = format!("bench-{}", Uuid::new_v4().simple());
        let (redis_url, mut extra) = redis.settings();
        extra.push(("DATABASE_CA_FILE", ca_file.clone()));
        // Three services at once on a PostgreSQL with max_connections = 40.
        extra.push(("DB_POOL_SIZE", "8".to_owned()));
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let settings = testing::settings(url, redis_url.as_deref(), &prefix, &extra);
        apps.push(Arc::new(
            TestApp::start(journal_service::service_with(&unlimited()), settings).await,
        ));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); 3];
    for _ in 0..a.rounds {
        for (i, app) in apps.iter().enumerate() {
            samples[i].push(http_write(app, a.concurrency, a.duration).await);
        }
    }
    print_medians(
        &format!(
            "write over HTTP: POST entry = INSERT + bump ({} connections)",
            a.concurrency
        ),
        combos.iter().map(|(n, _, _)| *n),
        samples,
    );
    for app in apps.drain(..) {
        app.stop().await;
    }
}

/// `VACUUM ANALYZE` after seeding (what autovacuum does in production), so the
/// list plan is the same under both connection modes.
async fn analyze(url: &str) {
    let db = Db::new(
        &testing::settings(url, None, "bench", &[]).database,
        &Metrics::new("bench"),
    );
    let conn = db.conn().await.expect("connect");
    conn.batch_execute("VACUUM ANALYZE").await.expect("VACUUM");
}

/// The write scenario posts entries as fast as it can per user: the per-user
/// create limit is lifted here, not measured.
fn unlimited() -> journal_service::config::JournalSettings {
    journal_service::config::JournalSettings {
        creates_per_minute: u32::MAX,
        ..journal_service::config::JournalSettings::defaults()
    }
}
