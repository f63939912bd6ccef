//! Per-route request statistics for `/health/detailed` (count, average, min, max,
//! error rate), collected by the [`super::stamp`] middleware. Prometheus has the
//! histograms; this is the quick human view the seeds' health check promised.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    count: u64,
    errors: u64,
    total: Duration,
    min: Duration,
    max: Duration,
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
    map: Mutex<HashMap<String, Stat>>,
}

impl EndpointStats {
    /// Records one request; `key` is "METHOD /route/{pattern}" (bounded set).
    pub fn record(&self, key: &str, elapsed: Duration, server_error: bool) {
        let mut map = self.map.lock().expect("stats lock");
        let stat = match map.get_mut(key) {
            Some(s) => s,
            None => map.entry(key.to_owned()).or_insert(Stat {
                min: elapsed,
                ..Stat::default()
            }),
        };
        stat.count += 1;
        stat.errors += u64::from(server_error);
        stat.total += elapsed;
        stat.min = stat.min.min(elapsed);
        stat.max = stat.max.max(elapsed);
    }

    pub fn summary(&self) -> HashMap<String, EndpointSummary> {
        let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        self.map
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    EndpointSummary {
                        count: s.count,
                        avg_time_ms: ms(s.total / s.count.max(1) as u32),
                        min_time_ms: ms(s.min),
                        max_time_ms: ms(s.max),
                        error_rate: s.errors as f64 / s.count.max(1) as f64,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_computed_from_records() {
        let stats = EndpointStats::default();
        stats.record("GET /api/x", Duration::from_millis(2), false);
        stats.record("GET /api/x", Duration::from_millis(4), true);
        let s = &stats.summary()["GET /api/x"];
        assert_eq!(s.count, 2);
        assert_eq!(s.avg_time_ms, 3.0);
        assert_eq!(s.min_time_ms, 2.0);
        assert_eq!(s.max_time_ms, 4.0);
        assert_eq!(s.error_rate, 0.5);
    }
}
