//! This replica's memory of scope generations, and the L1 that follows it.
//!
//! A generation is fetched from Redis once and remembered here, so an L1 hit costs
//! no network round trip. Remembering is only safe while this replica hears every
//! invalidation, and *knows* that it does: the subscriber sends a heartbeat `PING`
//! on the subscribed connection every 100 ms, and once its answer arrives (after
//! every message Redis queued before it, which are applied first) it
//! [confirms](Generations::confirm) the time the PING was sent: every write
//! acknowledged before then has been heard. The map is trusted only while the
//! last confirmation is younger than [`TRUST_WINDOW`]; a silent partition (Redis
//! paused, a network that drops packets without closing the connection) therefore
//! makes every replica stop trusting its L1 within 250 ms, including one that
//! sends no command itself. While untrusted, every read asks Redis for the
//! generation, which is always correct, only slower.
//!
//! Remembered generations do not expire: a heartbeat-confirmed subscription is a
//! stronger guarantee than a TTL, and expiring them would cost a Redis round trip
//! per scope every TTL. Losing the subscription empties the map.
//!
//! A read that fetched a generation from Redis may race with an invalidation
//! message for the same scope (fetch old → message drops nothing → remember old).
//! [`Generations::remember`] therefore only stores a value if no message arrived
//! since the read began (the `epoch` counter), and never lowers a generation.
//!
//! Whenever this replica learns that a scope moved to a newer generation, the
//! L1 entries of the older generations are retired at once ([`L1::retire_below`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::clock::{mono_micros, now_micros};
use super::keys::Scope;
use super::local::L1;

/// How long a confirmed heartbeat keeps remembered generations trusted (SPEC §6.5).
pub const TRUST_WINDOW: Duration = Duration::from_millis(250);

pub struct Generations {
    map: moka::sync::Cache<Scope, u64, crate::FastHash>,
    l1: L1,
    /// Without Redis this replica is the only one: always trusted.
    local_only: bool,
    subscribed: AtomicBool,
    /// [`mono_micros`] at which the last answered heartbeat was sent.
    confirmed_at: AtomicU64,
    epoch: AtomicU64,
    subscriptions: AtomicU64,
}

impl Generations {
    /// With Redis: untrusted until subscribed and confirmed by a heartbeat.
    pub fn shared(l1: L1) -> Self {
        Self::build(false, l1)
    }

    /// Without Redis this replica is the only one: its map is the truth (an evicted
    /// scope is re-seeded from the clock, above every generation it had).
    pub fn local_only(l1: L1) -> Self {
        Self::build(true, l1)
    }

    fn build(local_only: bool, l1: L1) -> Self {
        Self {
            map: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .build_with_hasher(crate::FastHash::default()),
            l1,
            local_only,
            subscribed: AtomicBool::new(false),
            confirmed_at: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
        }
    }

    /// The remembered generation, if it may be used.
    pub fn get(&self, scope: &Scope) -> Option<u64> {
        if self.is_trusted() {
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
    /// Either way the scope is at least at `generation`: older L1 entries go.
    pub fn remember(&self, scope: &Scope, generation: u64, epoch: u64) {
        self.l1.retire_below(scope, generation);
        if self.subscribed.load(Ordering::Acquire) && self.epoch.load(Ordering::Acquire) == epoch {
            self.raise(scope, generation);
        }
    }

    /// Records a generation this replica itself just created (read-your-writes on
    /// the same replica, immediately).
    pub fn raise(&self, scope: &Scope, generation: u64) {
        self.map
            .entry(scope.clone())
            .and_upsert_with(|old| old.map_or(generation, |e| (*e.value()).max(generation)));
        self.l1.retire_below(scope, generation);
    }

    /// An invalidation message: the scope is at `generation` now (never lowered),
    /// and the L1 entries it made dead go.
    pub fn on_message(&self, scope: &Scope, generation: u64) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if generation == u64::MAX {
            // "Newer than anything you know" (a cluster slot without a primary):
            // the real generation is unknown until Redis answers for the slot.
            self.map.invalidate(scope);
            self.l1.drop_scope(scope);
        } else {
            // Only scopes this replica remembers are raised: remembering every scope
            // written anywhere would grow the map with the number of users written,
            // and a scope not remembered is fetched from Redis on its next read anyway.
            if self.map.contains_key(scope) {
                self.raise(scope, generation);
            } else {
                self.l1.retire_below(scope, generation);
            }
        }
    }

    /// Forget one scope (a write whose new generation is unknown): its L1 entries
    /// may all be dead.
    pub fn forget(&self, scope: &Scope) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate(scope);
        self.l1.drop_scope(scope);
    }

