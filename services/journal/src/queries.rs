//! journal-service's SQL: one `const` per statement (readable and `EXPLAIN`able as
//! is), one function per use. Every read filters on `user_id` and `deleted_at IS
//! NULL`, so another user's or a deleted entry is simply not found.
//!
//! The functions return [`DbError`]: the handlers decide what a failure means to a
//! client. A write returns a `Written` naming what it touched
//! (`cache_rules::write_touches`), and input to store arrives as a `Valid` value.

use chrono::NaiveDate;

use kai_http::ApiError;
use kai_http::Valid;
use kai_shared::cache::{Json, Written};
use kai_shared::db::{Db, DbError, Row, ToSql, Type};
use uuid::Uuid;

use crate::cache_rules::write_touches;
use crate::model::{CreateEntry, DayStats, Entry, PatchEntry, Stats};
use crate::page_json;
use kai_http::cursor::CursorQuery;

pub const INSERT: &str =
    "INSERT INTO journal.journal_entries (id, user_id, title, content, mood, tags)
     VALUES ($1, $2, $3, $4, $5, $6)
     RETURNING id, title, content, mood, tags, created_at, updated_at";

/// [`INSERT`] of several entries in one statement (a combined batch, see
/// `crate::writer`): one array per column; each row's tags are the slice
/// `tags_from..=tags_to` (1-based) of the flattened `$6` (an empty slice is `{}`).
pub const INSERT_MANY: &str =
    "INSERT INTO journal.journal_entries (id, user_id, title, content, mood, tags)
     SELECT r.id, r.user_id, r.title, r.content, r.mood, ($6::text[])[r.tags_from:r.tags_to]
     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int2[], $7::int4[], $8::int4[])
          AS r(id, user_id, title, content, mood, tags_from, tags_to)
     RETURNING id, title, content, mood, tags, created_at, updated_at";

pub const GET: &str = "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM journal.journal_entries
     WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL";

/// Page mode in one round trip: the live total, joined to the page's rows. Always
/// returns at least one row (entry columns NULL when the page is past the end).
/// The total is the sum of the user's rows of `journal.entry_total_shards` (at
/// most 16, kept by triggers, see migrations/journal/V4__entry_totals.sql and
/// V5__entry_totals_sharded.sql; no row = 0), not a count(*) over the user's
/// entries: one primary-key range whatever the user has written.
pub const PAGE: &str = "SELECT e.id, e.title, e.content, e.mood, e.tags, e.created_at, e.updated_at, t.total
     FROM (SELECT coalesce((SELECT sum(live) FROM journal.entry_total_shards WHERE user_id = $1), 0)::bigint AS total) t
     LEFT JOIN LATERAL (
         SELECT id, title, content, mood, tags, created_at, updated_at
         FROM journal.journal_entries
         WHERE user_id = $1 AND deleted_at IS NULL
         ORDER BY created_at DESC, id DESC
         LIMIT $2 OFFSET $3
     ) e ON true";

pub const FIRST_PAGE_BY_CURSOR: &str =
    "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM journal.journal_entries
     WHERE user_id = $1 AND deleted_at IS NULL
     ORDER BY created_at DESC, id DESC
     LIMIT $2";

pub const NEXT_PAGE_BY_CURSOR: &str =
    "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM journal.journal_entries
     WHERE user_id = $1 AND deleted_at IS NULL AND (created_at, id) < ($3, $4)
     ORDER BY created_at DESC, id DESC
     LIMIT $2";

pub const PATCH: &str = "UPDATE journal.journal_entries SET
         content = coalesce($3, content),
         title   = CASE WHEN $4 THEN $5 ELSE title END,
         mood    = CASE WHEN $6 THEN $7 ELSE mood END,
         tags    = coalesce($8, tags)
     WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL
     RETURNING id, title, content, mood, tags, created_at, updated_at";

pub const SOFT_DELETE: &str = "UPDATE journal.journal_entries SET deleted_at = now()
     WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL";

