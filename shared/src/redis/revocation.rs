//! Session revocation over Redis: a logout (or a user-wide watermark) is kept in
//! a sorted set until the token's expiry, for replicas that subscribe later, and
//! announced on a channel every replica of every service subscribes to (the
//! cache's subscriber listens to it beside the invalidations).

use std::sync::Arc;
use std::time::Duration;

use super::{Command, Failure, Redis};

/// The channel on which logouts are announced (shared by all services).
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:revocations")
}

/// Sorted set of revoked session ids, scored by token expiry.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:revoked-sessions")
}

/// Announces a revocation (a session id, or a user-wide revocation) to every
/// replica, kept until `expires_at` (unix s). True when Redis was told; without
/// Redis there is no one else to tell.
pub async fn announce(store: Option<&Arc<Redis>>, announced: &str, expires_at: i64) -> bool {
    match store {
        None => true,
        Some(store) => revoke(store, announced, expires_at).await.is_ok(),
    }
}

/// Announces a revoked session to every replica of every service and keeps it
/// (until the token's expiry) for replicas that subscribe later.
pub async fn revoke(store: &Arc<Redis>, session_id: &str, expires_at: i64) -> Result<(), Failure> {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key(store.prefix()))
        .arg(expires_at)
        .arg(session_id);
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(channel(store.prefix())).arg(session_id);
    // Expired revocations are dropped here, by the writer (readers only read:
    // their Redis ACL users may not write the set).
    let mut expired = redis::cmd("ZREMRANGEBYSCORE");
    expired
        .arg(key(store.prefix()))
        .arg("-inf")
        .arg(chrono::Utc::now().timestamp());
    if store.target().is_cluster() {
        // A cluster routes PUBLISH by its channel's slot, which is not the
        // set's: two commands (stored first, so a replica subscribing between
        // them still reads it), each routed on its own.
        store.run::<()>(Command::Plain(zadd)).await?;
        store.run::<()>(Command::Plain(expired)).await?;
        return store.run::<()>(Command::Plain(publish)).await;
    }
    let mut pipe = redis::pipe();
    pipe.add_command(zadd).ignore();
    pipe.add_command(expired).ignore();
    pipe.add_command(publish).ignore();
    store.run(Command::Pipeline(pipe)).await
}

/// The live revocations (the subscriber reads them once subscribed): a read
/// only (`ZRANGE … BYSCORE`, unexpired ones), which every service's Redis ACL
/// user may do. Routed by key, so it works on a cluster too; does not touch the
/// circuit (the subscriber retries on its own).
pub async fn revoked_sessions(store: &Redis, patience: Duration) -> Result<Vec<String>, Failure> {
    let now = chrono::Utc::now().timestamp();
    let mut range = redis::cmd("ZRANGE");
    range
        .arg(key(store.prefix()))
        .arg(format!("({now}"))
        .arg("+inf")
        .arg("BYSCORE");
    store.run_quietly(patience, Command::Plain(range)).await
}
