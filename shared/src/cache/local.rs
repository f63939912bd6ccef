//! L1: a small in-process cache (moka) of the hottest entries, bounded in bytes,
//! each entry living no longer than its L2 copy.
//!
//! Keys embed the generation, so a stale entry is never *reachable* once the
//! scope moved on; but unreachable is not gone. Every write moves a scope to a new
//! generation, and without more care the previous generation's entries would sit
//! in memory as garbage until their TTL or the size cap pushed them out (a soak
//! with 20 % writes grew each replica from 16 to ~100 MiB that way). So L1 keeps
//! a per-scope index of its keys by generation: when this replica learns of a
//! newer generation (its own write, an invalidation message, a generation read
//! from Redis) the older generations' entries are invalidated at once, and an
//! entry for a generation already known to be dead is never inserted. L1 then
//! holds live entries only, and its cap (`CACHE_L1_MAX_MB`) sizes the hot set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;

use super::clock::now_micros;
use super::entry::Entry;
use super::keys::Scope;

/// The longest an entry stays in L1, whatever its L2 TTL.
const L1_MAX_TTL: Duration = Duration::from_secs(300);

/// What L1 holds for a key: the entry and where it belongs in the index.
#[derive(Clone)]
struct Held {
    entry: Arc<Entry>,
    scope: Scope,
    generation: u64,
}

struct UntilEntryExpires;

impl Expiry<String, Held> for UntilEntryExpires {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Held,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now_ms = now_micros() / 1000;
        let left = Duration::from_millis(value.entry.expires_at_ms.saturating_sub(now_ms));
        Some(left.min(L1_MAX_TTL))
    }
}

/// A scope's keys in L1, by generation, and the newest generation known dead-below.
#[derive(Default)]
struct ScopeKeys {
    /// Entries of generations below this are dead.
    live_from: u64,
    by_generation: BTreeMap<u64, HashSet<String>>,
}

type Index = Arc<Mutex<HashMap<Scope, ScopeKeys>>>;

#[derive(Clone)]
pub struct L1 {
    cache: moka::sync::Cache<String, Held, crate::FastHash>,
    index: Index,
}

impl L1 {
    pub fn new(max_bytes: u64) -> Self {
        let index: Index = Arc::default();
        let on_removal = {
            let index = index.clone();
            move |key: Arc<String>, held: Held, cause: RemovalCause| {
                // A replaced key is still present under the same scope and generation.
                if cause == RemovalCause::Replaced {
                    return;
                }
                let mut index = index.lock().expect("l1 index lock");
                if let Some(keys) = index.get_mut(&held.scope) {
                    if let Some(set) = keys.by_generation.get_mut(&held.generation) {
                        set.remove(key.as_str());
                        if set.is_empty() {
                            keys.by_generation.remove(&held.generation);
                        }
                    }
                    if keys.by_generation.is_empty() {
                        index.remove(&held.scope);
                    }
                }
            }
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Held| v.entry.weight().saturating_add(k.len() as u32))
            .expire_after(UntilEntryExpires)
            .eviction_listener(on_removal)
            .build_with_hasher(crate::FastHash::default());
        Self { cache, index }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key).map(|held| held.entry)
    }

    /// Stores an entry of `scope` at `generation`, unless that generation is
    /// already known to be dead (a slow loader finishing after a write).
    pub fn insert(&self, scope: &Scope, generation: u64, key: String, entry: Arc<Entry>) {
        {
            let mut index = self.index.lock().expect("l1 index lock");
            let keys = index.entry(scope.clone()).or_default();
            if generation < keys.live_from {
                if keys.by_generation.is_empty() {
                    index.remove(scope);
                }
                return;
            }
            keys.by_generation
                .entry(generation)
                .or_default()
                .insert(key.clone());
        }
        let held = Held {
            entry,
            scope: scope.clone(),
            generation,
        };
        self.cache.insert(key.clone(), held);
        // A retirement that ran between the two steps above found the key in the
        // index but not yet in the cache: finish its work.
        let retired = {
            let index = self.index.lock().expect("l1 index lock");
            !index
                .get(scope)
                .and_then(|keys| keys.by_generation.get(&generation))
                .is_some_and(|set| set.contains(&key))
        };
        if retired {
            self.cache.invalidate(&key);
        }
    }

    /// The scope is at `generation` now: its older entries go.
    pub fn retire_below(&self, scope: &Scope, generation: u64) {
        let dead: Vec<String> = {
            let mut index = self.index.lock().expect("l1 index lock");
            let Some(keys) = index.get_mut(scope) else {
                return;
            };
            keys.live_from = keys.live_from.max(generation);
            let live = keys.by_generation.split_off(&generation);
            let dead = std::mem::replace(&mut keys.by_generation, live);
            if keys.by_generation.is_empty() {
                index.remove(scope);
            }
            dead.into_values().flatten().collect()
        };
        for key in dead {
            self.cache.invalidate(&key);
        }
    }

    /// The scope moved to a generation this replica does not know: all of it goes.
    pub fn drop_scope(&self, scope: &Scope) {
        let dead: Vec<String> = {
            let mut index = self.index.lock().expect("l1 index lock");
            match index.remove(scope) {
                Some(keys) => keys.by_generation.into_values().flatten().collect(),
                None => return,
            }
        };
        for key in dead {
            self.cache.invalidate(&key);
        }
    }

    /// Entries held and their weight in bytes (moka's running figures: evictions
    /// still pending are included), for `/health/detailed`.
    pub fn occupancy(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// The keys held now (diagnostics for tests and the soak).
    #[cfg(any(test, feature = "testing"))]
    pub fn keys(&self) -> Vec<String> {
        self.cache
            .iter()
            .map(|(k, _)| k.as_str().to_owned())
            .collect()
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Entries and scopes currently held (after pending evictions ran).
    #[cfg(any(test, feature = "testing"))]
    pub fn sizes(&self) -> (u64, usize) {
        self.cache.run_pending_tasks();
        let scopes = self.index.lock().expect("l1 index lock").len();
        (self.cache.entry_count(), scopes)
    }
}
