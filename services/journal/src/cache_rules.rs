//! Cache rules, in one place: what journal-service caches (key, namespace, TTL)
//! and what each write invalidates.
//!
//! Every cached journal read lives in the owner's scope, so any write of theirs
//! (create, patch, delete) invalidates all of it — lists, entries, stats — in one
//! O(1) generation bump. Writes are rare next to reads, and a rule this simple
//! cannot forget a key. The write functions in `queries` return their result
//! through `Written` naming [`write_touches`], so a handler reaches it only by `Cache::commit`, which
//! invalidates first.

use std::time::Duration;

use kai_shared::cache::keys::Key;
use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

pub const LIST: Policy = Policy::new("journal_list", Duration::from_secs(300));
pub const ENTRY: Policy = Policy::new("journal_entry", Duration::from_secs(600));
pub const STATS: Policy = Policy::new("journal_stats", Duration::from_secs(300));

/// Every kind of read this service caches.
pub const CACHED: [Policy; 3] = [LIST, ENTRY, STATS];

/// Everything a user has cached in journal-service.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("journal", user_id)
}

/// What every write of `user_id`'s entries touches: their whole scope.
pub fn write_touches(user_id: Uuid) -> [Scope; 1] {
    [user_scope(user_id)]
}

/// SPEC §4 key: `journal:list:{user_id}:page:{page}:size:{page_size}` (LIST).
pub fn list_page_key(user_id: Uuid, page: i64, page_size: i64) -> String {
    Key::new("journal:list")
        .uuid(user_id)
        .str("page")
        .int(page)
        .str("size")
        .int(page_size)
        .into()
}

/// Cursor-mode list (LIST).
pub fn list_cursor_key(user_id: Uuid, cursor: Option<&str>, limit: i64) -> String {
    Key::new("journal:list")
        .uuid(user_id)
        .cursor_page(cursor, limit)
        .into()
}

/// One entry (ENTRY).
pub fn entry_key(entry_id: Uuid) -> String {
    Key::new("journal:entry").uuid(entry_id).into()
}

/// Statistics over `days` (STATS).
pub fn stats_key(user_id: Uuid, days: i64) -> String {
    Key::new("journal:stats")
        .uuid(user_id)
        .str("days")
        .int(days)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn spec_keys_are_spelled_as_the_spec_says() {
        assert_eq!(
            list_page_key(USER, 2, 20),
            "journal:list:01234567-89ab-cdef-0123-456789abcdef:page:2:size:20"
        );
        assert_eq!(
            list_cursor_key(USER, Some("abc"), 5),
            format!("journal:list:{USER}:cursor:abc:limit:5")
        );
        assert_eq!(
            list_cursor_key(USER, None, 5),
            format!("journal:list:{USER}:cursor:-:limit:5")
        );
        assert_eq!(entry_key(USER), format!("journal:entry:{USER}"));
        assert_eq!(stats_key(USER, 30), format!("journal:stats:{USER}:days:30"));
    }

    #[test]
    fn every_write_touches_the_owners_scope() {
        assert_eq!(write_touches(USER), [user_scope(USER)]);
    }
}
