//! Session revocation over Redis: a logout (or a user-wide watermark) is kept in
//! a sorted set until the token's expiry, for replicas that subscribe later, and
//! announced on a channel every replica of every service subscribes to (the
//! cache's subscriber listens to it beside the invalidations).
//!
//! Only profile-service writes here, and everything it writes is a signed
//! control message (`kai_http::auth::control`): a member or a message that does
//! not verify is dropped by the readers. The set also holds profile's signed
//! *completeness marker* at score `+inf` (never trimmed): a set without it was
//! lost (evicted, flushed, a Redis restarted without data) and is incomplete
//! until profile-service has re-written it from PostgreSQL, marker last. The
//! marker lives in the set itself, so the set and its marker can only be lost
//! together. Readers only read (`ZRANGEBYSCORE`); profile trims expired members.

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

/// How many members one `ZADD` of a restore carries.
const RESTORE_CHUNK: usize = 500;

/// Announces a revocation (a signed message) to every replica, kept until
/// `expires_at` (unix s). True when Redis was told; without Redis there is no
/// one else to tell.
pub async fn announce(store: Option<&Arc<Redis>>, announced: &str, expires_at: i64) -> bool {
    match store {
        None => true,
        Some(store) => revoke(store, announced, expires_at).await.is_ok(),
    }
}

/// Announces a revocation to every replica of every service and keeps it
/// (until the token's expiry) for replicas that subscribe later.
pub async fn revoke(store: &Arc<Redis>, announced: &str, expires_at: i64) -> Result<(), Failure> {
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(key(store.prefix())).arg(expires_at).arg(announced);
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(channel(store.prefix())).arg(announced);
    if store.target().is_cluster() {
        // A cluster routes PUBLISH by its channel's slot, which is not the
        // set's: two commands (stored first, so a replica subscribing between
        // them still reads it), each routed on its own.
        store.run::<()>(Command::Plain(zadd)).await?;
        return store.run::<()>(Command::Plain(publish)).await;
    }
    let mut pipe = redis::pipe();
    pipe.add_command(zadd).ignore();
    pipe.add_command(publish).ignore();
    store.run(Command::Pipeline(pipe)).await
}

/// The live members (and the marker): what a subscriber reads once subscribed.
/// Read only; routed by key, so it works on a cluster too; does not touch the
/// circuit (the subscriber retries on its own).
pub async fn revoked_sessions(store: &Redis, patience: Duration) -> Result<Vec<String>, Failure> {
    let now = chrono::Utc::now().timestamp();
    let mut cmd = redis::cmd("ZRANGEBYSCORE");
    cmd.arg(key(store.prefix())).arg(now).arg("+inf");
    store.run_quietly(patience, Command::Plain(cmd)).await
}

/// The members at score `+inf`: the completeness marker(s) (profile-service's
/// check, once a second). Does not touch the circuit.
pub async fn markers(store: &Redis) -> Result<Vec<String>, Failure> {
    let mut cmd = redis::cmd("ZRANGEBYSCORE");
    cmd.arg(key(store.prefix())).arg("+inf").arg("+inf");
    store
        .run_quietly(
            store.timeout().max(Duration::from_millis(500)),
            Command::Plain(cmd),
        )
        .await
}

/// Drops expired members (profile-service; the readers only read).
pub async fn trim(store: &Redis) -> Result<(), Failure> {
    let now = chrono::Utc::now().timestamp();
    let mut cmd = redis::cmd("ZREMRANGEBYSCORE");
    cmd.arg(key(store.prefix()))
        .arg("-inf")
        .arg(format!("({now}"));
    store
        .run_quietly(
            store.timeout().max(Duration::from_millis(500)),
            Command::Plain(cmd),
        )
        .await
}

/// Re-writes the set: every `(expires_at, signed revocation)` of `members`,
/// then — last, once they are all in — `marker` at `+inf`, replacing any
/// marker there was (a forged one included).
pub async fn restore(
    store: &Redis,
    members: &[(i64, String)],
    marker: &str,
) -> Result<(), Failure> {
    let key = key(store.prefix());
    let patience = store.timeout().max(Duration::from_secs(2));
    for chunk in members.chunks(RESTORE_CHUNK) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&key);
        for (score, member) in chunk {
            cmd.arg(*score).arg(member);
        }
        store
            .run_quietly::<()>(patience, Command::Plain(cmd))
            .await?;
    }
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("+inf")
        .arg("+inf")
        .ignore();
    pipe.cmd("ZADD").arg(&key).arg("+inf").arg(marker).ignore();
    store.run_quietly(patience, Command::Pipeline(pipe)).await
}
