//! Per-route request statistics for `/health/detailed` (count, average, min, max,
//! error rate), collected by the [`super::stamp`] middleware. Prometheus has the
//! histograms; this is the quick human view the seeds' health check promised.
//!
//! Recording is on every request's path. Each worker thread finds a route's
//! numbers once and keeps them (no lock, no hashing of the key afterwards), and
//! adds to a shard of them no other thread writes to (padded to its own cache
//! line): two workers recording at 80k requests/s no longer bounce one line of
//! five counters, a lock word and a reference count between the cores. A summary
//! adds the shards up. The write lock is taken once per new route (a bounded
//! set: route patterns, never raw paths).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

// Shards per route: worker threads take them in turn (kai_shared::shard).
use kai_shared::shard::SHARDS;

#[derive(Debug)]
#[repr(align(128))]
struct Stat {
    count: AtomicU64,
    errors: AtomicU64,
    total_ns: AtomicU64,
    min_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Stat {
    fn default() -> Self {
        Self {
            count: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Route {
    shards: [Stat; SHARDS],
}

/// The public view of one route's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSummary {
    pub count: u64,
    pub avg_time_ms: f64,
    pub min_time_ms: f64,
    pub max_time_ms: f64,
    pub error_rate: f64,
}

pub struct EndpointStats {
    map: RwLock<HashMap<String, Arc<Route>>>,
    /// Tells these statistics apart from another instance's in a worker
    /// thread's memo (several services run in one test process).
    id: u64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            map: RwLock::default(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A route a worker thread has recorded: its key and its numbers.
type Known = (Box<str>, Arc<Route>);

/// A worker thread's routes, by (statistics id, hash of "METHOD route"), each
/// bucket with its keys (almost always one); the thread's shard; and the hasher
/// of the keys (foldhash: the key is hashed once, the map's own hash of the
/// pair of numbers is the default one).
struct Memo {
    routes: HashMap<(u64, u64), Vec<Known>>,
    shard: usize,
    hasher: kai_shared::FastHash,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo {
        routes: HashMap::new(),
        hasher: kai_shared::FastHash::default(),
        shard: kai_shared::shard::this_thread(),
    });
}

impl EndpointStats {
    /// Records one request of `method` on `route` (a pattern: a bounded set),
    /// kept as "METHOD /route/{pattern}". A route this thread has recorded
    /// before is found without allocating, locking or hashing the key with SipHash.
    pub fn record(
        &self,
        method: &actix_web::http::Method,
        route: &str,
        elapsed: Duration,
        server_error: bool,
    ) {
        let (m, r) = (method.as_str(), route);
        let same = |k: &str| k.len() == m.len() + 1 + r.len() && k.starts_with(m) && k.ends_with(r);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        MEMO.with_borrow_mut(|memo| {
            use std::hash::BuildHasher;
            let hash = memo.hasher.hash_one((m, r));
            let bucket = memo.routes.entry((self.id, hash)).or_default();
            let i = match bucket.iter().position(|(k, _)| same(k)) {
                Some(i) => i,
                None => {
                    let key = format!("{m} {r}");
                    let route = self
                        .map
                        .write()
                        .expect("stats lock")
                        .entry(key.clone())
                        .or_default()
                        .clone();
                    bucket.push((key.into(), route));
                    bucket.len() - 1
                }
            };
            let stat = &bucket[i].1.shards[memo.shard];
            stat.count.fetch_add(1, Ordering::Relaxed);
            if server_error {
                stat.errors.fetch_add(1, Ordering::Relaxed);
            }
            stat.total_ns.fetch_add(ns, Ordering::Relaxed);
            if ns < stat.min_ns.load(Ordering::Relaxed) {
                stat.min_ns.fetch_min(ns, Ordering::Relaxed);
            }
            if ns > stat.max_ns.load(Ordering::Relaxed) {
                stat.max_ns.fetch_max(ns, Ordering::Relaxed);
            }
        });
    }

    pub fn summary(&self) -> HashMap<String, EndpointSummary> {
        let ms = |ns: u64| (ns as f64 / 1000.0).round() / 1000.0;
        self.map
            .read()
            .expect("stats lock")
            .iter()
            .map(|(k, route)| {
                let sum = |f: fn(&Stat) -> &AtomicU64| -> u64 {
                    route
                        .shards
                        .iter()
                        .map(|s| f(s).load(Ordering::Relaxed))
                        .sum()
                };
                let count = sum(|s| &s.count);
                let min = route
                    .shards
                    .iter()
                    .map(|s| s.min_ns.load(Ordering::Relaxed))
                    .min();
                let max = route
                    .shards
                    .iter()
                    .map(|s| s.max_ns.load(Ordering::Relaxed))
                    .max();
                let (min, max) = (min.unwrap_or(0), max.unwrap_or(0));
                (
                    k.clone(),
                    EndpointSummary {
                        count,
                        avg_time_ms: ms(sum(|s| &s.total_ns) / count.max(1)),
                        min_time_ms: ms(min.min(max)),
                        max_time_ms: ms(max),
                        error_rate: kai_shared::figures::round_to(
                            sum(|s| &s.errors) as f64 / count.max(1) as f64,
                            4,
                        ),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn summaries_are_computed_from_records() {
        let stats = EndpointStats::default();
        stats.record(&Method::GET, "/api/x", Duration::from_millis(2), false);
        stats.record(&Method::GET, "/api/x", Duration::from_millis(4), true);
        let s = &stats.summary()["GET /api/x"];
        assert_eq!(s.count, 2);
        assert_eq!(s.avg_time_ms, 3.0);
        assert_eq!(s.min_time_ms, 2.0);
        assert_eq!(s.max_time_ms, 4.0);
        assert_eq!(s.error_rate, 0.5);
    }

    /// A worker thread's memo keeps two instances (two services in one process,
    /// or one dropped and another made) and two methods of one route apart.
    #[test]
    fn each_instance_and_method_counts_its_own() {
        let (a, b) = (EndpointStats::default(), EndpointStats::default());
        for _ in 0..3 {
            a.record(&Method::GET, "/api/z", Duration::from_millis(1), false);
        }
        b.record(&Method::GET, "/api/z", Duration::from_millis(1), false);
        b.record(&Method::POST, "/api/z", Duration::from_millis(1), true);
        drop(a);
        let c = EndpointStats::default();
        c.record(&Method::GET, "/api/z", Duration::from_millis(1), false);
        assert_eq!(b.summary()["GET /api/z"].count, 1);
        assert_eq!(b.summary()["POST /api/z"].error_rate, 1.0);
        assert_eq!(c.summary()["GET /api/z"].count, 1);
        assert_eq!(c.summary().len(), 1);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let stats = Arc::new(EndpointStats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        stats.record(
                            &Method::GET,
                            "/api/y",
                            Duration::from_micros(i % 100),
                            false,
                        );
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(stats.summary()["GET /api/y"].count, 40_000);
    }
}
