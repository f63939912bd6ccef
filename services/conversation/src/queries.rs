//! conversation-service's SQL: one `const` per statement (readable and
//! `EXPLAIN`able as is), one function per use. Every statement names the owner
//! (`user_id`), so another user's conversation is simply not found — for the
//! conversation itself and for everything under it.
//!
//! Statement budget per request, whatever the data holds: list 1, detail 2,
//! create 1, message 2 (the user's, the assistant's), batch 2, delete 1.
//!
//! The functions return [`DbError`]: the handlers decide what a failure means to a
//! client. A write returns a `Written` naming what it touched
//! (`cache_rules::write_touches`), and input to store arrives as a `Valid` value.

use chrono::{DateTime, Utc};

use kai_http::Valid;
use kai_shared::cache::Written;
use kai_shared::db::{Db, DbError, Row};
use uuid::Uuid;

use crate::cache_rules::write_touches;
use crate::model::{
    BatchRequest, ConversationPage, ConversationSummary, CreateConversation, LastMessage, Message,
};
use kai_http::cursor::{Cursor, CursorQuery};

pub const INSERT_CONVERSATION: &str = "INSERT INTO conversation.conversations (id, user_id, title)
     VALUES ($1, $2, $3)
     RETURNING id, title, created_at, updated_at";

/// A page of a user's conversations with each one's message count and last
/// message, in one statement: the page is cut first (index order, `LIMIT`), then
/// two lookups per row of the page — no N+1. The count is the conversation's row
/// of `conversation.message_counts` (kept by triggers, see
/// migrations/conversation/V4__message_counts.sql; no row = 0): one primary-key
/// lookup, not a count(*) over the conversation's messages; the last message is
/// the first entry of `messages_conversation_created`.
pub const FIRST_PAGE: &str = "SELECT c.id, c.title, c.created_at, c.updated_at,
            coalesce((SELECT n.messages FROM conversation.message_counts n WHERE n.conversation_id = c.id), 0)::bigint AS message_count,
            last.role AS last_role, last.content AS last_content, last.created_at AS last_created_at
     FROM (SELECT id, title, created_at, updated_at
           FROM conversation.conversations
           WHERE user_id = $1
           ORDER BY updated_at DESC, id DESC
           LIMIT $2) c
     LEFT JOIN LATERAL (SELECT m.role, m.content, m.created_at
                        FROM conversation.messages m
                        WHERE m.conversation_id = c.id
                        ORDER BY m.created_at DESC, m.id DESC
                        LIMIT 1) last ON true
     ORDER BY c.updated_at DESC, c.id DESC";

/// [`FIRST_PAGE`] after a cursor.
pub const NEXT_PAGE: &str = "SELECT c.id, c.title, c.created_at, c.updated_at,
            coalesce((SELECT n.messages FROM conversation.message_counts n WHERE n.conversation_id = c.id), 0)::bigint AS message_count,
            last.role AS last_role, last.content AS last_content, last.created_at AS last_created_at
     FROM (SELECT id, title, created_at, updated_at
           FROM conversation.conversations
           WHERE user_id = $1 AND (updated_at, id) < ($3, $4)
           ORDER BY updated_at DESC, id DESC
           LIMIT $2) c
     LEFT JOIN LATERAL (SELECT m.role, m.content, m.created_at
                        FROM conversation.messages m
                        WHERE m.conversation_id = c.id
                        ORDER BY m.created_at DESC, m.id DESC
                        LIMIT 1) last ON true
     ORDER BY c.updated_at DESC, c.id DESC";

/// One conversation of its owner, with count and last message.
pub const GET_CONVERSATION: &str = "SELECT c.id, c.title, c.created_at, c.updated_at,
            coalesce((SELECT n.messages FROM conversation.message_counts n WHERE n.conversation_id = c.id), 0)::bigint AS message_count,
            last.role AS last_role, last.content AS last_content, last.created_at AS last_created_at
     FROM conversation.conversations c
     LEFT JOIN LATERAL (SELECT m.role, m.content, m.created_at
                        FROM conversation.messages m
                        WHERE m.conversation_id = c.id
                        ORDER BY m.created_at DESC, m.id DESC
                        LIMIT 1) last ON true
     WHERE c.id = $1 AND c.user_id = $2";

/// The latest `$2` messages, returned oldest first.
pub const LATEST_MESSAGES: &str = "SELECT id, role, content, created_at FROM (
         SELECT id, role, content, created_at
         FROM conversation.messages
         WHERE conversation_id = $1
         ORDER BY created_at DESC, id DESC
         LIMIT $2) latest
     ORDER BY created_at, id";

/// Appends a message to a conversation of its owner and moves the
/// conversation's `updated_at`, atomically; no row when the conversation is not
/// theirs (or gone).
pub const APPEND_MESSAGE: &str = "WITH owned AS (
         UPDATE conversation.conversations SET updated_at = now()
         WHERE id = $1 AND user_id = $2
         RETURNING id)
     INSERT INTO conversation.messages (id, conversation_id, role, content)
     SELECT $3, owned.id, $4, $5 FROM owned
     RETURNING id, role, content, created_at";

/// Batch, first statement: proves ownership, locks the conversation row for the
/// transaction and moves its `updated_at`.
pub const TOUCH_OWNED: &str = "UPDATE conversation.conversations SET updated_at = now()
     WHERE id = $1 AND user_id = $2
     RETURNING id";

/// Batch, second statement: every row in one `INSERT … SELECT FROM UNNEST`.
pub const INSERT_BATCH: &str = "INSERT INTO conversation.messages (id, conversation_id, role, content, created_at)
     SELECT m.id, $1, m.role, m.content, coalesce(m.created_at, now())
     FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) AS m(id, role, content, created_at)";