/// Search ranks (`ts_rank`) at most this many matches: the user's newest
/// matching entries. A journal with more matches gets the best match among its
/// newest `SEARCH_CANDIDATES` matches first, so the ranking's work stays bounded
/// however often a word occurs (ranking every one of 10,000 matches was most of
/// a common word's cost at 1,000,000 entries; docs/PERFORMANCE.md, "Cost as data
/// grows").
pub const SEARCH_CANDIDATES: i64 = 1_000;

/// [`SEARCH`] looks for the candidates among the user's newest
/// `SEARCH_WINDOW` live entries (about five and a half years of daily
/// entries); only when those hold fewer matches than the page asks for and the
/// journal is longer does [`SEARCH_ALL_MATCHES`] look at every match.
///
/// Why 2,000: a word the window holds is found by walking the window (a word
/// in 1 % of the entries: 2,000 rows, ~1 ms of PostgreSQL), so a search costs
/// about what a 2,000-entry journal's costs however long the journal is. With
/// 10,000 (round five) the same word cost 11 ms at 1,000,000 entries (10,000
/// rows walked) and, since the window had to hold `SEARCH_CANDIDATES` matches
/// to be enough, a word in fewer than 10 % of a long journal's entries fetched
/// every match (30 ms for 10,000 of them). Now only a word in fewer than
/// `limit` of the newest 2,000 entries (under 1 % at the default 20) looks
/// further back, and its matches are that sparse.
pub const SEARCH_WINDOW: i64 = 2_000;

/// Search, first statement: the newest `$4` ([`SEARCH_CANDIDATES`]) matches
/// among the user's newest `$5` ([`SEARCH_WINDOW`]) live entries, ranked, best
/// first, `$3` of them. `complete` (on every row; one row of NULLs when nothing
/// matched) says whether those are enough: the window held at least `$3`
/// matches (a full answer), or the window is the whole journal. Otherwise the
/// caller runs [`SEARCH_ALL_MATCHES`].
///
/// Bounded, whatever the word: the `newest` subquery's `LIMIT` makes PostgreSQL
/// walk `journal_entries_user_created_live` for the window's `$5` rows and test
/// each, at most ~2,000 rows (1.2–2.2 ms at 1,000 to 1,000,000 entries, for
/// common, rare, absent words and words only other users write). Left to
/// choose, PostgreSQL took the GIN index (then `journal_entries_search`) whenever it
/// guessed the user's share of the table and the window's bound badly, and that
/// index's matches are every user's: 97 ms for a word in 1 % of a
/// 100,000-entry journal that 31,000 entries of the table hold
/// (docs/PERFORMANCE.md, "Cost as data grows"). Sent unprepared
/// ([`kai_shared::db::Db::query_planned_per_values`]): planned for the word each
/// time, never a generic plan that cannot know how often it occurs.
pub const SEARCH: &str = "WITH window_end AS MATERIALIZED (
         SELECT created_at FROM journal.journal_entries
         WHERE user_id = $1 AND deleted_at IS NULL
         ORDER BY created_at DESC, id DESC
         OFFSET $5 - 1 LIMIT 1),
     hits AS MATERIALIZED (
         SELECT id, title, content, mood, tags, created_at, updated_at, search
         FROM (SELECT id, title, content, mood, tags, created_at, updated_at, search
               FROM journal.journal_entries
               WHERE user_id = $1 AND deleted_at IS NULL
               ORDER BY created_at DESC, id DESC
               LIMIT $5) newest
         WHERE search @@ websearch_to_tsquery('english', $2)
         ORDER BY created_at DESC, id DESC
         LIMIT $4)
     SELECT e.id, e.title, e.content, e.mood, e.tags, e.created_at, e.updated_at, s.complete
     FROM (SELECT (SELECT count(*) FROM hits) >= $3 OR NOT EXISTS (SELECT FROM window_end) AS complete) s
     LEFT JOIN LATERAL (
         SELECT id, title, content, mood, tags, created_at, updated_at
         FROM hits
         ORDER BY ts_rank(search, websearch_to_tsquery('english', $2)) DESC, created_at DESC, id DESC
         LIMIT $3) e ON s.complete";

