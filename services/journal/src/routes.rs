//! HTTP handlers: authenticate, validate, then either a cached read through
//! `Cache::get_or_load` or a write whose result is reached through `Cache::commit`
//! (which invalidates what `cache_rules` says the write touched).

use actix_web::{HttpRequest, HttpResponse, web};
use kai_http::auth::{AuthUser, Owned};
use kai_http::openapi::BearerAuth;
use kai_http::valid::{check_non_blank, no_field_errors};
use kai_http::{ApiError, FieldError};
use kai_http::{Query, Valid, in_range, respond};
use kai_platform::Platform;
use utoipa::OpenApi;

use crate::cache_rules::{
    ENTRY, LIST, STATS, entry_key, list_cursor_key, list_page_key, stats_key, user_scope,
};
use crate::model::{
    CreateEntry, DayStats, Entry, EntryCursorPage, EntryPage, ListQuery, MAX_QUERY_CHARS,
    PatchEntry, SearchQuery, SearchResults, Stats, StatsQuery,
};
use crate::pages::{DEFAULT_PAGE_SIZE, load_cursor_page, load_page};
use crate::queries;
use crate::writer::EntryWriter;

/// The list's answer: one of the two modes' shapes (documentation only).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ListAnswer {
    #[schema(title = "page mode")]
    Page(EntryPage),
    #[schema(title = "cursor mode")]
    Cursor(EntryCursorPage),
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Kai journal-service", description = "Private journal entries, lists, search and mood statistics."),
    paths(create_entry, list_entries, get_entry, patch_entry, delete_entry, search_entries, entry_stats, crate::export::export_entries),
    components(schemas(Entry, CreateEntry, PatchEntry, EntryPage, EntryCursorPage, SearchResults, Stats, DayStats, kai_http::errors::Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "entries", description = "Write, read, change and delete journal entries"),
         (name = "insights", description = "Search and mood statistics"))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig, writer: &web::Data<EntryWriter>) {
    cfg.app_data(writer.clone())
        .service(
            // GET first: each method guard actix checks records its method in the
            // request's extensions (allocating), so the common read checks one.
            web::resource("/api/journal/entries")
                .route(web::get().to(list_entries))
                .route(web::post().to(create_entry)),
        )
        .service(
            web::resource("/api/journal/entries/{id}")
                .route(web::get().to(get_entry))
                .route(web::patch().to(patch_entry))
                .route(web::delete().to(delete_entry)),
        )
        .service(web::resource("/api/journal/search").route(web::get().to(search_entries)))
        .service(web::resource("/api/journal/stats").route(web::get().to(entry_stats)))
        .service(
            web::resource("/api/journal/export")
                .route(web::get().to(crate::export::export_entries)),
        );
}

/// Create an entry.
#[utoipa::path(post, path = "/api/journal/entries", tag = "entries", request_body = CreateEntry,
    responses((status = 201, description = "The entry, stored; `Location` is its URL", body = Entry),
        (status = 429, description = "Too many entries created by this user (`JOURNAL_CREATES_PER_MINUTE` at once, then per minute)", body = kai_http::errors::Problem)))]
async fn create_entry(
    p: web::Data<Platform>,
    writer: web::Data<EntryWriter>,
    limits: web::Data<crate::limits::Limits>,
    user: AuthUser,
    new: Valid<CreateEntry>,
) -> Result<HttpResponse, ApiError> {
    limits.create(&p, user.user_id).await?;
    let entry = writer.create(p, user.user_id, new).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/api/journal/entries/{}", entry.id),
        ))
        .json(entry))
}

/// List entries, newest first: page mode (`page`, `page_size`) or cursor mode (`limit`, `cursor`).
#[utoipa::path(get, path = "/api/journal/entries", tag = "entries", params(ListQuery),
    responses((status = 200, description = "`EntryPage` in page mode, `EntryCursorPage` in cursor mode",
        body = inline(ListAnswer)), (status = 304)))]
