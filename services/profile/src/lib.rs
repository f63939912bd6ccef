//! profile-service: accounts (register, login, logout), the access tokens every
//! Kai service accepts, and the profile that shapes how the assistant speaks —
//! on the kai-shared platform.
//!
//! It owns the `sessions` table, so besides the platform's revocation set (fed
//! by Redis pub/sub) it checks each request's session in PostgreSQL: a logout is
//! effective here at once, with or without Redis.

/// Password change, log out everywhere, account deletion.
pub mod account;
/// Which reads are cached for how long, and which writes invalidate them.
pub mod cache_rules;
/// Account erasure: purging a deleted user's data when profile-service says so.
pub mod erasure;
/// Request and response shapes, and their validation.
pub mod model;
/// Argon2id hashing and verification, off the async workers.
pub mod password;
/// The SQL, one function per statement.
pub mod queries;
/// HTTP handlers.
pub mod routes;
/// Session bookkeeping: token hashes and the per-request session check.
pub mod sessions;

use std::sync::Arc;

use kai_shared::ServiceDef;
use kai_shared::db::MigrationSet;
use utoipa::OpenApi;

pub const DEFAULT_PORT: u16 = 8083;

/// The binary, as `kai_shared::server::main` starts it.
pub const BINARY: kai_shared::server::Binary = kai_shared::server::Binary {
    name: "profile",
    default_port: DEFAULT_PORT,
    signs_tokens: true,
};

mod embedded {
    refinery::embed_migrations!("../../migrations/profile");
}

pub const MIGRATIONS: MigrationSet = MigrationSet {
    schema: "profile",
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
        session_check: Some(sessions::session_check),
        on_start: Some(Arc::new(erasure::start)),
    }
}
