//! The service's Prometheus registry and Kai's own metrics (SPEC §5).
//!
//! Each application owns its registry (not the process-global default) with the
//! constant label `service`, so several services — or several tests — can run in one
//! process without mixing their numbers.
//!
//! The HTTP metrics (`kai_http_requests_total`, `kai_http_requests_duration_seconds`)
//! are actix-web-prom's, registered on this registry by
//! kai-http's `prometheus_middleware` with the buckets [`LATENCY_BUCKETS`].

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Buckets for sub-millisecond to multi-second work.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// All of Kai's own metrics; cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_errors: IntCounterVec,
    /// `kai_cache_refills_total{namespace, outcome}`: hot reads a write redid
    /// (`cache::Refresh`) — `stored` with its bump, `dropped` (another write moved
    /// the scope meanwhile), `failed` (the load failed; a plain bump instead).
    pub cache_refills: IntCounterVec,
    /// `kai_cache_rejected_total{namespace, reason}`: Redis entries not served
    /// because they did not open under this service's keys for their key name
    /// (`forged`: altered or moved; `unknown_key`; `malformed`) — each a miss.
    pub cache_rejected: IntCounterVec,
    pub db_query_duration: Histogram,
    pub db_slow_queries: IntCounter,
    /// `kai_db_batch_size{batch}`: writes per combined statement (`db::Combiner`).
    pub db_batch_size: HistogramVec,
    pub redis_up: IntGauge,
    /// `kai_redis_commands_total{outcome}`: commands the service's requests
    /// sent to Redis (`sent`) and skipped because the circuit was open
    /// (`skipped`): the breaker's own evidence that an open circuit costs no
    /// Redis round trip. (Health checks and the breaker's probe are not counted.)
    pub redis_commands: IntCounterVec,
    /// `kai_cache_subscriptions_total`: invalidation subscriptions established
    /// (the first at start; every further one is a reconnect).
    pub cache_subscriptions: IntCounter,
    /// `kai_events_failures_total{stream}`: events whose handler failed (left
    /// unacknowledged, retried).
    pub events_failures: IntCounterVec,
    /// `kai_events_rejected_total{stream}`: control messages that did not
    /// verify (bad signature, unknown key, unparseable) and acted on nothing:
    /// `account-erased` (stream entries) and `revocations` (channel messages
    /// and members of the revoked set). Both exported at 0 from the start.
    pub events_rejected: IntCounterVec,
    /// The service's own [`OutcomeCounter`]s, by name.
    outcomes: Arc<HashMap<&'static str, IntCounterVec>>,
    /// Tells this registry's series apart from another's in a worker thread's
    /// cache ([`Metrics::count_cache`]); unique in the process.
    id: u64,
    /// Counters registered through [`Metrics::counter`], by name.
    counters: Arc<std::sync::Mutex<HashMap<String, IntCounter>>>,
}

