//! Which shard of a per-thread counter this thread adds to. Counters every
//! worker thread increments on every request bounce their cache line between
//! the cores; split into [`SHARDS`] shards (each padded to its own line by its
//! owner), threads take them in turn and a reader adds them up. Exact: every
//! increment lands in some shard. Used by the cache's hit counts
//! (`cache::tally`) and the per-route statistics (`kai_http::stats`).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Shards per counter: worker threads take them in turn (more threads than
/// shards share).
pub const SHARDS: usize = 8;

/// This thread's shard, in `0..SHARDS`: fixed for the thread's life.
pub fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_threads_take_them_in_turn() {
        let mine = this_thread();
        assert_eq!(this_thread(), mine, "fixed for the thread's life");
        let others: std::collections::HashSet<usize> = (0..SHARDS)
            .map(|_| std::thread::spawn(this_thread).join().unwrap())
            .collect();
        assert!(others.iter().all(|&s| s < SHARDS));
        // Threads started one after the other take consecutive shards (other
        // tests' threads may take some in between): more than one in use.
        assert!(others.len() > 1, "{others:?}");
    }
}
