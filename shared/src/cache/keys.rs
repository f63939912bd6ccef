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
//! where `<logical>` is the key the service spells in its `cache_rules.rs` (SPEC §4
//! names some, e.g. `<kind>:list:<user>:page:1:size:20`); this crate never does.

use std::fmt;

use uuid::Uuid;

/// A logical key spelled without `format!` (every cached read builds its scope
/// and key: the two `format!`s with a `Uuid`'s `Display` they replace were 2 % of
/// a cached hit's instructions, `scripts/bench-instructions`). Segments are joined with `:`:
/// `Key::new("journal:list").uuid(user).str("page").int(1)` is
/// `journal:list:<user>:page:1`.
#[derive(Debug)]
pub struct Key(String);

impl Key {
    /// A key starting with `head` (written as is, colons included).
    pub fn new(head: &str) -> Self {
        let mut s = String::with_capacity(head.len() + 64);
        s.push_str(head);
        Self(s)
    }

    /// Appends `:` and `segment`.
    pub fn str(mut self, segment: &str) -> Self {
        self.0.push(':');
        self.0.push_str(segment);
        self
    }

    /// Appends `:` and `id`, hyphenated, lower case (as `Display` writes it).
    pub fn uuid(mut self, id: Uuid) -> Self {
        let mut buf = Uuid::encode_buffer();
        self.0.push(':');
        self.0.push_str(id.hyphenated().encode_lower(&mut buf));
        self
    }

    /// Appends `:` and `n` in decimal.
    pub fn int(mut self, n: i64) -> Self {
        let mut buf = itoa::Buffer::new();
        self.0.push(':');
        self.0.push_str(buf.format(n));
        self
    }

    /// Appends a cursor-mode page: `:cursor:<cursor, or ->:limit:<limit>`.
    pub fn cursor_page(self, cursor: Option<&str>, limit: i64) -> Self {
        self.str("cursor")
            .str(cursor.unwrap_or("-"))
            .str("limit")
            .int(limit)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> Self {
        key.0
    }
}

/// A group of entries invalidated together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    /// Everything one user has cached in one service.
    pub fn user(service: &str, user_id: Uuid) -> Self {
        Self(Key::new(service).uuid(user_id).into())
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

/// An entry's key under a given generation: [`entry_key_head`], the generation,
/// `:`, the logical key. Built on every lookup, so in one allocation and
/// without `core::fmt` (`write!` cost ~750 instructions of a cached hit's
/// ~84,000, `scripts/bench-instructions`; this ~100).
pub fn entry_key(prefix: &str, scope: &Scope, generation: u64, logical: &str) -> String {
    let mut buf = itoa::Buffer::new();
    let generation = buf.format(generation);
    let mut key =
        String::with_capacity(prefix.len() + scope.0.len() + generation.len() + logical.len() + 5);
    key.push_str(prefix);
    key.push_str(":{");
    key.push_str(&scope.0);
    key.push_str("}:");
    key.push_str(generation);
    key.push(':');
    key.push_str(logical);
    key
}

/// The pub/sub channel on which `service`'s generations are announced (one per
/// service: its replicas alone hear it, and under the service's Redis ACL user
/// it is the one channel it may publish on).
pub fn invalidation_channel(prefix: &str, service: &str) -> String {
    format!("{prefix}:invalidations:{service}")
}

/// The pattern every generation counter of `service` matches (its scopes'
/// tags start with its name).
pub fn generation_pattern(prefix: &str, service: &str) -> String {
    format!("{prefix}:{{{service}:*}}:gen")
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
    fn keys_are_spelled_as_format_spells_them() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        for n in [0, 1, 20, -7, i64::MAX, i64::MIN] {
            let key: String = Key::new("journal:list").uuid(id).str("page").int(n).into();
            assert_eq!(key, format!("journal:list:{id}:page:{n}"));
        }
        assert_eq!(Scope::user("journal", id).tag(), format!("journal:{id}"));
    }

    #[test]
    fn entry_keys_are_the_head_the_generation_and_the_logical_key() {
        let scope = Scope::user("journal", USER);
        for generation in [0, 7, 10, 42, 1_000_000, u64::MAX] {
            assert_eq!(
                entry_key("kai", &scope, generation, "a:b"),
                format!("{}{generation}:a:b", entry_key_head("kai", &scope))
            );
        }
    }

    #[test]
    fn entry_keys_embed_the_generation_under_the_scope_tag() {
        let scope = Scope::user("journal", USER);
        let key = entry_key("kai", &scope, 42, &format!("journal:entry:{USER}"));
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
            let key = entry_key(
                "kai",
                &scope,
                generation,
                &format!("journal:list:{USER}:page:1:size:20"),
            );
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
