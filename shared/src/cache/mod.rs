//! The cache engine: one small API — [`Cache::get_or_load`] for every cacheable
//! read, [`Cache::commit`] of a [`Written`] result for every write — that every
//! service uses. The engine knows no service: each spells its own keys, policies
//! and the scopes its writes touch in its `cache_rules.rs`.
//!
//! # What it guarantees (SPEC §6)
//!
//! 1. **Read-your-writes.** Entries live under their scope's *generation*
//!    ([`keys`]); a write moves the scope to a new generation before its response
//!    is sent. The writing replica learns the new generation at once; the others
//!    hear it on Redis pub/sub ([`invalidation`]) within milliseconds.
//! 2. **No stale set.** A reader reads the generation *before* it queries
//!    PostgreSQL and stores what it loaded under that generation. If a write
//!    commits in between, the write's new generation makes the reader's late store
//!    unreachable: it lands under a dead generation.
//! 3. **O(1) invalidation.** One Lua script sets one counter and publishes one
//!    message; no `KEYS`, no `SCAN` on any request path. Counters are seeded from
//!    the Redis server clock, never 0, so a counter evicted by `allkeys-lru` never
//!    repeats an old generation.
//! 4. **Stampede protection.** Concurrent misses of one key on one instance run
//!    one loader ([`singleflight`]); its result — or its error, never cached —
//!    reaches every waiter. Hot keys are refreshed early by one request (XFetch,
//!    Vattani et al., VLDB 2015) so they do not expire under load, and a write
//!    may refill the hot reads it invalidates ([`Refresh`], [`Cache::commit_all`])
//!    so their readers do not all wait for a load after it — stored by the bump
//!    itself, and only if no other write moved the scope meanwhile.
//! 5. **Graceful degradation.** Every Redis command is bounded by
//!    `REDIS_TIMEOUT_MS`; a failure opens a circuit breaker and requests go
//!    straight to PostgreSQL until a probe succeeds. Invalidations made meanwhile
//!    are replayed before the circuit closes, so a Redis that kept its data through
//!    the outage serves nothing older than an acknowledged write.
//! 6. **Two tiers.** A byte-bounded moka L1 in front of Redis; an L1 hit costs no
//!    Redis command while the pub/sub subscription's heartbeat is answered, and L1
//!    is not used within 250 ms of it falling silent ([`generations`]). L1 holds
//!    live generations only: older ones are retired the moment this replica
//!    learns of a newer one ([`local`]).
//! 7. **Cheap hits.** Entries are the serialized body plus its ETag
//!    ([`entry::Entry`]); a hit copies no JSON and serializes nothing.
//! 8. **Hygiene.** TTL per namespace with ±10 % jitter, short negative caching of
//!    404s, per-namespace `kai_cache_{hits,misses,errors}_total`.
//!
//! With `REDIS_URL` unset the same API runs on L1 alone (one replica); with
//! `CACHE_ENABLED=false` every read goes to the loader (`X-Cache: BYPASS`).

mod body;
mod clock;
pub mod entry;
mod generations;
mod invalidation;
pub mod keys;
mod local;
mod positions;
mod redis;
pub mod seal;
mod singleflight;
mod tally;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use body::{Body, Json};
pub use entry::Entry;
pub use invalidation::{OnLoaded, OnRevoked};
pub use keys::Scope;
pub use write::{Hot, Refresh, Written};

/// The cache's Lua scripts (their sources), for [`crate::lua_scripts`].
pub(crate) const LUA_SCRIPTS: [&str; 4] = [
    redis::GENERATION_AND_GET,
    redis::BUMP,
    positions::RECORD,
    positions::READ,
];

/// Why a cached read has no answer. The HTTP layer answers each kind in one
/// place (a 404 for [`LoadError::NotFound`], the loader's own error otherwise).
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader found nothing (cached briefly, like an answer).
    NotFound,
    /// The loader failed. Every request that waited for the same load gets the
    /// same error, hence shared; errors are never cached.
    Failed(Arc<E>),
    /// The loader's value could not be serialized.
    Encode(Arc<serde_json::Error>),
    /// A load of the same key by a loader with another error type failed (two
    /// call sites sharing a key and a policy; not done by any service).
    Other,
}

/// A write's row was not there ([`Cache::commit_found`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not found")]
pub struct NotFound;

/// A load's failure as the single-flight shares it between waiters: the
/// loader's error type is known again where it is handed back ([`LoadFailure::typed`]).
#[derive(Clone)]
enum LoadFailure {
    Loader(Arc<dyn std::any::Any + Send + Sync>),
    Encode(Arc<serde_json::Error>),
}

impl LoadFailure {
    fn typed<E: Send + Sync + 'static>(self) -> LoadError<E> {
        match self {
            LoadFailure::Loader(any) => match any.downcast::<E>() {
                Ok(e) => LoadError::Failed(e),
                Err(_) => LoadError::Other,
            },
            LoadFailure::Encode(e) => LoadError::Encode(e),
        }
    }
}

