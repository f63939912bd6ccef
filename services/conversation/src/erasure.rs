//! Account erasure, conversation's part: when profile-service deletes an account it
//! publishes `account-erased` (its outbox, relayed to a Redis Stream — see
//! profile-service's `erasure` module); this service's consumer group `conversation`
//! receives the user id and purges:
//!
//! 1. every conversation of the user, and with it every message (`ON DELETE
//!    CASCADE`, through `messages_conversation_created`) and each conversation's
//!    row of `conversation.message_counts` (the messages' delete trigger,
//!    migrations/conversation/V4__message_counts.sql) — one statement;
//! 2. the user's two cache scopes — conversations and AI replies: a generation
//!    bump each (every replica stops using its L1 copies) and every Redis key of
//!    both unlinked.
//!
//! Purging twice deletes nothing the second time, so duplicate deliveries and
//! re-sends are harmless. A failure leaves the event unacknowledged: it is
//! retried. Each purge counts in `kai_account_purges_total`.

use actix_web::web;
use kai_platform::Platform;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache_rules::{ai_scope, user_scope};

/// This service's consumer group.
pub const GROUP: &str = "conversation";

/// Messages go with their conversations (`ON DELETE CASCADE`), their counts with
/// the messages (a trigger).
pub const PURGE: &str = "DELETE FROM conversation.conversations WHERE user_id = $1";

/// Deletes everything of `user_id` this service holds; returns the rows deleted.
pub async fn purge(p: &Platform, user_id: Uuid) -> anyhow::Result<u64> {
    let conn = p.db.conn().await?;
    let deleted = p.db.execute(&conn, PURGE, &[&user_id]).await?;
    drop(conn);
    p.cache.purge_scope(&user_scope(user_id)).await?;
    p.cache.purge_scope(&ai_scope(user_id)).await?;
    Ok(deleted)
}

/// Starts the consumer (with Redis; without it there is no one to hear from).
pub fn start(p: web::Data<Platform>, stop: CancellationToken) {
    kai_platform::server::consume_erasures(&p, stop, GROUP, |p, user_id| async move {
        purge(&p, user_id).await
    });
}