/// Search, second statement (only when [`SEARCH`] was not complete: a journal
/// longer than the window whose newest entries hold fewer matches than the
/// page asks for): the newest
/// `$4` of all the user's matches, ranked, `$3` of them. The inner `OFFSET 0`
/// keeps PostgreSQL from walking the list index newest first in the hope of
/// finding `$4` matches soon (the window just showed they are sparse): it
/// fetches every match and ranks the newest `$4`. The matches come from
/// `journal_entries_user_search`, a GIN index of each entry's words keyed with
/// its user (migrations/journal/V7__search_by_user.sql): the user's matches
/// only, never the other users' entries holding the word, which the words-only
/// index it replaced made PostgreSQL read and drop (30–77 ms for a word 20,000
/// other entries hold, growing with the table; docs/PERFORMANCE.md).
pub const SEARCH_ALL_MATCHES: &str = "SELECT id, title, content, mood, tags, created_at, updated_at
     FROM (SELECT id, title, content, mood, tags, created_at, updated_at, search
           FROM (SELECT id, title, content, mood, tags, created_at, updated_at, search
                 FROM journal.journal_entries
                 WHERE user_id = $1 AND deleted_at IS NULL AND search @@ websearch_to_tsquery('english', $2)
                 OFFSET 0) matches
           ORDER BY created_at DESC, id DESC
           LIMIT $4) newest
     ORDER BY ts_rank(search, websearch_to_tsquery('english', $2)) DESC, created_at DESC, id DESC
     LIMIT $3";

/// One pass over the window, grouped by UTC day; totals are summed in Rust.
pub const STATS_BY_DAY: &str = "SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
            count(*) AS entries,
            coalesce(sum(mood), 0)::bigint AS mood_sum,
            count(mood) AS mood_count
     FROM journal.journal_entries
     WHERE user_id = $1 AND deleted_at IS NULL AND created_at >= now() - make_interval(days => $2::int)
     GROUP BY day
     ORDER BY day";

