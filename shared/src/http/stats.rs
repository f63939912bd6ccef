//! Per-route request statistics for `/health/detailed` (count, average, min, max,
//! error rate), collected by the [`super::stamp`] middleware. Prometheus has the
//! histograms; this is the quick human view the seeds' health check promised.
//!
//! Recording is on every request's path, so it takes a shared read lock and
//! updates atomics; the write lock is taken once per new route (a bounded set:
//! route patterns, never raw paths).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug)]
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

/// The public view of one route's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSummary {
    pub count: u64,
    pub avg_time_ms: f64,
    pub min_time_ms: f64,
    pub max_time_ms: f64,
    pub error_rate: f64,
}

#[derive(Default)]
pub struct EndpointStats {
    map: RwLock<HashMap<String, Arc<Stat>>>,
}

impl EndpointStats {
    /// Records one request of `method` on `route` (a pattern: a bounded set),
    /// kept as "METHOD /route/{pattern}". The key of a known route is written on
    /// the stack: recording allocates nothing.
    pub fn record(
        &self,
        method: &actix_web::http::Method,
        route: &str,
        elapsed: Duration,
        server_error: bool,
    ) {
        let mut buf = [0u8; 256];
        let (m, r) = (method.as_str().as_bytes(), route.as_bytes());
        let key_len = m.len() + 1 + r.len();
        let owned;
        let key: &str = if key_len <= buf.len() {
            buf[..m.len()].copy_from_slice(m);
            buf[m.len()] = b' ';
            buf[m.len() + 1..key_len].copy_from_slice(r);
            std::str::from_utf8(&buf[..key_len]).unwrap_or(route)
        } else {
            owned = format!("{method} {route}");
            &owned
        };
        let existing = self.map.read().expect("stats lock").get(key).cloned();
        let stat = match existing {
            Some(stat) => stat,
            None => self
                .map
                .write()
                .expect("stats lock")
                .entry(key.to_owned())
                .or_default()
                .clone(),
        };
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        stat.count.fetch_add(1, Ordering::Relaxed);
        stat.errors
            .fetch_add(u64::from(server_error), Ordering::Relaxed);
        stat.total_ns.fetch_add(ns, Ordering::Relaxed);
        stat.min_ns.fetch_min(ns, Ordering::Relaxed);
        stat.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn summary(&self) -> HashMap<String, EndpointSummary> {
        let ms = |ns: u64| (ns as f64 / 1000.0).round() / 1000.0;
        self.map
            .read()
            .expect("stats lock")
            .iter()
            .map(|(k, s)| {
                let count = s.count.load(Ordering::Relaxed).max(1);
                (
                    k.clone(),
                    EndpointSummary {
                        count: s.count.load(Ordering::Relaxed),
                        avg_time_ms: ms(s.total_ns.load(Ordering::Relaxed) / count),
                        min_time_ms: ms(s
                            .min_ns
                            .load(Ordering::Relaxed)
                            .min(s.max_ns.load(Ordering::Relaxed))),
                        max_time_ms: ms(s.max_ns.load(Ordering::Relaxed)),
                        error_rate: crate::health::round_to(
                            s.errors.load(Ordering::Relaxed) as f64 / count as f64,
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
