//! What a loader hands the cache: a value, serialized here once (serde_json),
//! or ([`Json`]) the answer's JSON already written by the loader — stored,
//! tagged, gzipped and sealed as it is, without parsing or checking it again.
//!
//! The second form is for a hot answer a service writes straight from its rows
//! (journal's list pages: no `String` per column, no intermediate struct). A
//! serde_json `RawValue` would do the same job but re-parses the whole body to
//! validate it: on a 13 KB page that cost more than writing it saved
//! (docs/PERFORMANCE.md, "Profile of the uncached list").

use bytes::Bytes;
use serde::Serialize;

/// A loader's answer, as the body the cache stores.
pub trait Body {
    /// The answer's JSON.
    fn into_json(self) -> serde_json::Result<Bytes>;
}

impl<T: Serialize> Body for T {
    fn into_json(self) -> serde_json::Result<Bytes> {
        serde_json::to_vec(&self).map(Bytes::from)
    }
}

/// A body the loader wrote itself: it must be the JSON the route answers (the
/// cache stores and serves these bytes as they are, with
/// `Content-Type: application/json`). Whoever builds one owes a test holding
/// its bytes to serde_json's for the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(Bytes);

impl Json {
    /// `body`, vouched for by the caller as JSON.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self(body.into())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Body for Json {
    fn into_json(self) -> serde_json::Result<Bytes> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_serialized_and_written_json_is_kept_as_is() {
        #[derive(Serialize)]
        struct Page {
            total: i64,
        }
        assert_eq!(
            Page { total: 3 }.into_json().unwrap(),
            Bytes::from_static(b"{\"total\":3}")
        );
        // Not re-encoded, not re-parsed: the loader's bytes, spacing included.
        let written = Json::new(Bytes::from_static(b"{ \"total\": 3 }"));
        assert_eq!(
            written.into_json().unwrap(),
            Bytes::from_static(b"{ \"total\": 3 }")
        );
    }
}
