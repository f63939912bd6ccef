//! Hit counts that worker threads add to without sharing a cache line.
//!
//! Every cached read counts a hit (and whether L1 served it). Two counters that
//! every worker thread increments bounce their cache line between the cores on
//! each hit; here each thread adds to a shard of its own (padded to its own
//! line, as `kai_http::stats` does for the per-route figures) and a reader adds
//! the shards up. Exact: every increment lands in some shard.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards: worker threads take them in turn (more threads than shards share).
const SHARDS: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    hits: AtomicU64,
    l1_hits: AtomicU64,
}

/// Hits and L1 hits, sharded by thread.
#[derive(Default)]
pub struct HitTally {
    shards: [Shard; SHARDS],
}

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl HitTally {
    /// One hit; `l1` when this replica's memory served it.
    pub fn hit(&self, l1: bool) {
        let shard = &self.shards[shard()];
        shard.hits.fetch_add(1, Ordering::Relaxed);
        if l1 {
            shard.l1_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (hits, L1 hits) so far.
    pub fn totals(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, l1), s| {
            (
                h + s.hits.load(Ordering::Relaxed),
                l1 + s.l1_hits.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_threads_hits_are_counted() {
        let tally = Arc::new(HitTally::default());
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let tally = tally.clone();
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        tally.hit((i + t) % 4 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(tally.totals(), (12_000, 3_000));
    }
}
