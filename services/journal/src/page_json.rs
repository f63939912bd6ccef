//! The list's pages (page and cursor mode) as JSON, written straight from the
//! query's rows: the bytes serde_json writes for [`EntryPage`] and
//! [`EntryCursorPage`] (the tests hold them to `serde_json::to_vec`), without
//! building those structs first.
//!
//! What that saves on an uncached 20-entry list (callgrind, docs/PERFORMANCE.md
//! "Profile of the uncached list"): the rows are read by column position and
//! their text borrowed from the row (no `String` per text column, no by-name
//! lookup), and strings are scanned for what JSON escapes eight bytes at a
//! time, where serde_json looks every byte up in its table. The JSON itself —
//! quotes, escapes, numbers, `null` — is written by serde_json's own
//! [`CompactFormatter`]; this module only decides where a string's unescaped
//! runs end. The page is handed to the cache as [`Json`]: stored as it is,
//! never parsed again.
//!
//! [`EntryPage`]: crate::model::EntryPage
//! [`EntryCursorPage`]: crate::model::EntryCursorPage

use std::io;

use chrono::{DateTime, Utc};
use kai_http::cursor::{Cursor, CursorQuery};
use kai_shared::cache::Json;
use kai_shared::db::{DbError, Row};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use uuid::Uuid;

/// Column positions in the select lists of `queries::PAGE`,
/// `queries::FIRST_PAGE_BY_CURSOR` and `queries::NEXT_PAGE_BY_CURSOR` (a test
/// checks them against the prepared statements).
pub mod col {
    pub const ID: usize = 0;
    pub const TITLE: usize = 1;
    pub const CONTENT: usize = 2;
    pub const MOOD: usize = 3;
    pub const TAGS: usize = 4;
    pub const CREATED_AT: usize = 5;
    pub const UPDATED_AT: usize = 6;
    /// `PAGE` only.
    pub const TOTAL: usize = 7;
}

