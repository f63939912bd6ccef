//! The keyset cursor every list uses: the `(timestamp, id)` of the last row of a
//! page (a creation or an update time, whichever the list is ordered by) — so
//! rows sharing a timestamp are never skipped or repeated. Microseconds are
//! PostgreSQL's own precision, so the round trip is exact.
//!
//! Cursors are opaque and tamper-evident: URL-safe base64 of the position and a
//! 128-bit HMAC-SHA256 tag over the position *and* what the cursor is bound to —
//! the service, the user and the query that produced it (the page size). An
//! edited cursor, one from another service or user, or one replayed with another
//! `limit` fails the tag and is a 400.
//!
//! The key: derived (HMAC, with a label of its own) from the `DATABASE_URL` —
//! its credentials are the secret every replica of a service already shares
//! (`AUTH_SECRET`, the previous root, is gone: tokens are EdDSA, and public keys
//! are no secret). A key generated per process would break a client's paging
//! whenever the next request reached another replica or a restarted pod; a new
//! `CURSOR_SECRET` would be one more secret to distribute and rotate for the same
//! guarantee. Rotating the database password ends outstanding cursors (a 400;
//! the client starts again from the first page). A development URL without a
//! password makes cursors forgeable — by their own user, for positions in their
//! own lists only (every query is bound to the user).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use uuid::Uuid;

use super::errors::{ApiError, FieldError};

