//! Sessions: one row per login, keyed by the session id the token carries.
//!
//! The table stores the token's SHA-256 (hex), never the token: a copy of the
//! table cannot be replayed. Tokens are 256-bit-signed JWTs, not passwords, so a
//! fast unsalted hash is the right tool here.
//!
//! Every authenticated request to profile-service also checks its session
//! ([`session_check`]), after its token verified: this table is the truth, so
//! a replica that hears nothing through Redis (down, flushed, lost) still
//! refuses an ended session.
//!
//! **The memo of live sessions.** Asking PostgreSQL on every request made that
//! check most of a cached read's cost, so each replica remembers a session it
//! found live for [`MEMO_WINDOW`], counted from when that check began, in a
//! bounded in-process cache keyed by the session id (a verified token's `sid`:
//! nobody can name a session without holding its signed token). A hot session
//! reaches PostgreSQL a few times a second, not once per request. What the memo
//! never does:
//!
//! - remember "not live": an ended session is asked about every time;
//! - answer for a revocation this replica knows: the token's verification
//!   (`Authenticator::verify`), which runs before this check, refuses a session
//!   revoked here or heard of — a logout, or a user-wide watermark (log out
//!   everywhere, password change, account deletion) — so on the replica that
//!   ends a session the very next request is a 401, memo or not;
//! - keep what a check that overlapped a revocation found: its read may predate
//!   the revocation's commit, so when the replica recorded any revocation while
//!   the check ran (`Authenticator::revocations_recorded` moved), the entry is
//!   taken out again.
//!
//! What it costs: a profile replica that did not hear a revocation (Redis down)
//! still learns it from this table, but up to [`MEMO_WINDOW`] later than it
//! would without the memo — inside the contract's "401 on every service within
//! 1 s". Counted in `kai_session_checks_total{outcome="memo"|"db"}` ([`CHECKS`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kai_http::ApiError;
use kai_http::auth::Authenticator;
use kai_platform::server::SessionCheck;
use kai_shared::db::Db;
use kai_shared::metrics::{Metrics, OutcomeCounter};
use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Whether a session is still live: not revoked, not expired.
pub const SESSION_LIVE: &str =
    "SELECT revoked_at IS NULL AND expires_at > now() FROM profile.sessions WHERE id = $1";

/// How long a session found live in PostgreSQL is taken as live on this
/// replica, from when that check began (its read may have been taken at any
/// moment of the query, so the window starts at the earliest).
///
/// Why 250 ms: SPEC allows 1 s between a logout (or a password change, log out
/// everywhere, an account deletion) and a 401 on every service. A replica that
/// hears the revocation refuses at once whatever the memo holds; one that does
/// not (Redis down) refuses every request whose check starts more than this
/// after the revocation committed — a quarter of the budget, leaving the rest
/// for requests already in flight and a loaded machine. And a quarter second is
/// already enough: a session busy enough to matter costs at most four
/// statements a second on each replica instead of one per request.
pub const MEMO_WINDOW: Duration = Duration::from_millis(250);

/// How many live sessions a replica remembers at once: every session that made
/// a request in the last [`MEMO_WINDOW`] up to 40,000 requests a second of
/// distinct sessions. Beyond it some are asked about again, never answered wrong.
const MEMO_CAPACITY: u64 = 10_000;

/// Who answered a session check: the memo of live sessions or PostgreSQL.
pub const CHECKS: OutcomeCounter = OutcomeCounter {
    name: "kai_session_checks_total",
    help: "session checks of authenticated requests by who answered: the memo of sessions \
           found live in the last 250 ms (memo) or PostgreSQL (db)",
    outcomes: &["memo", "db"],
};

/// The hex SHA-256 of a token, as stored in `sessions.token_hash`.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The platform's per-request check for this service (`ServiceDef.session_check`).
pub fn session_check(db: Db, auth: Arc<Authenticator>, metrics: &Metrics) -> SessionCheck {
    remembering_for(MEMO_WINDOW, db, auth, metrics)
}

/// [`session_check`] with another memo window: tests use a long one, so that
/// whether a check is answered from the memo does not depend on the machine's
/// speed.
pub fn remembering_for(
    window: Duration,
    db: Db,
    auth: Arc<Authenticator>,
    metrics: &Metrics,
) -> SessionCheck {
    let sessions = Arc::new(LiveSessions {
        window,
        memo: moka::sync::Cache::builder()
            .max_capacity(MEMO_CAPACITY)
            .time_to_live(window)
            .build_with_hasher(kai_shared::FastHash::default()),
        db,
        auth,
        from_memo: metrics.outcome_series(&CHECKS, "memo"),
        from_db: metrics.outcome_series(&CHECKS, "db"),
    });
    Arc::new(move |session_id: Uuid| {
        let sessions = sessions.clone();
        Box::pin(async move { sessions.check(session_id).await })
    })
}

/// The sessions this replica found live lately, and how to ask again.
struct LiveSessions {
    window: Duration,
    /// Session id → when the check that found it live began.
    memo: moka::sync::Cache<Uuid, Instant, kai_shared::FastHash>,
    db: Db,
    auth: Arc<Authenticator>,
    from_memo: IntCounter,
    from_db: IntCounter,
}

impl LiveSessions {
    async fn check(&self, session_id: Uuid) -> Result<(), ApiError> {
        // moka's time to live runs from the insert, after the query; the
        // window runs from before it, so it is this comparison.
        if self
            .memo
            .get(&session_id)
            .is_some_and(|began| began.elapsed() < self.window)
        {
            self.from_memo.inc();
            return Ok(());
        }
        let recorded = self.auth.revocations_recorded();
        let began = Instant::now();
        self.from_db.inc();
        let db = &self.db;
        let live = db
            .read_pipelined(|conn| async move {
                Ok(db
                    .query_opt(&*conn, SESSION_LIVE, &[&session_id])
                    .await?
                    .is_some_and(|row| row.get::<_, bool>(0)))
            })
            .await?;
        if !live {
            return Err(ApiError::Unauthorized(
                "the session has ended; log in again".into(),
            ));
        }
        self.memo.insert(session_id, began);
        // A revocation recorded while the query ran may be this session's,
        // committed after the query read it: keep nothing the check found.
        if self.auth.revocations_recorded() != recorded {
            self.memo.invalidate(&session_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_64_lowercase_hex_characters() {
        let h = token_hash("a.b.c");
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, token_hash("a.b.c"));
        assert_ne!(h, token_hash("a.b.d"));
    }
}