pub(crate) fn entry(row: &Row) -> Entry {
    Entry {
        id: row.get("id"),
        title: row.get("title"),
        content: row.get("content"),
        mood: row.get("mood"),
        tags: row.get("tags"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

pub async fn insert_entry(
    db: &Db,
    user_id: Uuid,
    new: &Valid<CreateEntry>,
) -> Result<Written<Entry>, DbError> {
    let conn = db.conn().await?;
    let id = Uuid::now_v7();
    let row = db
        .query_one(
            &conn,
            INSERT,
            &[
                &id,
                &user_id,
                &new.title,
                &new.content,
                &new.mood,
                &new.tags,
            ],
        )
        .await?;
    Ok(Written::new(entry(&row), write_touches(user_id)))
}

/// Several users' new entries (a combined batch): one statement for all of them,
/// one result per entry, in order. The rows share one `created_at` (the
/// statement's); their ids, UUIDv7 taken in order, keep them in that order.
///
/// When PostgreSQL refuses the statement as a whole (a constraint one entry
/// breaks), nothing was written: each entry is then inserted on its own, so only
/// the entry at fault fails. When the database could not be reached, every entry
/// gets that error (the statement may or may not have run: nothing is retried).
pub async fn insert_entries(
    db: &Db,
    batch: &[(Uuid, Valid<CreateEntry>)],
) -> Vec<Result<Written<Entry>, ApiError>> {
    if let [(user_id, new)] = batch {
        return vec![
            insert_entry(db, *user_id, new)
                .await
                .map_err(ApiError::from),
        ];
    }
    match insert_many(db, batch).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        Err(e) if e.is_refused() => {
            let each = batch
                .iter()
                .map(|(user_id, new)| insert_entry(db, *user_id, new));
            futures_util::future::join_all(each)
                .await
                .into_iter()
                .map(|r| r.map_err(ApiError::from))
                .collect()
        }
        Err(e) => {
            let e = ApiError::from(e);
            let mut failed: Vec<_> = (1..batch.len()).map(|_| Err(e.duplicate())).collect();
            failed.push(Err(e));
            failed
        }
    }
}

async fn insert_many(
    db: &Db,
    batch: &[(Uuid, Valid<CreateEntry>)],
) -> Result<Vec<Written<Entry>>, DbError> {
    let n = batch.len();
    let (mut ids, mut users, mut titles, mut contents, mut moods) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut tags, mut tags_from, mut tags_to) =
        (Vec::new(), Vec::with_capacity(n), Vec::with_capacity(n));
    for (user_id, new) in batch {
        ids.push(Uuid::now_v7());
        users.push(*user_id);
        titles.push(new.title.as_deref());
        contents.push(new.content.as_str());
        moods.push(new.mood);
        // At most 20 tags per entry and 64 entries per batch: far from i32::MAX.
        tags_from.push(tags.len() as i32 + 1);
        tags.extend(new.tags.iter().map(String::as_str));
        tags_to.push(tags.len() as i32);
    }
    let conn = db.conn().await?;
    let rows = db
        .query(
            &conn,
            INSERT_MANY,
            &[
                &ids, &users, &titles, &contents, &moods, &tags, &tags_from, &tags_to,
            ],
        )
        .await?;
    let mut by_id: std::collections::HashMap<Uuid, Entry> =
        rows.iter().map(entry).map(|e| (e.id, e)).collect();
    Ok(ids
        .iter()
        .zip(&users)
        .map(|(id, user_id)| {
            let stored = by_id
                .remove(id)
                .expect("INSERT … RETURNING returns every row it inserted");
            Written::new(stored, write_touches(*user_id))
        })
        .collect())
}

pub async fn get_entry(db: &Db, user_id: Uuid, id: Uuid) -> Result<Option<Entry>, DbError> {
    db.read_pipelined(|conn| async move {
        Ok(db
            .query_opt(&*conn, GET, &[&id, &user_id])
            .await?
            .as_ref()
            .map(entry))
    })
    .await
}

/// Page mode: one statement whatever the table holds. The page's JSON, written
/// from the rows ([`crate::page_json`]).
pub async fn list_entries_page(
    db: &Db,
    user_id: Uuid,
    page: i64,
    page_size: i64,
) -> Result<Json, DbError> {
    db.read_pipelined(|conn| async move {
        let offset = (page - 1) * page_size;
        let rows = db
            .query(&*conn, PAGE, &[&user_id, &page_size, &offset])
            .await?;
        page_json::page_from_rows(&rows, page, page_size)
    })
    .await
}

/// Cursor mode: one statement, asking for one row more than the page to learn
/// whether another page exists. The page's JSON, written from the rows
/// ([`crate::page_json`]).
pub async fn list_entries_after(db: &Db, user_id: Uuid, q: &CursorQuery) -> Result<Json, DbError> {
    db.read_pipelined(|conn| async move {
        let rows = match q.after {
            None => {
                db.query(&*conn, FIRST_PAGE_BY_CURSOR, &[&user_id, &q.fetch()])
                    .await?
            }
            Some(c) => {
                db.query(
                    &*conn,
                    NEXT_PAGE_BY_CURSOR,
                    &[&user_id, &q.fetch(), &c.at, &c.id],
                )
                .await?
            }
        };
        page_json::cursor_page_from_rows(&rows, q)
    })
    .await
}

pub async fn patch_entry(
    db: &Db,
    user_id: Uuid,
    id: Uuid,
    patch: &Valid<PatchEntry>,
) -> Result<Written<Option<Entry>>, DbError> {
    let conn = db.conn().await?;
    let set_title = patch.title.is_some();
    let title = patch.title.clone().flatten();
    let set_mood = patch.mood.is_some();
    let mood = patch.mood.flatten();
    let row = db
        .query_opt(
            &conn,
            PATCH,
            &[
                &id,
                &user_id,
                &patch.content,
                &set_title,
                &title,
                &set_mood,
                &mood,
                &patch.tags,
            ],
        )
        .await?;
    Ok(Written::if_found(
        row.as_ref().map(entry),
        write_touches(user_id),
    ))
}

/// True if a live entry was deleted.
pub async fn soft_delete_entry(db: &Db, user_id: Uuid, id: Uuid) -> Result<Written<bool>, DbError> {
    let conn = db.conn().await?;
    let deleted = db.execute(&conn, SOFT_DELETE, &[&id, &user_id]).await? == 1;
    Ok(Written::if_changed(deleted, write_touches(user_id)))
}

/// The best `limit` of the user's newest [`SEARCH_CANDIDATES`] matches within
/// their newest [`SEARCH_WINDOW`] entries: one statement; or, for a journal
/// longer than the window whose newest entries hold fewer than `limit` matches,
/// the best `limit` of the newest [`SEARCH_CANDIDATES`] matches of the whole
/// journal (two statements).
pub async fn search_entries(
    db: &Db,
    user_id: Uuid,
    q: &str,
    limit: i64,
) -> Result<Vec<Entry>, DbError> {
    db.read(|conn| async move {
        let params: [(&(dyn ToSql + Sync), Type); 5] = [
            (&user_id, Type::UUID),
            (&q, Type::TEXT),
            (&limit, Type::INT8),
            (&SEARCH_CANDIDATES, Type::INT8),
            (&SEARCH_WINDOW, Type::INT8),
        ];
        let rows = db.query_planned_per_values(&conn, SEARCH, &params).await?;
        if rows.first().is_none_or(|r| r.get("complete")) {
            return Ok(rows
                .iter()
                .filter(|r| r.get::<_, Option<Uuid>>("id").is_some())
                .map(entry)
                .collect());
        }
        Ok(db
            .query_planned_per_values(&conn, SEARCH_ALL_MATCHES, &params[..4])
            .await?
            .iter()
            .map(entry)
            .collect())
    })
    .await
}

pub async fn entry_stats(db: &Db, user_id: Uuid, days: i64) -> Result<Stats, DbError> {
    db.read(|conn| async move {
        let days_i32 = days as i32;
        let rows = db
            .query(&conn, STATS_BY_DAY, &[&user_id, &days_i32])
            .await?;
        let (mut total, mut mood_sum, mut mood_count) = (0i64, 0i64, 0i64);
        let days = rows
            .iter()
            .map(|r| {
                let (count, sum, moods): (i64, i64, i64) =
                    (r.get("entries"), r.get("mood_sum"), r.get("mood_count"));
                total += count;
                mood_sum += sum;
                mood_count += moods;
                DayStats {
                    date: r.get::<_, NaiveDate>("day"),
                    count,
                    average_mood: average(sum, moods),
                }
            })
            .collect();
        Ok(Stats {
            total_entries: total,
            average_mood: average(mood_sum, mood_count),
            days,
        })
    })
    .await
}

fn average(sum: i64, count: i64) -> Option<f64> {
    (count > 0).then(|| (sum as f64 / count as f64 * 100.0).round() / 100.0)
}

/// Statements the hot paths run, for `EXPLAIN` checks (kai-verify and tests).
pub const HOT_QUERIES: &[(&str, &str)] = &[
    ("list page", PAGE),
    ("list by cursor", NEXT_PAGE_BY_CURSOR),
    ("get", GET),
    ("search", SEARCH),
    ("search, every match", SEARCH_ALL_MATCHES),
    ("stats", STATS_BY_DAY),
];
