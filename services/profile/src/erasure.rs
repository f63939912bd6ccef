//! Account erasure (SPEC §4 "Erasure"): deleting an account removes the person's
//! data from every service, durably, without any service reading another's tables.
//!
//! ```text
//! DELETE /api/account ─► one transaction: DELETE users (profile, sessions cascade)
//!                                         + INSERT outbox 'account-erased' awaiting every participant
//!                     ─► user-wide revocation announced (every token refused within 1 s)
//! relay (every profile replica, woken at once, else every second):
//!     outbox rows due ──XADD──► Redis Stream <prefix>:{events:account-erased}
//!     acks set ──SPOP──► outbox.awaiting minus the service; row deleted when empty
//!     consumer groups on the stream ──XINFO GROUPS──► new ones into erasure_participants
//! each service's consumer group (profile, journal, conversation, …):
//!     XREADGROUP ─► purge (idempotent) ─► XACK + ack back (SADD)
//! ```
//!
//! * **Who is awaited** is learned, not listed: a service that holds personal
//!   data starts `kai_shared::erasure::consume` with its own group, and the relay
//!   records every group it sees on the stream in `profile.erasure_participants`
//!   (PostgreSQL, so a Redis that lost its groups does not make an erasure skip a
//!   service that is down). Adding a service touches only that service.
//! * **Durable**: the event is a row written with the deletion; Redis carries it
//!   but is not trusted to keep it. A row not fully acknowledged is re-sent after
//!   10 s, then 20 s, 40 s … (at most every 5 min), so a service that was down
//!   purges when it is back (its group also still holds the unread entry), and a
//!   Redis restarted without its data gets the event again — and the revocation
//!   with it, for replicas that start afterwards.
//! * **Idempotent**: every purge is "delete what is left", so duplicates and
//!   re-sends are harmless; an event names the services still awaited, so the
//!   others only acknowledge it.
//! * profile-service is itself a consumer: its database rows go in the request's
//!   transaction, its cache keys (and their retry) through the same path.
//!
//! Without Redis nothing can be relayed: rows wait in the outbox until it is
//! configured (the other services could not hear anything either).

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use actix_web::web;
use kai_platform::Platform;
use kai_shared::db::{Db, DbError};
use kai_shared::events::Events;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache_rules::user_scope;

/// The stream account erasures are published on.
pub use kai_shared::erasure::STREAM;
/// This service's consumer group.
pub const GROUP: &str = "profile";
/// How often the relay looks at the outbox when not woken.
const RELAY_EVERY: Duration = Duration::from_secs(1);

pub const DELETE_USER: &str = "DELETE FROM profile.users WHERE id = $1";

/// What waits in the outbox: how many erasures, and for how long the oldest
/// (0 when none). Served by `outbox_created`.
pub const BACKLOG: &str = "SELECT count(*), \
    coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) FROM profile.outbox";

/// The event, awaiting every known participant (and this service, which always is one).
pub const INSERT_EVENT: &str = "INSERT INTO profile.outbox (id, topic, payload, awaiting)
     SELECT $1, $2, $3, array(SELECT name FROM profile.erasure_participants UNION SELECT $4 ORDER BY 1)";

/// A consumer group seen on the stream becomes a participant (once).
pub const ADD_PARTICIPANT: &str =
    "INSERT INTO profile.erasure_participants (name) VALUES ($1) ON CONFLICT DO NOTHING";

/// Rows never sent, or not acknowledged in time (backing off to every 5 min),
/// locked so that concurrent relays of other replicas skip them.
pub const DUE: &str = "SELECT id, topic, payload, awaiting FROM profile.outbox
     WHERE sent_at IS NULL
        OR sent_at < now() - least(interval '10 seconds' * power(2, greatest(sends - 1, 0)), interval '5 minutes')
     ORDER BY created_at
     LIMIT 100
     FOR UPDATE SKIP LOCKED";

pub const MARK_SENT: &str =
    "UPDATE profile.outbox SET sent_at = now(), sends = sends + 1 WHERE id = $1";

pub const ACKNOWLEDGE: &str =
    "UPDATE profile.outbox SET awaiting = array_remove(awaiting, $2) WHERE id = $1";

pub const DELETE_DONE: &str =
    "DELETE FROM profile.outbox WHERE id = $1 AND cardinality(awaiting) = 0";