    /// Empties the map (the circuit opened: this replica's own writes may not have
    /// reached Redis). Trust itself follows the subscription's heartbeat.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate_all();
    }

    /// The subscription is established (`true`) or lost (`false`). Either way the
    /// map is emptied: messages may have been missed in between. Trust starts
    /// with the first confirmed heartbeat.
    pub fn set_subscribed(&self, subscribed: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.subscribed.store(subscribed, Ordering::Release);
        self.confirmed_at.store(0, Ordering::Release);
        self.map.invalidate_all();
        if subscribed {
            self.subscriptions.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Every announcement published before `sent_at` (a [`mono_micros`] reading
    /// taken when the heartbeat was sent) has been applied.
    pub fn confirm(&self, sent_at: u64) {
        self.confirmed_at.fetch_max(sent_at, Ordering::AcqRel);
    }

    /// How many times the subscription was (re)established.
    #[cfg(any(test, feature = "testing"))]
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Acquire)
    }

    /// Whether remembered generations may be used now.
    pub fn is_trusted(&self) -> bool {
        if self.local_only {
            return true;
        }
        if !self.subscribed.load(Ordering::Acquire) {
            return false;
        }
        let confirmed = self.confirmed_at.load(Ordering::Acquire);
        confirmed != 0 && mono_micros().saturating_sub(confirmed) < TRUST_WINDOW.as_micros() as u64
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
        self.l1.retire_below(scope, next);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use uuid::Uuid;

    use crate::cache::entry::Entry;

    fn scope() -> Scope {
        Scope::user("journal", Uuid::nil())
    }

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::found(
            Bytes::from_static(b"{}"),
            now_micros() / 1000 + 60_000,
            1,
        ))
    }

    fn subscribed() -> Generations {
        let g = Generations::shared(L1::new(1 << 20));
        g.set_subscribed(true);
        g.confirm(mono_micros());
        g
    }

    #[test]
    fn a_read_that_raced_a_forget_is_not_remembered() {
        let g = subscribed();
        let epoch = g.epoch();
        g.forget(&scope());
        g.remember(&scope(), 9, epoch);
        assert_eq!(g.get(&scope()), None);
        let epoch = g.epoch();
        g.remember(&scope(), 10, epoch);
        assert_eq!(g.get(&scope()), Some(10));
        g.on_message(&scope(), 12);
        assert_eq!(
            g.get(&scope()),
            Some(12),
            "an announcement is a generation too"
        );
        g.on_message(&scope(), u64::MAX);
        assert_eq!(g.get(&scope()), None, "unknown generation: ask Redis");
        let stranger = Scope::user("journal", Uuid::new_v4());
        g.on_message(&stranger, 7);
        assert_eq!(
            g.get(&stranger),
            None,
            "announcements about scopes this replica never read are not remembered"
        );
    }

    #[test]
    fn generations_never_go_backwards() {
        let g = Generations::local_only(L1::new(1 << 20));
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
    fn trust_needs_a_subscription_and_a_recent_heartbeat() {
        let g = Generations::shared(L1::new(1 << 20));
        g.raise(&scope(), 3);
        assert_eq!(g.get(&scope()), None, "not subscribed yet");
        g.set_subscribed(true);
        g.raise(&scope(), 4);
        assert_eq!(
            g.get(&scope()),
            None,
            "subscribed, no heartbeat answered yet"
        );
        g.confirm(mono_micros());
        assert_eq!(g.get(&scope()), Some(4));
        // A heartbeat sent longer ago than the window is not enough.
        let g = Generations::shared(L1::new(1 << 20));
        g.set_subscribed(true);
        g.raise(&scope(), 5);
        let old = mono_micros();
        std::thread::sleep(TRUST_WINDOW + Duration::from_millis(20));
        g.confirm(old);
        assert_eq!(g.get(&scope()), None, "the last confirmation is too old");
        g.confirm(mono_micros());
        assert_eq!(
            g.get(&scope()),
            Some(5),
            "a silent spell loses no generation"
        );
        g.set_subscribed(false);
        assert_eq!(g.get(&scope()), None);
    }

    #[test]
    fn newer_generations_retire_older_l1_entries() {
        let l1 = L1::new(1 << 20);
        let g = Generations::shared(l1.clone());
        g.set_subscribed(true);
        g.confirm(mono_micros());
        let s = scope();
        l1.insert(&s, 1, "k:1:a".into(), entry());
        l1.insert(&s, 1, "k:1:b".into(), entry());
        l1.insert(&s, 2, "k:2:a".into(), entry());
        assert_eq!(l1.sizes(), (3, 1));
        g.raise(&s, 2);
        assert!(l1.get("k:1:a").is_none() && l1.get("k:1:b").is_none());
        assert!(l1.get("k:2:a").is_some());
        assert_eq!(l1.sizes(), (1, 1));
        // A slow loader storing under a dead generation stores nothing.
        l1.insert(&s, 1, "k:1:c".into(), entry());
        assert!(l1.get("k:1:c").is_none());
        g.on_message(&s, 3);
        assert_eq!(
            l1.sizes(),
            (0, 0),
            "an announcement retires, and the index empties"
        );
        l1.insert(&s, 3, "k:3:a".into(), entry());
        g.forget(&s);
        assert_eq!(l1.sizes(), (0, 0), "a failed bump drops the whole scope");
    }

    #[test]
    fn local_generations_are_seeded_from_the_clock_and_increase() {
        let g = Generations::local_only(L1::new(1 << 20));
        let before = now_micros();
        let first = g.local(&scope());
        assert!(first >= before);
        let next = g.next_local(&scope());
        assert!(next > first);
        assert_eq!(g.local(&scope()), next);
    }
}
