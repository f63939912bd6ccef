//! Cache rules: every cached journal read lives in the owner's scope, so any write
//! of theirs (create, patch, delete) invalidates all of it — lists, entries, stats —
//! in one O(1) generation bump. Writes are rare next to reads, and a rule this
//! simple cannot forget a key.

use std::time::Duration;

use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

pub const LIST: Policy = Policy::new("journal_list", Duration::from_secs(300));
pub const ENTRY: Policy = Policy::new("journal_entry", Duration::from_secs(600));
pub const STATS: Policy = Policy::new("journal_stats", Duration::from_secs(300));

/// Everything a user has cached in journal-service.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("journal", user_id)
}