use crate::metrics::Metrics;
use crate::redis::{Failure, Redis};
use crate::settings::{CacheSettings, RedisSettings};
use clock::now_micros;
use generations::Generations;
use local::L1;
use redis::{L2, Refill};
use singleflight::SingleFlight;

/// XFetch β: 1 is the paper's optimum for an exponential recompute-time model.
const XFETCH_BETA: f64 = 1.0;
/// How long after a purge its second sweep runs (longer than a cacheable read takes).
const PURGE_SETTLE: Duration = Duration::from_secs(2);
/// How long a remembered 404 lives.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// How one kind of data is cached: its metric namespace and TTL, and whether
/// this replica's memory (L1) keeps it too.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub namespace: &'static str,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub in_memory: bool,
}

impl Policy {
    pub const fn new(namespace: &'static str, ttl: Duration) -> Self {
        Self {
            namespace,
            ttl,
            negative_ttl: NEGATIVE_TTL,
            in_memory: true,
        }
    }

    /// Kept in Redis only (in memory only when there is no Redis): for entries
    /// written once and seldom read again, which would otherwise fill L1 with
    /// what no one asks for and push out the hot set.
    pub const fn redis_only(self) -> Self {
        Self {
            in_memory: false,
            ..self
        }
    }
}

/// What `X-Cache` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// A cacheable read's answer: the stored bytes and where they came from.
#[derive(Debug, Clone)]
pub struct Cached {
    pub entry: Arc<Entry>,
    pub status: CacheStatus,
}

/// Totals for `/health/detailed`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CacheTotals {
    pub hits: u64,
    /// Of `hits`, answered from this replica's memory.
    pub l1_hits: u64,
    /// Of `hits`, answered from Redis.
    pub l2_hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub hit_rate: f64,
    /// Entries in this replica's memory now, and their size in bytes (bounded by
    /// `CACHE_L1_MAX_MB`).
    pub l1_entries: u64,
    pub l1_bytes: u64,
}

type LoadResult = Result<Arc<Entry>, LoadFailure>;

/// Refreshed answers, loaded while the scope was at `generation`.
struct Refreshed {
    generation: u64,
    entries: Vec<(Policy, String, Arc<Entry>)>,
}
/// See [`Cache::set_store_hook`].
#[cfg(any(test, feature = "testing"))]
pub type StoreHook =
    Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// The two-tier cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    prefix: String,
    l1: L1,
    l2: Option<Arc<L2>>,
    generations: Arc<Generations>,
    flights: SingleFlight<LoadResult>,
    /// L2 reads in progress, by key (one `GET` for concurrent readers).
    l2_reads: SingleFlight<Option<Bytes>>,
    metrics: Metrics,
    /// Hits, and those L1 served (sharded: every hit adds to them).
    hits: tally::HitTally,
    misses: AtomicU64,
    errors: AtomicU64,
    early_refreshes: AtomicU64,
    /// The Redis the cache runs on (for [`positions`]).
    redis: Option<Arc<Redis>>,
    /// Write positions for read replicas ([`Cache::track_positions`]).
    positions: std::sync::OnceLock<Arc<positions::Positions>>,
    #[cfg(any(test, feature = "testing"))]
    store_hook: std::sync::RwLock<Option<StoreHook>>,
}

/// What [`Cache::get_or_load`] finds before any await.
enum Probe {
    /// An L1 entry of the current generation, not due for refresh.
    Hit(Arc<Entry>),
    /// The generation is known here; L1 has nothing live for the key, or an
    /// entry due for early refresh (kept as the fallback).
    Known {
        generation: u64,
        key: String,
        due: Option<Arc<Entry>>,
    },
    /// Cache off, Redis unavailable, or the generation must come from Redis.
    Unknown,
}

impl Cache {
    /// Builds the cache, on the Redis the settings name (if any); see
    /// [`Cache::with_redis`].
    pub fn new(
        service: &str,
        settings: &CacheSettings,
        redis_settings: &RedisSettings,
        metrics: &Metrics,
        on_revoked: OnRevoked,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let redis = Redis::from_settings(redis_settings, metrics)?;
        Self::with_redis(
            service,
            settings,
            redis_settings,
            redis,
            metrics,
            (on_revoked, None),
            stop,
        )
    }