/// Wakes the relays of this process (a deletion was just committed).
static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Deletes the user (profile and sessions cascade) and records the erasure event,
/// in one transaction; false when there was no such user.
pub async fn delete_account(db: &Db, user_id: Uuid) -> Result<bool, DbError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await?;
    if db.execute(&tx, DELETE_USER, &[&user_id]).await? == 0 {
        return Ok(false);
    }
    db.execute(
        &tx,
        INSERT_EVENT,
        &[&Uuid::now_v7(), &STREAM, &user_id.to_string(), &GROUP],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Wakes the relays of this process: call it once the revocation is announced,
/// so every replica refuses the user's tokens before the purges start.
pub fn wake_relay() {
    WAKE.notify_waiters();
}

/// Profile's own purge: the cache scope (rows went with the request, so none
/// are deleted here).
async fn purge(p: &Platform, user_id: Uuid) -> anyhow::Result<u64> {
    p.cache.purge_scope(&user_scope(user_id)).await?;
    Ok(0)
}

/// Starts the relay and this service's consumer (with Redis).
pub fn start(p: web::Data<Platform>, stop: CancellationToken) {
    let consumed =
        kai_platform::server::consume_erasures(&p, stop.clone(), GROUP, |p, user_id| async move {
            purge(&p, user_id).await
        });
    tokio::spawn(watch_backlog(p.clone(), stop.clone()));
    if let Some(events) = consumed {
        tokio::spawn(relay(p, events, stop));
    }
}

/// `kai_erasure_backlog` (erasures some service has not acknowledged) and
/// `kai_erasure_oldest_pending_seconds`, read from the outbox every
/// [`RELAY_EVERY`] — with or without Redis: without it nothing is relayed and
/// the backlog is exactly what an operator must see grow.
async fn watch_backlog(p: web::Data<Platform>, stop: CancellationToken) {
    let rows = prometheus::IntGauge::new(
        "kai_erasure_backlog",
        "Account erasures in the outbox that some service has not acknowledged",
    )
    .expect("valid metric");
    let oldest = prometheus::Gauge::new(
        "kai_erasure_oldest_pending_seconds",
        "Age of the oldest unacknowledged account erasure (0 when none)",
    )
    .expect("valid metric");
    for gauge in [
        Box::new(rows.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(oldest.clone()),
    ] {
        if let Err(e) = p.metrics.registry.register(gauge) {
            tracing::error!(error = %e, "registering the erasure backlog gauges");
            return;
        }
    }
    loop {
        let measured = async {
            let conn = p.db.conn().await?;
            let row = p.db.query_one(&conn, BACKLOG, &[]).await?;
            Ok::<_, DbError>((row.get::<_, i64>(0), row.get::<_, f64>(1)))
        };
        match measured.await {
            Ok((n, age)) => {
                rows.set(n);
                oldest.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "erasure backlog: retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELAY_EVERY) => {}
        }
    }
}

/// Moves acknowledgements into the outbox and (re-)sends what is due, until stopped.
async fn relay(p: web::Data<Platform>, events: Events, stop: CancellationToken) {
    let mut participants = BTreeSet::new();
    loop {
        if let Err(e) = learn_participants(&p, &events, &mut participants).await {
            tracing::debug!(error = format!("{e:#}"), "erasure participants: retrying");
        }
        if let Err(e) = relay_once(&p, &events).await {
            tracing::debug!(error = format!("{e:#}"), "outbox relay: retrying");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = WAKE.notified() => {}
            _ = tokio::time::sleep(RELAY_EVERY) => {}
        }
    }
}

/// Records the consumer groups on the stream that `known` (what this replica
/// already recorded) lacks: one `XINFO GROUPS` a pass, a write only for a new one.
async fn learn_participants(
    p: &Platform,
    events: &Events,
    known: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let groups = events.groups(STREAM).await?;
    let new: Vec<String> = groups.into_iter().filter(|g| !known.contains(g)).collect();
    if new.is_empty() {
        return Ok(());
    }
    let conn = p.db.conn().await?;
    for group in new {
        p.db.execute(&conn, ADD_PARTICIPANT, &[&group]).await?;
        known.insert(group);
    }
    Ok(())
}

async fn relay_once(p: &Platform, events: &Events) -> anyhow::Result<()> {
    let db = &p.db;
    // Acknowledgements first, so a row acknowledged by everyone is not re-sent.
    let acks = events.take_acks(STREAM, 100).await?;
    if !acks.is_empty() {
        let conn = db.conn().await?;
        for (service, id) in acks {
            let Ok(id) = id.parse::<Uuid>() else { continue };
            db.execute(&conn, ACKNOWLEDGE, &[&id, &service]).await?;
            db.execute(&conn, DELETE_DONE, &[&id]).await?;
        }
    }
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await?;
    let due = db.query(&tx, DUE, &[]).await?;
    for row in &due {
        let (id, topic, payload, awaiting): (Uuid, String, String, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if topic == STREAM
            && let Ok(user_id) = payload.parse()
        {
            // A Redis that lost its data lost the revocation too: say it again,
            // for replicas that start from now on.
            p.revoke_user_sessions(user_id, None).await;
        }
        events
            .publish(&topic, &id.to_string(), &payload, &awaiting)
            .await?;
        db.execute(&tx, MARK_SENT, &[&id]).await?;
    }
    tx.commit().await?;
    Ok(())
}
