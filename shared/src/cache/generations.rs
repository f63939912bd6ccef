//! This replica's memory of scope generations.
//!
//! A generation is fetched from Redis once and remembered here, so an L1 hit costs
//! no network round trip. Remembering is only safe while this replica hears every
//! invalidation: the pub/sub subscriber marks the map *trusted* once subscribed and
//! untrusted (and empties it) the moment its connection is lost or the Redis
//! circuit opens; while untrusted, every read asks Redis for the generation.
//!
//! A read that fetched a generation from Redis may race with an invalidation
//! message for the same scope (fetch old → message drops nothing → remember old).
//! [`Generations::remember`] therefore only stores a value if no message arrived
//! since the read began (the `epoch` counter), and never lowers a generation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::keys::Scope;

/// Longest a remembered generation is trusted without hearing from Redis: a bound
/// on staleness should a pub/sub message ever be lost without the connection dropping.
const REMEMBER_FOR: Duration = Duration::from_secs(30);

pub struct Generations {
    map: moka::sync::Cache<Scope, u64>,
    trusted: AtomicBool,
    epoch: AtomicU64,
    subscriptions: AtomicU64,
}

impl Generations {
    /// With Redis: untrusted until subscribed, each generation remembered for at
    /// most 30 s.
    pub fn shared() -> Self {
        Self::build(
            false,
            moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(REMEMBER_FOR)
                .build(),
        )
    }

    /// Without Redis this replica is the only one: its map is the truth (an evicted
    /// scope is re-seeded from the clock, above every generation it had).
    pub fn local_only() -> Self {
        Self::build(
            true,
            moka::sync::Cache::builder().max_capacity(200_000).build(),
        )
    }

    fn build(trusted: bool, map: moka::sync::Cache<Scope, u64>) -> Self {
        Self {
            map,
            trusted: AtomicBool::new(trusted),
            epoch: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
        }
    }

    /// The remembered generation, if it may be used.
    pub fn get(&self, scope: &Scope) -> Option<u64> {
        if self.trusted.load(Ordering::Acquire) {
            self.map.get(scope)
        } else {
            None
        }
    }

    /// Marks the start of a read that will fetch a generation from Redis.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remembers a generation fetched at `epoch`, unless an invalidation came since.
    pub fn remember(&self, scope: &Scope, generation: u64, epoch: u64) {
        if self.trusted.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) == epoch {
            self.raise(scope, generation);
        }
    }

    /// Records a generation this replica itself just created (read-your-writes on
    /// the same replica, immediately).
    pub fn raise(&self, scope: &Scope, generation: u64) {
        self.map
            .entry(scope.clone())
            .and_upsert_with(|old| old.map_or(generation, |e| (*e.value()).max(generation)));
    }

    /// An invalidation message: forget the scope unless we already know a generation
    /// at least as new.
    pub fn on_message(&self, scope: &Scope, generation: u64) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if self.map.get(scope).is_none_or(|known| known < generation) {
            self.map.invalidate(scope);
        }
    }

    /// Forget one scope (a write whose new generation is unknown).
    pub fn forget(&self, scope: &Scope) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate(scope);
    }

    /// Trust (subscribed) or distrust (connection lost, circuit open) the map.
    /// Either way it is emptied: messages may have been missed.
    pub fn set_trusted(&self, trusted: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.trusted.store(trusted, Ordering::Release);
        self.map.invalidate_all();
        if trusted {
            self.subscriptions.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many times the subscription was (re)established.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Acquire)
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// A fresh generation for a replica without Redis: the clock in microseconds,
    /// above any generation handed out before.
    pub fn next_local(&self, scope: &Scope) -> u64 {
        let now = now_micros();
        let mut next = now;
        self.map.entry(scope.clone()).and_upsert_with(|old| {
            next = old.map_or(now, |e| (*e.value() + 1).max(now));
            next
        });
        next
    }

    /// The generation of a scope on a replica without Redis (seeded from the clock).
    pub fn local(&self, scope: &Scope) -> u64 {
        *self
            .map
            .entry(scope.clone())
            .or_insert_with(now_micros)
            .value()
    }
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn scope() -> Scope {
        Scope::user("journal", Uuid::nil())
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_remembered() {
        let g = Generations::local_only();
        let epoch = g.epoch();
        g.on_message(&scope(), 10);
        g.remember(&scope(), 9, epoch);
        assert_eq!(g.get(&scope()), None);
        let epoch = g.epoch();
        g.remember(&scope(), 10, epoch);
        assert_eq!(g.get(&scope()), Some(10));
    }

    #[test]
    fn generations_never_go_backwards() {
        let g = Generations::local_only();
        g.raise(&scope(), 20);
        g.raise(&scope(), 15);
        assert_eq!(g.get(&scope()), Some(20));
        g.on_message(&scope(), 19);
        assert_eq!(
            g.get(&scope()),
            Some(20),
            "an older announcement does not drop a newer generation"
        );
    }

    #[test]
    fn an_untrusted_map_answers_nothing() {
        let g = Generations::local_only();
        g.raise(&scope(), 3);
        g.set_trusted(false);
        assert_eq!(g.get(&scope()), None);
        g.raise(&scope(), 4);
        assert_eq!(g.get(&scope()), None);
    }

    #[test]
    fn local_generations_are_seeded_from_the_clock_and_increase() {
        let g = Generations::local_only();
        let before = now_micros();
        let first = g.local(&scope());
        assert!(first >= before);
        let next = g.next_local(&scope());
        assert!(next > first);
        assert_eq!(g.local(&scope()), next);
    }
}
