//! Sealed L2 entries: every frame this service stores in Redis is encrypted and
//! authenticated under the service's own key (AES-256-GCM, `ring`: hardware AES,
//! already linked for TLS), with the entry's full Redis key as associated data.
//! So Redis holds no readable personal text, and an entry that was forged,
//! altered, or moved under another key (another user's, another logical key,
//! another generation) does not open: the reader counts it
//! (`kai_cache_rejected_total{namespace,reason}`) and treats it as a miss.
//!
//! Only L2 pays for this: an entry is opened once, on the L2 hit that brings it
//! into this replica's memory, and L1 keeps the plaintext entry.
//!
//! ```text
//! sealed = 0xC5 | key id (4) | nonce (12) | AES-256-GCM(frame) | tag (16)
//! ```
//! The key id is the first 4 bytes of SHA-256("kai-cache-key-id" | key): a reader
//! holding several keys (`CACHE_ENCRYPTION_KEYS`, rotation) opens with the one
//! named, and seals with the first (`CACHE_ENCRYPTION_KEY`) only.
//!
//! Nonces: a random 96-bit start per process, then a counter added to it — unique
//! within the process, and two processes' ranges overlap with negligible
//! probability (unlike independent random nonces, whose collision bound limits a
//! key to ~2³² seals).

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// First byte of a sealed frame (a plain frame starts with its version, 2).
const MAGIC: u8 = 0xC5;
const KID_LEN: usize = 4;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KID_LEN + NONCE_LEN;
/// Bytes a key is made of.
pub const KEY_LEN: usize = 32;

/// Why a stored entry was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a sealed frame (hand-built, truncated, or written by a release that
    /// did not seal).
    Malformed,
    /// Sealed under a key this replica does not hold (another service's, or a
    /// key rotated out of `CACHE_ENCRYPTION_KEYS`).
    UnknownKey,
    /// Sealed under one of our keys but does not open: altered, or moved from
    /// the key it was stored under.
    Forged,
}

impl Rejected {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Forged => "forged",
        }
    }
}

/// One 32-byte key, as configured (`Debug` never shows it).
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey([u8; KEY_LEN]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey(id {})", hex::encode(key_id(&self.0)))
    }
}

impl CacheKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The documented default when no key is configured: SHA-256 of a domain
    /// tag, the service's name and `secret` (its `DATABASE_URL`, which carries
    /// the service's database password) — a per-service key that someone with
    /// only Redis access does not know.
    pub fn derived(service: &str, secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"kai-cache-key-v1\0");
        h.update(service.as_bytes());
        h.update(b"\0");
        h.update(secret);
        Self(h.finalize().into())
    }

    /// The key's id as the frame names it (hex, for logs).
    pub fn id(&self) -> String {
        hex::encode(key_id(&self.0))
    }
}

