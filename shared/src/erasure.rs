//! Account erasure, the platform's part (SPEC "Erasure"): the service that deletes
//! an account publishes the user's id on [`STREAM`] (from its outbox, re-sent
//! until every group acknowledged it); every service consumes the stream in its
//! own group and purges what it holds of the user — idempotently, each purge
//! counted in `kai_account_purges_total`. What a service purges is its own
//! business: it hands [`consume`] the function.

use std::future::Future;
use std::sync::Arc;

use actix_web::web;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Platform;
use crate::events::{Consumer, Events};

/// The stream account erasures travel on.
pub const STREAM: &str = "account-erased";

/// The counter every service exports: name and help.
pub const PURGES: (&str, &str) = (
    "kai_account_purges_total",
    "Account erasures carried out by this service",
);

/// Starts `group`'s consumer of [`STREAM`]: `purge(platform, user_id)` (which
/// returns how many rows it deleted) for each erased account, until `stop`.
/// Returns the [`Events`] it consumes from; `None` without Redis.
pub fn consume<F, Fut>(
    p: &web::Data<Platform>,
    stop: CancellationToken,
    group: &'static str,
    purge: F,
) -> Option<Events>
where
    F: Fn(web::Data<Platform>, Uuid) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let consumer = Consumer {
        stream: STREAM,
        group,
        counted_as: PURGES,
    };
    let purge = Arc::new(purge);
    consumer.start(p, stop, move |p, payload| {
        let purge = purge.clone();
        async move {
            let user_id: Uuid = payload.parse()?;
            let deleted = purge(p, user_id).await?;
            tracing::info!(%user_id, deleted, "account purged");
            Ok(())
        }
    })
}
