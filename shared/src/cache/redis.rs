//! L2: the cache's part of Redis — generation counters and entries (Lua scripts),
//! and the invalidations that could not reach Redis while it was unreachable,
//! remembered and replayed before the circuit closes — on the service's
//! [`Redis`] (connections, timeouts, the circuit breaker: `crate::redis`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::entry::Entry;
use super::generations::Generations;
use super::keys::{self, Scope};
use super::seal::{Rejected, Sealer};
use crate::redis::{Command, Failure, Hooks, Redis};

/// At most this many scopes are remembered for replay; beyond it, recovery drops
/// every generation counter of this service instead (re-seeded from the clock).
const MAX_PENDING: usize = 50_000;
/// A refill proposes a generation this far behind this host's clock, so a
/// server clock up to this much behind still accepts it (behind the clock is
/// safe: generations re-seeded from the clock later are still above it).
const PROPOSAL_SKEW_MICROS: u64 = 1_000_000;
/// Generation counters outlive every entry (the longest TTL is 24 h).
const GENERATION_TTL_SECS: u64 = 7 * 24 * 3600;

/// Reads a scope's generation (seeding it from the server clock if absent — never
/// from 0, so a counter evicted by `allkeys-lru` never repeats a generation) and
/// the entry under it, in one round trip.
pub(crate) const GENERATION_AND_GET: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  g = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  if not redis.call('SET', KEYS[1], g, 'NX', 'EX', ARGV[3]) then
    g = redis.call('GET', KEYS[1])
  end
