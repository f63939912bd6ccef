//! Cache rules: the profile is the one cached read, under the owner's scope; a
//! PATCH invalidates the scope (one O(1) generation bump) after it commits, so the
//! next GET on any replica shows the change.

use std::time::Duration;

use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

/// `GET /api/profile`, `user:profile:{user_id}`, 1 h (SPEC §4).
pub const PROFILE: Policy = Policy::new("user_profile", Duration::from_secs(3600));

/// Everything a user has cached in profile-service.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("profile", user_id)
}
