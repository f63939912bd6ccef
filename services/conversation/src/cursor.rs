//! The keyset cursor: the `(updated_at, id)` of the last conversation of a page,
//! as opaque URL-safe base64. `id` breaks ties, so conversations sharing an
//! `updated_at` are never skipped or repeated. Microseconds are PostgreSQL's own
//! precision, so the round trip is exact.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub updated_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            self.updated_at.timestamp_micros(),
            self.id.simple()
        ))
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (micros, id) = text.split_once('|')?;
        Some(Self {
            updated_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip(micros in -62_135_596_800_000_000i64..253_402_300_799_000_000, id in any::<u128>()) {
            let c = Cursor { updated_at: DateTime::from_timestamp_micros(micros).unwrap(), id: Uuid::from_u128(id) };
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }

        #[test]
        fn garbage_is_rejected_not_panicked_on(raw in ".{0,64}") {
            let _ = Cursor::decode(&raw);
        }
    }

    #[test]
    fn cursors_are_url_safe() {
        let c = Cursor {
            updated_at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert!(
            c.encode()
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
    }
}
