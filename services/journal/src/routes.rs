//! HTTP handlers: authenticate, validate, then either a cached read through
//! `Cache::get_or_load` or a write followed by the owner's scope invalidation.

use actix_web::{HttpRequest, HttpResponse, web};
use kai_shared::auth::AuthUser;
use kai_shared::cache::keys;
use kai_shared::http::openapi::BearerAuth;
use kai_shared::http::{in_range, respond};
use kai_shared::{ApiError, FieldError, Platform};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::cache_rules::{ENTRY, LIST, STATS, user_scope};
use crate::model::{
    CreateEntry, DayStats, Entry, EntryCursorPage, EntryPage, ListQuery, PatchEntry, SearchQuery,
    SearchResults, Stats, StatsQuery,
};
use crate::queries;
use kai_shared::http::cursor::Cursor;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kai journal-service", description = "Private journal entries, lists, search and mood statistics."),
    paths(create_entry, list_entries, get_entry, patch_entry, delete_entry, search_entries, entry_stats, crate::export::export_entries),
    components(schemas(Entry, CreateEntry, PatchEntry, EntryPage, EntryCursorPage, SearchResults, Stats, DayStats, kai_shared::http::errors::Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/journal/entries")
            .route(web::post().to(create_entry))
            .route(web::get().to(list_entries)),
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
        web::resource("/api/journal/export").route(web::get().to(crate::export::export_entries)),
    );
}

/// Create an entry.
#[utoipa::path(post, path = "/api/journal/entries", request_body = CreateEntry,
    responses((status = 201, body = Entry), (status = 400, body = kai_shared::http::errors::Problem), (status = 401), (status = 413), (status = 415)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn create_entry(
    p: web::Data<Platform>,
    user: AuthUser,
    body: web::Json<CreateEntry>,
) -> Result<HttpResponse, ApiError> {
    let mut new = body.into_inner();
    new.validate()?;
    let entry = queries::insert_entry(&p.db, user.user_id, &new).await?;
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::Created().json(entry))
}

/// List entries, newest first: page mode (`page`, `page_size`) or cursor mode (`limit`, `cursor`).
#[utoipa::path(get, path = "/api/journal/entries", params(ListQuery),
    responses((status = 200, description = "EntryPage in page mode, EntryCursorPage in cursor mode", body = EntryPage), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn list_entries(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let uid = user.user_id;
    let cached = if q.limit.is_some() || q.cursor.is_some() {
        let limit = in_range("limit", q.limit, 20, 1, 100)?;
        let cursor = Cursor::from_param(q.cursor.as_deref())?;
        let key = keys::journal_list_cursor(uid, q.cursor.as_deref(), limit);
        p.cache
            .get_or_load(&user_scope(uid), &LIST, &key, || async {
                queries::list_entries_after(&p.db, uid, cursor, limit)
                    .await
                    .map(Some)
            })
            .await?
    } else {
        let page = in_range("page", q.page, 1, 1, 1_000_000)?;
        let page_size = in_range("page_size", q.page_size, 20, 1, 100)?;
        let key = keys::journal_list_page(uid, page, page_size);
        p.cache
            .get_or_load(&user_scope(uid), &LIST, &key, || async {
                queries::list_entries_page(&p.db, uid, page, page_size)
                    .await
                    .map(Some)
            })
            .await?
    };
    Ok(respond::cached(&req, &cached))
}

/// One entry.
#[utoipa::path(get, path = "/api/journal/entries/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Entry), (status = 304), (status = 404), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn get_entry(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let uid = user.user_id;
    let cached = p
        .cache
        .get_or_load(&user_scope(uid), &ENTRY, &keys::journal_entry(id), || {
            queries::get_entry(&p.db, uid, id)
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// Change any of content, title, mood, tags.
#[utoipa::path(patch, path = "/api/journal/entries/{id}", params(("id" = Uuid, Path)), request_body = PatchEntry,
    responses((status = 200, body = Entry), (status = 400), (status = 404), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn patch_entry(
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<PatchEntry>,
) -> Result<HttpResponse, ApiError> {
    let mut patch = body.into_inner();
    patch.validate()?;
    let entry = queries::patch_entry(&p.db, user.user_id, id.into_inner(), &patch)
        .await?
        .ok_or_else(ApiError::not_found)?;
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::Ok().json(entry))
}

/// Delete an entry (soft: it disappears from every read).
#[utoipa::path(delete, path = "/api/journal/entries/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn delete_entry(
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !queries::soft_delete_entry(&p.db, user.user_id, id.into_inner()).await? {
        return Err(ApiError::not_found());
    }
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Full-text search over title and content, best match first.
#[utoipa::path(get, path = "/api/journal/search", params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn search_entries(
    p: web::Data<Platform>,
    user: AuthUser,
    q: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let text = q.q.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return Err(ApiError::validation(vec![FieldError::new(
            "q",
            "must be 1 to 200 characters",
        )]));
    }
    let limit = in_range("limit", q.limit, 20, 1, 100)?;
    let entries = queries::search_entries(&p.db, user.user_id, text, limit).await?;
    Ok(HttpResponse::Ok().json(SearchResults { entries }))
}

/// Entries and mood per day over the last `days` days.
#[utoipa::path(get, path = "/api/journal/stats", params(StatsQuery),
    responses((status = 200, body = Stats), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn entry_stats(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    q: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let days = in_range("days", q.days, 30, 1, 365)?;
    let uid = user.user_id;
    let cached = p
        .cache
        .get_or_load(
            &user_scope(uid),
            &STATS,
            &keys::journal_stats(uid, days),
            || async { queries::entry_stats(&p.db, uid, days).await.map(Some) },
        )
        .await?;
    Ok(respond::cached(&req, &cached))
}
