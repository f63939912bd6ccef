//! Durable events between services, over Redis Streams.
//!
//! A service that must tell the others something it cannot lose (the owner of an
//! outbox table) [`Events::publish`]es it on a stream; every interested service
//! reads the stream through its own *consumer group* ([`Events::consume`]), so
//! each service — not each replica — handles each event once, and a service that
//! was down reads what it missed when it starts (the group remembers where it was).
//!
//! Delivery is at least once, and every handler must be idempotent:
//! * a handled event is `XACK`ed in the group and acknowledged back to the
//!   publisher (`SADD` of the event id to the group's own ack set
//!   `<prefix>:{events:<stream>}:acks:<group>`, which the publisher drains with
//!   [`Events::take_acks`] into its outbox). Each service may write only its own
//!   ack set (the Redis ACL file), and the publisher counts an acknowledgement
//!   only for the group whose set it came from: one service cannot acknowledge
//!   for another. The publisher decides from its own fixed list of
//!   participants which groups it waits for — never from the groups it finds on
//!   the stream — so a forged group is no participant, and a moved group
//!   (`XGROUP SETID … $`) or a forged `XACK` only skip a copy: the publisher
//!   re-sends what a group has not acknowledged;
//! * a handler may *reject* an event (it did not verify: forged, altered,
//!   unparseable): it acts on nothing, is `XACK`ed (never retried), logged at
//!   WARN without its payload and counted in `kai_events_rejected_total{stream}`;
//!   it is not acknowledged back;
//! * an event delivered to a replica that died before acknowledging it is claimed
//!   by another replica after [`CLAIM_IDLE`] (`XAUTOCLAIM`);
//! * Redis itself may lose everything (restarted without its data): the groups are
//!   re-created on the next read, and the publisher re-sends from its outbox every
//!   event that some group has not acknowledged. The stream is therefore only a
//!   transport; the truth is the publisher's table.
//!
//! An event names the groups that still owe an acknowledgement; a group not named
//! acknowledges it without handling it again. Entries older than [`RETAIN`] are
//! trimmed on publish: anything still unacknowledged by then has been re-sent.
//!
//! **Redis Cluster** (`REDIS_CLUSTER_NODES`): a stream and its ack sets share one
//! hash tag (`<prefix>:{events:<stream>}` and `…:acks:<group>`), so they live on one slot
//! and the acknowledging pipeline (`XACK` + `SADD`) goes to one node; commands are
//! routed by that slot through a cluster connection, which follows the slot when
//! its primary fails over. The consumer blocks in `XREADGROUP` on a cluster
//! connection of its own (a blocked node connection would stall every other
//! command multiplexed on it). A failover may lose an entry acknowledged to the
//! publisher but not yet replicated; the outbox re-sends it, as after a Redis
//! that lost its data.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::redis::{Link, Target};
use crate::settings::RedisSettings;

/// Stream entries older than this are trimmed when a new one is added.
pub const RETAIN: Duration = Duration::from_secs(3600);
/// An entry delivered to a consumer that has not acknowledged it for this long is
/// handed to another.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Bound on every other command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Wait before reconnecting after an error.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// A service's consumer group on one stream, and the counter of the events it
/// handled (exported at 0 from the start).
#[derive(Debug, Clone, Copy)]
pub struct Consumer {
    pub stream: &'static str,
    pub group: &'static str,
    /// The counter's name and help.
    pub counted_as: (&'static str, &'static str),
}

impl Consumer {
    /// Starts consuming in the background (until `stop`): `handle(ctx, event id,
    /// payload)` runs on each event (`ctx` is whatever the handler needs, e.g.
    /// the service's pool), each one handled is counted on `metrics`, each one
    /// rejected in `kai_events_rejected_total{stream}`. Returns the
    /// [`Events`] it consumes from, or `None` — said in the log — without Redis
    /// (there is no one to hear from) or when it cannot be set up.
    pub fn start<C, F, Fut>(
        &self,
        ctx: C,
        redis: &RedisSettings,
        metrics: &Metrics,
        stop: CancellationToken,
        handle: F,
    ) -> Option<Events>
    where
        C: Clone + Send + Sync + 'static,
        F: Fn(C, String, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<Outcome>> + Send + 'static,
    {
        let (name, help) = self.counted_as;
        let handled = match metrics.counter(name, help) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "registering {name}");
                return None;
            }
        };
        let events = match Events::new(redis) {
            Ok(events) => events?,
            Err(e) => {
                tracing::error!(error = %e, stream = self.stream, "events cannot be received");
                return None;
            }
        };
        let handle = Arc::new(handle);
        let failures = metrics.events_failures.with_label_values(&[self.stream]);
        let rejected = metrics.events_rejected.with_label_values(&[self.stream]);
        let handler: Handler = Arc::new(move |id: String, payload: String| {
            let (ctx, handle, handled, failures, rejected) = (
                ctx.clone(),
                handle.clone(),
                handled.clone(),
                failures.clone(),
                rejected.clone(),
            );
            Box::pin(async move {
                // An entry without an id is not the publisher's.
                let outcome = if id.is_empty() {
                    Ok(Outcome::Rejected("malformed"))
                } else {
                    handle(ctx, id, payload).await
                };
                match &outcome {
                    Err(_) => failures.inc(),
                    Ok(Outcome::Handled) => handled.inc(),
                    Ok(Outcome::Rejected(_)) => rejected.inc(),
                }
                outcome
            })
        });
        tokio::spawn(
            events
                .clone()
                .consume(self.stream, self.group, handler, stop),
        );
        Some(events)
    }
}

