//! The list's first pages, which both the list route and the create path
//! (`writer`) need: the page size a request gets by default, the page's loader,
//! and the refreshes a create hands to `Cache::commit_all`.

use kai_http::ApiError;
use kai_http::cursor::CursorQuery;
use kai_platform::Platform;
use kai_shared::cache::{Hot, Json, Refresh};
use kai_shared::db::{Db, DbError};
use uuid::Uuid;

use crate::cache_rules::{LIST, list_cursor_key, list_page_key, user_scope};
use crate::model::{Entry, EntryPage};
use crate::page_json;
use crate::queries;

/// The list's page size when a request names none, in page and cursor mode.
pub const DEFAULT_PAGE_SIZE: i64 = 20;

/// A page-mode list page, as cached (its JSON written from the rows).
pub async fn load_page(
    db: &Db,
    uid: Uuid,
    page: i64,
    page_size: i64,
) -> Result<Option<Json>, DbError> {
    queries::list_entries_page(db, uid, page, page_size)
        .await
        .map(Some)
}

/// A cursor-mode list page, as cached (its JSON written from the rows).
pub async fn load_cursor_page(
    db: &Db,
    uid: Uuid,
    q: &CursorQuery,
) -> Result<Option<Json>, DbError> {
    queries::list_entries_after(db, uid, q).await.map(Some)
}

/// The list's first page in page mode at the default size, if it is hot on this
/// replica now: taken before a create, whose refresh derives the new page from
/// it ([`first_pages`]).
pub fn hot_first_page(p: &Platform, uid: Uuid) -> Option<Hot> {
    p.cache
        .hot(&user_scope(uid), &list_page_key(uid, 1, DEFAULT_PAGE_SIZE))
}

/// The list's first page at the default size, in both modes: what a client's
/// first screen reads. Creates redo the ones their replica holds
/// (`Cache::commit_all`), so that after each create the readers of a busy list
/// find its new first page ready instead of all waiting for one load. The page
/// mode's, when it was hot before the create (`hot`), is derived from the old
/// page and the user's `created` entries without a query.
pub fn first_pages(
    p: &Platform,
    uid: Uuid,
    hot: Option<Hot>,
    created: Vec<Entry>,
) -> Vec<Refresh<'_>> {
    let mut pages = vec![match hot {
        Some(hot) => Refresh::derived(hot, &LIST, move |old| {
            // The old entries copied as bytes; through serde (parse, sort,
            // write every entry again) only when the created ones do not all
            // come first.
            match page_json::page_with_created(old, &created) {
                Ok(Some(page)) => Ok(Some(Json::new(page))),
                Ok(None) => serde_json::from_slice::<EntryPage>(old)
                    .and_then(|page| serde_json::to_vec(&page.with_created(&created)))
                    .map(|page| Some(Json::new(page))),
                Err(e) => Err(e),
            }
            .map_err(ApiError::internal)
        }),
        None => Refresh::new(
            user_scope(uid),
            &LIST,
            list_page_key(uid, 1, DEFAULT_PAGE_SIZE),
            load_page(&p.db, uid, 1, DEFAULT_PAGE_SIZE),
        ),
    }];
    if let Ok(cq) = p.cursor_query(uid, None, None) {
        pages.push(Refresh::new(
            user_scope(uid),
            &LIST,
            list_cursor_key(uid, None, cq.limit),
            async move { load_cursor_page(&p.db, uid, &cq).await },
        ));
    }
    pages
}