async fn list_entries(
    req: HttpRequest,
    p: web::Data<Platform>,
    AuthUser { user_id: uid, .. }: AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let cursor_mode = q.limit.is_some() || q.cursor.is_some();
    if cursor_mode && (q.page.is_some() || q.page_size.is_some()) {
        return Err(ApiError::validation(vec![FieldError::new(
            if q.page.is_some() {
                "page"
            } else {
                "page_size"
            },
            "page mode (page, page_size) and cursor mode (limit, cursor) cannot be mixed",
        )]));
    }
    let cached = if cursor_mode {
        let cq = p.cursor_query(uid, q.limit, q.cursor.as_deref())?;
        let key = list_cursor_key(uid, q.cursor.as_deref(), cq.limit);
        p.cache
            .get_or_load(&user_scope(uid), &LIST, &key, || {
                load_cursor_page(&p.db, uid, &cq)
            })
            .await?
    } else {
        let page = in_range("page", q.page, 1, 1, 1_000_000)?;
        let page_size = in_range("page_size", q.page_size, DEFAULT_PAGE_SIZE, 1, 100)?;
        if page > 1 {
            // Pages beyond the last are answered but never cached: otherwise every
            // page number up to a million is a key, evicting other users' entries.
            // Page 1 (cached, one key per page size) knows the total.
            let first = p
                .cache
                .get_or_load(
                    &user_scope(uid),
                    &LIST,
                    &list_page_key(uid, 1, page_size),
                    || load_page(&p.db, uid, 1, page_size),
                )
                .await?;
            #[derive(serde::Deserialize)]
            struct Total {
                total: i64,
            }
            let total =
                serde_json::from_slice::<Total>(&first.entry.body).map_or(i64::MAX, |t| t.total);
            if (page - 1).saturating_mul(page_size) >= total {
                let body = serde_json::to_vec(&EntryPage {
                    entries: Vec::new(),
                    total,
                    page,
                    page_size,
                    has_more: false,
                })
                .map_err(ApiError::internal)?;
                // Rendered like any list answer (ETag, 304), marked BYPASS.
                let entry = kai_shared::cache::entry::Entry::found(body.into(), 0, 0);
                return Ok(respond::cached(
                    &req,
                    &kai_shared::cache::Cached {
                        entry: std::sync::Arc::new(entry),
                        status: kai_shared::cache::CacheStatus::Bypass,
                    },
                ));
            }
        }
        let key = list_page_key(uid, page, page_size);
        p.cache
            .get_or_load(&user_scope(uid), &LIST, &key, || {
                load_page(&p.db, uid, page, page_size)
            })
            .await?
    };
    Ok(respond::cached(&req, &cached))
}

/// One entry.
#[utoipa::path(get, path = "/api/journal/entries/{id}", tag = "entries", params(("id" = Uuid, Path, description = "The entry's id")),
    responses((status = 200, body = Entry), (status = 304)))]
async fn get_entry(
    req: HttpRequest,
    p: web::Data<Platform>,
    it: Owned,
) -> Result<HttpResponse, ApiError> {
    let cached = p
        .cache
        .get_or_load(&user_scope(it.user_id), &ENTRY, &entry_key(it.id), || {
            queries::get_entry(&p.db, it.user_id, it.id)
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// Change any of content, title, mood, tags.
#[utoipa::path(patch, path = "/api/journal/entries/{id}", tag = "entries", params(("id" = Uuid, Path, description = "The entry's id")), request_body = PatchEntry,
    responses((status = 200, description = "The entry as changed", body = Entry)))]
async fn patch_entry(
    p: web::Data<Platform>,
    it: Owned,
    patch: Valid<PatchEntry>,
) -> Result<HttpResponse, ApiError> {
    let written = queries::patch_entry(&p.db, it.user_id, it.id, &patch).await?;
    let entry = p.cache.commit_found(written).await?;
    Ok(HttpResponse::Ok().json(entry))
}

/// Delete an entry (soft: it disappears from every read).
#[utoipa::path(delete, path = "/api/journal/entries/{id}", tag = "entries", params(("id" = Uuid, Path, description = "The entry's id")),
    responses((status = 204)))]
