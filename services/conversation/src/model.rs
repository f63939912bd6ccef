//! Request and response shapes. Request bodies deny unknown fields, so a client
//! cannot set `id`, `user_id`, `conversation_id` or server timestamps (mass
//! assignment) — it gets a 400.

use chrono::{DateTime, Duration, Utc};
use kai_http::valid::{Validate, check_non_blank, no_field_errors};
use kai_http::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const MAX_CONTENT_CHARS: usize = 20_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_STYLE_CHARS: usize = 200;
pub const MAX_BATCH: usize = 1_000;
/// Who wrote a message (the `messages_role_known` constraint says the same).
pub const ROLES: [&str; 3] = ["user", "assistant", "system"];
/// Roles a client may import. `system` messages steer the assistant (they are
/// sent to the LLM as instructions), so only the service writes them.
pub const IMPORTABLE_ROLES: [&str; 2] = ["user", "assistant"];
/// How far in the future an imported `created_at` may lie (clock skew).
const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// The earliest imported `created_at`: no conversation with an assistant is
/// older, and it keeps years 0000–1969 (which PostgreSQL would store as odd BC
/// or pre-epoch dates, and which cursors and exports were never meant to carry)
/// out of the table.
pub const EARLIEST_MESSAGE: &str = "1970-01-01T00:00:00Z";

/// The newest message of a conversation, as lists show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastMessage {
    #[schema(value_type = Role)]
    pub role: String,
    pub content: String,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// Who wrote a message.
#[derive(ToSchema)]
#[schema(example = "user")]
#[allow(dead_code)]
pub enum Role {
    #[schema(rename = "user")]
    User,
    #[schema(rename = "assistant")]
    Assistant,
    #[schema(rename = "system")]
    System,
}

/// A conversation as lists (and its creation) show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0192f5a4-7c1e-7d3a-9b2e-5f1c8a4e2d10",
    "title": "Sleep",
    "created_at": "2026-11-23T18:30:00Z",
    "updated_at": "2026-11-23T18:31:00Z",
    "message_count": 2,
    "last_message": { "role": "assistant", "content": "That sounds tiring. What usually helps you wind down?", "created_at": "2026-11-23T18:31:00Z" }
}))]
pub struct ConversationSummary {
    pub id: Uuid,
    pub title: Option<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
    pub last_message: Option<LastMessage>,
}

/// One message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    /// `user` or `assistant` (`system` is refused: only the service writes those).
    #[schema(value_type = Role)]
    pub role: String,
    pub content: String,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// A conversation with its latest messages, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    pub id: Uuid,
    pub title: Option<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
    pub last_message: Option<LastMessage>,
    pub messages: Vec<Message>,
}

impl ConversationDetail {
    pub fn new(summary: ConversationSummary, messages: Vec<Message>) -> Self {
        let ConversationSummary {
            id,
            title,
            created_at,
            updated_at,
            message_count,
            last_message,
        } = summary;
        Self {
            id,
            title,
            created_at,
            updated_at,
            message_count,
            last_message,
            messages,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// Opaque; pass it as `cursor` (with the same `limit`) for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "title": "Sleep" }))]
pub struct CreateConversation {
    /// At most 200 characters; blank means none.
    #[schema(max_length = 200)]
    pub title: Option<String>,
}

impl Validate for CreateConversation {
    /// Checks the title's length as sent (what the document states), then trims
    /// it (blank becomes none).
    fn checked(mut self) -> Result<Self, ApiError> {
        if self
            .title
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
        {
            return Err(ApiError::validation(vec![FieldError::new(
                "title",
                format!("must be at most {MAX_TITLE_CHARS} characters"),
            )]));
        }
        self.title = self
            .title
            .take()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        Ok(self)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "content": "I slept badly again and feel on edge.", "communication_style": "warm and brief" }))]
pub struct PostMessage {
    #[schema(schema_with = kai_http::openapi::non_blank::<MAX_CONTENT_CHARS>)]
    pub content: String,
    /// How the assistant should speak (e.g. the profile's communication style),
    /// at most 200 characters; passed to the LLM as a system message.
    #[schema(max_length = 200)]
    pub communication_style: Option<String>,
}

impl Validate for PostMessage {
    fn checked(mut self) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        check_content("content", &self.content, &mut errors);
        // Checked as sent (what the document states), then normalized.
        if self
            .communication_style
            .as_ref()
            .is_some_and(|s| s.chars().count() > MAX_STYLE_CHARS)
        {
            errors.push(FieldError::new(
                "communication_style",
                format!("must be at most {MAX_STYLE_CHARS} characters"),
            ));
        }
        // One line, single-spaced: the hint is a short phrase, and its reply's
        // cache key hashes `style "\n" content`, which a newline could make ambiguous.
        self.communication_style = self
            .communication_style
            .take()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
        no_field_errors(errors)?;
        Ok(self)
    }
}