fn key_id(key: &[u8; KEY_LEN]) -> [u8; KID_LEN] {
    let mut h = Sha256::new();
    h.update(b"kai-cache-key-id\0");
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Seals with the first key, opens with any.
pub struct Sealer {
    keys: Vec<([u8; KID_LEN], LessSafeKey)>,
    nonce_base: [u8; NONCE_LEN],
    counter: AtomicU64,
}

impl Sealer {
    /// `current` seals and opens; `older` only open (rotation).
    pub fn new(current: &CacheKey, older: &[CacheKey]) -> Self {
        let keys = std::iter::once(current)
            .chain(older.iter().filter(|k| *k != current))
            .map(|k| {
                let unbound = UnboundKey::new(&AES_256_GCM, &k.0).expect("a 32-byte key");
                (key_id(&k.0), LessSafeKey::new(unbound))
            })
            .collect();
        Self {
            keys,
            nonce_base: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    fn next_nonce(&self) -> [u8; NONCE_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = self.nonce_base;
        // The low 8 bytes plus the counter, as one big-endian number (the high 4
        // bytes take the carry): distinct for every seal of this process.
        let low = u64::from_be_bytes(nonce[4..].try_into().expect("8 bytes"));
        let (sum, carry) = low.overflowing_add(n);
        nonce[4..].copy_from_slice(&sum.to_be_bytes());
        if carry {
            let high = u32::from_be_bytes(nonce[..4].try_into().expect("4 bytes"));
            nonce[..4].copy_from_slice(&high.wrapping_add(1).to_be_bytes());
        }
        nonce
    }

    /// `frame` sealed for storage under `key_name` (the full Redis key).
    pub fn seal(&self, key_name: &[u8], frame: &[u8]) -> Vec<u8> {
        let (kid, key) = &self.keys[0];
        let nonce = self.next_nonce();
        let mut out = Vec::with_capacity(HEADER_LEN + frame.len() + TAG_LEN);
        out.push(MAGIC);
        out.extend_from_slice(kid);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(frame);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_name),
                &mut out[HEADER_LEN..],
            )
            .expect("AES-GCM seals any frame under 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The frame stored under `key_name`, if it was sealed by a key we hold for
    /// exactly that key name and not altered since.
    pub fn open(&self, key_name: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, Rejected> {
        if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != MAGIC {
            return Err(Rejected::Malformed);
        }
        let kid = &sealed[1..1 + KID_LEN];
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .ok_or(Rejected::UnknownKey)?;
        let nonce: [u8; NONCE_LEN] = sealed[1 + KID_LEN..HEADER_LEN]
            .try_into()
            .expect("12 bytes");
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_name),
                &mut sealed[HEADER_LEN..],
            )
            .map_err(|_| Rejected::Forged)?
            .len();
        sealed.copy_within(HEADER_LEN..HEADER_LEN + len, 0);
        sealed.truncate(len);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&CacheKey::from_bytes([byte; KEY_LEN]), &[])
    }

    #[test]
    fn a_sealed_frame_opens_under_its_key_name_only() {
        let s = sealer(1);
        let sealed = s.seal(b"kai:{journal:a}:1:x", b"frame bytes");
        assert!(
            !sealed.windows(5).any(|w| w == b"frame"),
            "no plaintext in the sealed form"
        );
        assert_eq!(
            s.open(b"kai:{journal:a}:1:x", sealed.clone()).unwrap(),
            b"frame bytes"
        );
        assert_eq!(
            s.open(b"kai:{journal:b}:1:x", sealed.clone()),
            Err(Rejected::Forged),
            "moved under another user's key"
        );
        assert_eq!(
            s.open(b"kai:{journal:a}:2:x", sealed.clone()),
            Err(Rejected::Forged),
            "moved to another generation"
        );
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert!(
                s.open(b"kai:{journal:a}:1:x", altered).is_err(),
                "byte {i} altered"
            );
        }
        assert_eq!(
            sealer(2).open(b"kai:{journal:a}:1:x", sealed),
            Err(Rejected::UnknownKey),
            "another service's key"
        );
        assert_eq!(
            s.open(b"kai:{journal:a}:1:x", b"\x02hand-built frame".to_vec()),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn an_older_key_still_opens_what_it_sealed() {
        let (old, new) = (
            CacheKey::from_bytes([7; KEY_LEN]),
            CacheKey::from_bytes([8; KEY_LEN]),
        );
        let sealed = Sealer::new(&old, &[]).seal(b"k", b"v");
        let rotated = Sealer::new(&new, std::slice::from_ref(&old));
        assert_eq!(rotated.open(b"k", sealed).unwrap(), b"v");
        let resealed = rotated.seal(b"k", b"v");
        assert_eq!(
            Sealer::new(&old, &[]).open(b"k", resealed),
            Err(Rejected::UnknownKey),
            "the new key seals"
        );
    }

    #[test]
    fn nonces_never_repeat_in_a_process_even_across_the_carry() {
        let s = sealer(3);
        let mut s = s;
        s.nonce_base = [0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];
        let nonces: std::collections::HashSet<_> = (0..4).map(|_| s.next_nonce()).collect();
        assert_eq!(nonces.len(), 4);
        assert!(nonces.contains(&[0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn derived_keys_differ_per_service() {
        assert_ne!(
            CacheKey::derived("journal", b"postgres://x"),
            CacheKey::derived("conversation", b"postgres://x")
        );
        assert_ne!(
            CacheKey::derived("journal", b"postgres://x"),
            CacheKey::derived("journal", b"postgres://y")
        );
    }
}
