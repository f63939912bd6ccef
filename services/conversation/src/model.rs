//! Request and response shapes. Request bodies deny unknown fields, so a client
//! cannot set `id`, `user_id`, `conversation_id` or server timestamps (mass
//! assignment) — it gets a 400.

use chrono::{DateTime, Duration, Utc};
use kai_shared::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const MAX_CONTENT_CHARS: usize = 20_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_STYLE_CHARS: usize = 200;
pub const MAX_BATCH: usize = 1_000;
/// Who wrote a message (the `messages_role_known` constraint says the same).
pub const ROLES: [&str; 3] = ["user", "assistant", "system"];
/// How far in the future an imported `created_at` may lie (clock skew).
const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// The newest message of a conversation, as lists show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LastMessage {
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation as lists (and its creation) show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationSummary {
    pub id: Uuid,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
    pub last_message: Option<LastMessage>,
}

/// One message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation with its latest messages, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    pub id: Uuid,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
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
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// At most 200 characters; blank means none.
    pub title: Option<String>,
}

impl CreateConversation {
    /// Trims the title (blank becomes none) and checks its length.
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.title = self
            .title
            .take()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        match &self.title {
            // PostgreSQL text cannot hold NUL: a 400, not a failed INSERT.
            Some(t) if t.contains('\0') => Err(ApiError::validation(vec![FieldError::new(
                "title",
                "must not contain NUL characters",
            )])),
            Some(t) if t.chars().count() > MAX_TITLE_CHARS => {
                Err(ApiError::validation(vec![FieldError::new(
                    "title",
                    format!("must be at most {MAX_TITLE_CHARS} characters"),
                )]))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// 1–20,000 characters.
    pub content: String,
    /// How the assistant should speak (e.g. the profile's communication style),
    /// at most 200 characters; passed to the LLM as a system message.
    pub communication_style: Option<String>,
}

impl PostMessage {
    pub fn validate(&mut self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        check_content("content", &self.content, &mut errors);
        // One line, single-spaced: the hint is a short phrase, and its reply's
        // cache key hashes `style "\n" content`, which a newline could make ambiguous.
        self.communication_style = self
            .communication_style
            .take()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
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
        finish(errors)
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
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// 1–20,000 characters.
    pub content: String,
    /// When the message was written (imports); now when absent.
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1–1,000 messages, stored all or none.
    pub messages: Vec<BatchMessage>,
}

impl BatchRequest {
    /// Checks every message before any is written: one bad row rejects the batch.
    pub fn validate(&self) -> Result<(), ApiError> {
        let n = self.messages.len();
        if n == 0 || n > MAX_BATCH {
            return Err(ApiError::validation(vec![FieldError::new(
                "messages",
                format!("must hold 1 to {MAX_BATCH} messages (got {n})"),
            )]));
        }
        let latest = Utc::now() + MAX_FUTURE_SKEW;
        let mut errors = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                errors.push(FieldError::new(
                    format!("messages[{i}].role"),
                    "must be user, assistant or system",
                ));
            }
            check_content(&format!("messages[{i}].content"), &m.content, &mut errors);
            if m.created_at.is_some_and(|t| t > latest) {
                errors.push(FieldError::new(
                    format!("messages[{i}].created_at"),
                    "must not lie in the future",
                ));
            }
        }
        finish(errors)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchInserted {
    pub inserted: u64,
}

/// `GET /api/conversations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1–100 (default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /api/conversations/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// How many of the latest messages, 1–200 (default 50).
    pub limit: Option<i64>,
}

fn check_content(field: &str, content: &str, errors: &mut Vec<FieldError>) {
    let n = content.chars().count();
    if content.trim().is_empty() || n > MAX_CONTENT_CHARS {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_CONTENT_CHARS} characters (got {n})"),
        ));
    }
}

fn finish(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}
