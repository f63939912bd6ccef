//! Cache rules, in one place: the profile is the one cached read, under the
//! owner's scope; a PATCH returns its result as a `Written` naming
//! [`write_touches`], so the handler reaches it only by `Cache::commit`, which
//! invalidates the scope (one O(1) generation bump) after the write commits: the
//! next GET on any replica shows the change.

use std::time::Duration;

use kai_shared::cache::keys::Key;
use kai_shared::cache::{Policy, Scope};
use uuid::Uuid;

/// `GET /api/profile`, `user:profile:{user_id}`, 1 h (SPEC §4).
pub const PROFILE: Policy = Policy::new("user_profile", Duration::from_secs(3600));

/// Every kind of read this service caches.
pub const CACHED: [Policy; 1] = [PROFILE];

/// Everything a user has cached in profile-service.
pub fn user_scope(user_id: Uuid) -> Scope {
    Scope::user("profile", user_id)
}

/// What a write of `user_id`'s profile touches.
pub fn write_touches(user_id: Uuid) -> [Scope; 1] {
    [user_scope(user_id)]
}

/// SPEC §4 key: `user:profile:{user_id}` (PROFILE).
pub fn profile_key(user_id: Uuid) -> String {
    Key::new("user:profile").uuid(user_id).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn spec_keys_are_spelled_as_the_spec_says() {
        assert_eq!(
            profile_key(USER),
            "user:profile:01234567-89ab-cdef-0123-456789abcdef"
        );
    }

    #[test]
    fn a_patch_touches_the_owners_scope() {
        assert_eq!(write_touches(USER), [user_scope(USER)]);
    }
}
