//! Cross-replica invalidation: every replica subscribes to its service's own
//! invalidation channel (`<prefix>:invalidations:<service>`) and forgets a
//! scope's remembered generation when another replica announces a newer one (the `BUMP` script publishes it in the same round
//! trip that sets it).
//!
//! The subscription is what makes remembered generations — and so L1 hits —
//! safe. A heartbeat `PING` goes out on the subscribed connection every
//! [`HEARTBEAT_EVERY`]; its answer (in subscribed mode an array `["pong", ""]`)
//! comes after every message Redis queued before it, so once the messages already
//! received are applied, the heartbeat's send time is
//! [confirmed](Generations::confirm): remembered generations stay trusted for
//! [`TRUST_WINDOW`](super::generations::TRUST_WINDOW) after it. A silent
//! connection (Redis paused, packets dropped) thus stops L1 use within 250 ms,
//! without tearing anything down; only a heartbeat unanswered for [`LOST_AFTER`]
//! (or a closed connection) replaces the subscription, with one warning. In
//! steady state the subscriber is one long-lived connection per replica costing
//! ten PINGs a second.
//!
//! On a Redis Cluster, classic PUBLISH is broadcast to every node, so the
//! subscription lives on one node (the first seed that answers) and moves to the
//! next seed when that node is lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clock::mono_micros;
use super::generations::Generations;
use super::keys::Scope;
use crate::redis::{Redis, revocation};

/// How often the subscriber proves its connection hears Redis. Well inside the
/// 250 ms trust window, so one late answer does not make L1 untrusted.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// A heartbeat unanswered this long means the connection is gone: replace it.
pub const LOST_AFTER: Duration = Duration::from_secs(2);
/// Wait between reconnection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Called with each revocation announced on the channel (and, without an
/// [`OnLoaded`], with each member of the revoked set).
pub type OnRevoked = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with the members of the revoked set each time it is read (once
/// subscribed); answers whether the set was complete (held a verified
/// completeness marker). While it was not, the set is read again every
/// [`RELOAD_EVERY`] until it is.
pub type OnLoaded = Arc<dyn Fn(&[String]) -> bool + Send + Sync>;

/// How often an incomplete revoked set is read again.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// What the subscription tells what it hears: the generations (invalidations),
/// `on_revoked` (revocations), and the count of subscriptions established.
pub struct Listeners {
    pub generations: Arc<Generations>,
    pub on_revoked: OnRevoked,
    /// None: every member goes to `on_revoked`, and the set counts as complete.
    pub on_loaded: Option<OnLoaded>,
    pub subscriptions: prometheus::IntCounter,
}

/// Runs until `stop` is cancelled.
pub async fn subscribe(
    nodes: Vec<redis::Client>,
    redis: Arc<Redis>,
    channel: String,
    timeout: Duration,
    listeners: Listeners,
    stop: CancellationToken,
) {
    let generations = &listeners.generations;
    let mut node = 0;
    let mut failures = 0u32;
    loop {
        let client = &nodes[node % nodes.len()];
        let mut established = false;
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = listen(client, &redis, &channel, timeout, &listeners, &mut established) => outcome,
        };
        generations.set_subscribed(false);
        if established {
            failures = 0;
        }
        failures += 1;
        node += 1;
        if let Err(e) = outcome {
            // One line per outage, not one per attempt while Redis stays away.
            if failures == 1 {
                tracing::warn!(error = %e, "invalidation subscription lost; L1 bypassed until it is back");
            } else {
                tracing::debug!(error = %e, attempt = failures, "invalidation subscription still down");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

async fn listen(
    client: &redis::Client,
    redis: &Redis,
    invalidations: &str,
    timeout: Duration,
    listeners: &Listeners,
    established: &mut bool,
) -> anyhow::Result<()> {
    let Listeners {
        generations,
        on_revoked,
        on_loaded,
        subscriptions,
    } = listeners;
    let revocations = revocation::channel(redis.prefix());
    let patience = timeout.max(Duration::from_millis(500));
    let (mut sink, mut stream) = tokio::time::timeout(patience, client.get_async_pubsub())
        .await??
        .split();
    tokio::time::timeout(patience, sink.subscribe(&[invalidations, &revocations])).await??;
    // Subscribed: from here on we hear every announcement. Generations remembered
    // before are dropped (messages may have been missed).
    generations.set_subscribed(true);
    *established = true;
    subscriptions.inc();
    // Sessions revoked before we subscribed (start-up, or while disconnected).
    let load = || async {
        let revoked = revocation::revoked_sessions(redis, patience).await?;
        let complete = match on_loaded {
            Some(on_loaded) => on_loaded(&revoked),
            None => {
                for session in &revoked {
                    on_revoked(session);
                }
                true
            }
        };
        Ok::<_, anyhow::Error>((revoked.len(), complete))
    };
    let (revoked, mut complete) = load().await?;
    tracing::info!(revoked, complete, "invalidation subscription established");
    let mut reload = tokio::time::interval(RELOAD_EVERY);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let apply = |msg: redis::Msg| {
        let payload: String = msg.get_payload().unwrap_or_default();
        if msg.get_channel_name() == revocations {
            on_revoked(&payload);
        } else if let Some((tag, generation)) = payload.rsplit_once(' ')
            && let Ok(generation) = generation.parse::<u64>()
        {
            generations.on_message(&Scope::from_tag(tag), generation);
        }
    };

    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The heartbeat in flight: when it was sent (monotonic µs) and its answer.
    let mut in_flight: Option<(
        u64,
        Instant,
        BoxFuture<'static, redis::RedisResult<redis::Value>>,
    )> = None;
    loop {
        let waiting = in_flight.is_some();
        let lost_at = in_flight.as_ref().map_or_else(
            || Instant::now() + LOST_AFTER,
            |(_, at, _)| *at + LOST_AFTER,
        );
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { anyhow::bail!("subscription stream ended") };
                apply(msg);
            }
            _ = beat.tick(), if !waiting => {
                let mut pinger = sink.clone();
                // In subscribed mode PING is answered with an array, not "PONG".
                let answer = async move { pinger.ping::<redis::Value>().await }.boxed();
                in_flight = Some((mono_micros(), Instant::now(), answer));
            }
            answer = async { (&mut in_flight.as_mut().expect("waiting").2).await }, if waiting => {
                let (sent_at, _, _) = in_flight.take().expect("waiting");
                answer?;
                // Every message Redis sent before this answer is already queued on
                // the stream: apply them, then confirm.
                while let Some(Some(msg)) = stream.next().now_or_never() {
                    apply(msg);
                }
                generations.confirm(sent_at);
            }
            _ = reload.tick(), if !complete => {
                // Redis lost the set: read it again until profile-service has
                // restored it (the marker is back).
                let (revoked, now_complete) = load().await?;
                if now_complete {
                    tracing::info!(revoked, "revoked sessions restored");
                }
                complete = now_complete;
            }
            _ = tokio::time::sleep_until(lost_at), if waiting => {
                anyhow::bail!("no heartbeat answer in {} s", LOST_AFTER.as_secs());
            }
        }
    }
}
