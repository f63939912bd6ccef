//! `GET /api/conversations/export`: every conversation of the caller, oldest
//! first, one per line of `application/x-ndjson`, each with all its messages
//! (oldest first) — the data-portability answer (GDPR Art. 20).
//!
//! Memory stays flat whatever the size, even for one conversation holding
//! hundreds of thousands of imported messages: conversations are read in keyset
//! batches of [`CONVERSATIONS_PER_BATCH`] (index `conversations_user_created`,
//! V3), and each conversation's line is written in pieces — its head
//! (`{"id":…,"messages":[`), then its messages in keyset batches of
//! [`MESSAGES_PER_BATCH`] (index `messages_conversation_created`, read
//! backwards), then `]}` and the newline. A pooled connection is taken per
//! statement, never held while the client reads.
//!
//! The first batch of conversations is read before the answer starts, so a
//! database failure is a clean 503; a later one cuts the stream short and is
//! logged. Not cached; `Cache-Control: no-store`.

use std::collections::VecDeque;

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use kai_http::ApiError;
use kai_http::auth::AuthUser;
use kai_http::respond;
use kai_platform::Platform;
use kai_shared::db::{Db, DbError, read_at};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::Message;

pub const CONVERSATIONS_PER_BATCH: i64 = 50;
pub const MESSAGES_PER_BATCH: i64 = 500;

pub const CONVERSATIONS_FIRST: &str = "SELECT id, title, created_at, updated_at
     FROM conversation.conversations
     WHERE user_id = $1
     ORDER BY created_at, id
     LIMIT $2";

pub const CONVERSATIONS_AFTER: &str = "SELECT id, title, created_at, updated_at
     FROM conversation.conversations
     WHERE user_id = $1 AND (created_at, id) > ($3, $4)
     ORDER BY created_at, id
     LIMIT $2";

pub const MESSAGES_FIRST: &str = "SELECT id, role, content, created_at
     FROM conversation.messages
     WHERE conversation_id = $1
     ORDER BY created_at, id
     LIMIT $2";

pub const MESSAGES_AFTER: &str = "SELECT id, role, content, created_at
     FROM conversation.messages
     WHERE conversation_id = $1 AND (created_at, id) > ($3, $4)
     ORDER BY created_at, id
     LIMIT $2";

/// One exported line: a conversation and every message in it, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportedConversation {
    pub id: Uuid,
    pub title: Option<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub messages: Vec<Message>,
}

