//! Request and response shapes. Request bodies deny unknown fields, so a client
//! cannot set `id`, `user_id` or timestamps (mass assignment) — it gets a 400.

use chrono::{DateTime, NaiveDate, Utc};
use kai_http::valid::{Validate, check_non_blank, no_field_errors};
use kai_http::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const MAX_CONTENT_CHARS: usize = 20_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;
pub const MAX_QUERY_CHARS: usize = 200;

/// A journal entry as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "0192f5a4-7c1e-7d3a-9b2e-5f1c8a4e2d10",
    "title": "Evening walk",
    "content": "Walked by the river after work; calmer than this morning.",
    "mood": 7,
    "tags": ["walk", "calm"],
    "created_at": "2026-11-23T18:30:00Z",
    "updated_at": "2026-11-23T18:30:00Z"
}))]
pub struct Entry {
    pub id: Uuid,
    pub title: Option<String>,
    pub content: String,
    #[schema(minimum = 1, maximum = 10)]
    pub mood: Option<i16>,
    pub tags: Vec<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "content": "Walked by the river after work; calmer than this morning.",
    "title": "Evening walk",
    "mood": 7,
    "tags": ["walk", "calm"]
}))]
pub struct CreateEntry {
    #[schema(schema_with = kai_http::openapi::non_blank::<MAX_CONTENT_CHARS>)]
    pub content: String,
    /// At most 200 characters.
    #[schema(max_length = 200)]
    pub title: Option<String>,
    /// 1–10.
    #[serde(default, deserialize_with = "kai_http::whole::option")]
    #[schema(minimum = 1, maximum = 10)]
    pub mood: Option<i16>,
    /// At most 20 tags of 1–50 characters (trimmed; duplicates dropped).
    #[serde(default)]
    #[schema(max_items = 20, inline, value_type = Vec<Tag>)]
    pub tags: Vec<String>,
}

/// A tag: 1–50 characters, not only white space.
#[derive(ToSchema)]
#[schema(
    min_length = 1,
    max_length = 50,
    pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]",
    example = "calm"
)]
#[allow(dead_code)]
pub struct Tag(String);

/// Any subset (at least one) of the create fields; `title` and `mood` may be set
/// to null, `content` and `tags` may not.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, example = json!({ "mood": 8, "tags": ["walk", "calm", "river"] }))]
pub struct PatchEntry {
    #[serde(default, deserialize_with = "kai_http::some")]
    #[schema(schema_with = kai_http::openapi::non_blank::<MAX_CONTENT_CHARS>)]
    pub content: Option<String>,
    /// At most 200 characters; null clears it.
    #[serde(default, deserialize_with = "kai_http::double_option")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub title: Option<Option<String>>,
    /// 1–10; null clears it.
    #[serde(default, deserialize_with = "kai_http::whole::double_option")]
    #[schema(value_type = Option<i16>, minimum = 1, maximum = 10)]
    pub mood: Option<Option<i16>>,
    /// At most 20 tags of 1–50 characters; replaces the stored tags.
    #[serde(default, deserialize_with = "kai_http::some")]
    #[schema(nullable = false, max_items = 20, inline, value_type = Option<Vec<Tag>>)]
    pub tags: Option<Vec<String>>,
}

impl Validate for CreateEntry {
    fn checked(mut self) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        check_content(&self.content, &mut errors);
        if let Some(title) = &self.title {
            check_title(title, &mut errors);
        }
        if let Some(mood) = self.mood {
            check_mood(mood, &mut errors);
        }
        check_tags(&mut self.tags, &mut errors);
        no_field_errors(errors)?;
        Ok(self)
    }
}

impl Validate for PatchEntry {
    fn checked(mut self) -> Result<Self, ApiError> {
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
        no_field_errors(errors)?;
        Ok(self)
    }
}