end
if ARGV[2] == '' then return {g, false} end
return {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
";

/// Moves a scope to a new generation, above both the old one and the server clock,
/// and announces it to every replica. With a refill (ARGV[4]: the generation its
/// entries were loaded under; ARGV[5]: the entry key head; ARGV[6]: the new
/// generation the entries were sealed for; then key tail, value, milliseconds to
/// live, for each entry) the entries are stored under the new generation — only
/// if the scope was still at the refill's generation, so no other write moved it
/// while they were loaded, and only if the proposed generation is one a plain
/// bump could have made (above the old one, not above the server clock unless by
/// the old one's successor): entries are sealed for their full key, generation
/// included ([`super::seal`]), so the generation is chosen before the script
/// runs. Returns the new generation and whether the entries were stored.
pub(crate) const BUMP: &str = r"
local raw = redis.call('GET', KEYS[1])
local cur = tonumber(raw or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nxt = string.format('%.0f', math.max(cur + 1, now))
local stored = 0
if #ARGV > 6 and raw == ARGV[4] then
  local proposed = tonumber(ARGV[6])
  if proposed > cur and proposed <= math.max(cur + 1, now) then
    nxt = ARGV[6]
    for i = 7, #ARGV, 3 do
      redis.call('SET', ARGV[5] .. nxt .. ARGV[i], ARGV[i + 1], 'PX', ARGV[i + 2])
    end
    stored = 1
  end
end
redis.call('SET', KEYS[1], nxt, 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. nxt)
return {nxt, stored}
";

/// Entries a bump stores under the generation it makes ([`L2::bump`]).
pub struct Refill<'a> {
    /// The generation the entries were loaded under.
    pub generation: u64,
    /// Each entry's logical key and the entry.
    pub entries: Vec<(&'a str, &'a super::entry::Entry)>,
}

pub struct L2 {
    redis: Arc<Redis>,
    /// The service whose cache this is: its invalidation channel and the
    /// counters a recovery may drop are its own.
    service: String,
    /// Seals what is stored, opens what is read ([`super::seal`]).
    sealer: Sealer,
    pending: Mutex<HashSet<Scope>>,
    overflowed: AtomicBool,
    generation_and_get: Script,
    bump: Script,
}

impl L2 {
    /// The cache on `redis`: when the circuit opens, remembered generations are
    /// forgotten (this replica's own invalidations may not reach Redis from now
    /// on; trust itself follows the heartbeat); before it closes, pending
    /// invalidations are replayed.
    pub fn new(
        redis: Arc<Redis>,
        generations: Arc<Generations>,
        service: &str,
        sealer: Sealer,
    ) -> Arc<Self> {
        let l2 = Arc::new(Self {
            redis: redis.clone(),
            service: service.to_owned(),
            sealer,
            pending: Mutex::default(),
            overflowed: AtomicBool::new(false),
            generation_and_get: Script::new(GENERATION_AND_GET),
            bump: Script::new(BUMP),
        });
        let weak = Arc::downgrade(&l2);
        redis.on_recovery(Hooks {
            on_trip: Box::new(move || generations.clear()),
            recover: Box::new(move || {
                let weak = weak.clone();
                Box::pin(async move {
                    match weak.upgrade() {
                        Some(l2) => l2.replay_pending().await,
                        None => Ok(0),
                    }
                })
            }),
        });
        l2
    }

    /// The Redis this cache runs on.
    #[cfg(any(test, feature = "testing"))]
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// False while the circuit is open: callers skip Redis entirely.
    pub fn available(&self) -> bool {
        self.redis.available()
    }

    /// Re-applies the invalidations made while Redis was unreachable.
    async fn replay_pending(&self) -> Result<usize, Failure> {
        let scopes: Vec<Scope> = self
            .pending
            .lock()
            .expect("pending lock")
            .iter()
            .cloned()
            .collect();
        let mut conn = self.redis.conn().await?;
        for scope in &scopes {
            let gen_key = keys::generation_key(self.redis.prefix(), scope);
            let mut inv = self.bump.prepare_invoke();
            inv.key(&gen_key)
                .arg(self.channel())
                .arg(scope.tag())
                .arg(GENERATION_TTL_SECS);
            tokio::time::timeout(
                self.redis.timeout() * 4,
                inv.invoke_async::<(String, i64)>(&mut conn.inner),
            )
            .await
            .map_err(|_| Failure::Timeout)??;
            self.pending.lock().expect("pending lock").remove(scope);
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            // Too many scopes to remember: drop every generation of this service
            // (recovery only, never on a request path). Re-seeded counters start at
            // the clock, above every generation handed out before.
            let pattern = keys::generation_pattern(self.redis.prefix(), &self.service);
            // Every primary of a cluster: the counters are spread over all slots.
            conn.inner
                .unlink_matching(&pattern, self.redis.timeout() * 10)
                .await?;
        }
        Ok(scopes.len())
    }

    /// This service's invalidation channel.
    pub fn channel(&self) -> String {
        keys::invalidation_channel(self.redis.prefix(), &self.service)
    }

    /// `entry` sealed for storage under `key` (its full Redis key).
    pub fn seal(&self, key: &str, entry: &Entry) -> Vec<u8> {
        self.sealer.seal(key.as_bytes(), &entry.encode())
    }

    /// The entry stored under `key`, if it opens under this service's keys for
    /// exactly that key name and decodes.
    pub fn open(&self, key: &str, raw: bytes::Bytes) -> Result<Entry, Rejected> {
        let frame = self.sealer.open(key.as_bytes(), Vec::from(raw))?;
        Entry::decode(bytes::Bytes::from(frame)).ok_or(Rejected::Malformed)
    }

    /// The scope's generation and, if `logical` is given, the entry under it.
    pub async fn generation_and_get(
        self: &Arc<Self>,
        scope: &Scope,
        logical: Option<&str>,
    ) -> Result<(u64, Option<bytes::Bytes>), Failure> {
        let gen_key = keys::generation_key(self.redis.prefix(), scope);
        let head = keys::entry_key_head(self.redis.prefix(), scope);
        let tail = logical.map(|l| format!(":{l}")).unwrap_or_default();
        let ttl = GENERATION_TTL_SECS.to_string();
        let (generation, value): (String, Option<Vec<u8>>) = self
            .redis
            .run(Command::Script(
                &self.generation_and_get,
                &[gen_key.as_str()],
                &[head.as_bytes(), tail.as_bytes(), ttl.as_bytes()],
            ))
            .await?;
        let generation = generation
            .parse()
            .map_err(|_| Failure::Pool(format!("bad generation {generation:?}")))?;
        Ok((generation, value.map(bytes::Bytes::from)))
    }

    pub async fn get(self: &Arc<Self>, key: &str) -> Result<Option<bytes::Bytes>, Failure> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let value: Option<Vec<u8>> = self.redis.run(Command::Plain(cmd)).await?;
        Ok(value.map(bytes::Bytes::from))
    }

    pub async fn set(
        self: &Arc<Self>,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), Failure> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.redis.run(Command::Plain(cmd)).await
    }

    /// Moves the scope to a new generation and announces it, storing `refill`'s
    /// entries under it if the scope was still at the refill's generation; returns
    /// the new generation and whether they were stored. If Redis cannot be
    /// reached the scope is remembered and replayed on recovery.
    pub async fn bump(
        self: &Arc<Self>,
        scope: &Scope,
        refill: Option<Refill<'_>>,
    ) -> Result<(u64, bool), Failure> {
        let prefix = self.redis.prefix();
        let gen_key = keys::generation_key(prefix, scope);
        let channel = self.channel();
        let ttl = GENERATION_TTL_SECS.to_string();
        // The refill's arguments (owned: the entries are sealed here), after the
        // three every bump passes.
        let mut refill_args: Vec<Vec<u8>> = Vec::new();
        if let Some(refill) = refill {
            let now_ms = super::clock::now_micros() / 1000;
            let live: Vec<_> = refill
                .entries
                .into_iter()
                .filter(|(_, e)| e.expires_at_ms > now_ms)
                .collect();
            if !live.is_empty() {
                // The generation the entries are sealed for: the refill's
                // successor, or this host's clock (µs) less a second of skew —
                // at most what the script itself would pick, or it stores nothing.
                let proposed = (refill.generation + 1)
                    .max(super::clock::now_micros().saturating_sub(PROPOSAL_SKEW_MICROS));
                refill_args.push(refill.generation.to_string().into_bytes());
                refill_args.push(keys::entry_key_head(prefix, scope).into_bytes());
                refill_args.push(proposed.to_string().into_bytes());
                for (logical, entry) in live {
                    refill_args.push(format!(":{logical}").into_bytes());
                    let key = keys::entry_key(prefix, scope, proposed, logical);
                    refill_args.push(self.seal(&key, entry));
                    refill_args.push((entry.expires_at_ms - now_ms).to_string().into_bytes());
                }
            }
        }
        let args: Vec<&[u8]> = [channel.as_bytes(), scope.tag().as_bytes(), ttl.as_bytes()]
            .into_iter()
            .chain(refill_args.iter().map(Vec::as_slice))
            .collect();
        let result: Result<(String, i64), Failure> = if self.redis.target().is_cluster() {
            // A cluster fails over to a replica that may lag its primary: the bump
            // waits (briefly) for one replica, so a primary killed right after a
            // write cannot take the write's invalidation with it. One pipeline,
            // routed by the generation key's slot.
            let wait_ms = (self.redis.timeout().as_millis() / 4).max(1) as u64;
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL").arg(BUMP).arg(1).arg(&gen_key).arg(&args);
            pipe.cmd("WAIT").arg(1).arg(wait_ms).ignore();
            self.redis
                .run::<((String, i64),)>(Command::Pipeline(pipe))
                .await
                .map(|(g,)| g)
        } else {
            self.redis
                .run(Command::Script(&self.bump, &[gen_key.as_str()], &args))
                .await
        };
        match result {
            Ok((g, stored)) => g
                .parse()
                .map(|g| (g, stored == 1))
                .map_err(|_| Failure::Pool(format!("bad generation {g:?}"))),
            Err(e) => {
                self.remember_pending(scope);
                self.tell_others_to_forget(scope, &channel);
                Err(e)
            }
        }
    }

    /// Cluster only: the scope's slot has no primary, but the other nodes still
    /// relay pub/sub. Announcing "newer than anything you know" makes every other
    /// replica forget the scope's generation, so none answers it from L1; their
    /// next read asks Redis, fails for this slot and goes to PostgreSQL until the
    /// replayed bump (after the failover) gives the scope its new generation.
    fn tell_others_to_forget(self: &Arc<Self>, scope: &Scope, channel: &str) {
        if !self.redis.target().is_cluster() {
            return;
        }
        let (this, message, channel) = (
            self.clone(),
            format!("{} {}", scope.tag(), u64::MAX),
            channel.to_owned(),
        );
        tokio::spawn(async move {
            let sent = this
                .redis
                .target()
                .publish_anywhere(&channel, &message, this.redis.timeout())
                .await;
            if !sent {
                tracing::debug!("no cluster node relayed the forget announcement");
            }
        });
    }

    fn remember_pending(&self, scope: &Scope) {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.len() < MAX_PENDING {
            pending.insert(scope.clone());
        } else {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// Deletes every key of a scope — its entries under every generation and its
    /// counter — by `SCAN MATCH <prefix>:{<scope>}:*` and `UNLINK`. O(keyspace):
    /// for erasing a person's data (rare, off every request path), never for
    /// invalidation. Returns how many keys were removed.
    pub async fn unlink_scope(&self, scope: &Scope) -> Result<u64, Failure> {
        if !self.redis.available() {
            return Err(Failure::Open);
        }
        let pattern = format!("{}*", keys::entry_key_head(self.redis.prefix(), scope));
        let mut conn = self.redis.conn().await?;
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            // The scope's keys share one slot: scan the node that holds it.
            let (next, found): (u64, Vec<String>) = tokio::time::timeout(
                self.redis.timeout() * 10,
                conn.inner.query_on_slot_of(&pattern, scan),
            )
            .await
            .map_err(|_| Failure::Timeout)??;
            if !found.is_empty() {
                removed += tokio::time::timeout(
                    self.redis.timeout() * 10,
                    redis::cmd("UNLINK")
                        .arg(&found)
                        .query_async::<u64>(&mut conn.inner),
                )
                .await
                .map_err(|_| Failure::Timeout)??;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}
