//! L1: a small in-process cache (moka) of the hottest entries, bounded in bytes,
//! each entry living no longer than its L2 copy. Keys embed the generation, so an
//! invalidation never has to find L1 entries: they become unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::entry::Entry;
use super::generations::now_micros;

/// The longest an entry stays in L1, whatever its L2 TTL.
const L1_MAX_TTL: Duration = Duration::from_secs(300);

struct UntilEntryExpires;

impl Expiry<String, Arc<Entry>> for UntilEntryExpires {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let now_ms = now_micros() / 1000;
        let left = Duration::from_millis(value.expires_at_ms.saturating_sub(now_ms));
        Some(left.min(L1_MAX_TTL))
    }
}

#[derive(Clone)]
pub struct L1 {
    cache: moka::future::Cache<String, Arc<Entry>>,
}

impl L1 {
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Entry>| v.weight().saturating_add(k.len() as u32))
            .expire_after(UntilEntryExpires)
            .build();
        Self { cache }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key).await
    }

    pub async fn insert(&self, key: String, entry: Arc<Entry>) {
        self.cache.insert(key, entry).await;
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}
