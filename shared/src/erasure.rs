//! Account erasure, the platform's part (SPEC "Erasure"): the service that deletes
//! an account publishes the user's id on [`STREAM`] (from its outbox, re-sent
//! until every group acknowledged it); every service consumes the stream in its
//! own group and purges what it holds of the user — idempotently, each purge
//! counted in `kai_account_purges_total`. What a service purges is its own
//! business: it hands [`consume`] the function.
//!
//! Every event is signed by the publisher (`kai_http::auth::control`: the
//! event id, the user id, the kind and when it was issued are in the signed
//! bytes); each service verifies it ([`consume`]'s `verify`) before purging
//! anything. An event that does not verify — a forged one, a real one copied
//! under another event id or with another user id, garbage — purges nothing,
//! is dropped (acknowledged in the group, never retried) and counted in
//! `kai_events_rejected_total{stream="account-erased"}`.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Consumer, Events, Outcome};
use crate::metrics::Metrics;
use crate::settings::RedisSettings;

/// The stream account erasures travel on.
pub const STREAM: &str = "account-erased";

/// The counter every service exports: name and help.
pub const PURGES: (&str, &str) = (
    "kai_account_purges_total",
    "Account erasures carried out by this service",
);

/// How an event's (id, payload) is checked: the erased user's id, or why the
/// event was refused (a fixed word).
pub type Verify = Arc<dyn Fn(&str, &str) -> Result<Uuid, &'static str> + Send + Sync>;

/// Starts `group`'s consumer of [`STREAM`]: each event is `verify`-ed, then
/// `purge(ctx, user_id)` (which returns how many rows it deleted) runs for the
/// erased account, until `stop`. Returns the [`Events`] it consumes from;
/// `None` without Redis.
pub fn consume<C, F, Fut>(
    ctx: C,
    redis: &RedisSettings,
    metrics: &Metrics,
    stop: CancellationToken,
    group: &'static str,
    verify: Verify,
    purge: F,
) -> Option<Events>
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C, Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let consumer = Consumer {
        stream: STREAM,
        group,
        counted_as: PURGES,
    };
    let purge = Arc::new(purge);
    consumer.start(ctx, redis, metrics, stop, move |ctx, id, payload| {
        let purge = purge.clone();
        let verified = verify(&id, &payload);
        async move {
            let user_id = match verified {
                Ok(user_id) => user_id,
                Err(why) => return Ok(Outcome::Rejected(why)),
            };
            let deleted = purge(ctx, user_id).await?;
            tracing::info!(%user_id, deleted, "account purged");
            Ok(Outcome::Handled)
        }
    })
}
