//! journal-service: a user's private journal — entries, lists (page and cursor
//! mode), full-text search and mood statistics — on the kai-shared platform.

/// Which reads are cached for how long, and which writes invalidate them.
pub mod cache_rules;
/// The service's own settings (per-user limits).
pub mod config;
/// Account erasure: purging a deleted user's data when profile-service says so.
pub mod erasure;
/// `GET /api/journal/export`: every entry, streamed as NDJSON in keyset batches.
pub mod export;
/// Per-user limits on exports.
pub mod limits;
/// Request and response shapes, and their validation.
pub mod model;
/// The list's pages as JSON, written from the query's rows.
pub mod page_json;
/// The list's first pages: their loader and the refreshes a create hands back.
pub mod pages;
/// The SQL, one function per statement.
pub mod queries;
/// HTTP handlers.
pub mod routes;
/// The search text, rebuilt from its words before PostgreSQL parses it.
pub mod search;
/// Creating entries, combined into multi-row statements under load.
pub mod writer;

use kai_platform::ServiceDef;
use kai_platform::server::Binary;

/// The binary, as `kai_platform::server::main` starts it.
pub const BINARY: Binary = Binary::new("journal", 8081);

kai_shared::migrations!("journal", "../../migrations/journal");

/// The service as the platform runs it, with every setting of its own at its default.
pub fn service() -> ServiceDef {
    service_with(&config::JournalSettings::defaults())
}

/// The service as the platform runs it.
pub fn service_with(settings: &config::JournalSettings) -> ServiceDef {
    let writer = actix_web::web::Data::new(writer::EntryWriter::default());
    let limits = actix_web::web::Data::new(limits::Limits::new(settings));
    ServiceDef::new::<routes::ApiDoc>(BINARY, MIGRATIONS, move |cfg| {
        cfg.app_data(limits.clone());
        routes::configure(cfg, &writer)
    })
    .caching(&cache_rules::CACHED)
    .counting(&[limits::RATE_LIMITED])
    .on_start(erasure::start)
}