/// A counter of a service's outbound calls by `outcome` (say `success`, `error`,
/// `timeout`), declared by the service (the platform's `ServiceDef::counting`)
/// and registered with every outcome exported at 0 from the start.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub outcomes: &'static [&'static str],
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let labels = HashMap::from([("service".to_owned(), service.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let counter = |name: &str, help: &str, label: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), label).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let cache_hits = counter(
            "kai_cache_hits_total",
            "Cache hits (L1 or L2) by namespace",
            &["namespace"],
        );
        let cache_misses = counter(
            "kai_cache_misses_total",
            "Cache misses by namespace",
            &["namespace"],
        );
        let cache_errors = counter(
            "kai_cache_errors_total",
            "Cache (Redis) errors and timeouts by namespace",
            &["namespace"],
        );
        let cache_rejected = counter(
            "kai_cache_rejected_total",
            "Redis cache entries refused (did not open under this service's keys for their key name) by namespace and reason (forged, unknown_key, malformed); each is a miss",
            &["namespace", "reason"],
        );
        let cache_refills = counter(
            "kai_cache_refills_total",
            "Hot cache entries a write reloaded and stored with its invalidation, by namespace and outcome (stored, dropped, failed)",
            &["namespace", "outcome"],
        );
        let db_query_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kai_db_query_duration_seconds",
                "PostgreSQL statement duration",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(db_query_duration.clone()))
            .expect("metric registered once");
        let db_slow_queries = IntCounter::new(
            "kai_db_slow_queries_total",
            "Statements slower than SLOW_QUERY_THRESHOLD_MS",
        )
        .expect("valid metric");
        registry
            .register(Box::new(db_slow_queries.clone()))
            .expect("metric registered once");
        let db_batch_size = HistogramVec::new(
            HistogramOpts::new(
                "kai_db_batch_size",
                "Writes per combined statement (group commit), by batch kind",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["batch"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(db_batch_size.clone()))
            .expect("metric registered once");
        // Registered only when Redis is configured (see cache::redis): absent, not 0,
        // for a service that runs without Redis, so the "Redis degraded" alert stays quiet.
        let redis_up = IntGauge::new(
            "kai_redis_up",
            "1 when Redis answers (circuit closed), else 0",
        )
        .expect("valid metric");
        // Registered with `kai_redis_up`, only when Redis is configured.
        let redis_commands = IntCounterVec::new(
            Opts::new(
                "kai_redis_commands_total",
                "Commands sent to Redis by requests, and skipped while the circuit was open",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let cache_subscriptions = IntCounter::new(
            "kai_cache_subscriptions_total",
            "Invalidation subscriptions established (the first at start; more are reconnects)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(cache_subscriptions.clone()))
            .expect("metric registered once");
        let events_failures = IntCounterVec::new(
            Opts::new(
                "kai_events_failures_total",
                "Events whose handler failed (left unacknowledged and retried), by stream",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(events_failures.clone()))
            .expect("metric registered once");
        let events_rejected = IntCounterVec::new(
            Opts::new(
                "kai_events_rejected_total",
                "Control messages that did not verify (forged, altered, unparseable) and were dropped, by stream",
            ),
            &["stream"],
        )
        .expect("valid metric");
        for stream in ["account-erased", "revocations"] {
            events_rejected.with_label_values(&[stream]);
        }
        registry
            .register(Box::new(events_rejected.clone()))
            .expect("metric registered once");
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, …
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");

        Self {
            registry,
            cache_hits,
            cache_misses,
            cache_errors,
            cache_refills,
            cache_rejected,
            db_query_duration,
            db_slow_queries,
            db_batch_size,
            redis_up,
            redis_commands,
            cache_subscriptions,
            events_failures,
            events_rejected,
            outcomes: Arc::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            counters: Arc::default(),
        }
    }

    /// Registers the service's outcome counters, each outcome at 0.
    pub fn with_outcome_counters(
        mut self,
        counters: &[OutcomeCounter],
    ) -> prometheus::Result<Self> {
        let mut outcomes = HashMap::new();
        for spec in counters {
            let c = IntCounterVec::new(Opts::new(spec.name, spec.help), &["outcome"])?;
            self.registry.register(Box::new(c.clone()))?;
            for outcome in spec.outcomes {
                c.with_label_values(&[outcome]);
            }
            outcomes.insert(spec.name, c);
        }
        self.outcomes = Arc::new(outcomes);
        Ok(self)
    }

    /// Counts one `outcome` of `counter` (registered at start by
    /// [`Metrics::with_outcome_counters`]).
    pub fn count_outcome(&self, counter: &OutcomeCounter, outcome: &str) {
        match self.outcomes.get(counter.name) {
            Some(c) => c.with_label_values(&[outcome]).inc(),
            None => debug_assert!(
                false,
                "{} is not in the service's outcome counters",
                counter.name
            ),
        }
    }

    /// One outcome's series of `counter`, to keep and count with on a per-request
    /// path without [`Metrics::count_outcome`]'s two lookups. Not registered
    /// (a mistake, caught in debug builds): a counter no registry exports.
    pub fn outcome_series(&self, counter: &OutcomeCounter, outcome: &str) -> IntCounter {
        match self.outcomes.get(counter.name) {
            Some(c) => c.with_label_values(&[outcome]),
            None => {
                debug_assert!(
                    false,
                    "{} is not in the service's outcome counters",
                    counter.name
                );
                IntCounter::new(counter.name, counter.help).expect("valid metric")
            }
        }
    }

    /// A service's own counter (exported at 0 from the start), registered on
    /// first use: asking again for the same name gives the same counter.
    pub fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = counters.get(name) {
            return Ok(c.clone());
        }
        let c = IntCounter::new(name, help)?;
        self.registry.register(Box::new(c.clone()))?;
        counters.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// One cache hit (`hit`) or miss of `namespace`: `kai_cache_hits_total` or
    /// `kai_cache_misses_total`. Each worker
    /// thread looks the labelled counter up once and keeps it (a namespace is a
    /// `&'static str`: its address and length name it, with no hashing).
    pub fn count_cache(&self, hit: bool, namespace: &'static str) {
        type Seen = (u64, bool, usize, usize, IntCounter);
        thread_local! {
            static SERIES: std::cell::RefCell<Vec<Seen>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let key = (self.id, hit, namespace.as_ptr() as usize, namespace.len());
        SERIES.with_borrow_mut(|series| {
            let found = series
                .iter()
                .find(|s| (s.0, s.1, s.2, s.3) == key)
                .map(|s| &s.4);
            match found {
                Some(counter) => counter.inc(),
                None => {
                    let vec = if hit {
                        &self.cache_hits
                    } else {
                        &self.cache_misses
                    };
                    let counter = vec.with_label_values(&[namespace]);
                    counter.inc();
                    series.push((key.0, key.1, key.2, key.3, counter));
                }
            }
        });
    }

    /// The text exposition of everything in the registry.
    ///
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
