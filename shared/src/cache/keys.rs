//! Key building. Every key a service caches belongs to a [`Scope`]: the set of
//! entries one write invalidates together (a user's data in one service). A scope
//! has a generation counter; entry keys embed the generation, so invalidating the
//! whole scope is one `SET` of a new generation — O(1), no `KEYS`, no `SCAN`.
//!
//! Layout (`{…}` is a Redis Cluster hash tag, so a scope's counter and entries share
//! one slot and one Lua script may touch both):
//!
//! ```text
//! <prefix>:{<service>:<owner>}:gen                      generation counter
//! <prefix>:{<service>:<owner>}:<generation>:<logical>   an entry
//! ```
//! where `<logical>` is the key SPEC §4 names, e.g.
//! `journal:list:<user>:page:1:size:20`.

use std::fmt;

use uuid::Uuid;

/// A group of entries invalidated together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    /// Everything one user has cached in one service.
    pub fn user(service: &str, user_id: Uuid) -> Self {
        Self(format!("{service}:{user_id}"))
    }

    /// Parses the tag carried by an invalidation message.
    pub fn from_tag(tag: &str) -> Self {
        Self(tag.to_owned())
    }

    pub fn tag(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The generation counter's key.
pub fn generation_key(prefix: &str, scope: &Scope) -> String {
    format!("{prefix}:{{{}}}:gen", scope.0)
}

/// The part of an entry key before the generation (the Lua script appends it).
pub fn entry_key_head(prefix: &str, scope: &Scope) -> String {
    format!("{prefix}:{{{}}}:", scope.0)
}

/// An entry's key under a given generation.
pub fn entry_key(prefix: &str, scope: &Scope, generation: u64, logical: &str) -> String {
    format!("{}{generation}:{logical}", entry_key_head(prefix, scope))
}

/// The pub/sub channel on which generations are announced.
pub fn invalidation_channel(prefix: &str) -> String {
    format!("{prefix}:invalidations")
}

/// The channel on which logouts are announced (shared by all services).
pub fn revocation_channel(prefix: &str) -> String {
    format!("{prefix}:revocations")
}

/// Sorted set of revoked session ids, scored by token expiry.
pub fn revoked_sessions(prefix: &str) -> String {
    format!("{prefix}:revoked-sessions")
}

/// SPEC §4 key: `journal:list:{user_id}:page:{page}:size:{page_size}`.
pub fn journal_list_page(user_id: Uuid, page: i64, page_size: i64) -> String {
    format!("journal:list:{user_id}:page:{page}:size:{page_size}")
}

/// Cursor-mode journal list.
pub fn journal_list_cursor(user_id: Uuid, cursor: Option<&str>, limit: i64) -> String {
    format!(
        "journal:list:{user_id}:cursor:{}:limit:{limit}",
        cursor.unwrap_or("-")
    )
}

pub fn journal_entry(entry_id: Uuid) -> String {
    format!("journal:entry:{entry_id}")
}

pub fn journal_stats(user_id: Uuid, days: i64) -> String {
    format!("journal:stats:{user_id}:days:{days}")
}

/// SPEC §4 key: `user:profile:{user_id}`.
pub fn user_profile(user_id: Uuid) -> String {
    format!("user:profile:{user_id}")
}

/// SPEC §4 key: `conversation:{id}` (plus the message limit asked for).
pub fn conversation(conversation_id: Uuid, limit: i64) -> String {
    format!("conversation:{conversation_id}:limit:{limit}")
}

pub fn conversation_list(user_id: Uuid, cursor: Option<&str>, limit: i64) -> String {
    format!(
        "conversation:list:{user_id}:cursor:{}:limit:{limit}",
        cursor.unwrap_or("-")
    )
}

/// SPEC §4 key: `ai:response:{user_id}:{hash}`.
pub fn ai_response(user_id: Uuid, hash: &str) -> String {
    format!("ai:response:{user_id}:{hash}")
}

/// Redis Cluster's slot of a key (CRC16/XMODEM of the hash tag, mod 16384).
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            bytes[open + 1..]
                .iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &bytes[open + 1..open + 1 + len])
        })
        .unwrap_or(bytes);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn spec_keys_are_spelled_as_the_spec_says() {
        assert_eq!(
            journal_list_page(USER, 2, 20),
            "journal:list:01234567-89ab-cdef-0123-456789abcdef:page:2:size:20"
        );
        assert_eq!(
            user_profile(USER),
            "user:profile:01234567-89ab-cdef-0123-456789abcdef"
        );
        assert!(
            conversation(USER, 50).starts_with("conversation:01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(
            ai_response(USER, "abc"),
            "ai:response:01234567-89ab-cdef-0123-456789abcdef:abc"
        );
    }

    #[test]
    fn entry_keys_embed_the_generation_under_the_scope_tag() {
        let scope = Scope::user("journal", USER);
        let key = entry_key("kai", &scope, 42, &journal_entry(USER));
        assert_eq!(
            key,
            format!("kai:{{journal:{USER}}}:42:journal:entry:{USER}")
        );
        assert_eq!(
            generation_key("kai", &scope),
            format!("kai:{{journal:{USER}}}:gen")
        );
        assert!(key.starts_with(&entry_key_head("kai", &scope)));
    }

    #[test]
    fn a_scope_and_its_entries_share_one_cluster_slot() {
        let scope = Scope::user("journal", USER);
        let slot = cluster_slot(&generation_key("kai", &scope));
        for generation in [1, 7, 1_700_000_000_000_000] {
            let key = entry_key("kai", &scope, generation, &journal_list_page(USER, 1, 20));
            assert_eq!(cluster_slot(&key), slot);
        }
        // Known vector from the Redis Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("{user1000}.followers")
        );
    }

    #[test]
    fn different_services_never_share_keys() {
        let a = entry_key("kai", &Scope::user("journal", USER), 1, "x");
        let b = entry_key("kai", &Scope::user("profile", USER), 1, "x");
        assert_ne!(a, b);
    }
}