/// One entry as [`crate::model::Entry`] has it, its text borrowed (from a row,
/// or from an `Entry`).
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a, T> {
    pub id: Uuid,
    pub title: Option<&'a str>,
    pub content: &'a str,
    pub mood: Option<i16>,
    pub tags: &'a [T],
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> EntryRef<'a, String> {
    /// `e`'s fields, its text borrowed.
    pub fn of(e: &'a crate::model::Entry) -> Self {
        Self {
            id: e.id,
            title: e.title.as_deref(),
            content: &e.content,
            mood: e.mood,
            tags: &e.tags,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// An entry's columns as the row holds them (`None`: the page-mode row past
/// the end, all entry columns NULL).
struct Columns<'a> {
    id: Uuid,
    title: Option<&'a str>,
    content: &'a str,
    mood: Option<i16>,
    tags: Vec<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> Columns<'a> {
    fn of(row: &'a Row) -> Result<Option<Self>, DbError> {
        let Some(id) = row.try_get::<_, Option<Uuid>>(col::ID)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            id,
            title: row.try_get(col::TITLE)?,
            content: row.try_get(col::CONTENT)?,
            mood: row.try_get(col::MOOD)?,
            tags: row.try_get(col::TAGS)?,
            created_at: row.try_get(col::CREATED_AT)?,
            updated_at: row.try_get(col::UPDATED_AT)?,
        }))
    }

    fn entry(&self) -> EntryRef<'_, &'a str> {
        EntryRef {
            id: self.id,
            title: self.title,
            content: self.content,
            mood: self.mood,
            tags: &self.tags,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The page-mode page of `queries::PAGE`'s rows: `{"entries":[…],"total":…,
/// "page":…,"page_size":…,"has_more":…}`.
pub fn page_from_rows(rows: &[Row], page: i64, page_size: i64) -> Result<Json, DbError> {
    let total: i64 = match rows.first() {
        Some(r) => r.try_get(col::TOTAL)?,
        None => 0,
    };
    let columns = rows
        .iter()
        .filter_map(|r| Columns::of(r).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let entries: Vec<_> = columns.iter().map(Columns::entry).collect();
    let offset = (page - 1) * page_size;
    let has_more = offset + (entries.len() as i64) < total;
    Ok(Json::new(page_json(
        &entries, total, page, page_size, has_more,
    )))
}

/// The cursor-mode page of a `*_BY_CURSOR` statement's rows (at most
/// `q.fetch()`): `{"entries":[…],"next_cursor":…,"has_more":…}`.
pub fn cursor_page_from_rows(rows: &[Row], q: &CursorQuery) -> Result<Json, DbError> {
    let columns = rows
        .iter()
        .filter_map(|r| Columns::of(r).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let page = q.page(columns, |c| Cursor {
        at: c.created_at,
        id: c.id,
    });
    let entries: Vec<_> = page.items.iter().map(Columns::entry).collect();
    Ok(Json::new(cursor_page_json(
        &entries,
        page.next_cursor.as_deref(),
        page.has_more,
    )))
}

/// [`crate::model::EntryPage`]'s JSON, as serde_json writes it.
pub fn page_json<T: AsRef<str>>(
    entries: &[EntryRef<'_, T>],
    total: i64,
    page: i64,
    page_size: i64,
    has_more: bool,
) -> Vec<u8> {
    fn write<T: AsRef<str>>(
        out: &mut Vec<u8>,
        entries: &[EntryRef<'_, T>],
        (total, page, page_size, has_more): (i64, i64, i64, bool),
    ) -> io::Result<()> {
        let f = &mut CompactFormatter;
        out.extend_from_slice(b"{\"entries\":");
        entries_json(out, entries)?;
        out.extend_from_slice(b",\"total\":");
        f.write_i64(out, total)?;
        out.extend_from_slice(b",\"page\":");
        f.write_i64(out, page)?;
        out.extend_from_slice(b",\"page_size\":");
        f.write_i64(out, page_size)?;
        out.extend_from_slice(b",\"has_more\":");
        f.write_bool(out, has_more)?;
        out.push(b'}');
        Ok(())
    }
    let mut out = Vec::with_capacity(capacity(entries));
    let result = write(&mut out, entries, (total, page, page_size, has_more));
    written(result, out)
}

/// [`crate::model::EntryCursorPage`]'s JSON, as serde_json writes it.
pub fn cursor_page_json<T: AsRef<str>>(
    entries: &[EntryRef<'_, T>],
    next_cursor: Option<&str>,
    has_more: bool,
) -> Vec<u8> {
    fn write<T: AsRef<str>>(
        out: &mut Vec<u8>,
        entries: &[EntryRef<'_, T>],
        next_cursor: Option<&str>,
        has_more: bool,
    ) -> io::Result<()> {
        let f = &mut CompactFormatter;
        out.extend_from_slice(b"{\"entries\":");
        entries_json(out, entries)?;
        out.extend_from_slice(b",\"next_cursor\":");
        match next_cursor {
            Some(c) => string(out, c)?,
            None => f.write_null(out)?,
        }
        out.extend_from_slice(b",\"has_more\":");
        f.write_bool(out, has_more)?;
        out.push(b'}');
        Ok(())
    }
    let mut out = Vec::with_capacity(capacity(entries));
    let result = write(&mut out, entries, next_cursor, has_more);
    written(result, out)
}

/// The first page (page mode) after `created` were stored, written from the
/// page it replaces (`old`, this module's or serde_json's bytes of an
/// [`crate::model::EntryPage`] with `page` 1): the bytes
/// [`crate::model::EntryPage::with_created`] would serialize, without parsing
/// the old entries into `Entry` values or writing them again — each is copied
/// as it stands (a borrowed [`RawValue`]: its text is scanned, never
/// allocated). `None` when a created entry does not sort before every entry of
/// the old page (a clock that went back): the caller then takes the serde
/// path, which sorts.
pub fn page_with_created(
    old: &[u8],
    created: &[crate::model::Entry],
) -> serde_json::Result<Option<Vec<u8>>> {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        entries: Vec<&'a RawValue>,
        total: i64,
        page: i64,
        page_size: i64,
    }
    #[derive(Deserialize)]
    struct Key {
        id: Uuid,
        created_at: DateTime<Utc>,
    }

    let old: Page<'_> = serde_json::from_slice(old)?;
    if old.page != 1 {
        return Ok(None);
    }
    let mut created: Vec<&crate::model::Entry> = created.iter().collect();
    created.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
    if let (Some(newest_old), Some(oldest_new)) = (old.entries.first(), created.last()) {
        let newest_old: Key = serde_json::from_str(newest_old.get())?;
        if (oldest_new.created_at, oldest_new.id) <= (newest_old.created_at, newest_old.id) {
            return Ok(None);
        }
    }
    let total = old.total.saturating_add(created.len() as i64);
    let size = usize::try_from(old.page_size).unwrap_or(usize::MAX);
    created.truncate(size);
    let kept = &old.entries[..old.entries.len().min(size - created.len())];
    let has_more = ((created.len() + kept.len()) as i64) < total;

    let refs: Vec<_> = created.iter().map(|e| EntryRef::of(e)).collect();
    let kept_len: usize = kept.iter().map(|r| r.get().len() + 1).sum();
    let mut out = Vec::with_capacity(capacity(&refs) + kept_len);
    let result = (|| -> io::Result<()> {
        let f = &mut CompactFormatter;
        out.extend_from_slice(b"{\"entries\":[");
        for (i, e) in refs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            entry(&mut out, e)?;
        }
        for (i, raw) in kept.iter().enumerate() {
            if i > 0 || !refs.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(raw.get().as_bytes());
        }
        out.extend_from_slice(b"],\"total\":");
        f.write_i64(&mut out, total)?;
        out.extend_from_slice(b",\"page\":1,\"page_size\":");
        f.write_i64(&mut out, old.page_size)?;
        out.extend_from_slice(b",\"has_more\":");
        f.write_bool(&mut out, has_more)?;
        out.push(b'}');
        Ok(())
    })();
    Ok(Some(written(result, out)))
}

/// Writing into a `Vec` does not fail (`io::Write for Vec<u8>` always
/// succeeds), nor does a timestamp; should it ever, the page is cut short —
/// which the tests would catch — rather than the request panicking.
fn written(result: io::Result<()>, out: Vec<u8>) -> Vec<u8> {
    debug_assert!(result.is_ok(), "writing a page failed: {result:?}");
    out
}

/// Room for the page: its text, escaped as little as text usually is, and
/// ~200 bytes of names, ids and timestamps per entry.
fn capacity<T: AsRef<str>>(entries: &[EntryRef<'_, T>]) -> usize {
    let text: usize = entries
        .iter()
        .map(|e| {
            e.content.len()
                + e.title.map_or(0, str::len)
                + e.tags.iter().map(|t| t.as_ref().len() + 3).sum::<usize>()
        })
        .sum();
    96 + text + text / 32 + entries.len() * 224
}

fn entries_json<T: AsRef<str>>(out: &mut Vec<u8>, entries: &[EntryRef<'_, T>]) -> io::Result<()> {
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

/// One entry, its fields in `Entry`'s order, each as its `Serialize` writes it.
fn entry<T: AsRef<str>>(out: &mut Vec<u8>, e: &EntryRef<'_, T>) -> io::Result<()> {
    let f = &mut CompactFormatter;
    out.extend_from_slice(b"{\"id\":");
    // uuid's `Serialize`: the hyphenated lowercase form, a string.
    f.begin_string(out)?;
    f.write_string_fragment(
        out,
        e.id.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
    )?;
    f.end_string(out)?;
    out.extend_from_slice(b",\"title\":");
    match e.title {
        Some(t) => string(out, t)?,
        None => f.write_null(out)?,
    }
    out.extend_from_slice(b",\"content\":");
    string(out, e.content)?;
    out.extend_from_slice(b",\"mood\":");
    match e.mood {
        Some(m) => f.write_i16(out, m)?,
        None => f.write_null(out)?,
    }
    out.extend_from_slice(b",\"tags\":[");
    for (i, t) in e.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, t.as_ref())?;
    }
    out.extend_from_slice(b"],\"created_at\":");
    timestamp(out, &e.created_at)?;
    out.extend_from_slice(b",\"updated_at\":");
    timestamp(out, &e.updated_at)?;
    out.push(b'}');
    Ok(())
}

/// The timestamp as `Entry`'s fields write it (`kai_http::timestamp::rfc3339`).
fn timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) -> io::Result<()> {
    kai_http::timestamp::rfc3339(t, &mut serde_json::Serializer::new(out)).map_err(io::Error::from)
}

/// `s` as a JSON string, as serde_json writes it: runs that need no escape as
/// they are, each byte that does (`"`, `\`, below 0x20) escaped by serde_json's
/// formatter.
fn string(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let f = &mut CompactFormatter;
    f.begin_string(out)?;
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(at) = next_to_escape(bytes, start) {
        // `at` is an ASCII byte: both slices end on character boundaries.
        f.write_string_fragment(out, &s[start..at])?;
        f.write_char_escape(out, escape(bytes[at]))?;
        start = at + 1;
    }
    f.write_string_fragment(out, &s[start..])?;
    f.end_string(out)
}

/// serde_json's escape for `b` (one [`needs_escape`] accepts).
fn escape(b: u8) -> CharEscape {
    match b {
        b'"' => CharEscape::Quote,
        b'\\' => CharEscape::ReverseSolidus,
        0x08 => CharEscape::Backspace,
        0x0c => CharEscape::FormFeed,
        b'\n' => CharEscape::LineFeed,
        b'\r' => CharEscape::CarriageReturn,
        b'\t' => CharEscape::Tab,
        _ => CharEscape::AsciiControl(b),
    }
}

/// Whether JSON (and serde_json) escapes `b`.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The position of the first byte at or after `from` to escape.
fn next_to_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if any_to_escape(u64::from_le_bytes(w)) {
            break;
        }
        i += 8;
    }
    // Within the next 8 bytes if a word said so; else in the last < 8 bytes.
    bytes
        .get(i..)?
        .iter()
        .position(|&b| needs_escape(b))
        .map(|p| i + p)
}

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes of `w` is below 0x20, a quote or a backslash.
/// Exact: a borrow that could mark a byte wrongly starts only at a byte that
/// matches, so the word's answer is right either way.
fn any_to_escape(w: u64) -> bool {
    let zero = |x: u64| x.wrapping_sub(LOW_BITS) & !x;
    let below_space = w.wrapping_sub(LOW_BITS * 0x20) & !w;
    let quote = zero(w ^ (LOW_BITS * u64::from(b'"')));
    let backslash = zero(w ^ (LOW_BITS * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH_BITS != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Entry, EntryCursorPage, EntryPage};
    use proptest::prelude::*;

    /// Every byte below 0x80 and a few beyond, alone and in runs that straddle
    /// the 8-byte words.
    #[test]
    fn every_string_is_written_as_serde_json_writes_it() {
        let all: String = (0u8..=0x7f).map(char::from).collect::<String>() + "é€😀\u{2028}\"\\";
        let mut cases: Vec<String> = vec![
            all,
            String::new(),
            "plain".into(),
            "\"".into(),
            "\\\\".into(),
            "ends with a newline\n".into(),
            "1234567\n".into(),
            "12345678\"".into(),
            "\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}".into(),
        ];
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = "x".repeat(at);
                s.push(char::from(b));
                s.push_str("éyz");
                cases.push(s);
            }
        }
        for s in &cases {
            let mut out = Vec::new();
            string(&mut out, s).unwrap();
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn the_word_test_agrees_with_the_byte_test_on_every_byte_in_every_lane() {
        for b in 0u8..=255 {
            for lane in 0..8 {
                for fill in [b'a', 0x20, 0x7f, 0x80, 0xff, 0x21, 0x5d] {
                    let mut w = [fill; 8];
                    w[lane] = b;
                    assert_eq!(
                        any_to_escape(u64::from_le_bytes(w)),
                        w.iter().any(|&x| needs_escape(x)),
                        "{w:?}"
                    );
                }
            }
        }
    }

    /// An entry's drawn fields: content, title, tags, mood, (created,
    /// updated) in microseconds, id.
    type Drawn = (
        String,
        Option<String>,
        Vec<String>,
        Option<i16>,
        (i64, i64),
        u128,
    );

    fn an_entry((content, title, tags, mood, (created, updated), id): Drawn) -> Entry {
        let at = |micros| DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
        Entry {
            id: Uuid::from_u128(id),
            title,
            content,
            mood,
            tags,
            created_at: at(created),
            updated_at: at(updated),
        }
    }

    /// Strings built to hurt: quotes, backslashes, every control character,
    /// DEL, multi-byte characters, in any mix and length.
    fn adversarial() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,80}",
            "[\"\\\\\\x00-\\x1f\\x7f a-zé€😀\u{2028}]{0,64}",
            proptest::collection::vec(0u8..0x80, 0..40)
                .prop_map(|b| b.into_iter().map(char::from).collect()),
            any::<String>(),
        ]
    }

    /// Up to `most` entries of adversarial text, created before `created_before`
    /// (microseconds since the epoch).
    fn entries(most: usize, created_before: i64) -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::vec(
            (
                adversarial(),
                proptest::option::of(adversarial()),
                proptest::collection::vec(adversarial(), 0..4),
                proptest::option::of(any::<i16>()),
                (0i64..created_before, 0i64..253_402_300_799_000_000),
                any::<u128>(),
            ),
            0..most,
        )
        .prop_map(|drawn| drawn.into_iter().map(an_entry).collect())
    }

    proptest! {
        #[test]
        fn pages_are_the_bytes_serde_json_writes(
            entries in entries(8, 253_402_300_799_000_000),
            total in any::<i64>(),
            page in any::<i64>(),
            page_size in any::<i64>(),
            has_more in any::<bool>(),
            next_cursor in proptest::option::of(adversarial()),
        ) {
            let refs: Vec<_> = entries.iter().map(EntryRef::of).collect();
            prop_assert_eq!(
                page_json(&refs, total, page, page_size, has_more),
                serde_json::to_vec(&EntryPage { entries: entries.clone(), total, page, page_size, has_more }).unwrap()
            );
            prop_assert_eq!(
                cursor_page_json(&refs, next_cursor.as_deref(), has_more),
                serde_json::to_vec(&EntryCursorPage { entries, next_cursor, has_more }).unwrap()
            );
        }

        #[test]
        fn a_first_page_with_created_entries_is_the_bytes_with_created_serializes(
            // Older entries drawn from an earlier range than created ones, so
            // that the created ones often all sort first (the bytes path) and
            // sometimes not (the serde path).
            mut old in entries(6, 100_000_000_000_000_000),
            created in entries(5, 253_402_300_799_000_000),
            page_size in 1i64..8,
            extra in 0i64..100,
        ) {
            old.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
            old.truncate(page_size as usize);
            let total = old.len() as i64 + if old.len() as i64 == page_size { extra } else { 0 };
            let page = EntryPage {
                has_more: (old.len() as i64) < total,
                entries: old,
                total,
                page: 1,
                page_size,
            };
            let bytes = serde_json::to_vec(&page).unwrap();
            let derived = page_with_created(&bytes, &created).unwrap();
            let newest_old = page.entries.first().map(|e| (e.created_at, e.id));
            let all_newer = created.iter().all(|e| newest_old.is_none_or(|k| (e.created_at, e.id) > k));
            prop_assert_eq!(derived.is_some(), all_newer);
            if let Some(derived) = derived {
                prop_assert_eq!(derived, serde_json::to_vec(&page.with_created(&created)).unwrap());
            }
        }
    }
}