async fn delete_entry(p: web::Data<Platform>, it: Owned) -> Result<HttpResponse, ApiError> {
    let written = queries::soft_delete_entry(&p.db, it.user_id, it.id).await?;
    respond::deleted(p.cache.commit(written).await)
}

/// 20 searches at once per user, then one every two seconds.
pub const SEARCH_PER_USER: kai_shared::ratelimit::Limit = kai_shared::ratelimit::Limit {
    name: "search-user",
    capacity: 20,
    per_second: 0.5,
};

/// Full-text search over title and content, best match first.
///
/// Ranked over the matches among the journal's newest 2,000 entries (at most
/// the newest 1,000 of them): the answer is the best of those, best first.
/// When those entries hold fewer matches than `limit`, it is ranked over the
/// newest 1,000 matches of the whole journal instead.
#[utoipa::path(get, path = "/api/journal/search", tag = "insights", params(SearchQuery),
    responses((status = 200, body = SearchResults),
        (status = 429, description = "Too many searches by this user")))]
async fn search_entries(
    p: web::Data<Platform>,
    user: AuthUser,
    Query(q): Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    // Checked as sent (what the document states), then trimmed.
    let mut errors = Vec::new();
    check_non_blank("q", &q.q, MAX_QUERY_CHARS, &mut errors);
    no_field_errors(errors)?;
    let text = q.q.trim();
    let limit = in_range("limit", q.limit, 20, 1, 100)?;
    // Uncached full-text search is the most expensive read: limited per user.
    p.limiter
        .check(&SEARCH_PER_USER, &user.user_id.to_string())
        .await?;
    // Operator soup is neutralised, never a parser error (see `search`).
    let query = crate::search::websearch_text(text);
    if query.is_empty() {
        return Ok(HttpResponse::Ok().json(SearchResults {
            entries: Vec::new(),
        }));
    }
    // Uncached: on a replica only if it replayed past the user's last write.
    let at = p.cache.read_position(&user_scope(user.user_id)).await;
    let entries = kai_shared::db::read_at(
        at,
        queries::search_entries(&p.db, user.user_id, &query, limit),
    )
    .await?;
    Ok(HttpResponse::Ok().json(SearchResults { entries }))
}

/// Entries and mood per day over the last `days` days.
#[utoipa::path(get, path = "/api/journal/stats", tag = "insights", params(StatsQuery),
    responses((status = 200, body = Stats), (status = 304)))]
async fn entry_stats(
    req: HttpRequest,
    p: web::Data<Platform>,
    AuthUser { user_id: uid, .. }: AuthUser,
    q: Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let days = in_range("days", q.days, 30, 1, 365)?;
    let cached = p
        .cache
        .get_or_load(&user_scope(uid), &STATS, &stats_key(uid, days), || async {
            queries::entry_stats(&p.db, uid, days).await.map(Some)
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The search parameter and the tag spell their bounds as literals (utoipa's `schema_with`
    /// would drop the parameter's `required`): they must be the check's.
    #[test]
    fn literal_schema_bounds_are_the_checked_ones() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let q = doc["paths"]["/api/journal/search"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "q")
            .expect("the q parameter")
            .clone();
        assert_eq!(q["required"], true);
        assert_eq!(q["schema"]["minLength"], 1);
        assert_eq!(q["schema"]["maxLength"], MAX_QUERY_CHARS);
        assert_eq!(q["schema"]["pattern"], kai_http::openapi::NOT_BLANK);
        // The tag type too (a container attribute: no `schema_with` there), inlined.
        let tag = &doc["components"]["schemas"]["CreateEntry"]["properties"]["tags"]["items"];
        assert_eq!(tag["maxLength"], crate::model::MAX_TAG_CHARS);
        assert_eq!(tag["pattern"], kai_http::openapi::NOT_BLANK);
    }
}