/// The user's message and the assistant's reply, both stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Exchange {
    pub user_message: Message,
    pub assistant_message: Message,
    /// True when the reply came from the AI-response cache, not the LLM.
    pub cached: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    /// `user` or `assistant` (`system` is refused: only the service writes those).
    #[schema(value_type = Role)]
    pub role: String,
    #[schema(schema_with = kai_http::openapi::non_blank::<MAX_CONTENT_CHARS>)]
    pub content: String,
    /// When the message was written (imports), from 1970-01-01T00:00:00Z to five
    /// minutes from now; now when absent.
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "messages": [
    { "role": "user", "content": "Can we talk about work?", "created_at": "2026-11-20T09:00:00Z" },
    { "role": "assistant", "content": "Of course. What is on your mind?", "created_at": "2026-11-20T09:00:05Z" }
] }))]
pub struct BatchRequest {
    /// 1–1,000 messages, stored all or none.
    #[schema(min_items = 1, max_items = 1000)]
    pub messages: Vec<BatchMessage>,
}

/// Largest accepted body of the batch import (SPEC §3): 1,000 messages of
/// realistic size (~2 KB each, JSON-escaped) must fit.
pub const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;

impl Validate for BatchRequest {
    /// Checks every message before any is written: one bad row rejects the batch.
    fn checked(self) -> Result<Self, ApiError> {
        let n = self.messages.len();
        if n == 0 || n > MAX_BATCH {
            return Err(ApiError::validation(vec![FieldError::new(
                "messages",
                format!("must hold 1 to {MAX_BATCH} messages (got {n})"),
            )]));
        }
        let latest = Utc::now() + MAX_FUTURE_SKEW;
        let earliest = DateTime::parse_from_rfc3339(EARLIEST_MESSAGE)
            .expect("a valid RFC 3339 constant")
            .to_utc();
        let mut errors = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if !IMPORTABLE_ROLES.contains(&m.role.as_str()) {
                errors.push(FieldError::new(
                    format!("messages[{i}].role"),
                    "must be user or assistant",
                ));
            }
            check_content(&format!("messages[{i}].content"), &m.content, &mut errors);
            if m.created_at.is_some_and(|t| t > latest) {
                errors.push(FieldError::new(
                    format!("messages[{i}].created_at"),
                    "must not lie in the future",
                ));
            }
            if m.created_at.is_some_and(|t| t < earliest) {
                errors.push(FieldError::new(
                    format!("messages[{i}].created_at"),
                    format!("must not be before {EARLIEST_MESSAGE}"),
                ));
            }
        }
        no_field_errors(errors)?;
        Ok(self)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchInserted {
    pub inserted: u64,
}

/// `GET /api/conversations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page, with the same `limit`.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// `GET /api/conversations/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DetailQuery {
    /// How many of the latest messages, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, example = 50)]
    pub limit: Option<i64>,
}

fn check_content(field: &str, content: &str, errors: &mut Vec<FieldError>) {
    check_non_blank(field, content, MAX_CONTENT_CHARS, errors);
}
