//! `GET /api/journal/export`: every live entry of the caller, oldest first, as
//! `application/x-ndjson` (one entry per line) — the data-portability answer
//! (GDPR Art. 20).
//!
//! Memory stays flat whatever the journal holds: the entries are read in keyset
//! batches of [`BATCH`] rows (`(created_at, id) > last`, served by the
//! `journal_entries_user_created_live` index read backwards), and each batch is
//! serialized into one chunk and handed to the client before the next is read.
//! A connection is taken from the pool per batch and returned in between, so a
//! slow client holds a little memory, never a database connection.
//!
//! The first batch is read before the answer starts: a database failure is then
//! a clean 503 problem, not a truncated 200. A failure later can only cut the
//! stream short (the client sees no terminating chunk), and is logged.
//!
//! Not cached (an export is rare and would only evict hot entries) and answered
//! with `Cache-Control: no-store`.

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use kai_http::ApiError;
use kai_http::auth::AuthUser;
use kai_http::respond;
use kai_platform::Platform;
use kai_shared::db::{Db, DbError, read_at};
use uuid::Uuid;

use crate::model::Entry;
use crate::queries::entry;

/// Rows per statement: at most 200 × 20,000 characters in memory at once.
pub const BATCH: i64 = 200;

pub const EXPORT_FIRST: &str = "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM journal.journal_entries
     WHERE user_id = $1 AND deleted_at IS NULL
     ORDER BY created_at, id
     LIMIT $2";

pub const EXPORT_AFTER: &str = "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM journal.journal_entries
     WHERE user_id = $1 AND deleted_at IS NULL AND (created_at, id) > ($3, $4)
     ORDER BY created_at, id
     LIMIT $2";

/// Where the next batch starts.
#[derive(Clone, Copy)]
enum Next {
    After(DateTime<Utc>, Uuid),
    Done,
}

/// One batch of the user's entries, oldest first, after `after` (or from the start).
async fn batch(
    db: &Db,
    user_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<Entry>, DbError> {
    db.read(|conn| async move {
        let rows = match after {
            None => db.query(&conn, EXPORT_FIRST, &[&user_id, &BATCH]).await?,
            Some((at, id)) => {
                db.query(&conn, EXPORT_AFTER, &[&user_id, &BATCH, &at, &id])
                    .await?
            }
        };
        Ok(rows.iter().map(entry).collect())
    })
    .await
}

/// The batch as NDJSON lines, and where the next one starts.
fn encode(entries: &[Entry]) -> Result<(Bytes, Next), ApiError> {
    let mut out = Vec::with_capacity(entries.len() * 256);
    for e in entries {
        serde_json::to_writer(&mut out, e).map_err(ApiError::internal)?;
        out.push(b'\n');
    }
    let next = match entries.last() {
        Some(last) if entries.len() as i64 == BATCH => Next::After(last.created_at, last.id),
        _ => Next::Done,
    };
    Ok((Bytes::from(out), next))
}

/// Every live entry of the caller, one JSON object per line, oldest first; streamed.
#[utoipa::path(get, path = "/api/journal/export", tag = "entries",
    responses(
        (status = 200, description = "One entry per line (NDJSON), oldest first; the schema is that of the sequence of lines", content_type = "application/x-ndjson", body = [Entry]),
        (status = 401),
        (status = 429, description = "This user already has `JOURNAL_EXPORTS_RUNNING_PER_USER` exports streaming, or started `JOURNAL_EXPORTS_PER_MINUTE` in the last minute", body = kai_http::errors::Problem),
        (status = 503)))]
pub async fn export_entries(
    p: web::Data<Platform>,
    limits: web::Data<crate::limits::Limits>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    // Held by the stream: freed when it ends, fails or its client leaves.
    let slot = std::sync::Arc::new(limits.export(&p, user.user_id).await?);
    let db = p.db.clone();
    let user_id = user.user_id;
    // Every batch on a replica only if it replayed past the user's last write
    // as of now (SPEC §7), else on the primary.
    let at = p
        .cache
        .read_position(&crate::cache_rules::user_scope(user_id))
        .await;
    let (first, next) = encode(&read_at(at, batch(&db, user_id, None)).await?)?;
    let position = at;
    let rest = futures_util::stream::unfold(next, move |next| {
        let db = db.clone();
        let slot = slot.clone();
        async move {
            let _running = slot;
            let Next::After(at, id) = next else {
                return None;
            };
            let chunk = match read_at(position, batch(&db, user_id, Some((at, id)))).await {
                Ok(entries) if entries.is_empty() => return None,
                Ok(entries) => encode(&entries),
                Err(e) => Err(ApiError::from(e)),
            };
            Some(match chunk {
                Ok((bytes, next)) => (Ok(bytes), next),
                Err(e) => {
                    tracing::error!(error = %e, "journal export cut short");
                    (Err(e), Next::Done)
                }
            })
        }
    });
    let body = futures_util::stream::once(async move { Ok::<_, ApiError>(first) }).chain(rest);
    Ok(respond::ndjson("kai-journal.ndjson", body))
}
