//! kai-shared: the cache-and-pool crate every Kai service shares (SPEC §1). It
//! knows no HTTP — nothing here depends on actix-web or on the HTTP error type —
//! so the compiler keeps the layers one-way: `kai-http` maps this crate's errors
//! (`DbError`, the cache's `LoadError<E>`, `ratelimit::Limited`) to answers in one
//! place, and `kai-platform` wires the parts together from their own settings.
//!
//! The modules, bottom up:

/// The two-tier cache engine and its guarantees; `Written<T>` and `Cache::commit`
/// for writes.
pub mod cache;
/// PostgreSQL pool, timed statements, `DbError`, migrations (`migrations!`).
pub mod db;
/// Account erasure: the stream every service purges a deleted user's data from.
pub mod erasure;
/// Durable events between services (Redis Streams, one consumer group per service).
pub mod events;
/// How figures are reported (milliseconds, rounding).
pub mod figures;
/// Where pools and combiners run their tasks.
mod home;
/// The Prometheus registry and the metrics of this crate's parts.
pub mod metrics;
/// Token-bucket rate limiting (Redis, with an in-process fallback).
pub mod ratelimit;
/// Redis, in one place: connections (one node or a cluster, TLS, ACL), timeouts,
/// the circuit breaker; session revocation's store and channel.
pub mod redis;
/// The settings groups of the parts below, and the value parsers they use.
pub mod settings;
/// The shard of a per-thread counter this thread adds to.
pub mod shard;
/// TLS client configurations (rustls + ring) for PostgreSQL and Redis.
pub mod tls;

/// Every Lua script this crate runs on Redis (their sources), loaded into
/// Redis's script cache at start ([`redis::Redis::preload_scripts`]).
pub fn lua_scripts() -> Vec<&'static str> {
    cache::LUA_SCRIPTS
        .iter()
        .chain(ratelimit::LUA_SCRIPTS.iter())
        .copied()
        .collect()
}

/// The hasher of the in-process caches on the request path (tokens, L1,
/// generations, revocations): foldhash with a per-process random seed. moka's
/// default, SipHash-1-3, cost more than the lookup itself on a ~100-byte cache
/// key; the keys here are a token's SHA-256, ids and key strings built by the
/// service (a random seed keeps them from being chosen to collide).
pub type FastHash = foldhash::fast::RandomState;
