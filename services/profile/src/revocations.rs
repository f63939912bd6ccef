//! Revocations outlive Redis: PostgreSQL holds their truth, and this service
//! re-writes the revoked set whenever Redis lost it.
//!
//! Every revocation is already in profile's schema before it is announced:
//! logout, log out everywhere and a password change set `sessions.revoked_at`
//! (one row per session a token can name); an erasure deletes the sessions and
//! writes `erased_accounts` (a user-wide revocation, kept as long as a token
//! issued before it could live). The revoked set in Redis
//! (`<prefix>:revoked-sessions`) is a copy the other services read; it holds
//! this service's signed *completeness marker* at score `+inf`.
//!
//! Every [`CHECK_EVERY`] each replica reads the marker (one `ZRANGEBYSCORE`).
//! Missing or not verifying — the set was evicted, flushed, or Redis restarted
//! without its data (the marker lives in the set, so they are lost together) —
//! it re-writes every live revocation from PostgreSQL, signed, then the marker.
//! Until then journal and conversation replicas that read the set without a
//! marker refuse authenticated requests (503) and are not ready; replicas that
//! stayed subscribed keep what they heard. Expired members are trimmed here
//! (the other services only read).

use std::time::Duration;

use actix_web::web;
use kai_http::auth::control::Kind;
use kai_platform::Platform;
use kai_shared::redis::revocation;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the marker is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Expired members are trimmed (and expired erasures forgotten) every this many checks.
const TRIM_EVERY: u32 = 60;

/// Sessions revoked whose tokens have not expired.
pub const REVOKED_SESSIONS: &str = "SELECT id, extract(epoch FROM expires_at)::bigint
     FROM profile.sessions WHERE revoked_at IS NOT NULL AND expires_at > now()";

/// Erased accounts whose tokens may still live: the user, the erasure (unix ms),
/// until when (unix s).
pub const ERASED_ACCOUNTS: &str = "SELECT user_id, (extract(epoch FROM erased_at) * 1000)::bigint,
     extract(epoch FROM tokens_expire_at)::bigint
     FROM profile.erased_accounts WHERE tokens_expire_at > now()";

pub const FORGET_EXPIRED_ERASURES: &str =
    "DELETE FROM profile.erased_accounts WHERE tokens_expire_at <= now()";

/// Keeps the revoked set complete, until `stop` (with Redis).
pub async fn keep(p: web::Data<Platform>, stop: CancellationToken) {
    let Some(store) = p.redis.clone() else {
        return;
    };
    let mut pass = 0u32;
    loop {
        if let Err(e) = check_once(&p, &store).await {
            tracing::debug!(error = format!("{e:#}"), "revoked set: retrying");
        }
        if pass.is_multiple_of(TRIM_EVERY) {
            let _ = revocation::trim(&store).await;
            if let Ok(conn) = p.db.conn().await {
                let _ = p.db.execute(&conn, FORGET_EXPIRED_ERASURES, &[]).await;
            }
        }
        pass = pass.wrapping_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Restores the set when its marker is missing or does not verify.
async fn check_once(p: &Platform, store: &kai_shared::redis::Redis) -> anyhow::Result<()> {
    let markers = revocation::markers(store).await?;
    if markers
        .iter()
        .any(|m| p.auth.verify_control(m, &[Kind::Complete]).is_ok())
    {
        return Ok(());
    }
    let members = live_revocations(p).await?;
    let marker = p.auth.sign_control(Kind::Complete, String::new(), None)?;
    revocation::restore(store, &members, &marker).await?;
    tracing::info!(
        revocations = members.len(),
        "revoked set (re-)written from PostgreSQL"
    );
    Ok(())
}

/// Every live revocation, signed, with the unix second it expires at.
async fn live_revocations(p: &Platform) -> anyhow::Result<Vec<(i64, String)>> {
    let conn = p.db.conn().await?;
    let mut out = Vec::new();
    for row in p.db.query(&conn, REVOKED_SESSIONS, &[]).await? {
        let (session, exp): (Uuid, i64) = (row.get(0), row.get(1));
        let signed = p
            .auth
            .sign_control(Kind::Revocation, session.to_string(), Some(exp))?;
        out.push((exp, signed));
    }
    for row in p.db.query(&conn, ERASED_ACCOUNTS, &[]).await? {
        let (user, before_ms, exp): (Uuid, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let watermark = kai_http::auth::Watermark {
            before_ms,
            keep: None,
        };
        let body = kai_http::auth::user_revocation(user, watermark);
        out.push((exp, p.auth.sign_control(Kind::Revocation, body, Some(exp))?));
    }
    Ok(out)
}
