//! Write positions for read replicas (SPEC §7 "Read replicas"): next to each
//! scope's generation, Redis holds the WAL position of the scope's last write,
//! `<prefix>:{<scope>}:lsn` (same slot as the generation), 16 hex digits so
//! that Lua compares them as strings.
//!
//! * A write records its position ([`Positions::record`]) after it committed
//!   and *before* its generation moves: whoever sees the new generation finds a
//!   position at least this one. Recording only ever raises the value
//!   (max-merge in one script): a slow writer's older position, or a reader's
//!   seed, never erases a newer one, and nothing is dropped when a replica
//!   catches up — replicas are compared with the position, never the reverse.
//! * A read takes the position ([`Positions::read`]) after it read the
//!   generation it will store under: every write that generation includes is
//!   covered, so a replica past the position cannot hand the fill an answer
//!   older than the scope's last write. A later write moves the generation and
//!   makes the fill dead anyway.
//! * A scope without a position (never written since recording began, or
//!   untouched for the record's seven days) is seeded with the primary's
//!   position as the service last saw it ([`Replicas::floor`]), which is past
//!   every write that left no record.
//! * Unknown (Redis unreachable, recording failed, no floor yet): `None`, and
//!   the read runs on the primary. A position that could not be recorded is
//!   kept here and recorded — followed by a second generation bump, so that a
//!   fill made meanwhile from a replica is dead — once Redis answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::keys::{self, Scope};
use crate::db::replicas::Replicas;
use crate::redis::{Command, Redis};

/// Positions outlive the generation counters' entries (longest TTL 24 h).
const POSITION_TTL_SECS: u64 = 7 * 24 * 3600;
/// How often unrecorded positions are retried while Redis is away.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Raises the position to ARGV[1] (never lowers it).
pub(crate) const RECORD: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur or ARGV[1] > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
";

/// The position, seeded with ARGV[1] (if given) when there is none.
pub(crate) const READ: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur or ARGV[1] == '' then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
return redis.call('GET', KEYS[1])
";

pub(super) struct Positions {
    redis: Arc<Redis>,
    replicas: Arc<Replicas>,
    record: Script,
    read: Script,
    /// Positions that could not be recorded, by scope (highest kept).
    pending: Mutex<HashMap<Scope, u64>>,
    retrying: AtomicBool,
}

fn hex(position: u64) -> String {
    format!("{position:016x}")
}

fn key(prefix: &str, scope: &Scope) -> String {
    format!("{}lsn", keys::entry_key_head(prefix, scope))
}

impl Positions {
    pub(super) fn new(redis: Arc<Redis>, replicas: Arc<Replicas>) -> Self {
        Self {
            redis,
            replicas,
            record: Script::new(RECORD),
            read: Script::new(READ),
            pending: Mutex::default(),
            retrying: AtomicBool::new(false),
        }
    }

    /// The primary's position now (after the caller's writes committed).
    pub(super) async fn after_commit(&self) -> Option<u64> {
        self.replicas.after_commit().await
    }

    /// Records `position` for `scope`. False if it could not be (kept pending).
    pub(super) async fn record(&self, scope: &Scope, position: u64) -> bool {
        if self.send(scope, position).await {
            return true;
        }
        self.pending
            .lock()
            .expect("pending lock")
            .entry(scope.clone())
            .and_modify(|p| *p = (*p).max(position))
            .or_insert(position);
        false
    }

    /// Records an unknown position ("wait for every replica to be past
    /// anything"): a write whose position the primary did not tell.
    pub(super) async fn record_unknown(&self, scope: &Scope) -> bool {
        self.record(scope, u64::MAX).await
    }

    async fn send(&self, scope: &Scope, position: u64) -> bool {
        let k = key(self.redis.prefix(), scope);
        let value = hex(position);
        // An unknown position ("ffff…") lives one minute: long past any
        // replica's catching up, then the scope is seeded from the floor again.
        let ttl = if position == u64::MAX {
            60
        } else {
            POSITION_TTL_SECS
        }
        .to_string();
        self.redis
            .run::<i64>(Command::Script(
                &self.record,
                &[k.as_str()],
                &[value.as_bytes(), ttl.as_bytes()],
            ))
            .await
            .is_ok()
    }

    /// The position a read of `scope` must wait for; `None` = the primary.
    pub(super) async fn read(&self, scope: &Scope) -> Option<u64> {
        if !self.redis.available() {
            return None;
        }
        let k = key(self.redis.prefix(), scope);
        let seed = self.replicas.floor().map(hex).unwrap_or_default();
        let ttl = POSITION_TTL_SECS.to_string();
        let raw: Option<String> = self
            .redis
            .run(Command::Script(
                &self.read,
                &[k.as_str()],
                &[seed.as_bytes(), ttl.as_bytes()],
            ))
            .await
            .ok()?;
        let position = u64::from_str_radix(&raw?, 16).ok()?;
        // This replica's own unrecorded writes count too.
        let pending = self
            .pending
            .lock()
            .expect("pending lock")
            .get(scope)
            .copied();
        match pending {
            Some(p) if p > position => None,
            _ => (position != u64::MAX).then_some(position),
        }
    }

    /// Whether positions are waiting for Redis; claims the retry if so.
    pub(super) fn claim_retry(&self) -> bool {
        !self.pending.lock().expect("pending lock").is_empty()
            && !self.retrying.swap(true, Ordering::AcqRel)
    }

    /// Records what is pending once Redis answers; returns each scope
    /// recorded (for the caller to bump again). Runs until nothing is pending.
    pub(super) async fn retry(&self) -> Vec<Scope> {
        let mut done = Vec::new();
        loop {
            tokio::time::sleep(RETRY_EVERY).await;
            if !self.redis.available() {
                continue;
            }
            let pending: Vec<(Scope, u64)> = self
                .pending
                .lock()
                .expect("pending lock")
                .iter()
                .map(|(s, p)| (s.clone(), *p))
                .collect();
            for (scope, position) in pending {
                if self.send(&scope, position).await {
                    let mut map = self.pending.lock().expect("pending lock");
                    if map.get(&scope) == Some(&position) {
                        map.remove(&scope);
                    }
                    done.push(scope);
                }
            }
            let map = self.pending.lock().expect("pending lock");
            if map.is_empty() {
                self.retrying.store(false, Ordering::Release);
                return done;
            }
        }
    }
}