    /// Builds `service`'s cache on `redis` (none: L1 only); with Redis, starts the
    /// invalidation subscriber (stopped by `stop`) on the service's own channel,
    /// which also hears revocations (`on_revoked`, and the revoked set each time
    /// it is read: `on_loaded`), and seals what it stores under the service's key
    /// ([`CacheSettings::keys`]). Must run inside a Tokio runtime.
    pub fn with_redis(
        service: &str,
        settings: &CacheSettings,
        redis_settings: &RedisSettings,
        redis: Option<Arc<Redis>>,
        metrics: &Metrics,
        (on_revoked, on_loaded): (OnRevoked, Option<OnLoaded>),
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let prefix = redis_settings.prefix.clone();
        let l1 = L1::new(settings.l1_max_mb.saturating_mul(1024 * 1024));
        let redis_for_positions = redis.clone();
        let (l2, generations) = match redis {
            None => (None, Arc::new(Generations::local_only(l1.clone()))),
            Some(redis) => {
                let nodes = crate::redis::link::subscriber_nodes(redis_settings)
                    .map_err(anyhow::Error::msg)?;
                let (key, older) = settings.keys(service)?;
                let generations = Arc::new(Generations::shared(l1.clone()));
                let l2 = L2::new(
                    redis.clone(),
                    generations.clone(),
                    service,
                    seal::Sealer::new(&key, &older),
                );
                tokio::spawn(invalidation::subscribe(
                    nodes,
                    redis,
                    l2.channel(),
                    redis_settings.timeout,
                    invalidation::Listeners {
                        generations: generations.clone(),
                        on_revoked,
                        on_loaded,
                        subscriptions: metrics.cache_subscriptions.clone(),
                    },
                    stop,
                ));
                (Some(l2), generations)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                enabled: settings.enabled,
                prefix,
                l1,
                l2,
                generations,
                flights: SingleFlight::default(),
                l2_reads: SingleFlight::default(),
                metrics: metrics.clone(),
                hits: tally::HitTally::default(),
                misses: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                early_refreshes: AtomicU64::new(0),
                redis: redis_for_positions,
                positions: std::sync::OnceLock::new(),
                #[cfg(any(test, feature = "testing"))]
                store_hook: std::sync::RwLock::new(None),
            }),
        })
    }

    /// The cached answer for `logical` in `scope`, or the loader's (then stored).
    ///
    /// `load` returns `Ok(None)` for "not found", which is cached briefly and
    /// answered as a 404. Loader errors (any error a handler could return, e.g.
    /// a query's `DbError`) reach every waiter and are not cached.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        scope: &Scope,
        policy: &Policy,
        logical: &str,
        load: F,
    ) -> Result<Cached, LoadError<E>>
    where
        T: Body,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let probe = match self.probe(scope, logical) {
            Probe::Hit(entry) => {
                return self.hit(policy, entry, true);
            }
            other => other,
        };
        // Everything else (Redis, the single-flight, the loader, the store) in
        // a future of its own on the heap: the hit path's future — and every
        // handler future that awaits it, which actix moves into a box per
        // request — stays small instead of carrying the largest state of the
        // loader's query.
        Box::pin(self.get_or_load_slow(scope, policy, logical, probe, load)).await
    }

    /// The part of a lookup that needs no future, lock or round trip: the
    /// generation if this replica knows it, and L1.
    fn probe(&self, scope: &Scope, logical: &str) -> Probe {
        let inner = &self.inner;
        if !inner.enabled {
            return Probe::Unknown;
        }
        let generation = match &inner.l2 {
            None => inner.generations.local(scope),
            Some(l2) if !l2.available() => return Probe::Unknown,
            Some(_) => match inner.generations.get(scope) {
                Some(generation) => generation,
                None => return Probe::Unknown,
            },
        };
        let key = keys::entry_key(&inner.prefix, scope, generation, logical);
        match inner.l1.get(&key) {
            Some(entry) if !refresh_early(&entry) => Probe::Hit(entry),
            due => Probe::Known {
                generation,
                key,
                due,
            },
        }
    }

    async fn get_or_load_slow<T, E, F, Fut>(
        &self,
        scope: &Scope,
        policy: &Policy,
        logical: &str,
        probe: Probe,
        load: F,
    ) -> Result<Cached, LoadError<E>>
    where
        T: Body,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let inner = &self.inner;
        if !inner.enabled {
            // Writes still record their positions: a replica may answer.
            let at = self.read_position(scope).await;
            let entry = crate::db::read_at(at, load_entry(policy, load))
                .await
                .map_err(LoadFailure::typed)?;
            return answer(Arc::new(entry), CacheStatus::Bypass);
        }

        // 1. The generation, read before any database work (guarantee 2), and
        //    L1 — both done by the probe when this replica knows the
        //    generation. Otherwise asking Redis for it also fetches the entry,
        //    in the same round trip.
        let mut from_l2: Option<Option<Bytes>> = None;
        let (generation, key, mut due) = match probe {
            Probe::Known {
                generation,
                key,
                due,
            } => (generation, key, due),
            // Not reached (the caller answers a hit), but a hit is a hit.
            Probe::Hit(entry) => {
                return self.hit(policy, entry, true);
            }
            // The probe found no generation on this replica (without Redis it
            // always does): Redis has it, and the entry, in one round trip — or
            // Redis is out of reach and PostgreSQL answers.
            Probe::Unknown => {
                let Some(l2) = inner.l2.as_ref().filter(|l2| l2.available()) else {
                    return self.uncached(policy, load).await;
                };
                let epoch = inner.generations.epoch();
                let generation = match l2.generation_and_get(scope, Some(logical)).await {
                    Ok((generation, raw)) => {
                        inner.generations.remember(scope, generation, epoch);
                        from_l2 = Some(raw);
                        generation
                    }
                    Err(e) => {
                        self.count_error(policy, &e);
                        return self.uncached(policy, load).await;
                    }
                };
                let key = keys::entry_key(&inner.prefix, scope, generation, logical);
                // 2. L1 (an entry due for early refresh is kept as a fallback).
                let due = match inner.l1.get(&key) {
                    Some(entry) if !refresh_early(&entry) => {
                        return self.hit(policy, entry, true);
                    }
                    due => due,
                };
                (generation, key, due)
            }
        };
        // 3. L2 — unless a load of this key is already running (after a write,
        //    every read of the new generation until the first load stores it):
        //    then its answer, without asking Redis what the leader just found
        //    missing.
        if due.is_none()
            && from_l2.is_none()
            && let Some(result) = inner.flights.follow(&key).await
        {
            return match result {
                Ok(entry) => {
                    self.count_miss(policy);
                    answer(entry, CacheStatus::Miss)
                }
                Err(e) => Err(e.typed()),
            };
        }
        if due.is_none()
            && let Some(l2) = &inner.l2
        {
            let raw = match from_l2 {
                Some(raw) => raw,
                // Concurrent reads of one key ask Redis once: after a write the
                // reads of the new generation arrive together, before any of
                // them has found the entry missing and started the load.
                None => {
                    let get = async {
                        l2.get(&key).await.unwrap_or_else(|e| {
                            self.count_error(policy, &e);
                            None
                        })
                    };
                    inner.l2_reads.run(&key, get).await.0
                }
            };
            if let Some(entry) = raw
                .and_then(|raw| self.open(l2, policy, &key, raw))
                .filter(|e| e.expires_at_ms > now_millis())
            {
                let entry = Arc::new(entry);
                if self.in_memory(policy) {
                    inner
                        .l1
                        .insert(scope, generation, key.clone(), entry.clone());
                }
                if !refresh_early(&entry) {
                    return self.hit(policy, entry, false);
                }
                due = Some(entry);
            }
        }

        // 4. Miss (or this request drew an early refresh): one loader per key. While
        //    a refresh is already running, the live entry is served without waiting.
        if let Some(entry) = &due
            && inner.flights.is_running(&key)
        {
            return self.hit(policy, entry.clone(), false);
        }
        let refreshing = due.is_some();
        let (result, led) = inner
            .flights
            .run(
                &key,
                self.load_and_store(scope, generation, key.clone(), policy, refreshing, load),
            )
            .await;
        if led && refreshing {
            inner.early_refreshes.fetch_add(1, Ordering::Relaxed);
        }
        match (result, due) {
            (Ok(entry), _) => {
                self.count_miss(policy);
                answer(entry, CacheStatus::Miss)
            }
            // The early refresh failed but the entry is still alive: serve it.
            (Err(_), Some(entry)) => self.hit(policy, entry, false),
            (Err(e), None) => Err(e.typed()),
        }
    }

    /// The entry of `logical` in `scope` if it is hot — live in this replica's
    /// memory under the scope's current generation, with Redis in use — taken
    /// before a write begins, for [`Refresh::derived`].
    pub fn hot(&self, scope: &Scope, logical: &str) -> Option<Hot> {
        let inner = &self.inner;
        if !inner.enabled || !inner.l2.as_ref().is_some_and(|l2| l2.available()) {
            return None;
        }
        let generation = inner.generations.get(scope)?;
        let entry = inner
            .l1
            .get(&keys::entry_key(&inner.prefix, scope, generation, logical))?;
        (!entry.is_negative() && entry.expires_at_ms > now_millis()).then(|| Hot {
            scope: scope.clone(),
            logical: logical.to_owned(),
            generation,
            entry,
        })
    }

    /// A committed write's result, once every scope it touched is invalidated
    /// ([`Cache::invalidate`]): the way a service's write path answers.
    pub async fn commit<T>(&self, written: Written<T>) -> T {
        let (value, touched) = written.into_parts();
        self.record_positions(&touched).await;
        // Each scope at once, each its own round trip: in a cluster their
        // generation keys live in different slots.
        futures_util::future::join_all(touched.iter().map(|s| self.invalidate(s))).await;
        value
    }

    /// [`Cache::commit`] of several writes (a combined batch's): each scope any of
    /// them touched is invalidated once, then every value is returned, in order.
    ///
    /// `refresh` names reads to redo for the touched scopes. One that is hot (a
    /// live entry of the scope's current generation is in this replica's memory)
    /// is loaded after the writes committed, and stored under the scope's next
    /// generation by the same Redis script that moves the scope there — only if
    /// no other write moved the scope since this replica's generation was read
    /// (then what was loaded may miss that write, and is dropped). Readers of a
    /// hot key then find its new answer at once instead of all waiting for one
    /// load (guarantee 4's single flight) after every write; the write waits for
    /// it instead. Refreshes of scopes none of the writes touched, of reads that
    /// are not hot, or without Redis, are dropped unrun; a refresh that fails
    /// leaves a plain invalidation.
    pub async fn commit_all<T>(
        &self,
        written: Vec<Written<T>>,
        mut refresh: Vec<Refresh<'_>>,
    ) -> Vec<T> {
        let mut scopes: Vec<Scope> = Vec::new();
        let values = written
            .into_iter()
            .map(|w| {
                let (value, touched) = w.into_parts();
                for scope in touched {
                    if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
                value
            })
            .collect();
        self.record_positions(&scopes).await;
        let work = scopes.iter().map(|scope| {
            let (mine, rest) = refresh.drain(..).partition(|r| r.scope == *scope);
            refresh = rest;
            self.invalidate_refreshing(scope, mine)
        });
        futures_util::future::join_all(work.collect::<Vec<_>>()).await;
        values
    }

    /// [`Cache::commit`] of a write whose row may not exist: its value, or
    /// [`NotFound`] (a 404).
    pub async fn commit_found<T>(&self, written: Written<Option<T>>) -> Result<T, NotFound> {
        self.commit(written).await.ok_or(NotFound)
    }

    /// Makes every entry of `scope` unreachable, on every replica. Call it after
    /// the write commits and before answering (services do, through
    /// [`Cache::commit`]).
    pub async fn invalidate(&self, scope: &Scope) {
        self.invalidate_refreshing(scope, Vec::new()).await;
    }

    /// [`Cache::invalidate`], storing the hot ones of `refresh` under the new
    /// generation as it is made (see [`Cache::commit_all`]).
    async fn invalidate_refreshing(&self, scope: &Scope, refresh: Vec<Refresh<'_>>) {
        let inner = &self.inner;
        if !inner.enabled {
            return;
        }
        let Some(l2) = &inner.l2 else {
            inner.generations.next_local(scope);
            return;
        };
        let refill = self.refill(l2, scope, refresh).await;
        let bumped = l2
            .bump(
                scope,
                refill.as_ref().map(|r| Refill {
                    generation: r.generation,
                    entries: r
                        .entries
                        .iter()
                        .map(|(_, logical, entry)| (logical.as_str(), entry.as_ref()))
                        .collect(),
                }),
            )
            .await;
        match bumped {
            Ok((generation, stored)) => {
                // This replica's memory first, under the generation that is not
                // yet its own: reachable the moment `raise` makes it so.
                if let Some(refill) = refill {
                    let outcome = if stored { "stored" } else { "dropped" };
                    for (policy, logical, entry) in refill.entries {
                        self.count_refill(&policy, outcome);
                        if stored && self.in_memory(&policy) {
                            let key = keys::entry_key(&inner.prefix, scope, generation, &logical);
                            inner.l1.insert(scope, generation, key, entry);
                        }
                    }
                }
                inner.generations.raise(scope, generation);
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalidation deferred until Redis answers");
                inner.errors.fetch_add(1, Ordering::Relaxed);
                inner.generations.forget(scope);
            }
        }
    }

    /// Loads the hot ones of `refresh` (all at once), with the generation they
    /// were hot under — read before loading, so a write committed after the
    /// load began has either moved the scope past it by the time the bump runs
    /// (and the bump stores nothing) or not announced itself yet (and its own
    /// bump, later, makes what is stored dead).
    async fn refill(&self, l2: &L2, scope: &Scope, refresh: Vec<Refresh<'_>>) -> Option<Refreshed> {
        let inner = &self.inner;
        if refresh.is_empty() || !l2.available() {
            return None;
        }
        let generation = inner.generations.get(scope)?;
        // A derived refresh was hot before the write, under its generation: still
        // the scope's, or another write came between and it is dropped.
        let hot: Vec<Refresh<'_>> = refresh
            .into_iter()
            .filter(|r| match r.derived_from {
                Some(from) => from == generation,
                None => {
                    let key = keys::entry_key(&inner.prefix, scope, generation, &r.logical);
                    inner.l1.get(&key).is_some()
                }
            })
            .collect();
        if hot.is_empty() {
            return None;
        }
        let loaded = futures_util::future::join_all(hot.into_iter().map(|r| async move {
            match r.load.await {
                Ok(entry) => Some((r.policy, r.logical, Arc::new(entry))),
                Err(_) => {
                    self.count_refill(&r.policy, "failed");
                    None
                }
            }
        }))
        .await;
        let entries: Vec<_> = loaded.into_iter().flatten().collect();
        #[cfg(any(test, feature = "testing"))]
        if let Some((_, logical, _)) = entries.first() {
            self.run_store_hook(&keys::entry_key(&inner.prefix, scope, generation, logical))
                .await;
        }
        (!entries.is_empty()).then_some(Refreshed {
            generation,
            entries,
        })
    }

    /// Erases a scope: every replica stops using its entries (a generation bump,
    /// announced as for [`Cache::invalidate`]), then every key of the scope is
    /// deleted from Redis, counter included (`SCAN` + `UNLINK`: for erasing a
    /// person's data, never on a request path). Fails if Redis could not be
    /// reached, so the caller can retry; without Redis there is nothing to delete.
    ///
    /// A read that was already past its generation lookup when the purge ran may
    /// still store its (post-deletion, but keyed) answer afterwards; a second
    /// sweep [`PURGE_SETTLE`] later removes it.
    pub async fn purge_scope(&self, scope: &Scope) -> anyhow::Result<u64> {
        let removed = self.purge_once(scope).await?;
        let (this, scope) = (self.clone(), scope.clone());
        tokio::spawn(async move {
            tokio::time::sleep(PURGE_SETTLE).await;
            if let Err(e) = this.purge_once(&scope).await {
                tracing::error!(error = %e, "second sweep of a purged cache scope failed");
            }
        });
        Ok(removed)
    }

    async fn purge_once(&self, scope: &Scope) -> anyhow::Result<u64> {
        // The erasure's position first, and again once the sweep removed it
        // with the scope's other keys: no replica that has not replayed the
        // erasure answers a read of the scope.
        self.record_positions(std::slice::from_ref(scope)).await;
        self.invalidate(scope).await;
        let removed = match &self.inner.l2 {
            None => 0,
            Some(l2) => l2.unlink_scope(scope).await?,
        };
        self.record_positions(std::slice::from_ref(scope)).await;
        Ok(removed)
    }

    /// Redis unreachable (circuit open or a failed read): straight to PostgreSQL.
    async fn uncached<T, E, F, Fut>(&self, policy: &Policy, load: F) -> Result<Cached, LoadError<E>>
    where
        T: Body,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let entry = load_entry(policy, load).await.map_err(LoadFailure::typed)?;
        self.count_miss(policy);
        answer(Arc::new(entry), CacheStatus::Miss)
    }

    async fn load_and_store<T, E, F, Fut>(
        &self,
        scope: &Scope,
        generation: u64,
        key: String,
        policy: &Policy,
        refreshing: bool,
        load: F,
    ) -> LoadResult
    where
        T: Body,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        // A request that missed just before the previous leader stored and left may
        // lead a new flight: it finds that leader's entry in L1 and loads nothing.
        if !refreshing
            && let Some(entry) = self.inner.l1.get(&key)
            && entry.expires_at_ms > now_millis()
        {
            return Ok(entry);
        }
        // Read after the generation: a replica may answer only if it has
        // replayed every write that generation includes.
        let at = self.read_position(scope).await;
        let entry = crate::db::read_at(at, load_entry(policy, load))
            .await?
            .with_gzip();
        #[cfg(any(test, feature = "testing"))]
        self.run_store_hook(&key).await;
        let entry = Arc::new(entry);
        if let Some(l2) = &self.inner.l2 {
            let ttl = Duration::from_millis(entry.expires_at_ms.saturating_sub(now_millis()));
            if let Err(e) = l2.set(&key, &l2.seal(&key, &entry), ttl).await {
                self.count_error(policy, &e);
            }
        }
        // A write that landed while this loaded made `generation` dead: keep the
        // answer for the waiters, not in L1.
        if self.in_memory(policy)
            && self
                .inner
                .generations
                .get(scope)
                .is_none_or(|known| known <= generation)
        {
            self.inner.l1.insert(scope, generation, key, entry.clone());
        }
        Ok(entry)
    }

    /// Whether `policy`'s entries go to L1: always without Redis (L1 is then the
    /// only cache), else as the policy says.
    fn in_memory(&self, policy: &Policy) -> bool {
        policy.in_memory || self.inner.l2.is_none()
    }

    /// A hit, answered; `l1` when this replica's memory held it.
    fn hit<E>(&self, policy: &Policy, entry: Arc<Entry>, l1: bool) -> Result<Cached, LoadError<E>> {
        self.inner.hits.hit(l1);
        self.inner.metrics.count_cache(true, policy.namespace);
        answer(entry, CacheStatus::Hit)
    }

    fn count_miss(&self, policy: &Policy) {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.count_cache(false, policy.namespace);
    }

    fn count_refill(&self, policy: &Policy, outcome: &str) {
        self.inner
            .metrics
            .cache_refills
            .with_label_values(&[policy.namespace, outcome])
            .inc();
    }

    /// The entry Redis holds under `key`, opened ([`seal`]) — or, if it does not
    /// open under this service's keys for that key name, nothing (a miss),
    /// counted in `kai_cache_rejected_total`.
    fn open(&self, l2: &L2, policy: &Policy, key: &str, raw: Bytes) -> Option<Entry> {
        match l2.open(key, raw) {
            Ok(entry) => Some(entry),
            Err(rejected) => {
                // DEBUG: an entry sealed under a rotated-out key is expected
                // after a rotation; the counter is what an alert watches.
                tracing::debug!(
                    namespace = policy.namespace,
                    reason = rejected.reason(),
                    "cache entry in Redis refused; treated as a miss"
                );
                self.inner
                    .metrics
                    .cache_rejected
                    .with_label_values(&[policy.namespace, rejected.reason()])
                    .inc();
                None
            }
        }
    }

    fn count_error(&self, policy: &Policy, e: &Failure) {
        if !matches!(e, Failure::Open) {
            tracing::debug!(error = %e, namespace = policy.namespace, "cache error, falling back to PostgreSQL");
        }
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        self.inner
            .metrics
            .cache_errors
            .with_label_values(&[policy.namespace])
            .inc();
    }

    /// Records write positions for `replicas` (SPEC §7 "Read replicas", see
    /// [`positions`]): from now on every write records where the primary's WAL
    /// was after it committed, and cached reads may run on a replica that
    /// replayed past it. Without Redis positions are unknown: reads stay on the
    /// primary.
    pub fn track_positions(&self, replicas: Arc<crate::db::replicas::Replicas>) {
        if let Some(redis) = &self.inner.redis {
            let _ = self
                .inner
                .positions
                .set(Arc::new(positions::Positions::new(redis.clone(), replicas)));
        }
    }

    /// The WAL position a read of `scope` must see now (`None`: read on the
    /// primary). For reads that are not cached (search, export): run them in
    /// [`crate::db::read_at`] with it.
    pub async fn read_position(&self, scope: &Scope) -> Option<u64> {
        self.inner.positions.get()?.read(scope).await
    }

    /// After writes committed, before their scopes' generations move: each
    /// scope's position is raised to the primary's position now.
    async fn record_positions(&self, scopes: &[Scope]) {
        let Some(positions) = self.inner.positions.get() else {
            return;
        };
        if scopes.is_empty() {
            return;
        }
        let at = positions.after_commit().await;
        let recorded = futures_util::future::join_all(scopes.iter().map(|s| async {
            match at {
                Some(at) => positions.record(s, at).await,
                None => positions.record_unknown(s).await,
            }
        }))
        .await;
        if recorded.contains(&false) && positions.claim_retry() {
            // Recorded later, then each such scope bumped again: a fill a
            // replica answered meanwhile lands under a dead generation.
            let (this, positions) = (self.clone(), positions.clone());
            tokio::spawn(async move {
                for scope in positions.retry().await {
                    this.invalidate(&scope).await;
                }
            });
        }
    }

    pub fn totals(&self) -> CacheTotals {
        let (hits, l1_hits) = self.inner.hits.totals();
        let misses = self.inner.misses.load(Ordering::Relaxed);
        let errors = self.inner.errors.load(Ordering::Relaxed);
        let lookups = hits + misses;
        let (l1_entries, l1_bytes) = self.inner.l1.occupancy();
        CacheTotals {
            hits,
            l1_hits,
            l2_hits: hits - l1_hits,
            misses,
            errors,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                crate::figures::round_to(hits as f64 / lookups as f64, 4)
            },
            l1_entries,
            l1_bytes,
        }
    }
}

