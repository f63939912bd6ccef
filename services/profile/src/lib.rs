//! profile-service: accounts (register, login, logout), the access tokens every
//! Kai service accepts, and the profile that shapes how the assistant speaks —
//! on the kai-shared platform.
//!
//! It owns the `sessions` table, so besides the platform's revocation set (fed
//! by Redis pub/sub) it checks each request's session in PostgreSQL, remembering
//! a live one for a quarter second (`sessions`): a logout is effective on the
//! replica that performed it at once, and on every other within 1 s, with or
//! without Redis.

/// Password change, log out everywhere, account deletion.
pub mod account;
/// Which reads are cached for how long, and which writes invalidate them.
pub mod cache_rules;
/// Device tokens: the login throttle's proof of a device that logged in before.
pub mod device;
/// The canonical form of an e-mail address (limiter, lookup, unique index).
pub mod email;
/// The start-up pass that keys accounts written before the canonical e-mail key.
pub mod email_keys;
/// Account erasure: purging a deleted user's data when profile-service says so.
pub mod erasure;
/// Abuse limits and the client address they are keyed by.
pub mod limits;
/// Request and response shapes, and their validation.
pub mod model;
/// Argon2id hashing and verification, off the async workers.
pub mod password;
/// The SQL, one function per statement.
pub mod queries;
/// Revocations outlive Redis: the revoked set re-written from PostgreSQL.
pub mod revocations;
/// HTTP handlers.
pub mod routes;
/// Session bookkeeping: token hashes and the per-request session check.
pub mod sessions;
/// The common-password rule for new passwords.
pub mod strength;

use kai_platform::ServiceDef;
use kai_platform::server::Binary;

/// The binary, as `kai_platform::server::main` starts it.
pub const BINARY: Binary = Binary::new("profile", 8083).signing_tokens();

kai_shared::migrations!("profile", "../../migrations/profile");

/// The service as the platform runs it.
pub fn service() -> ServiceDef {
    ServiceDef::new::<routes::ApiDoc>(BINARY, MIGRATIONS, routes::configure)
        .checking_sessions(sessions::session_check)
        .caching(&cache_rules::CACHED)
        .counting(&[password::VERIFICATIONS, sessions::CHECKS])
        .on_start(start)
}

/// The background work: the erasure relay and consumer, the revoked set kept
/// complete, and keying accounts that have no canonical e-mail yet.
fn start(
    p: actix_web::web::Data<kai_platform::Platform>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(email_keys::key_unkeyed_accounts(p.clone()));
    tokio::spawn(revocations::keep(p.clone(), stop.clone()));
    erasure::start(p, stop);
}
