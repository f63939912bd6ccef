//! kai-shared: what the platform gives every Kai service.
//!
//! A service crate is its domain — routes, SQL, request shapes and their checks,
//! its cache rules (keys, policies, the scopes each write touches), its own
//! settings and metrics. Everything a second service would need lives here, and
//! nothing here names a service or its domain:

/// Where pools and combiners run their tasks.
mod home;

/// Access tokens (EdDSA JWT, keys chosen by `kid`), the `AuthUser` and `Owned`
/// (user + the path's id) extractors, with revocation.
pub mod auth;
/// The two-tier cache engine and its guarantees; `Written<T>` and `Cache::commit`
/// for writes.
pub mod cache;
/// Typed settings from the environment, validated once.
pub mod config;
/// PostgreSQL pool, timed statements, `DbError`, migrations (`migrations!`).
pub mod db;
/// Account erasure: the stream every service purges a deleted user's data from.
pub mod erasure;
/// Durable events between services (Redis Streams, one consumer group per service).
pub mod events;
/// `/health`, `/health/ready`, `/health/detailed`.
pub mod health;
/// Middleware, problem+json errors, the `Json`/`Query` extractors, `Valid<T>`
/// (parse, don't validate; an extractor too), `CursorQuery` for cursor-mode lists,
/// cached responses, per-route statistics.
pub mod http;
/// The Prometheus registry, Kai's metrics (`kai_http_*` are actix-web-prom's, see
/// `http::prometheus_middleware`), `GET /metrics`, and a service's `OutcomeCounter`s.
pub mod metrics;
/// Token-bucket rate limiting (Redis, with an in-process fallback).
pub mod ratelimit;
/// Redis, in one place: connections (one node or a cluster, TLS, ACL), timeouts,
/// the circuit breaker; session revocation over it.
pub mod redis;
/// Server bootstrap (`Binary`, `ServiceDef`), CLI and graceful shutdown.
pub mod server;
/// Tracing subscriber setup, and the task-local request context (`request_id`,
/// `method`, `user_id`) every log line of a request carries.
pub mod telemetry;
/// Helpers for tests, by concern: tokens, PostgreSQL, Redis, a running service,
/// HTTP assertions, ports and proxies, a private CA, processes.
#[cfg(feature = "testing")]
pub mod testing;
/// TLS client configurations (rustls + ring) for PostgreSQL and Redis.
pub mod tls;

pub use http::errors::{ApiError, FieldError};

/// The hasher of the in-process caches on the request path (tokens, L1,
/// generations, revocations): foldhash with a per-process random seed. moka's
/// default, SipHash-1-3, cost more than the lookup itself on a ~100-byte cache
/// key; the keys here are a token's SHA-256, ids and key strings built by the
/// service (a random seed keeps them from being chosen to collide).
pub type FastHash = foldhash::fast::RandomState;
pub use server::{Application, Platform, ServiceDef};