/// Test hooks and diagnostics: compiled for tests (the `testing` feature) only.
#[cfg(any(test, feature = "testing"))]
impl Cache {
    /// Whether Redis is configured and currently used (circuit closed).
    pub fn redis_available(&self) -> Option<bool> {
        self.inner.l2.as_ref().map(|l2| l2.available())
    }

    /// Whether remembered generations are trusted (pub/sub subscribed, or no Redis).
    pub fn l1_trusted(&self) -> bool {
        self.inner.generations.is_trusted()
    }

    /// Loads that refreshed a still-live entry early (XFetch) rather than
    /// replacing an expired one.
    pub fn early_refreshes(&self) -> u64 {
        self.inner.early_refreshes.load(Ordering::Relaxed)
    }

    /// How many times the invalidation subscription was (re)established.
    pub fn subscriptions(&self) -> u64 {
        self.inner.generations.subscriptions()
    }

    /// Test seam: runs between a loader's database read and its cache store, so a
    /// test can force the reader/writer interleaving of guarantee 2.
    pub fn set_store_hook(&self, hook: Option<StoreHook>) {
        *self.inner.store_hook.write().expect("hook lock") = hook;
    }

    /// L1 entries and scopes held now (tests and the soak check that L1 holds
    /// live generations only).
    pub fn l1_sizes(&self) -> (u64, usize) {
        self.inner.l1.sizes()
    }

