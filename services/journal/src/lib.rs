//! journal-service: a user's private journal — entries, lists (page and cursor
//! mode), full-text search and mood statistics — on the kai-shared platform.

/// Which reads are cached for how long, and which writes invalidate them.
pub mod cache_rules;
/// Account erasure: purging a deleted user's data when profile-service says so.
pub mod erasure;
/// `GET /api/journal/export`: every entry, streamed as NDJSON in keyset batches.
pub mod export;
/// Request and response shapes, and their validation.
pub mod model;
/// The SQL, one function per statement.
pub mod queries;
/// HTTP handlers.
pub mod routes;

use std::sync::Arc;

use kai_shared::ServiceDef;
use kai_shared::db::MigrationSet;
use utoipa::OpenApi;

pub const DEFAULT_PORT: u16 = 8081;

/// The binary, as `kai_shared::server::main` starts it.
pub const BINARY: kai_shared::server::Binary = kai_shared::server::Binary {
    name: "journal",
    default_port: DEFAULT_PORT,
    signs_tokens: false,
};

mod embedded {
    refinery::embed_migrations!("../../migrations/journal");
}

pub const MIGRATIONS: MigrationSet = MigrationSet {
    schema: "journal",
    runner: embedded::migrations::runner,
};

/// The service as the platform runs it.
pub fn service() -> ServiceDef {
    ServiceDef {
        name: BINARY.name,
        default_port: DEFAULT_PORT,
        migrations: MIGRATIONS,
        routes: Arc::new(routes::configure),
        openapi: routes::ApiDoc::openapi(),
        cached: &cache_rules::CACHED,
        outcome_counters: &[],
        session_check: None,
        on_start: Some(Arc::new(erasure::start)),
    }
}