/// Hard delete; the messages go with it (`ON DELETE CASCADE`).
pub const DELETE_CONVERSATION: &str =
    "DELETE FROM conversation.conversations WHERE id = $1 AND user_id = $2";

fn summary(row: &Row) -> ConversationSummary {
    let last_created_at: Option<DateTime<Utc>> = row.get("last_created_at");
    ConversationSummary {
        id: row.get("id"),
        title: row.get("title"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        message_count: row.get("message_count"),
        last_message: last_created_at.map(|created_at| LastMessage {
            role: row.get("last_role"),
            content: row.get("last_content"),
            created_at,
        }),
    }
}

fn message(row: &Row) -> Message {
    Message {
        id: row.get("id"),
        role: row.get("role"),
        content: row.get("content"),
        created_at: row.get("created_at"),
    }
}

pub async fn insert_conversation(
    db: &Db,
    user_id: Uuid,
    new: &Valid<CreateConversation>,
) -> Result<Written<ConversationSummary>, DbError> {
    let title = new.title.as_deref();
    let conn = db.conn().await?;
    let id = Uuid::now_v7();
    let row = db
        .query_one(&conn, INSERT_CONVERSATION, &[&id, &user_id, &title])
        .await?;
    let summary = ConversationSummary {
        id: row.get("id"),
        title: row.get("title"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        message_count: 0,
        last_message: None,
    };
    Ok(Written::new(summary, write_touches(user_id)))
}

/// One statement, asking for one row more than the page to learn whether
/// another page exists.
pub async fn list_conversations(
    db: &Db,
    user_id: Uuid,
    q: &CursorQuery,
) -> Result<ConversationPage, DbError> {
    db.read_pipelined(|conn| async move {
        let rows = match q.after {
            None => {
                db.query(&*conn, FIRST_PAGE, &[&user_id, &q.fetch()])
                    .await?
            }
            Some(c) => {
                db.query(&*conn, NEXT_PAGE, &[&user_id, &q.fetch(), &c.at, &c.id])
                    .await?
            }
        };
        let page = q.page(
            rows.iter().map(summary).collect(),
            |c: &ConversationSummary| Cursor {
                at: c.updated_at,
                id: c.id,
            },
        );
        Ok(ConversationPage {
            conversations: page.items,
            next_cursor: page.next_cursor,
            has_more: page.has_more,
        })
    })
    .await
}

/// The conversation and its latest `limit` messages (two statements), or `None`
/// when it is not the user's.
pub async fn get_conversation(
    db: &Db,
    user_id: Uuid,
    id: Uuid,
    limit: i64,
) -> Result<Option<(ConversationSummary, Vec<Message>)>, DbError> {
    db.read_pipelined(|conn| async move {
        let Some(row) = db
            .query_opt(&*conn, GET_CONVERSATION, &[&id, &user_id])
            .await?
        else {
            return Ok(None);
        };
        let messages = db
            .query(&*conn, LATEST_MESSAGES, &[&id, &limit])
            .await?
            .iter()
            .map(message)
            .collect();
        Ok(Some((summary(&row), messages)))
    })
    .await
}

/// Stores one message; `None` when the conversation is not the user's.
pub async fn append_message(
    db: &Db,
    user_id: Uuid,
    conversation_id: Uuid,
    role: &str,
    content: &str,
) -> Result<Written<Option<Message>>, DbError> {
    let conn = db.conn().await?;
    let id = Uuid::now_v7();
    let stored = db
        .query_opt(
            &conn,
            APPEND_MESSAGE,
            &[&conversation_id, &user_id, &id, &role, &content],
        )
        .await?
        .as_ref()
        .map(message);
    Ok(Written::if_found(stored, write_touches(user_id)))
}

/// Stores every message or none, in one transaction of two statements whatever
/// the batch holds; `None` when the conversation is not the user's.
pub async fn insert_batch(
    db: &Db,
    user_id: Uuid,
    conversation_id: Uuid,
    batch: &Valid<BatchRequest>,
) -> Result<Written<Option<u64>>, DbError> {
    let batch = &batch.messages;
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let roles: Vec<&str> = batch.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = batch.iter().map(|m| m.content.as_str()).collect();
    let created: Vec<Option<DateTime<Utc>>> = batch.iter().map(|m| m.created_at).collect();

    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    if db
        .query_opt(&tx, TOUCH_OWNED, &[&conversation_id, &user_id])
        .await?
        .is_none()
    {
        // Dropping the transaction rolls it back (nothing was written anyway).
        return Ok(Written::unchanged(None));
    }
    let inserted = db
        .execute(
            &tx,
            INSERT_BATCH,
            &[&conversation_id, &ids, &roles, &contents, &created],
        )
        .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Written::new(Some(inserted), write_touches(user_id)))
}

/// True if the user's conversation existed and is now gone.
pub async fn delete_conversation(
    db: &Db,
    user_id: Uuid,
    id: Uuid,
) -> Result<Written<bool>, DbError> {
    let conn = db.conn().await?;
    let deleted = db
        .execute(&conn, DELETE_CONVERSATION, &[&id, &user_id])
        .await?
        == 1;
    Ok(Written::if_changed(deleted, write_touches(user_id)))
}

/// Statements the hot paths run, for `EXPLAIN` checks (kai-verify and tests).
pub const HOT_QUERIES: &[(&str, &str)] = &[
    ("list first page", FIRST_PAGE),
    ("list by cursor", NEXT_PAGE),
    ("get", GET_CONVERSATION),
    ("latest messages", LATEST_MESSAGES),
];