    /// The keys L1 holds now.
    pub fn l1_keys(&self) -> Vec<String> {
        self.inner.l1.keys()
    }

    /// Drops every L1 entry (the benchmark uses it to measure an L2 hit).
    pub fn clear_l1(&self) {
        self.inner.l1.clear();
    }

    /// The Redis this cache runs on (none: L1 only).
    pub fn redis(&self) -> Option<Arc<Redis>> {
        self.inner.l2.as_ref().map(|l2| l2.redis().clone())
    }

    async fn run_store_hook(&self, key: &str) {
        let hook = self.inner.store_hook.read().expect("hook lock").clone();
        if let Some(hook) = hook {
            hook(key.to_owned()).await;
        }
    }
}

/// Runs the loader and turns its answer into a stored entry.
async fn load_entry<T, E, F, Fut>(policy: &Policy, load: F) -> Result<Entry, LoadFailure>
where
    T: Body,
    E: Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let started = Instant::now();
    let loaded = load().await.map_err(|e| LoadFailure::Loader(Arc::new(e)))?;
    let delta_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
    Ok(match loaded {
        Some(value) => {
            let body = value
                .into_json()
                .map_err(|e| LoadFailure::Encode(Arc::new(e)))?;
            Entry::found(body, expiry(policy.ttl), delta_ms)
        }
        None => Entry::not_found(expiry(policy.negative_ttl), delta_ms),
    })
}

