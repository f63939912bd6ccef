//! Account erasure (SPEC §4 "Erasure"): deleting an account removes the person's
//! data from every service, durably, without any service reading another's tables.
//!
//! ```text
//! DELETE /api/account ─► one transaction: DELETE users (profile, sessions cascade)
//!                                         + INSERT erased_accounts (the revocation's truth)
//!                                         + INSERT outbox 'account-erased' awaiting every participant
//!                     ─► user-wide revocation announced (every token refused within 1 s)
//! relay (every profile replica, woken at once, else every second):
//!     outbox rows due ──sign──XADD──► Redis Stream <prefix>:{events:account-erased}
//!     each participant's ack set ──SPOP──► outbox.awaiting minus that participant;
//!                                          row deleted when empty
//! each service's consumer group (profile, journal, conversation):
//!     XREADGROUP ─► verify the signature ─► purge (idempotent) ─► XACK + ack back
//!     (SADD to its own …:acks:<service>)
//! ```
//!
//! * **Who is awaited** is a fixed list ([`PARTICIPANTS`]), never the groups
//!   found on the stream: a forged consumer group is no participant, and only
//!   an acknowledgement in a participant's own ack set (which only that
//!   service may write: the Redis ACL file) counts for it. A moved group
//!   (`XGROUP SETID … $`) or a forged `XACK` skips a copy of the event, not
//!   the erasure: the row stays, and is re-sent, until the service acknowledged.
//!   Adding a service that holds personal data means adding it here.
//! * **Authenticated**: every event on the stream is signed with this
//!   service's token-signing key (`kai_http::auth::control`; event id, user id,
//!   kind and issue time signed); every consumer verifies it before purging.
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

/// The services an erasure waits for (their consumer groups), sorted.
pub const PARTICIPANTS: [&str; 3] = ["conversation", "journal", "profile"];

/// The event, awaiting every participant.
pub const INSERT_EVENT: &str = "INSERT INTO profile.outbox (id, topic, payload, awaiting)
     VALUES ($1, $2, $3, $4)";

/// The erasure as a user-wide revocation, kept until the tokens issued before
/// it have expired (`$3` seconds from now).
pub const INSERT_ERASED: &str =
    "INSERT INTO profile.erased_accounts (user_id, erased_at, tokens_expire_at)
     VALUES ($1, now(), now() + make_interval(secs => $2))
     ON CONFLICT (user_id) DO NOTHING";

/// Rows awaiting a service that is no participant (learned from the stream's
/// groups before the list was fixed) await the participants only.
pub const PRUNE_AWAITING: &str = "UPDATE profile.outbox
     SET awaiting = array(SELECT a FROM unnest(awaiting) AS a WHERE a = ANY($1) ORDER BY 1)
     WHERE NOT awaiting <@ $1";

pub const DELETE_ALL_DONE: &str = "DELETE FROM profile.outbox WHERE cardinality(awaiting) = 0";

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

/// Deletes the user (profile and sessions cascade) and records the erasure event
/// and the erasure as a revocation (kept `token_ttl` — plus a minute — after
/// it), in one transaction; false when there was no such user.
pub async fn delete_account(db: &Db, user_id: Uuid, token_ttl: Duration) -> Result<bool, DbError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await?;
    if db.execute(&tx, DELETE_USER, &[&user_id]).await? == 0 {
        return Ok(false);
    }
    let participants: Vec<String> = PARTICIPANTS.iter().map(|p| (*p).to_owned()).collect();
    db.execute(
        &tx,
        INSERT_EVENT,
        &[
            &Uuid::now_v7(),
            &STREAM,
            &user_id.to_string(),
            &participants,
        ],
    )
    .await?;
    let keep_secs = (token_ttl.as_secs() + 60) as f64;
    db.execute(&tx, INSERT_ERASED, &[&user_id, &keep_secs])
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
    let mut pruned = false;
    loop {
        if !pruned {
            pruned = prune_non_participants(&p).await.is_ok();
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

/// Once per start: rows that await a non-participant await the participants only.
async fn prune_non_participants(p: &Platform) -> Result<(), DbError> {
    let participants: Vec<String> = PARTICIPANTS.iter().map(|p| (*p).to_owned()).collect();
    let conn = p.db.conn().await?;
    if p.db
        .execute(&conn, PRUNE_AWAITING, &[&participants])
        .await?
        > 0
    {
        p.db.execute(&conn, DELETE_ALL_DONE, &[]).await?;
    }
    Ok(())
}

/// The event as it travels: signed, its body `<event id> <user id>`.
fn signed_event(p: &Platform, id: Uuid, payload: &str) -> anyhow::Result<String> {
    p.auth.sign_control(
        kai_http::auth::control::Kind::AccountErased,
        format!("{id} {payload}"),
        None,
    )
}

async fn relay_once(p: &Platform, events: &Events) -> anyhow::Result<()> {
    let db = &p.db;
    // Acknowledgements first, so a row acknowledged by everyone is not re-sent;
    // each participant's from its own set only (all of them in one round trip).
    let acks = events.take_acks(STREAM, &PARTICIPANTS, 100).await?;
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
        let signed = signed_event(p, id, &payload)?;
        events
            .publish(&topic, &id.to_string(), &signed, &awaiting)
            .await?;
        db.execute(&tx, MARK_SENT, &[&id]).await?;
    }
    tx.commit().await?;
    Ok(())
}
