//! Account erasure, journal's part: when profile-service deletes an account it
//! publishes `account-erased` (its outbox, relayed to a Redis Stream — see
//! profile-service's `erasure` module); this service's consumer group `journal`
//! receives the user id and purges:
//!
//! 1. every entry of the user, soft-deleted ones included, hard-deleted (two
//!    statements, each served by a partial index: live and soft-deleted rows),
//!    and the user's kept totals;
//! 2. the user's cache scope: a generation bump (every replica stops using its
//!    L1 copies) and every Redis key of the scope unlinked.
//!
//! Purging twice deletes nothing the second time, so duplicate deliveries and
//! re-sends are harmless. A failure leaves the event unacknowledged: it is
//! retried. Each purge counts in `kai_account_purges_total`.

use actix_web::web;
use kai_platform::Platform;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache_rules::user_scope;

/// This service's consumer group.
pub const GROUP: &str = "journal";

pub const PURGE_LIVE: &str =
    "DELETE FROM journal.journal_entries WHERE user_id = $1 AND deleted_at IS NULL";
pub const PURGE_SOFT_DELETED: &str =
    "DELETE FROM journal.journal_entries WHERE user_id = $1 AND deleted_at IS NOT NULL";
/// The user's kept totals: their rows sum to 0 once the entries are gone, but a
/// shard written through one connection and emptied through another is not 0
/// itself (migrations/journal/V5__entry_totals_sharded.sql).
pub const PURGE_TOTALS: &str = "DELETE FROM journal.entry_total_shards WHERE user_id = $1";

/// Deletes everything of `user_id` this service holds; returns the rows deleted.
pub async fn purge(p: &Platform, user_id: Uuid) -> anyhow::Result<u64> {
    let mut conn = p.db.conn().await?;
    let tx = conn.transaction().await?;
    let mut deleted = p.db.execute(&tx, PURGE_LIVE, &[&user_id]).await?;
    deleted += p.db.execute(&tx, PURGE_SOFT_DELETED, &[&user_id]).await?;
    p.db.execute(&tx, PURGE_TOTALS, &[&user_id]).await?;
    tx.commit().await?;
    p.cache.purge_scope(&user_scope(user_id)).await?;
    Ok(deleted)
}

/// Starts the consumer (with Redis; without it there is no one to hear from).
pub fn start(p: web::Data<Platform>, stop: CancellationToken) {
    kai_platform::server::consume_erasures(&p, stop, GROUP, |p, user_id| async move {
        purge(&p, user_id).await
    });
}
