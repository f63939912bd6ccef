//! Per-user abuse limits (SPEC §4, abuse limits): assistant messages (a burst,
//! a steady rate and a daily budget — each message may be an LLM call),
//! exports (at most a few streaming at once, and a rate), batch imports and
//! creates. Buckets live in `kai_shared::ratelimit` (Redis, shared by every
//! replica; in-process when Redis is away); a refusal is a 429 with
//! `Retry-After` and counts in `kai_rate_limited_total{outcome=<limit>}`.

use kai_http::ApiError;
use kai_platform::Platform;
use kai_shared::metrics::OutcomeCounter;
use kai_shared::ratelimit::{Limit, Running, Slot};
use uuid::Uuid;

use crate::config::UserLimits;

/// Refusals by limit.
pub const RATE_LIMITED: OutcomeCounter = OutcomeCounter {
    name: "kai_rate_limited_total",
    help: "requests refused (429) by a per-user limit, by limit",
    outcomes: &[
        MESSAGES,
        MESSAGES_DAILY,
        EXPORTS_RUNNING,
        EXPORTS,
        IMPORTS,
        CREATES,
    ],
};

const MESSAGES: &str = "assistant-messages";
const MESSAGES_DAILY: &str = "assistant-messages-daily";
const EXPORTS_RUNNING: &str = "exports-running";
const EXPORTS: &str = "exports";
const IMPORTS: &str = "imports";
const CREATES: &str = "creates";

/// The limits as configured, and the exports running on this replica.
pub struct Limits {
    messages: Limit,
    messages_daily: Limit,
    exports: Limit,
    imports: Limit,
    creates: Limit,
    exports_running: u32,
    running: Running,
}

fn per_minute(name: &'static str, n: u32) -> Limit {
    Limit {
        name,
        capacity: n,
        per_second: f64::from(n) / 60.0,
    }
}

impl Limits {
    pub fn new(s: &UserLimits) -> Self {
        Self {
            messages: Limit {
                name: MESSAGES,
                capacity: s.message_burst,
                per_second: s.messages_per_minute / 60.0,
            },
            messages_daily: Limit {
                name: MESSAGES_DAILY,
                capacity: s.messages_per_day,
                per_second: f64::from(s.messages_per_day) / 86_400.0,
            },
            exports: per_minute(EXPORTS, s.exports_per_minute),
            imports: per_minute(IMPORTS, s.imports_per_minute),
            creates: per_minute(CREATES, s.creates_per_minute),
            exports_running: s.exports_running,
            running: Running::default(),
        }
    }

    /// One assistant message: the burst/steady bucket, then the daily budget.
    pub async fn message(&self, p: &Platform, user: Uuid) -> Result<(), ApiError> {
        take(p, &self.messages, user).await?;
        take(p, &self.messages_daily, user).await
    }

    /// One batch import.
    pub async fn import(&self, p: &Platform, user: Uuid) -> Result<(), ApiError> {
        take(p, &self.imports, user).await
    }

    /// One conversation created.
    pub async fn create(&self, p: &Platform, user: Uuid) -> Result<(), ApiError> {
        take(p, &self.creates, user).await
    }

    /// One export started: its slot among the user's running exports (held
    /// until the stream ends or its client leaves), then the rate.
    pub async fn export(&self, p: &Platform, user: Uuid) -> Result<Slot, ApiError> {
        let slot = p.running_slot(
            &RATE_LIMITED,
            &self.running,
            EXPORTS_RUNNING,
            self.exports_running,
            user,
        )?;
        take(p, &self.exports, user).await?;
        Ok(slot)
    }
}

async fn take(p: &Platform, limit: &Limit, user: Uuid) -> Result<(), ApiError> {
    p.take_per_user(&RATE_LIMITED, limit, user).await
}
