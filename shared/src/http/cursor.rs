//! The keyset cursor every list uses: the `(timestamp, id)` of the last row of a
//! page — `created_at` for journal entries, `updated_at` for conversations — as
//! opaque URL-safe base64. `id` breaks ties, so rows sharing a timestamp are never
//! skipped or repeated. Microseconds are PostgreSQL's own precision, so the round
//! trip is exact.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::errors::{ApiError, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The sort timestamp of the last row served.
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}|{}",
            self.at.timestamp_micros(),
            self.id.simple()
        ))
    }

    /// `None` for anything this service did not issue.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (micros, id) = text.split_once('|')?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }

    /// The `cursor` query parameter: absent → first page; anything this service
    /// did not issue → 400.
    pub fn from_param(raw: Option<&str>) -> Result<Option<Self>, ApiError> {
        raw.map(|raw| {
            Self::decode(raw).ok_or_else(|| {
                ApiError::validation(vec![FieldError::new(
                    "cursor",
                    "not a cursor this service issued",
                )])
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip(micros in -62_135_596_800_000_000i64..253_402_300_799_000_000, id in any::<u128>()) {
            let c = Cursor { at: DateTime::from_timestamp_micros(micros).unwrap(), id: Uuid::from_u128(id) };
            prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }

        #[test]
        fn garbage_is_rejected_not_panicked_on(raw in ".{0,64}") {
            let _ = Cursor::decode(&raw);
        }
    }

    #[test]
    fn a_foreign_cursor_parameter_is_a_400_naming_the_field() {
        assert_eq!(Cursor::from_param(None).unwrap(), None);
        // PostgreSQL (and so every cursor) keeps microseconds.
        let at = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
        let c = Cursor {
            at,
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::from_param(Some(&c.encode())).unwrap(), Some(c));
        let err = Cursor::from_param(Some("bogus")).unwrap_err();
        assert_eq!(err.problem().errors[0].field, "cursor");
    }

    #[test]
    fn cursors_are_url_safe() {
        let c = Cursor {
            at: Utc::now(),
            id: Uuid::new_v4(),
        };
        assert!(
            c.encode()
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
    }
}
