//! Account erasure, the platform's part (SPEC "Erasure"): the service that deletes
//! an account publishes the user's id on [`STREAM`] (from its outbox, re-sent
//! until every group acknowledged it); every service consumes the stream in its
//! own group and purges what it holds of the user — idempotently, each purge
//! counted in `kai_account_purges_total`. What a service purges is its own
//! business: it hands [`consume`] the function.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Consumer, Events};
use crate::metrics::Metrics;
use crate::settings::RedisSettings;

/// The stream account erasures travel on.
pub const STREAM: &str = "account-erased";

/// The counter every service exports: name and help.
pub const PURGES: (&str, &str) = (
    "kai_account_purges_total",
    "Account erasures carried out by this service",
);

/// Starts `group`'s consumer of [`STREAM`]: `purge(ctx, user_id)` (which
/// returns how many rows it deleted) for each erased account, until `stop`.
/// Returns the [`Events`] it consumes from; `None` without Redis.
pub fn consume<C, F, Fut>(
    ctx: C,
    redis: &RedisSettings,
    metrics: &Metrics,
    stop: CancellationToken,
    group: &'static str,
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
    consumer.start(ctx, redis, metrics, stop, move |ctx, payload| {
        let purge = purge.clone();
        async move {
            let user_id: Uuid = payload.parse()?;
            let deleted = purge(ctx, user_id).await?;
            tracing::info!(%user_id, deleted, "account purged");
            Ok(())
        }
    })
}
