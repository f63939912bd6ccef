//! Cross-replica invalidation: every replica subscribes to the service's
//! invalidation channel and forgets a scope's remembered generation when another
//! replica announces a newer one (the `BUMP` script publishes it in the same round
//! trip that sets it).
//!
//! The subscription is what makes remembered generations — and so L1 hits —
//! safe. While it is not established (start-up, a lost connection, a silent
//! partition caught by the periodic PING), the generation map is untrusted: every
//! read asks Redis for the generation, which is always correct, only slower.
//!
//! On a Redis Cluster, classic PUBLISH is broadcast to every node, so the
//! subscription lives on one node (the first seed that answers) and moves to the
//! next seed when that node is lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::generations::Generations;
use super::keys::{self, Scope};
use super::redis::L2;

/// How often the subscriber checks its connection is alive.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Wait between reconnection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Called with each revoked session id.
pub type OnRevoked = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs until `stop` is cancelled.
pub async fn subscribe(
    nodes: Vec<redis::Client>,
    l2: Arc<L2>,
    prefix: String,
    timeout: Duration,
    generations: Arc<Generations>,
    on_revoked: OnRevoked,
    stop: CancellationToken,
) {
    let mut node = 0;
    loop {
        let client = &nodes[node % nodes.len()];
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = listen(client, &l2, &prefix, timeout, &generations, &on_revoked) => outcome,
        };
        node += 1;
        generations.set_trusted(false);
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "invalidation subscription lost; L1 bypassed until it is back");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

async fn listen(
    client: &redis::Client,
    l2: &L2,
    prefix: &str,
    timeout: Duration,
    generations: &Generations,
    on_revoked: &OnRevoked,
) -> anyhow::Result<()> {
    let invalidations = keys::invalidation_channel(prefix);
    let revocations = keys::revocation_channel(prefix);
    let patience = timeout.max(Duration::from_millis(500));
    let (mut sink, mut stream) = tokio::time::timeout(patience, client.get_async_pubsub())
        .await??
        .split();
    tokio::time::timeout(patience, sink.subscribe(&[&invalidations, &revocations])).await??;
    // Sessions revoked before we subscribed (start-up, or while disconnected).
    let revoked = l2.revoked_sessions(patience).await?;
    for session in &revoked {
        on_revoked(session);
    }
    // Subscribed: from here on we hear every announcement, so remembered
    // generations (fetched from now on) can be trusted.
    generations.set_trusted(true);
    tracing::info!(
        revoked = revoked.len(),
        "invalidation subscription established"
    );
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { anyhow::bail!("subscription stream ended") };
                let payload: String = msg.get_payload().unwrap_or_default();
                if msg.get_channel_name() == revocations {
                    on_revoked(&payload);
                } else if let Some((tag, generation)) = payload.rsplit_once(' ')
                    && let Ok(generation) = generation.parse::<u64>()
                {
                    generations.on_message(&Scope::from_tag(tag), generation);
                }
            }
            _ = ping.tick() => {
                tokio::time::timeout(timeout.max(Duration::from_millis(500)), sink.ping::<String>()).await??;
            }
        }
    }
}
