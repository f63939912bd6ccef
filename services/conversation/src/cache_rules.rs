//! Cache rules, in one place: what conversation-service caches (key, namespace,
//! TTL) and what each write invalidates.
//!
//! Every cached conversation read — list pages and conversation details — lives
//! in the owner's conversation scope, so any write of theirs (new conversation,
//! message, batch, delete) invalidates all of it in one O(1) generation bump.
//! A new message changes the list (order, count, last message) as well as the
//! detail, so nothing finer would save much, and a rule this simple cannot
//! forget a key. The write functions in `queries` return their result as a
//! `Written` naming [`write_touches`], so a handler reaches it only by `Cache::commit`, which
//! invalidates first.
//!
//! The assistant's replies live in a scope of their own, the "ai" scope, which
//! no conversation write touches: a reply depends only on the message and the
//! style hint (both in its key), so the same message from the same user reaches
//! the LLM once a day, whatever happens to their conversations.

use std::time::Duration;

use kai_shared::cache::keys::Key;
use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

pub const LIST: Policy = Policy::new("conversation_list", Duration::from_secs(5 * 60));
pub const DETAIL: Policy = Policy::new("conversation_detail", Duration::from_secs(30 * 60));
/// In Redis only: nearly every message is new, so its reply is written once and
/// seldom read again; in L1 the replies filled each replica's memory (8,084
/// entries, 3 MiB after 150 s of the soak) and pushed out the hot set.
pub const AI_RESPONSE: Policy =
    Policy::new("ai_response", Duration::from_secs(24 * 60 * 60)).redis_only();

/// Every kind of read this service caches.
pub const CACHED: [Policy; 3] = [LIST, DETAIL, AI_RESPONSE];

/// Everything a user has cached in conversation-service, except AI replies.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("conversation", user_id)
}

/// A user's cached AI replies (never invalidated by conversation writes). Its
/// tag starts with the service's name, as every scope's (`conversation:ai:<user>`):
/// the service's Redis ACL user owns `<prefix>:{conversation:*`.
pub fn ai_scope(user_id: Uuid) -> Scope {
    Scope::user("conversation:ai", user_id)
}

/// What every write of `user_id`'s conversations touches: their conversation
/// scope (never the AI scope).
pub fn write_touches(user_id: Uuid) -> [Scope; 1] {
    [user_scope(user_id)]
}

/// SPEC §4 key: `conversation:{id}` plus the message limit asked for (DETAIL).
pub fn detail_key(conversation_id: Uuid, limit: i64) -> String {
    Key::new("conversation")
        .uuid(conversation_id)
        .str("limit")
        .int(limit)
        .into()
}

/// A list page (LIST).
pub fn list_key(user_id: Uuid, cursor: Option<&str>, limit: i64) -> String {
    Key::new("conversation:list")
        .uuid(user_id)
        .cursor_page(cursor, limit)
        .into()
}

/// SPEC §4 key: `ai:response:{user_id}:{hash}` (AI_RESPONSE).
pub fn ai_response_key(user_id: Uuid, hash: &str) -> String {
    Key::new("ai:response").uuid(user_id).str(hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn spec_keys_are_spelled_as_the_spec_says() {
        assert!(
            detail_key(USER, 50).starts_with("conversation:01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(
            ai_response_key(USER, "abc"),
            "ai:response:01234567-89ab-cdef-0123-456789abcdef:abc"
        );
        assert_eq!(
            detail_key(USER, 50),
            format!("conversation:{USER}:limit:50")
        );
        assert_eq!(
            list_key(USER, Some("c1"), 10),
            format!("conversation:list:{USER}:cursor:c1:limit:10")
        );
        assert_eq!(
            list_key(USER, None, 10),
            format!("conversation:list:{USER}:cursor:-:limit:10")
        );
    }

    #[test]
    fn writes_touch_the_conversation_scope_and_never_the_ai_scope() {
        assert_eq!(write_touches(USER), [user_scope(USER)]);
        assert_ne!(user_scope(USER), ai_scope(USER));
    }
}
