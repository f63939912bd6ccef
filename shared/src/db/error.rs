//! What can go wrong with the database: getting a connection, or a statement.

use deadpool_postgres::PoolError;

/// A database failure: getting a connection, or running a statement.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not get a database connection")]
    Pool(#[from] PoolError),
    #[error("database statement failed")]
    Query(#[from] tokio_postgres::Error),
}

impl DbError {
    /// The violated constraint's name, when a statement broke one.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            Self::Query(e) => e.as_db_error().and_then(|d| d.constraint()),
            Self::Pool(_) => None,
        }
    }

    /// A named constraint as a caller's error (realworld-axum-sqlx's
    /// `on_constraint`): a violation of `name` becomes `to_error()`'s error (the
    /// HTTP layer makes a unique key's a 409), anything else this error, converted.
    pub fn on_constraint<E: From<DbError>>(self, name: &str, to_error: impl FnOnce() -> E) -> E {
        if self.constraint() == Some(name) {
            to_error()
        } else {
            self.into()
        }
    }

    /// True when PostgreSQL answered the statement with an error: it did not run
    /// (an autocommitted statement wrote nothing), as opposed to a connection
    /// lost on the way, after which nobody knows.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Query(e) if e.as_db_error().is_some())
    }

    /// True when the connection the statement was sent on is gone: closed, lost
    /// on the way, or ended by the server (SQLSTATE class 57P: an
    /// administrator's `pg_terminate_backend`, a shutdown, a crash). Another
    /// connection may well succeed.
    pub fn ended_its_connection(&self) -> bool {
        match self {
            Self::Pool(_) => false,
            Self::Query(e) => {
                e.is_closed()
                    || e.as_db_error()
                        .is_some_and(|d| d.code().code().starts_with("57P"))
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
        }
    }

    /// True when the database could not be reached (as opposed to a bad statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Query(e) => e.is_closed() || e.as_db_error().is_none(),
        }
    }
}
