//! kai-shared: what the platform gives every Kai service.
//!
//! A service crate is its domain — routes, SQL, models, and the rules saying which
//! writes invalidate which cached reads. Everything a second service would need
//! lives here:

/// Access tokens (HS256 JWT) and the `AuthUser` extractor, with revocation.
pub mod auth;
/// The two-tier cache engine and its guarantees.
pub mod cache;
/// Typed settings from the environment, validated once.
pub mod config;
/// PostgreSQL pool, timed statements, migrations.
pub mod db;
/// Account erasure: the stream every service purges a deleted user's data from.
pub mod erasure;
/// Durable events between services (Redis Streams, one consumer group per service).
pub mod events;
/// `/health`, `/health/ready`, `/health/detailed`.
pub mod health;
/// Middleware, problem+json errors, cached responses, per-route statistics.
pub mod http;
/// The Prometheus registry and Kai's metrics.
pub mod metrics;
/// Token-bucket rate limiting (Redis, with an in-process fallback).
pub mod ratelimit;
/// Redis, in one place: connections (one node or a cluster, TLS, ACL), timeouts,
/// the circuit breaker; session revocation over it.
pub mod redis;
/// Server bootstrap, CLI and graceful shutdown.
pub mod server;
/// Tracing subscriber setup.
pub mod telemetry;
/// Helpers for tests: throwaway databases, private Redis prefixes, tokens.
#[cfg(feature = "testing")]
pub mod testing;
/// TLS client configurations (rustls + ring) for PostgreSQL and Redis.
pub mod tls;

pub use http::errors::{ApiError, FieldError};
pub use server::{Application, Platform, ServiceDef};
