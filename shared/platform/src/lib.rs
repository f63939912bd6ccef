//! kai-platform: what turns a service's routes into a running Kai service — the
//! top layer, above `kai-http` (answers, extractors, tokens) and `kai-shared`
//! (pool, Redis, cache, events). A service's `main` is one call to
//! [`server::main`]; its routes reach the parts through `web::Data<Platform>`.

/// Nested settings from the environment (one group per part), validated once.
pub mod config;
/// `/health`, `/health/ready`, `/health/detailed`.
pub mod health;
/// The readiness check: its own connection, bounded, with a grace.
pub mod readiness;
/// Server bootstrap (`Binary`, `ServiceDef`, `Platform`), CLI and graceful shutdown.
pub mod server;

pub use server::{Application, Platform, ServiceDef};