fn answer<E>(entry: Arc<Entry>, status: CacheStatus) -> Result<Cached, LoadError<E>> {
    if entry.is_negative() {
        return Err(LoadError::NotFound);
    }
    Ok(Cached { entry, status })
}

/// Expiry with ±10 % jitter, so keys written together do not expire together.
fn expiry(ttl: Duration) -> u64 {
    now_millis() + jittered(ttl).as_millis() as u64
}

fn jittered(ttl: Duration) -> Duration {
    ttl.mul_f64(rand::random_range(0.9..=1.1))
}

/// XFetch: refresh early with a probability that rises as expiry nears and with
/// how long the value took to load: `now − Δ·β·ln(rand()) ≥ expiry`.
///
/// Far from expiry no draw can refresh: `−ln(rand)` is at most [`XFETCH_MAX_LN`]
/// (`rand` ≥ the smallest positive `f64`), so a hit that far away skips the
/// random number and the logarithm — the answer is the same.
fn refresh_early(entry: &Entry) -> bool {
    let now_ms = now_millis();
    if !may_refresh_early(now_ms, entry.delta_ms, entry.expires_at_ms) {
        return false;
    }
    xfetch(
        now_ms,
        entry.delta_ms,
        entry.expires_at_ms,
        rand::random::<f64>(),
    )
}

