//! Results: latency summaries from HDR histograms, the text tables kai-load
//! prints, and the JSON report it writes.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// A fresh histogram of microseconds, 1 µs to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ScenarioResult {
    pub name: String,
    /// What it measures, in one line.
    pub description: String,
    pub connections: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub latency: Latency,
    /// Cache hits / (hits + misses) on the target service during the run.
    pub cache_hit_rate: Option<f64>,
    /// PostgreSQL statements the target service ran during the run.
    pub db_statements: Option<f64>,
    /// Per-request costs during the measured run (service CPU, PostgreSQL CPU,
    /// Redis commands and bytes).
    pub unit_costs: Option<crate::costs::UnitCosts>,
    /// Scenario-specific findings (stampede: list loads), free text.
    pub notes: Vec<String>,
}

/// Resource use of one spawned service process.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServiceResources {
    pub name: String,
    pub start_to_ready_ms: Option<f64>,
    /// Right after /health/ready, before any other request.
    pub idle_rss_mib: Option<f64>,
    /// After seeding (profile: one register and `--logins` logins, each an
    /// argon2id hash of 19 MiB working memory).
    pub after_setup_rss_mib: Option<f64>,
    pub peak_rss_under_load_mib: Option<f64>,
    /// After every scenario ran (and a second's rest).
    pub end_rss_mib: Option<f64>,
}

/// Everything a run found, written as JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub started_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub scenarios: Vec<ScenarioResult>,
    pub services: Vec<ServiceResources>,
    /// What the cache held in Redis at the end (spawned runs only).
    pub redis_footprint: Option<crate::costs::RedisFootprint>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
        }
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{:.1} %", r * 100.0))
}

/// The block printed after each scenario.
pub fn scenario_block(r: &ScenarioResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "── {} ── {}", r.name, r.description);
    let _ = writeln!(
        s,
        "  {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "requests/s", "requests", "p50", "p95", "p99", "max", "errors", "cache hit"
    );
    let _ = writeln!(
        s,
        "  {:>12.0} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
        r.requests_per_s,
        r.requests,
        ms(r.latency.p50_ms),
        ms(r.latency.p95_ms),
        ms(r.latency.p99_ms),
        ms(r.latency.max_ms),
        r.errors,
        opt_pct(r.cache_hit_rate),
    );
    for note in &r.notes {
        let _ = writeln!(s, "  · {note}");
    }
    if let Some(c) = &r.unit_costs {
        let _ = writeln!(s, "  · per request: {}", costs_line(c));
    }
    s
}

/// `service CPU 21.3 µs · PostgreSQL CPU 0.0 µs · Redis 0.00 commands, 3 bytes`.
pub fn costs_line(c: &crate::costs::UnitCosts) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"));
    format!(
        "service CPU {} µs · PostgreSQL CPU {} µs · Redis {} commands, {} bytes",
        f(c.service_cpu_us, 1),
        f(c.postgres_cpu_us, 1),
        f(c.redis_commands, 2),
        f(c.redis_bytes, 0)
    )
}

/// The unit-cost table of a run, in Markdown (docs/CAPACITY.md's inputs).
pub fn costs_table(results: &[ScenarioResult]) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | service CPU µs/req | PostgreSQL CPU µs/req | PostgreSQL statements/req | Redis commands/req | Redis bytes/req |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in results {
        let c = r.unit_costs.unwrap_or_default();
        let statements = r.db_statements.map(|d| d / r.requests.max(1) as f64);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            f(c.service_cpu_us, 1),
            f(c.postgres_cpu_us, 1),
            f(statements, 2),
            f(c.redis_commands, 2),
            f(c.redis_bytes, 0)
        );
    }
    s
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.2}ms")
    }
}

/// The summary table of a whole run, in Markdown (pastes into docs as is).
pub fn summary_table(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | conns | requests/s | p50 | p95 | p99 | max | errors | cache hit |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.connections,
            r.requests_per_s,
            ms(r.latency.p50_ms),
            ms(r.latency.p95_ms),
            ms(r.latency.p99_ms),
            ms(r.latency.max_ms),
            r.errors,
            opt_pct(r.cache_hit_rate),
        );
    }
    s
}

/// Resource table (Markdown).
pub fn resources_table(services: &[ServiceResources]) -> String {
    let f = |v: Option<f64>, unit: &str| v.map_or_else(|| "-".into(), |v| format!("{v:.1} {unit}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| service | start → /health/ready | idle RSS | RSS after setup (profile: after the logins) | peak RSS under its scenarios | RSS at the end |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in services {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            f(r.start_to_ready_ms, "ms"),
            f(r.idle_rss_mib, "MiB"),
            f(r.after_setup_rss_mib, "MiB"),
            f(r.peak_rss_under_load_mib, "MiB"),
            f(r.end_rss_mib, "MiB"),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 10 µs … 10 ms, uniform
        }
        let l = Latency::from_micros(&h);
        assert!((l.p50_ms - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p95_ms - 9.5).abs() < 0.01, "{l:?}");
        assert!((l.p99_ms - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max_ms - 10.0).abs() < 0.01, "{l:?}");
        assert_eq!(Latency::from_micros(&histogram()), Latency::default());
    }

    #[test]
    fn tables_show_every_column() {
        let r = ScenarioResult {
            name: "cached-list-hit".into(),
            description: "GET list, same user".into(),
            connections: 32,
            duration_s: 10.0,
            requests: 200_000,
            errors: 0,
            requests_per_s: 20_000.4,
            latency: Latency {
                p50_ms: 1.234,
                p95_ms: 2.5,
                p99_ms: 4.0,
                max_ms: 123.4,
                mean_ms: 1.4,
            },
            cache_hit_rate: Some(0.9999),
            db_statements: Some(0.0),
            unit_costs: None,
            notes: vec!["1 list query".into()],
        };
        let table = summary_table(std::slice::from_ref(&r));
        assert_eq!(
            table.lines().nth(2).unwrap(),
            "| cached-list-hit | 32 | 20000 | 1.23ms | 2.50ms | 4.00ms | 123ms | 0 | 100.0 % |"
        );
        let block = scenario_block(&r);
        assert!(block.starts_with("── cached-list-hit ── GET list, same user\n"));
        assert!(block.contains("20000"), "{block}");
        assert!(block.contains("· 1 list query"), "{block}");
        let res = resources_table(&[ServiceResources {
            name: "journal".into(),
            start_to_ready_ms: Some(42.0),
            idle_rss_mib: Some(12.0),
            after_setup_rss_mib: None,
            peak_rss_under_load_mib: None,
            end_rss_mib: None,
        }]);
        assert_eq!(
            res.lines().nth(2).unwrap(),
            "| journal | 42.0 ms | 12.0 MiB | - | - | - |"
        );
    }
}
