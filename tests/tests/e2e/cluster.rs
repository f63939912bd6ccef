//! The cache's guarantees on a Redis Cluster (3 primaries, 3 replicas, started by
//! the test): entries, the generation script and single-flight through a
//! slot-routing client; invalidations heard across replicas through classic
//! pub/sub (broadcast to every node); O(1) invalidation; and a failover — a
//! primary killed, its replica promoted — degrading to the loader and recovering
//! with nothing stale; a primary paused (SIGSTOP) under two journal-service
//! replicas costing latency, never an error or a stale answer; and the
//! recovery-only sweep (`SCAN` on every primary); and many concurrent callers
//! sharing one connection per node. One cluster per test: starting one costs
//! seconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kai_http::ApiError;
use kai_shared::cache::{Cache, CacheStatus, Policy, Refresh, Scope, Written, keys};
use kai_shared::metrics::Metrics;
use kai_shared::ratelimit::token_bucket;
use kai_shared::redis::revocation;
use kai_testing::{self as testing, PrivateCluster, TestApp, TestDb, TestUser};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const POLICY: Policy = Policy::new("test_ns", Duration::from_secs(60));

struct Replica {
    cache: Cache,
    stop: CancellationToken,
    /// Session ids this replica heard revoked.
    revoked: Arc<Mutex<Vec<String>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A cache replica on `cluster`. `timeout_ms` is `REDIS_TIMEOUT_MS`: generous where
/// the test is about routing (a loaded 2-core machine must not open the circuit
/// and turn a stampede into uncached loads), short where it is about failure.
async fn replica(cluster: &PrivateCluster, prefix: &str, timeout_ms: &str) -> Replica {
    let stop = CancellationToken::new();
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let sink = revoked.clone();
    let settings = testing::settings(
        "postgres://postgres@127.0.0.1/unused",
        None,
        prefix,
        &[
            ("REDIS_CLUSTER_NODES", &cluster.seeds()),
            ("REDIS_TIMEOUT_MS", timeout_ms),
        ],
    );
    let cache = Cache::new(
        "journal",
        &settings.cache,
        &settings.redis,
        &Metrics::new("test"),
        Arc::new(move |id: &str| sink.lock().unwrap().push(id.to_owned())),
        stop.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cache.l1_trusted() {
        assert!(Instant::now() < deadline, "never subscribed on the cluster");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Replica {
        cache,
        stop,
        revoked,
    }
}

async fn read(
    cache: &Cache,
    scope: &Scope,
    key: &str,
    value: &str,
    loads: &AtomicUsize,
) -> (String, CacheStatus) {
    let cached = cache
        .get_or_load(scope, &POLICY, key, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ApiError>(Some(value.to_owned()))
        })
        .await
        .unwrap();
    (
        serde_json::from_slice(&cached.entry.body).unwrap(),
        cached.status,
    )
}

fn scope() -> Scope {
    Scope::user("test", Uuid::new_v4())
}

/// Connections a new replica opens on the cluster (`total_connections_received`
/// over every node, read on connections held open) while `callers` concurrent
/// tasks make 640 misses in all.
async fn connections_opened(cluster: &PrivateCluster, callers: usize) -> u64 {
    let mut watchers: Vec<redis::Connection> =
        cluster.nodes.iter().map(|n| n.connection()).collect();
    let mut received = || -> u64 {
        watchers
            .iter_mut()
            .map(|c| {
                let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("total_connections_received:"))
                    .unwrap()
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let before = received();
    let replica = replica(cluster, "many", "2000").await;
    let tasks: Vec<_> = (0..callers)
        .map(|task| {
            let cache = replica.cache.clone();
            tokio::spawn(async move {
                for n in 0..640 / callers {
                    let (s, loads) = (scope(), AtomicUsize::new(0));
                    let value = format!("{task}-{n}");
                    assert_eq!(read(&cache, &s, "k", &value, &loads).await.0, value);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(replica.cache.redis_available(), Some(true));
    let opened = received() - before;
    drop(replica);
    opened
}

/// Reads until `cache` answers `want` (the loader gives `want`), at most `limit`.
async fn eventually(cache: &Cache, s: &Scope, key: &str, want: &str, limit: Duration) {
    let (loads, started) = (AtomicUsize::new(0), Instant::now());
    loop {
        if read(cache, s, key, want, &loads).await.0 == want {
            return;
        }
        assert!(started.elapsed() < limit, "never answered {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_cache_guarantees_hold_on_a_redis_cluster() {
    let cluster = PrivateCluster::start();
    let all: Vec<usize> = (0..6).collect();
    let (a, b) = (
        replica(&cluster, "cl", "2000").await,
        replica(&cluster, "cl", "2000").await,
    );

    // Read-your-writes across replicas: B hits A's entry in Redis, then hears
    // A's invalidation (published on one node, heard on B's node).
    let (s, loads) = (scope(), AtomicUsize::new(0));
    read(&a.cache, &s, "k", "v1", &loads).await;
    assert_eq!(
        read(&b.cache, &s, "k", "v1", &loads).await.1,
        CacheStatus::Hit
    );
    assert_eq!(
        read(&b.cache, &s, "k", "v1", &loads).await.1,
        CacheStatus::Hit
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    a.cache.invalidate(&s).await;
    assert_eq!(
        read(&a.cache, &s, "k", "v2", &loads).await.0,
        "v2",
        "same replica: at once"
    );
    eventually(&b.cache, &s, "k", "v2", Duration::from_secs(5)).await;

    // Stampede: 50 concurrent misses, one load.
    let (hot, loads) = (scope(), Arc::new(AtomicUsize::new(0)));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, hot, loads) = (a.cache.clone(), hot.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&hot, &POLICY, "hot", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, ApiError>(Some("once"))
                    })
                    .await
                    .map(|c| c.entry.body.clone())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(&t.await.unwrap().unwrap()[..], br#""once""#);
    }
    assert_eq!(
        a.cache.redis_available(),
        Some(true),
        "the circuit stayed closed"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // Many callers, one connection: a replica whose 64 concurrent callers make
    // 640 misses (generation script, then SET each) opens no more connections
    // than one whose single caller makes the same 640 — the callers share the
    // replica's one connection per node. Counted by Redis itself.
    let one = connections_opened(&cluster, 1).await;
    let many = connections_opened(&cluster, 64).await;
    assert!(one > 0, "the replica connected at all");
    assert_eq!(many, one, "64 concurrent callers opened extra connections");

    // No stale set: the reader's late store lands under a dead generation.
    let s = scope();
    let crate::cache_engine::StoreGate { loaded, release } =
        crate::cache_engine::gate_stores(&a.cache);
    let reader = {
        let (cache, s) = (a.cache.clone(), s.clone());
        tokio::spawn(async move { read(&cache, &s, "row", "old", &AtomicUsize::new(0)).await })
    };
    loaded.notified().await;
    a.cache.invalidate(&s).await;
    release.notify_one();
    assert_eq!(reader.await.unwrap().0, "old");
    a.cache.set_store_hook(None);
    let loads = AtomicUsize::new(0);
    assert_eq!(read(&a.cache, &s, "row", "new", &loads).await.0, "new");
    eventually(&b.cache, &s, "row", "new", Duration::from_secs(5)).await;

    // A write's refill rides its bump (one script and its WAIT, routed by the
    // scope's slot): A answers it from memory, B from Redis, neither loads.
    a.cache
        .commit_all(
            vec![Written::new((), [s.clone()])],
            vec![Refresh::new(s.clone(), &POLICY, "row", async {
                Ok::<_, ApiError>(Some("refilled"))
            })],
        )
        .await;
    let loads = AtomicUsize::new(0);
    assert_eq!(
        read(&a.cache, &s, "row", "loaded", &loads).await,
        ("refilled".to_owned(), CacheStatus::Hit)
    );
    let started = Instant::now();
    while read(&b.cache, &s, "row", "loaded", &loads).await.0 != "refilled" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never saw the refill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0, "nobody loaded");

    // O(1) invalidation, scopes spread over every primary: one script and one
    // WAIT per write, no KEYS, no SCAN, on any node.
    let scopes: Vec<Scope> = (0..30).map(|_| scope()).collect();
    for s in &scopes {
        for page in 0..3 {
            read(&a.cache, s, &format!("page:{page}"), "x", &loads).await;
        }
    }
    cluster.reset_stats(&all);
    for s in &scopes {
        a.cache.invalidate(s).await;
    }
    assert_eq!(cluster.calls("keys", &all) + cluster.calls("scan", &all), 0);
    assert_eq!(
        cluster.calls("eval", &all) + cluster.calls("evalsha", &all),
        30
    );
    assert_eq!(cluster.calls("wait", &all), 30);
    for s in &scopes {
        assert_eq!(
            read(&a.cache, s, "page:0", "y", &loads).await,
            ("y".to_owned(), CacheStatus::Miss)
        );
    }

    // Erasure: every key of a scope is found on the node that holds its slot.
    let gone = &scopes[0];
    let removed = a.cache.purge_scope(gone).await.expect("purge on a cluster");
    assert!(removed >= 2, "entries and counter removed: {removed}");
    let owner = cluster.primary_for(&keys::generation_key("cl", gone), 0);
    let exists: u64 = redis::cmd("EXISTS")
        .arg(keys::generation_key("cl", gone))
        .query(&mut cluster.nodes[owner].connection())
        .unwrap();
    assert_eq!(exists, 0);

    // Session revocation: heard by the other replica at once, and by a replica
    // that subscribes later from the stored set.
    let expires = chrono_free_now() + 3600;
    assert!(revocation::announce(a.cache.redis().as_ref(), "session-1", expires).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.revoked.lock().unwrap().contains(&"session-1".to_owned()) {
        assert!(Instant::now() < deadline, "B never heard the revocation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = replica(&cluster, "cl", "2000").await;
    assert!(
        late.revoked
            .lock()
            .unwrap()
            .contains(&"session-1".to_owned())
    );

    // The login rate limiter: one bucket in the cluster, shared by the replicas.
    for _ in 0..3 {
        assert_eq!(
            token_bucket(a.cache.redis().as_ref(), "profile", "login:sam", 3, 0.01).await,
            Some(None)
        );
    }
    assert!(matches!(
        token_bucket(b.cache.redis().as_ref(), "profile", "login:sam", 3, 0.01).await,
        Some(Some(_))
    ));
}

fn chrono_free_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_cluster_failover_degrades_to_the_loader_and_serves_nothing_stale() {
    let mut cluster = PrivateCluster::start();
    let (a, b) = (
        replica(&cluster, "fo", "250").await,
        replica(&cluster, "fo", "250").await,
    );
    let (s, loads) = (scope(), AtomicUsize::new(0));
    read(&a.cache, &s, "k", "before", &loads).await;
    assert_eq!(
        read(&b.cache, &s, "k", "before", &loads).await.1,
        CacheStatus::Hit
    );

    // Kill the primary that holds this scope (its generation and its entries).
    let victim = cluster.primary_for(&keys::generation_key("fo", &s), 0);
    let ask = (victim + 1) % 6;
    cluster.nodes[victim].kill();

    // The write while the slot has no primary: the loader answers, never "before",
    // on the writer and — told through a live node to forget the scope — on B,
    // whose subscription may live on a healthy node.
    a.cache.invalidate(&s).await;
    assert_eq!(read(&a.cache, &s, "k", "during", &loads).await.0, "during");
    eventually(&b.cache, &s, "k", "during", Duration::from_secs(5)).await;

    // The replica is promoted; the remembered invalidation is replayed and both
    // replicas answer the new value from the cache again.
    let alive: Vec<usize> = (0..6).filter(|&i| i != victim).collect();
    cluster.wait_converged(&alive);
    assert_ne!(
        cluster.primary_for(&keys::generation_key("fo", &s), ask),
        victim
    );
    eventually(&a.cache, &s, "k", "after", Duration::from_secs(30)).await;
    eventually(&b.cache, &s, "k", "after", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.cache.redis_available() != Some(true) {
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loads = AtomicUsize::new(0);
    let (v, _) = read(&a.cache, &s, "k", "after", &loads).await;
    assert_eq!(v, "after");
    assert_eq!(
        read(&a.cache, &s, "k", "after", &loads).await.1,
        CacheStatus::Hit,
        "caching resumed on the promoted replica"
    );
}

/// POSTs a journal entry; the status.
async fn post(app: &TestApp, user: &TestUser, content: &str) -> u16 {
    app.client
        .post(app.url("/api/journal/entries"))
        .bearer_auth(&user.token)
        .json(&json!({ "content": content }))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Reads the user's list on `app` until it holds `total` entries and is a cache
/// hit (caching resumed), at most `limit`; every answer on the way must be a 200
/// with at least `total` entries (never a stale page).
async fn eventually_cached(app: &TestApp, user: &TestUser, total: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let (status, cache, page) = app.read(&user.token, "/api/journal/entries").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], total, "stale page: {page}");
        if cache == "HIT" {
            return;
        }
        assert!(started.elapsed() < limit, "caching never resumed ({cache})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_paused_primary_costs_latency_never_an_error_or_a_stale_read() {
    let cluster = PrivateCluster::start();
    let db = TestDb::create().await;
    let prefix = format!("pz{}", Uuid::new_v4().simple());
    let settings = || {
        testing::settings(
            &db.url,
            None,
            &prefix,
            &[
                ("REDIS_CLUSTER_NODES", &cluster.seeds()),
                ("REDIS_TIMEOUT_MS", "250"),
            ],
        )
    };
    let a = TestApp::start(journal_service::service(), settings()).await;
    let b = TestApp::start(journal_service::service(), settings()).await;
    let user = TestUser::new();
    assert_eq!(post(&a, &user, "one").await, 201);
    for app in [&a, &b] {
        app.read(&user.token, "/api/journal/entries").await;
        eventually_cached(app, &user, 1, Duration::from_secs(5)).await;
    }

    // Stop the primary of the user's scope. Everything below runs while it is
    // stopped: each answer proves a request does not wait for the node.
    let scope = journal_service::cache_rules::user_scope(user.id);
    let victim = cluster.primary_for(&keys::generation_key(&prefix, &scope), 0);
    cluster.nodes[victim].pause();
    for (i, (writer, other)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let total = 2 + i as u64;
        assert_eq!(post(writer, &user, &format!("while paused {i}")).await, 201);
        // The writer: at once. The other replica: once it stops trusting what it
        // remembers (its subscription may live on the stopped node), and from
        // then on never an older page.
        let (status, _, page) = writer.read(&user.token, "/api/journal/entries").await;
        assert_eq!(
            (status, page["total"].as_u64()),
            (200, Some(total)),
            "{page}"
        );
        let started = Instant::now();
        loop {
            let (status, _, page) = other.read(&user.token, "/api/journal/entries").await;
            assert_eq!(status, 200, "{page}");
            if page["total"] == total {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{page}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for app in [&a, &b] {
            let (status, _, page) = app.read(&user.token, "/api/journal/entries").await;
            assert_eq!(
                (status, page["total"].as_u64()),
                (200, Some(total)),
                "{page}"
            );
        }
    }

    // Resumed (as a primary again, or demoted if its replica took over meanwhile):
    // the deferred invalidations are replayed, nothing stale is served, and both
    // replicas cache again.
    cluster.nodes[victim].resume();
    cluster.wait_converged(&(0..6).collect::<Vec<_>>());
    eventually_cached(&a, &user, 4, Duration::from_secs(30)).await;
    eventually_cached(&b, &user, 4, Duration::from_secs(30)).await;
    assert_eq!(post(&b, &user, "after").await, 201);
    let (status, cache, page) = a.read(&user.token, "/api/journal/entries").await;
    assert_eq!(
        (status, page["total"].as_u64()),
        (200, Some(5)),
        "{cache} {page}"
    );
    let health = a.get_json("/health/detailed").await;
    assert_eq!(health["redis"]["status"], "healthy", "{health}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_recovery_sweep_scans_every_primary() {
    let cluster = PrivateCluster::start();
    let all: Vec<usize> = (0..6).collect();
    let settings = testing::settings(
        "postgres://postgres@127.0.0.1/unused",
        None,
        "sw",
        &[("REDIS_CLUSTER_NODES", &cluster.seeds())],
    );
    // Counters of 300 scopes (spread over every slot range) and one other key.
    let client = redis::cluster::ClusterClient::new(
        cluster.nodes.iter().map(|n| n.url()).collect::<Vec<_>>(),
    )
    .unwrap();
    let mut conn = client.get_connection().unwrap();
    for _ in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(keys::generation_key("sw", &scope()))
            .arg(1)
            .query(&mut conn)
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("sw:other")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let owners: std::collections::HashSet<usize> = (0..50)
        .map(|_| cluster.primary_for(&keys::generation_key("sw", &scope()), 0))
        .collect();
    assert_eq!(owners.len(), 3, "scopes spread over the three primaries");

    let removed = testing::unlink_matching(&settings, "sw:{*}:gen")
        .await
        .expect("sweep");
    assert_eq!(removed, 300);
    // Only sw:other remains, on its primary and (once replicated) its replica.
    let started = Instant::now();
    loop {
        let left: u64 = all
            .iter()
            .map(|&i| {
                redis::cmd("DBSIZE")
                    .query::<u64>(&mut cluster.nodes[i].connection())
                    .unwrap()
            })
            .sum();
        if left == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{left} keys left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
