//! PostgreSQL access: the pool, timed statements and migrations.
//!
//! Every statement a service runs goes through [`Db`], which prepares it once per
//! connection (deadpool's statement cache), times it into
//! `kai_db_query_duration_seconds`, counts it (tests assert "a constant number of
//! statements per request" with [`Db::statements_executed`]), and logs it as
//! `slow query` with its SQL text — never its parameters, which carry personal
//! data — when it is slower than `SLOW_QUERY_THRESHOLD_MS`.

mod combine;
mod connect;
mod error;
mod jsonb;
mod lanes;
mod migrate;
mod pool;
pub mod replicas;

pub use combine::{Combiner, Lost};
pub use connect::VERIFY_IF_IDLE_FOR;
pub use error::DbError;
pub use jsonb::Jsonb;
pub use lanes::Lease;
pub use migrate::{
    LOCK_TIMEOUT, MigrationSet, NO_TRANSACTION, STATEMENT_TIMEOUT, is_current, migrate,
};
pub use pool::{Db, PoolStatus, SlowQuery};
pub use replicas::{ReplicaHealth, read_at};
pub use tokio_postgres::Row;
pub use tokio_postgres::types::{ToSql, Type};
