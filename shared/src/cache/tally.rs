//! Hit counts that worker threads add to without sharing a cache line: every
//! cached read counts a hit (and whether L1 served it), each thread in its own
//! shard ([`crate::shard`]), padded to its own line.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::{self, SHARDS};

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

impl HitTally {
    /// One hit; `l1` when this replica's memory served it.
    pub fn hit(&self, l1: bool) {
        let shard = &self.shards[shard::this_thread()];
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
