//! Per-user limits on journal exports (SPEC §4): at most a few streaming at once
//! (per replica: the slot is held by the response stream) and a rate (Redis,
//! shared by every replica); and on creates (a burst, then a steady rate). Each refusal is a 429 with `Retry-After`, counted in
//! `kai_rate_limited_total{outcome=<limit>}`.

use kai_http::ApiError;
use kai_platform::Platform;
use kai_shared::metrics::OutcomeCounter;
use kai_shared::ratelimit::{Limit, Running, Slot};
use uuid::Uuid;

use crate::config::JournalSettings;

const EXPORTS_RUNNING: &str = "exports-running";
const EXPORTS: &str = "exports";
const CREATES: &str = "creates";

/// Refusals by limit.
pub const RATE_LIMITED: OutcomeCounter = OutcomeCounter {
    name: "kai_rate_limited_total",
    help: "requests refused (429) by a per-user limit, by limit",
    outcomes: &[EXPORTS_RUNNING, EXPORTS, CREATES],
};

/// The limits as configured, and the exports running on this replica.
pub struct Limits {
    exports: Limit,
    creates: Limit,
    exports_running: u32,
    running: Running,
}

impl Limits {
    pub fn new(s: &JournalSettings) -> Self {
        Self {
            exports: Limit {
                name: EXPORTS,
                capacity: s.exports_per_minute,
                per_second: f64::from(s.exports_per_minute) / 60.0,
            },
            creates: Limit {
                name: CREATES,
                capacity: s.creates_per_minute,
                per_second: f64::from(s.creates_per_minute) / 60.0,
            },
            exports_running: s.exports_running,
            running: Running::default(),
        }
    }

    /// One entry created: a token of the user's shared bucket, leased
    /// (`RateLimiter::check_leased`): a busy user costs one Redis call per lease
    /// of up to 64 creates on this replica, not one per create.
    pub async fn create(&self, p: &Platform, user: Uuid) -> Result<(), ApiError> {
        p.limiter
            .check_leased(&self.creates, &user.to_string())
            .await
            .map_err(|e| {
                p.metrics.count_outcome(&RATE_LIMITED, CREATES);
                e.into()
            })
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
        p.take_per_user(&RATE_LIMITED, &self.exports, user).await?;
        Ok(slot)
    }
}