/// `−ln(f64::MIN_POSITIVE)`, rounded up: the largest step [`xfetch`] can take.
const XFETCH_MAX_LN: f64 = 709.0;

/// Whether any draw of [`xfetch`] could refresh at `now_ms`.
fn may_refresh_early(now_ms: u64, delta_ms: u32, expires_at_ms: u64) -> bool {
    now_ms as f64 + f64::from(delta_ms) * XFETCH_BETA * XFETCH_MAX_LN >= expires_at_ms as f64
}

fn xfetch(now_ms: u64, delta_ms: u32, expires_at_ms: u64, rand: f64) -> bool {
    let rand = rand.max(f64::MIN_POSITIVE);
    now_ms as f64 - f64::from(delta_ms) * XFETCH_BETA * rand.ln() >= expires_at_ms as f64
}

fn now_millis() -> u64 {
    now_micros() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let ttl = Duration::from_secs(300);
        for _ in 0..1000 {
            let j = jittered(ttl);
            assert!(
                j >= Duration::from_secs(270) && j <= Duration::from_secs(330),
                "{j:?}"
            );
        }
    }

    #[test]
    fn no_draw_refreshes_where_the_early_out_says_none_can() {
        // The smallest draw `xfetch` uses, and others: the smallest take the largest step.
        let draws = [f64::MIN_POSITIVE, 1e-300, 1e-200, 1e-9, 0.5, 1.0];
        for (delta, expires) in [(10u32, 1_000_000u64), (100, 1_000_000), (4_000, 90_000_000)] {
            let reach = (f64::from(delta) * XFETCH_BETA * XFETCH_MAX_LN) as u64;
            for now in (expires - reach - 3..=expires + 1).step_by(1 + (reach as usize / 500)) {
                for r in draws {
                    if xfetch(now, delta, expires, r) {
                        assert!(
                            may_refresh_early(now, delta, expires),
                            "{now} {delta} {expires} {r}"
                        );
                    }
                }
            }
            assert!(!may_refresh_early(expires - reach - 2, delta, expires));
            assert!(may_refresh_early(expires, delta, expires));
        }
        assert!(-f64::MIN_POSITIVE.ln() <= XFETCH_MAX_LN);
    }

    #[test]
    fn xfetch_refreshes_only_near_expiry() {
        // Far from expiry: never, whatever the draw.
        assert!(!xfetch(1_000, 10, 1_000_000, 1e-9));
        // At expiry: always.
        assert!(xfetch(1_000_000, 10, 1_000_000, 0.5));
        // 20 ms before expiry with Δ = 100 ms: refreshes when −ln(r)·100 ≥ 20, i.e. r ≤ e^−0.2 ≈ 0.82.
        assert!(xfetch(999_980, 100, 1_000_000, 0.5));
        assert!(!xfetch(999_980, 100, 1_000_000, 0.9));
    }

    #[test]
    fn early_refresh_probability_matches_the_formula() {
        // 50 ms before expiry, Δ = 50 ms: P = P(−ln r ≥ 1) = e^−1 ≈ 0.368.
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| xfetch(999_950, 50, 1_000_000, rand::random()))
            .count();
        let p = hits as f64 / n as f64;
        assert!((0.33..0.41).contains(&p), "p = {p}");
    }
}