/// The line's fields before `messages`, serialized first.
#[derive(Serialize)]
struct Head {
    id: Uuid,
    title: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

type Key = (DateTime<Utc>, Uuid);

/// Where the stream stands.
struct State {
    db: Db,
    user_id: Uuid,
    /// Conversations read but not yet written.
    queue: VecDeque<Head>,
    /// Where the next batch of conversations starts; `None` once all were read.
    more_after: Option<Key>,
    /// The conversation whose messages are being written: its id, where its next
    /// batch of messages starts (`None` = from its first), whether one was written.
    open: Option<(Uuid, Option<Key>, bool)>,
}

async fn conversations(db: &Db, user_id: Uuid, after: Option<Key>) -> Result<Vec<Head>, DbError> {
    db.read(|conn| async move {
        let rows = match after {
            None => {
                db.query(
                    &conn,
                    CONVERSATIONS_FIRST,
                    &[&user_id, &CONVERSATIONS_PER_BATCH],
                )
                .await?
            }
            Some((at, id)) => {
                db.query(
                    &conn,
                    CONVERSATIONS_AFTER,
                    &[&user_id, &CONVERSATIONS_PER_BATCH, &at, &id],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| Head {
                id: r.get("id"),
                title: r.get("title"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
            })
            .collect())
    })
    .await
}

async fn messages(
    db: &Db,
    conversation: Uuid,
    after: Option<Key>,
) -> Result<Vec<Message>, DbError> {
    db.read(|conn| async move {
        let rows = match after {
            None => {
                db.query(&conn, MESSAGES_FIRST, &[&conversation, &MESSAGES_PER_BATCH])
                    .await?
            }
            Some((at, id)) => {
                db.query(
                    &conn,
                    MESSAGES_AFTER,
                    &[&conversation, &MESSAGES_PER_BATCH, &at, &id],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| Message {
                id: r.get("id"),
                role: r.get("role"),
                content: r.get("content"),
                created_at: r.get("created_at"),
            })
            .collect())
    })
    .await
}

impl State {
    /// Remembers a batch of conversations and where the next one starts.
    fn enqueue(&mut self, batch: Vec<Head>) {
        self.more_after = match batch.last() {
            Some(last) if batch.len() as i64 == CONVERSATIONS_PER_BATCH => {
                Some((last.created_at, last.id))
            }
            _ => None,
        };
        self.queue.extend(batch);
    }

    /// The next piece of output, or `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if let Some((conversation, after, wrote)) = self.open {
                let batch = messages(&self.db, conversation, after).await?;
                let mut out = Vec::with_capacity(batch.len() * 256 + 4);
                for (i, m) in batch.iter().enumerate() {
                    if wrote || i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, m).map_err(ApiError::internal)?;
                }
                self.open = match batch.last() {
                    Some(last) if batch.len() as i64 == MESSAGES_PER_BATCH => {
                        Some((conversation, Some((last.created_at, last.id)), true))
                    }
                    _ => {
                        out.extend_from_slice(b"]}\n");
                        None
                    }
                };
                return Ok(Some(Bytes::from(out)));
            }
            if let Some(head) = self.queue.pop_front() {
                let mut out = serde_json::to_vec(&head).map_err(ApiError::internal)?;
                out.pop(); // the closing brace: the messages follow
                out.extend_from_slice(br#","messages":["#);
                self.open = Some((head.id, None, false));
                return Ok(Some(Bytes::from(out)));
            }
            let Some(after) = self.more_after else {
                return Ok(None);
            };
            let batch = conversations(&self.db, self.user_id, Some(after)).await?;
            if batch.is_empty() {
                return Ok(None);
            }
            self.enqueue(batch);
        }
    }
}

/// Every conversation of the caller with all its messages, one per line, oldest first; streamed.
#[utoipa::path(get, path = "/api/conversations/export", tag = "conversations",
    responses(
        (status = 200, description = "One conversation with all its messages per line (NDJSON), oldest first; the schema is that of the sequence of lines", content_type = "application/x-ndjson", body = [ExportedConversation]),
        (status = 401),
        (status = 429, description = "This user already has `EXPORTS_RUNNING_PER_USER` exports streaming, or started `EXPORTS_PER_MINUTE` in the last minute", body = kai_http::errors::Problem),
        (status = 503)))]
pub async fn export_conversations(
    p: web::Data<Platform>,
    limits: web::Data<crate::limits::Limits>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    // Held by the stream: freed when it ends, fails or its client leaves.
    let slot = limits.export(&p, user.user_id).await?;
    let mut state = State {
        db: p.db.clone(),
        user_id: user.user_id,
        queue: VecDeque::new(),
        more_after: None,
        open: None,
    };
    // Every batch on a replica only if it replayed past the user's last write
    // as of now (SPEC §7), else on the primary.
    let at = p
        .cache
        .read_position(&crate::cache_rules::user_scope(user.user_id))
        .await;
    let first = read_at(at, conversations(&state.db, user.user_id, None)).await?;
    state.enqueue(first);
    let body = futures_util::stream::unfold(Some((state, slot)), move |state| async move {
        let (mut state, slot) = state?;
        match read_at(at, state.next_chunk()).await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some((state, slot)))),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "conversation export cut short");
                Some((Err(e), None))
            }
        }
    })
    .boxed_local();
    Ok(respond::ndjson("kai-conversations.ndjson", body))
}
