//! Test helpers: every test gets its own PostgreSQL database (created empty
//! but for the shipped roles' schemas and grants, migrated as the service's
//! migration role and served as its serving role, dropped afterwards) and its own Redis
//! key prefix (deleted afterwards), so tests run in parallel and leave nothing
//! behind. [`PrivateRedis`] starts a redis-server of the test's own, which the test
//! may pause, kill and restart.
//!
//! One module per concern, everything re-exported here: [`auth`] (keys, tokens,
//! users), [`postgres`], [`redis_server`], [`app`] (a running service), [`http`] (client
//! and assertions), [`net`] (ports, a cuttable TCP proxy), [`roles`] (the shipped PostgreSQL roles), [`tls`] (a private CA),
//! [`process`] (child processes, scratch directories).

pub mod app;
pub mod auth;
pub mod http;
pub mod net;
pub mod postgres;
pub mod process;
pub mod redis_acl;
pub mod redis_server;
pub mod replica;
pub mod roles;
pub mod tls;

pub use app::*;
pub use auth::*;
pub use http::*;
pub use net::*;
pub use postgres::*;
pub use process::*;
pub use redis_server::*;
pub use replica::*;
pub use tls::*;