fn check_content(content: &str, errors: &mut Vec<FieldError>) {
    check_non_blank("content", content, MAX_CONTENT_CHARS, errors);
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

/// Checks count and lengths as sent (what the OpenAPI schema states), then trims
/// tags and drops duplicates.
fn check_tags(tags: &mut Vec<String>, errors: &mut Vec<FieldError>) {
    if tags.len() > MAX_TAGS {
        errors.push(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in tags.iter().enumerate() {
        check_non_blank(&format!("tags[{i}]"), t, MAX_TAG_CHARS, errors);
    }
    let mut seen = std::collections::HashSet::new();
    tags.iter_mut().for_each(|t| *t = t.trim().to_owned());
    tags.retain(|t| seen.insert(t.clone()));
}

/// `GET /api/journal/entries`: page mode (`page`, `page_size`) unless `limit` or
/// `cursor` is given (cursor mode); parameters of both modes together are a 400.
/// Documented as one exploded query object whose schema is `oneOf` the two modes
/// (see the `IntoParams` impl), which is what OpenAPI can say about alternatives.
#[derive(Debug, Deserialize)]
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

/// Page mode.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryPage {
    pub entries: Vec<Entry>,
    pub total: i64,
    pub page: i64,
    pub page_size: i64,
    pub has_more: bool,
}

impl EntryPage {
    /// This page as it is once `created` (the user's newly committed entries)
    /// are stored too: they join the page in list order (newest first: created
    /// time, then id, as `queries::PAGE` orders), the page keeps its size, the
    /// total counts them. What `queries::list_entries_page` would now write,
    /// provided nothing else changed in between (`Refresh::derived` stores it
    /// only then).
    pub fn with_created(mut self, created: &[Entry]) -> Self {
        self.entries.extend(created.iter().cloned());
        self.entries
            .sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
        let offset = (self.page - 1).saturating_mul(self.page_size);
        // Entries pushed off this page belong to the next: only page 1 has no
        // earlier page whose overflow would arrive here.
        debug_assert_eq!(self.page, 1, "only the first page is derived");
        self.entries
            .truncate(usize::try_from(self.page_size).unwrap_or(usize::MAX));
        self.total = self.total.saturating_add(created.len() as i64);
        self.has_more = offset + (self.entries.len() as i64) < self.total;
        self
    }
}

/// Cursor mode.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EntryCursorPage {
    pub entries: Vec<Entry>,
    /// Opaque; pass it as `cursor` (with the same `limit`) for the next page; null on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (web-search syntax: quotes, `or`, `-word`), 1–200 characters,
    /// not only white space.
    // Not `schema_with` (which drops a parameter's `required`, description and
    // example); the bound is MAX_QUERY_CHARS.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]",
        example = "river walk"
    )]
    pub q: String,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Window in days, 1–365 (default 30).
    #[param(minimum = 1, maximum = 365, example = 30)]
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

impl IntoParams for ListQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn, ParameterStyle};
        use utoipa::openapi::schema::{Object, OneOfBuilder};
        let mode = |v: serde_json::Value| -> Object {
            serde_json::from_value(v).expect("a valid schema object")
        };
        let page = mode(json!({
            "title": "page mode",
            "type": "object",
            "properties": {
                "page": { "type": "integer", "format": "int64", "minimum": 1, "maximum": 1_000_000,
                          "description": "1-based page number (default 1)" },
                "page_size": { "type": "integer", "format": "int64", "minimum": 1, "maximum": 100,
                               "description": "1–100 (default 20)" }
            },
            "additionalProperties": false
        }));
        let cursor = mode(json!({
            "title": "cursor mode",
            "type": "object",
            "properties": {
                "limit": { "type": "integer", "format": "int64", "minimum": 1, "maximum": 100,
                           "description": "1–100 (default 20)" },
                "cursor": { "type": "string", "minLength": 1,
                            "description": "`next_cursor` of the previous page, with the same `limit`" }
            },
            "minProperties": 1,
            "additionalProperties": false
        }));
        vec![
            ParameterBuilder::new()
                .name("mode")
                .parameter_in(ParameterIn::Query)
                .style(Some(ParameterStyle::Form))
                .explode(Some(true))
                .description(Some(
                    "Page mode (`page`, `page_size`) or cursor mode (`limit`, `cursor`); \
                     the parameters are sent as they are (`?page=2&page_size=20`, \
                     `?limit=20&cursor=…`); mixing the modes is a 400.",
                ))
                .schema(Some(OneOfBuilder::new().item(page).item(cursor)))
                .example(Some(json!({ "page": 1, "page_size": 20 })))
                .build(),
        ]
    }
}
