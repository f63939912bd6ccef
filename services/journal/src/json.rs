//! The list pages' JSON, written here rather than by serde_json: the same bytes
//! (the tests hold it to `serde_json::to_vec` of the same page), but strings are
//! escaped eight bytes at a time. serde_json's serializer looks every byte of a
//! string up in its escape table, one at a time: 29 % of the instructions of an
//! uncached 20-entry list (callgrind, docs/PERFORMANCE.md "Round four"), almost
//! all of it the entries' contents, which rarely hold a byte to escape.
//!
//! The answer is handed to the cache as a [`RawValue`] (serde_json checks it
//! once, with its parser's own eight-bytes-at-a-time scan).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{Entry, EntryCursorPage, EntryPage};

/// A page as the cache stores it: written here, or — should that ever fail —
/// by serde_json.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Answer<T> {
    Written(Box<RawValue>),
    Value(T),
}

impl Answer<EntryPage> {
    pub fn page(p: EntryPage) -> Self {
        page(&p).map_or(Self::Value(p), Self::Written)
    }
}

impl Answer<EntryCursorPage> {
    pub fn cursor_page(p: EntryCursorPage) -> Self {
        cursor_page(&p).map_or(Self::Value(p), Self::Written)
    }
}

/// `page` as serde_json would write it.
pub fn page(page: &EntryPage) -> serde_json::Result<Box<RawValue>> {
    let mut out = Vec::with_capacity(capacity(&page.entries));
    out.extend_from_slice(b"{\"entries\":");
    entries(&mut out, &page.entries)?;
    out.extend_from_slice(b",\"total\":");
    integer(&mut out, page.total);
    out.extend_from_slice(b",\"page\":");
    integer(&mut out, page.page);
    out.extend_from_slice(b",\"page_size\":");
    integer(&mut out, page.page_size);
    out.extend_from_slice(b",\"has_more\":");
    boolean(&mut out, page.has_more);
    out.push(b'}');
    raw(out)
}

/// `page` (cursor mode) as serde_json would write it.
pub fn cursor_page(page: &EntryCursorPage) -> serde_json::Result<Box<RawValue>> {
    let mut out = Vec::with_capacity(capacity(&page.entries));
    out.extend_from_slice(b"{\"entries\":");
    entries(&mut out, &page.entries)?;
    out.extend_from_slice(b",\"next_cursor\":");
    match &page.next_cursor {
        Some(c) => string(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"has_more\":");
    boolean(&mut out, page.has_more);
    out.push(b'}');
    raw(out)
}

fn capacity(entries: &[Entry]) -> usize {
    64 + entries
        .iter()
        .map(|e| 220 + e.content.len() + e.title.as_ref().map_or(0, String::len))
        .sum::<usize>()
}

fn raw(out: Vec<u8>) -> serde_json::Result<Box<RawValue>> {
    // Only UTF-8 is written: the input strings as they are, ASCII around them.
    let text = String::from_utf8(out).map_err(serde::ser::Error::custom)?;
    RawValue::from_string(text)
}

fn entries(out: &mut Vec<u8>, entries: &[Entry]) -> serde_json::Result<()> {
    out.push(b'[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        entry(out, e)?;
    }
    out.push(b']');
    Ok(())
}

/// One entry, its fields in `Entry`'s order.
fn entry(out: &mut Vec<u8>, e: &Entry) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(
        e.id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"title\":");
    match &e.title {
        Some(t) => string(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"content\":");
    string(out, &e.content);
    out.extend_from_slice(b",\"mood\":");
    match e.mood {
        Some(m) => integer(out, i64::from(m)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"tags\":[");
    for (i, t) in e.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, t);
    }
    out.extend_from_slice(b"],\"created_at\":");
    kai_http::timestamp::rfc3339(&e.created_at, &mut serde_json::Serializer::new(&mut *out))?;
    out.extend_from_slice(b",\"updated_at\":");
    kai_http::timestamp::rfc3339(&e.updated_at, &mut serde_json::Serializer::new(&mut *out))?;
    out.push(b'}');
    Ok(())
}

fn integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes of `w` is below 0x20, a quote or a backslash
/// (exact: no false answer either way).
fn any_to_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(LOW_BITS * 0x20) & !w;
    let quote = w ^ (LOW_BITS * u64::from(b'"'));
    let backslash = w ^ (LOW_BITS * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(LOW_BITS) & !x;
    (below_space | zero(quote) | zero(backslash)) & HIGH_BITS != 0
}

/// `s` as a JSON string, escaped as serde_json escapes: `"` and `\`, the
/// control characters below 0x20 (`\b \t \n \f \r` short, the others
/// `\u00xx`, lowercase); everything else as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !any_to_escape(w) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let short = match b {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                0x08 => Some(b'b'),
                b'\t' => Some(b't'),
                b'\n' => Some(b'n'),
                0x0c => Some(b'f'),
                b'\r' => Some(b'r'),
                0x00..=0x1f => None,
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[start..i]);
            match short {
                Some(c) => out.extend_from_slice(&[b'\\', c]),
                None => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
                }
            }
            i += 1;
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use uuid::Uuid;

    /// What serde_json writes for `value`.
    fn reference<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("serializable")
    }

    fn an_entry(
        content: String,
        title: Option<String>,
        tags: Vec<String>,
        mood: Option<i16>,
        at: i64,
    ) -> Entry {
        let at = DateTime::<Utc>::from_timestamp_micros(at).unwrap();
        Entry {
            id: Uuid::from_u128(at.timestamp_micros() as u128 * 7919),
            title,
            content,
            mood,
            tags,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn every_byte_to_escape_is_escaped_as_serde_json_does() {
        let all: String = (0u8..=0x7f).map(char::from).collect::<String>() + "é€😀\u{2028}\"\\";
        for s in [
            all.as_str(),
            "",
            "plain",
            "\"",
            "\\\\",
            "ends with a newline\n",
            "1234567\n",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn pages_are_the_bytes_serde_json_writes(
            contents in proptest::collection::vec(("\\PC{0,60}|[\"\\\\\\x00-\\x1f a-z]{0,40}", proptest::option::of("\\PC{0,20}"),
                proptest::collection::vec("[a-z\"\\\\]{1,8}", 0..3), proptest::option::of(1i16..=10),
                0i64..4_000_000_000_000_000), 0..6),
            total in 0i64..1_000_000, next in proptest::option::of("[A-Za-z0-9_-]{10,40}"),
        ) {
            let entries: Vec<Entry> = contents.into_iter()
                .map(|(c, t, tags, mood, at)| an_entry(c, t, tags, mood, at)).collect();
            let p = EntryPage { entries: entries.clone(), total, page: 1, page_size: 20, has_more: total > 20 };
            let (fast, slow) = (page(&p).unwrap(), reference(&p));
            prop_assert_eq!(fast.get().as_bytes(), slow.as_slice());
            let c = EntryCursorPage { entries, next_cursor: next, has_more: total > 20 };
            let (fast, slow) = (cursor_page(&c).unwrap(), reference(&c));
            prop_assert_eq!(fast.get().as_bytes(), slow.as_slice());
        }
    }
}