/// What a handler made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acted on: acknowledged in the group and back to the publisher.
    Handled,
    /// Did not verify (the reason: a fixed word, no personal data): acted on
    /// nothing, acknowledged in the group only (never retried), counted.
    Rejected(&'static str),
}

/// Handles one event (its id, its payload); an error leaves it unacknowledged
/// (retried).
pub type Handler =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, anyhow::Result<Outcome>> + Send + Sync>;

/// One event as read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream entry id (for `XACK`).
    pub entry: String,
    /// The publisher's id of the event (stable across re-sends).
    pub id: String,
    pub payload: String,
    /// The groups that still owe an acknowledgement.
    pub to: Vec<String>,
}

/// Streams on the service's Redis (one node or a cluster), under its key prefix.
/// Cheap to clone.
#[derive(Clone)]
pub struct Events {
    target: Target,
    prefix: String,
    /// The connection shared by publishing and draining acknowledgements: it
    /// reconnects by itself (a connection manager on one node; a cluster
    /// connection refreshes its slot map and reconnects on its own).
    conn: Arc<tokio::sync::OnceCell<Link>>,
}

impl Events {
    /// `None` without `REDIS_URL` or `REDIS_CLUSTER_NODES`: there is nothing to
    /// carry events.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Option<Self>> {
        let Some(target) = Target::from_settings(settings).map_err(anyhow::Error::msg)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            target,
            prefix: settings.prefix.clone(),
            conn: Arc::default(),
        }))
    }

    /// The stream's key. Its hash tag puts the stream and its ack sets on one
    /// cluster slot.
    pub fn stream_key(&self, stream: &str) -> String {
        format!("{}:{{events:{stream}}}", self.prefix)
    }

    /// The set `group`'s acknowledgements travel back to the publisher in
    /// (only that group's service may write it).
    pub fn acks_key(&self, stream: &str, group: &str) -> String {
        format!("{}:{{events:{stream}}}:acks:{group}", self.prefix)
    }

    async fn conn(&self) -> anyhow::Result<Link> {
        let target = &self.target;
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.conn.get_or_try_init(|| target.connect_managed()),
        )
        .await
        .context("connecting to Redis timed out")??;
        Ok(conn.clone())
    }

    /// A connection of the consumer's own (it blocks in `XREADGROUP` for up to
    /// [`BLOCK`], longer than the client's default response timeout).
    async fn dedicated(&self) -> anyhow::Result<Link> {
        let blocking = self.target.connect_blocking(BLOCK + COMMAND_TIMEOUT);
        Ok(tokio::time::timeout(COMMAND_TIMEOUT, blocking)
            .await
            .context("connecting to Redis timed out")??)
    }

    /// Adds an event for the groups `to` (trimming entries older than [`RETAIN`]).
    pub async fn publish(
        &self,
        stream: &str,
        id: &str,
        payload: &str,
        to: &[String],
    ) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let oldest = chrono::Utc::now().timestamp_millis() - RETAIN.as_millis() as i64;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.stream_key(stream))
            .arg("MINID")
            .arg("~")
            .arg(oldest.max(0))
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("payload")
            .arg(payload)
            .arg("to")
            .arg(to.join(","));
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<String>(&mut conn))
            .await
            .context("XADD timed out")??;
        Ok(())
    }

    /// Takes up to `max` acknowledgements of each of `groups`: (group, event id)
    /// pairs, each from the group's own ack set — one round trip (the sets share
    /// the stream's hash tag, so one slot on a cluster).
    pub async fn take_acks<'g>(
        &self,
        stream: &str,
        groups: &[&'g str],
        max: usize,
    ) -> anyhow::Result<Vec<(&'g str, String)>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for group in groups {
            pipe.cmd("SPOP").arg(self.acks_key(stream, group)).arg(max);
        }
        let taken: Vec<Vec<String>> =
            tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut conn))
                .await
                .context("SPOP timed out")??;
        Ok(groups
            .iter()
            .zip(taken)
            .flat_map(|(group, ids)| ids.into_iter().map(move |id| (*group, id)))
            .collect())
    }

    /// Runs `group`'s consumer of `stream` until `stop` is cancelled: reads new
    /// events (and claims ones abandoned by dead replicas), hands each payload to
    /// `handle`, and acknowledges the ones it handled.
    pub async fn consume(
        self,
        stream: &str,
        group: &str,
        handle: Handler,
        stop: CancellationToken,
    ) {
        let consumer = format!("{group}-{}", uuid::Uuid::new_v4().simple());
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = self.consume_once(stream, group, &consumer, &handle) => outcome,
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, stream, "event consumer reconnecting");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// One connection's worth of consuming; returns on the first error.
    async fn consume_once(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        handle: &Handler,
    ) -> anyhow::Result<()> {
        let key = self.stream_key(stream);
        let mut conn = self.dedicated().await?;
        // From the stream's start: a group created after events were added (first
        // start, or Redis lost its data) still sees them.
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        let mut last_claim = tokio::time::Instant::now() - CLAIM_IDLE;
        loop {
            let mut events = Vec::new();
            if last_claim.elapsed() >= CLAIM_IDLE / 2 {
                last_claim = tokio::time::Instant::now();
                let claimed: Value = tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(group)
                        .arg(consumer)
                        .arg(CLAIM_IDLE.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(16)
                        .query_async(&mut conn),
                )
                .await
                .context("XAUTOCLAIM timed out")??;
                if let Value::Array(parts) = &claimed
                    && let Some(entries) = parts.get(1)
                {
                    events.extend(parse_entries(entries));
                }
            }
            let read: Value = tokio::time::timeout(
                BLOCK + COMMAND_TIMEOUT,
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(16)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn),
            )
            .await
            .context("XREADGROUP timed out")??;
            // [[key, [entry, …]]], or nil when nothing arrived.
            if let Value::Array(streams) = &read {
                for s in streams {
                    if let Value::Array(pair) = s
                        && let Some(entries) = pair.get(1)
                    {
                        events.extend(parse_entries(entries));
                    }
                }
            }
            for event in events {
                let mine = event.id.is_empty() || event.to.iter().any(|g| g == group);
                let acknowledge = if mine {
                    match handle(event.id.clone(), event.payload.clone()).await {
                        Err(e) => {
                            // Left pending: claimed again after CLAIM_IDLE, or re-sent.
                            tracing::error!(error = format!("{e:#}"), stream, event = %event.id, "event handling failed; it will be retried");
                            continue;
                        }
                        Ok(Outcome::Handled) => true,
                        Ok(Outcome::Rejected(why)) => {
                            // Never the payload: it names a user.
                            tracing::warn!(stream, entry = %event.entry, reason = why, "event rejected: it did not verify; dropped");
                            false
                        }
                    }
                } else {
                    false
                };
                let mut pipe = redis::pipe();
                pipe.cmd("XACK")
                    .arg(&key)
                    .arg(group)
                    .arg(&event.entry)
                    .ignore();
                if acknowledge {
                    pipe.cmd("SADD")
                        .arg(self.acks_key(stream, group))
                        .arg(&event.id)
                        .ignore();
                }
                tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn))
                    .await
                    .context("acknowledging timed out")??;
            }
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[entry id, [field, value, …]], …]` → events (deleted entries are skipped;
/// an entry without the fields this module writes comes back with an empty id,
/// for the consumer to reject and acknowledge).
fn parse_entries(v: &Value) -> Vec<Event> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = text(parts.first()?)?;
            let Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let mut event = Event {
                entry: id,
                id: String::new(),
                payload: String::new(),
                to: Vec::new(),
            };
            for pair in fields.chunks(2) {
                let (Some(k), Some(v)) = (pair.first().and_then(text), pair.get(1).and_then(text))
                else {
                    continue;
                };
                match k.as_str() {
                    "id" => event.id = v,
                    "payload" => event.payload = v,
                    "to" => event.to = v.split(',').map(str::to_owned).collect(),
                    _ => {}
                }
            }
            Some(event)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_parse_into_events() {
        let v = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("id"),
                    bulk("e1"),
                    bulk("payload"),
                    bulk("p"),
                    bulk("to"),
                    bulk("a,b"),
                ]),
            ]),
            Value::Nil,
            Value::Array(vec![
                bulk("2-0"),
                Value::Array(vec![bulk("other"), bulk("x")]),
            ]),
        ]);
        assert_eq!(
            parse_entries(&v),
            vec![
                Event {
                    entry: "1-0".into(),
                    id: "e1".into(),
                    payload: "p".into(),
                    to: vec!["a".into(), "b".into()],
                },
                Event {
                    entry: "2-0".into(),
                    id: String::new(),
                    payload: String::new(),
                    to: Vec::new(),
                }
            ]
        );
    }
}
