//! Cache rules.
//!
//! Every cached conversation read — list pages and conversation details — lives
//! in the owner's conversation scope, so any write of theirs (new conversation,
//! message, batch, delete) invalidates all of it in one O(1) generation bump.
//! A new message changes the list (order, count, last message) as well as the
//! detail, so nothing finer would save much, and a rule this simple cannot
//! forget a key.
//!
//! The assistant's replies live in a scope of their own, the "ai" scope, which
//! no conversation write touches: a reply depends only on the message and the
//! style hint (both in its key), so the same message from the same user reaches
//! the LLM once a day, whatever happens to their conversations.

use std::time::Duration;

use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

pub const LIST: Policy = Policy::new("conversation_list", Duration::from_secs(5 * 60));
pub const DETAIL: Policy = Policy::new("conversation_detail", Duration::from_secs(30 * 60));
pub const AI_RESPONSE: Policy = Policy::new("ai_response", Duration::from_secs(24 * 60 * 60));

/// Everything a user has cached in conversation-service, except AI replies.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("conversation", user_id)
}

/// A user's cached AI replies (never invalidated by conversation writes).
pub fn ai_scope(user_id: Uuid) -> Scope {
    Scope::user("ai", user_id)
}
