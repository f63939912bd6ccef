//! Request and response shapes. Request bodies deny unknown fields, so a client
//! cannot set `id`, `user_id` or timestamps (mass assignment) — it gets a 400.

use chrono::{DateTime, NaiveDate, Utc};
use kai_shared::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const MAX_CONTENT_CHARS: usize = 20_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;

/// A journal entry as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    pub id: Uuid,
    pub title: Option<String>,
    pub content: String,
    pub mood: Option<i16>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEntry {
    /// 1–20,000 characters.
    pub content: String,
    pub title: Option<String>,
    /// 1–10.
    pub mood: Option<i16>,
    /// At most 20 tags of 1–50 characters.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Any subset of the create fields; `title` and `mood` may be set to null.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEntry {
    pub content: Option<String>,
    #[serde(default, deserialize_with = "kai_shared::http::double_option")]
    #[schema(value_type = Option<String>)]
    pub title: Option<Option<String>>,
    #[serde(default, deserialize_with = "kai_shared::http::double_option")]
    #[schema(value_type = Option<i16>)]
    pub mood: Option<Option<i16>>,
    pub tags: Option<Vec<String>>,
}

impl CreateEntry {
    pub fn validate(&mut self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        check_content(&self.content, &mut errors);
        if let Some(title) = &self.title {
            check_title(title, &mut errors);
        }
        if let Some(mood) = self.mood {
            check_mood(mood, &mut errors);
        }
        check_tags(&mut self.tags, &mut errors);
        finish(errors)
    }
}

impl PatchEntry {
    pub fn validate(&mut self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        if self.content.is_none()
            && self.title.is_none()
            && self.mood.is_none()
            && self.tags.is_none()
        {
            return Err(ApiError::bad_request(
                "nothing to update: give content, title, mood or tags",
            ));
        }
        if let Some(content) = &self.content {
            check_content(content, &mut errors);
        }
        if let Some(Some(title)) = &self.title {
            check_title(title, &mut errors);
        }
        if let Some(Some(mood)) = self.mood {
            check_mood(mood, &mut errors);
        }
        if let Some(tags) = &mut self.tags {
            check_tags(tags, &mut errors);
        }
        finish(errors)
    }
}

fn check_content(content: &str, errors: &mut Vec<FieldError>) {
    let n = content.chars().count();
    if content.trim().is_empty() || n > MAX_CONTENT_CHARS {
        errors.push(FieldError::new(
            "content",
            format!("must be 1 to {MAX_CONTENT_CHARS} characters (got {n})"),
        ));
    }
}

fn check_title(title: &str, errors: &mut Vec<FieldError>) {
    if title.chars().count() > MAX_TITLE_CHARS {
        errors.push(FieldError::new(
            "title",
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
}

fn check_mood(mood: i16, errors: &mut Vec<FieldError>) {
    if !(1..=10).contains(&mood) {
        errors.push(FieldError::new("mood", "must be between 1 and 10"));
    }
}

/// Trims tags and drops duplicates, then checks count and length.
fn check_tags(tags: &mut Vec<String>, errors: &mut Vec<FieldError>) {
    let mut seen = std::collections::HashSet::new();
    tags.iter_mut().for_each(|t| *t = t.trim().to_owned());
    tags.retain(|t| seen.insert(t.clone()));
    if tags.len() > MAX_TAGS {
        errors.push(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    if tags
        .iter()
        .any(|t| t.is_empty() || t.chars().count() > MAX_TAG_CHARS)
    {
        errors.push(FieldError::new(
            "tags",
            format!("each tag must be 1 to {MAX_TAG_CHARS} characters"),
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

/// `GET /api/journal/entries`: page mode (`page`, `page_size`) unless `limit` or
/// `cursor` is given (cursor mode).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page mode: 1-based page number (default 1).
    pub page: Option<i64>,
    /// Page mode: 1–100 (default 20).
    pub page_size: Option<i64>,
    /// Cursor mode: 1–100 (default 20).
    pub limit: Option<i64>,
    /// Cursor mode: `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryPage {
    pub entries: Vec<Entry>,
    pub total: i64,
    pub page: i64,
    pub page_size: i64,
    pub has_more: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryCursorPage {
    pub entries: Vec<Entry>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words to find (web-search syntax: quotes, `or`, `-word`), 1–200 characters.
    pub q: String,
    /// 1–100 (default 20).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Window in days, 1–365 (default 30).
    pub days: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayStats {
    pub date: NaiveDate,
    pub count: i64,
    pub average_mood: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub total_entries: i64,
    pub average_mood: Option<f64>,
    pub days: Vec<DayStats>,
}