/// Bytes of the HMAC kept in a cursor: 128 bits, beyond guessing.
const TAG_BYTES: usize = 16;
const POSITION_BYTES: usize = 8 + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The sort timestamp of the last row served.
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed with `key` (any length: RFC 2104 hashes a longer one).
fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// The cursors' key, derived once per process (see the module docs): deriving it
/// is two SHA-256 passes, which every cursor-mode request would otherwise pay.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl CursorKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(
            keyed(secret)
                .chain_update(b"kai list cursor key v1")
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// Keyed from `DATABASE_URL` (its credentials are what every replica shares).
    pub fn from_database_url(url: &secrecy::SecretString) -> Self {
        Self::new(url.expose_secret().as_bytes())
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// Signs and opens the cursors of one list, for one user and one query.
#[derive(Clone)]
pub struct CursorSigner {
    /// The MAC keyed and already fed the binding and its separator: each tag
    /// clones it and adds only the position.
    mac: HmacSha256,
    binding: String,
}

impl std::fmt::Debug for CursorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorSigner")
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl CursorSigner {
    /// `service` and `query` (every parameter that shapes the pages, e.g.
    /// `limit=20`) and `user` are what a cursor is bound to.
    pub fn new(secret: &[u8], service: &str, user: Uuid, query: &str) -> Self {
        Self::with_key(&CursorKey::new(secret), service, user, query)
    }

    /// The same with the key already derived ([`CursorKey`], derived once per process).
    pub fn with_key(key: &CursorKey, service: &str, user: Uuid, query: &str) -> Self {
        let binding = format!("{service}\n{user}\n{query}");
        let mac = keyed(&key.0).chain_update(&binding).chain_update(b"\n");
        Self { mac, binding }
    }

    /// The MAC over the binding and `position`, ready to finalize or verify.
    fn tag(&self, position: &[u8]) -> HmacSha256 {
        self.mac.clone().chain_update(position)
    }

    pub fn sign(&self, cursor: &Cursor) -> String {
        let mut bytes = Vec::with_capacity(POSITION_BYTES + TAG_BYTES);
        bytes.extend_from_slice(&cursor.at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(cursor.id.as_bytes());
        let tag = self.tag(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `None` for anything this signer did not issue.
    pub fn open(&self, raw: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        if bytes.len() != POSITION_BYTES + TAG_BYTES {
            return None;
        }
        let (position, tag) = bytes.split_at(POSITION_BYTES);
        // Constant time (`subtle`): the comparison does not tell how much of a
        // forged tag was right. The tag is the MAC's first TAG_BYTES bytes, hence
        // the truncated form of `Mac::verify_slice`.
        self.tag(position).verify_truncated_left(tag).ok()?;
        let micros = i64::from_be_bytes(position[..8].try_into().ok()?);
        Some(Cursor {
            at: DateTime::from_timestamp_micros(micros)?,
            id: Uuid::from_slice(&position[8..]).ok()?,
        })
    }

    /// The `cursor` query parameter: absent → first page; anything this signer
    /// did not issue (edited, another service's or user's, another `limit`) → 400.
    pub fn from_param(&self, raw: Option<&str>) -> Result<Option<Cursor>, ApiError> {
        raw.map(|raw| {
            self.open(raw).ok_or_else(|| {
                ApiError::validation(vec![FieldError::new(
                    "cursor",
                    "not a cursor this list issued for this query: pass next_cursor back unchanged, with the same limit",
                )])
            })
        })
        .transpose()
    }
}

/// A cursor-mode list request, parsed: the page size, where the page starts,
/// and the signer of the answer's `next_cursor` — bound to the service, the user
/// and the page size, so the cursor works only for the query that produced it.
#[derive(Debug, Clone)]
pub struct CursorQuery {
    /// `limit`: 1–100, 20 when absent.
    pub limit: i64,
    /// The last row of the previous page; `None` for the first page.
    pub after: Option<Cursor>,
    pub signer: CursorSigner,
}

impl CursorQuery {
    /// From the `limit` and `cursor` query parameters (a 400 naming the one at
    /// fault).
    pub fn parse(
        key: &CursorKey,
        service: &str,
        user: Uuid,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<Self, ApiError> {
        let limit = super::in_range("limit", limit, 20, 1, 100)?;
        let signer = CursorSigner::with_key(key, service, user, &format!("limit={limit}"));
        let after = signer.from_param(cursor)?;
        Ok(Self {
            limit,
            after,
            signer,
        })
    }

    /// How many rows to ask the database for: one more than the page, to learn
    /// whether another page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page made of `rows` (at most [`Self::fetch`] of them, in list
    /// order): the first `limit`, and when there were more, the signed cursor
    /// of the last one kept (`position` says where a row stands).
    pub fn page<T>(&self, mut rows: Vec<T>, position: impl Fn(&T) -> Cursor) -> CursorPage<T> {
        let has_more = rows.len() as i64 > self.limit;
        rows.truncate(usize::try_from(self.limit).unwrap_or(0));
        let next_cursor = if has_more {
            rows.last().map(|row| self.signer.sign(&position(row)))
        } else {
            None
        };
        CursorPage {
            items: rows,
            next_cursor,
            has_more,
        }
    }
}

/// One page of a cursor-mode list (see [`CursorQuery::page`]).
#[derive(Debug)]
pub struct CursorPage<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"kai-test-secret-kai-test-secret-0123456789";

    fn signer(service: &str, user: Uuid, query: &str) -> CursorSigner {
        CursorSigner::new(SECRET, service, user, query)
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = keyed(b"Jefe")
            .chain_update(b"what do ya want ")
            .chain_update(b"for nothing?");
        assert_eq!(
            hex::encode(mac.clone().finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(
            mac.verify_slice(
                &hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                    .unwrap()
            )
            .is_ok()
        );
    }

    /// The tag is the one the hand-written HMAC made (computed apart, with
    /// Python's `hmac`): cursors issued before the change still open.
    #[test]
    fn cursors_issued_by_earlier_releases_still_open() {
        let s = signer("journal", Uuid::from_u128(7), "limit=20");
        let c = Cursor {
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        };
        let issued = "AAYKJBggIkABI0VniavN7wEjRWeJq83v5oTXFxHKayBUS7ay0Yqe1A";
        assert_eq!(s.sign(&c), issued);
        assert_eq!(s.open(issued), Some(c));
    }

    proptest! {
        #[test]
        fn cursors_round_trip(micros in -62_135_596_800_000_000i64..253_402_300_799_000_000, id in any::<u128>()) {
            let s = signer("journal", Uuid::from_u128(7), "limit=20");
            let c = Cursor { at: DateTime::from_timestamp_micros(micros).unwrap(), id: Uuid::from_u128(id) };
            prop_assert_eq!(s.open(&s.sign(&c)), Some(c));
        }

        #[test]
        fn garbage_is_rejected_not_panicked_on(raw in ".{0,80}") {
            let _ = signer("journal", Uuid::nil(), "limit=20").open(&raw);
        }

        #[test]
        fn any_edited_byte_is_detected(index in 0usize..40, flip in 1u8..=255) {
            let s = signer("journal", Uuid::from_u128(7), "limit=20");
            let c = Cursor { at: Utc::now(), id: Uuid::new_v4() };
            let mut bytes = URL_SAFE_NO_PAD.decode(s.sign(&c)).unwrap();
            bytes[index] ^= flip;
            prop_assert_eq!(s.open(&URL_SAFE_NO_PAD.encode(bytes)), None);
        }
    }

    #[test]
    fn a_cursor_is_bound_to_its_service_user_query_and_secret() {
        let user = Uuid::new_v4();
        let at = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
        let c = Cursor {
            at,
            id: Uuid::new_v4(),
        };
        let raw = signer("journal", user, "limit=20").sign(&c);
        assert_eq!(signer("journal", user, "limit=20").open(&raw), Some(c));
        assert_eq!(signer("conversation", user, "limit=20").open(&raw), None);
        assert_eq!(
            signer("journal", Uuid::new_v4(), "limit=20").open(&raw),
            None
        );
        assert_eq!(signer("journal", user, "limit=21").open(&raw), None);
        let other = CursorSigner::new(
            b"another-secret-another-secret-0123",
            "journal",
            user,
            "limit=20",
        );
        assert_eq!(other.open(&raw), None);
        // The unsigned form older releases issued is refused too.
        let unsigned =
            URL_SAFE_NO_PAD.encode(format!("{}|{}", at.timestamp_micros(), c.id.simple()));
        assert_eq!(signer("journal", user, "limit=20").open(&unsigned), None);
    }

    #[test]
    fn a_foreign_cursor_parameter_is_a_400_naming_the_field() {
        let s = signer("journal", Uuid::nil(), "limit=20");
        assert_eq!(s.from_param(None).unwrap(), None);
        let err = s.from_param(Some("bogus")).unwrap_err();
        assert_eq!(err.problem().errors[0].field, "cursor");
    }

    #[test]
    fn cursors_are_url_safe() {
        let c = Cursor {
            at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert!(
            signer("journal", Uuid::nil(), "limit=20")
                .sign(&c)
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
    }
}
