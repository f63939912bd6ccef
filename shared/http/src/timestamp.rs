//! Timestamps in answers, written as chrono writes them — RFC 3339, UTC, `Z`,
//! the fraction in 0, 3, 6 or 9 digits as needed (`SecondsFormat::AutoSi`) —
//! without `core::fmt`.
//!
//! chrono's `Serialize` goes through `collect_str`, one `write_char` at a time:
//! 5–7 % of the CPU of an uncached 20-entry list (two timestamps per entry, perf,
//! docs/PERFORMANCE.md). This writes the same bytes into a stack buffer and hands
//! serde one `&str`; the proptests below hold it to chrono's output, leap seconds
//! included. Use it on answer fields:
//!
//! ```ignore
//! #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
//! pub created_at: DateTime<Utc>,
//! ```

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

/// The longest form written here: `9999-12-31T23:59:60.999999999Z`.
const MAX: usize = 30;

/// Serializes `t` exactly as `chrono`'s `Serialize` for `DateTime<Utc>` does.
pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX];
    match write(t, &mut buf) {
        // Only ASCII digits and separators are written.
        Some(n) => match std::str::from_utf8(&buf[..n]) {
            Ok(text) => s.serialize_str(text),
            Err(_) => t.serialize(s),
        },
        // Years outside 0–9999 (signed, wider): chrono's own path.
        None => t.serialize(s),
    }
}

/// [`rfc3339`] for an optional timestamp (`null` when absent).
pub fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn two(buf: &mut [u8], at: usize, v: u32) {
    buf[at] = b'0' + (v / 10) as u8;
    buf[at + 1] = b'0' + (v % 10) as u8;
}

fn digits(buf: &mut [u8], at: usize, mut v: u32, width: usize) {
    for i in (0..width).rev() {
        buf[at + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes `t` into `buf`; the length, or `None` for a year chrono writes signed.
fn write(t: &DateTime<Utc>, buf: &mut [u8; MAX]) -> Option<usize> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (mut sec, mut nano) = (t.second(), t.nanosecond());
    // A leap second is kept as nanoseconds past 10^9 and written as second 60.
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    digits(buf, 0, year as u32, 4);
    buf[4] = b'-';
    two(buf, 5, t.month());
    buf[7] = b'-';
    two(buf, 8, t.day());
    buf[10] = b'T';
    two(buf, 11, t.hour());
    buf[13] = b':';
    two(buf, 14, t.minute());
    buf[16] = b':';
    two(buf, 17, sec);
    let mut n = 19;
    let (fraction, width) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (nano / 1_000_000, 3)
    } else if nano % 1_000 == 0 {
        (nano / 1_000, 6)
    } else {
        (nano, 9)
    };
    if width > 0 {
        buf[n] = b'.';
        digits(buf, n + 1, fraction, width);
        n += 1 + width;
    }
    buf[n] = b'Z';
    Some(n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    fn ours(t: DateTime<Utc>) -> String {
        serde_json::to_string(&Ours(t)).unwrap()
    }

    fn chronos(t: DateTime<Utc>) -> String {
        serde_json::to_string(&t).unwrap()
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes(secs in -70_000_000_000i64..260_000_000_000i64,
                                     nanos in 0u32..1_000_000_000, shape in 0u8..4) {
            // Every fraction width: none, milli, micro (PostgreSQL's), nano.
            let nanos = match shape { 0 => 0, 1 => nanos / 1_000_000 * 1_000_000, 2 => nanos / 1_000 * 1_000, _ => nanos };
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            prop_assert_eq!(ours(t), chronos(t));
        }

        #[test]
        fn writes_leap_seconds_as_chrono_does(day in 0i64..20_000, nanos in 0u32..1_000_000_000) {
            let date = NaiveDate::from_ymd_opt(1972, 6, 30).unwrap() + chrono::Days::new(day as u64);
            let t = date.and_hms_nano_opt(23, 59, 59, 1_000_000_000 + nanos).unwrap().and_utc();
            prop_assert_eq!(ours(t), chronos(t));
        }
    }

    #[test]
    fn years_out_of_four_digits_fall_back_to_chrono() {
        for year in [-1, 10_000, 262_000] {
            let t = NaiveDate::from_ymd_opt(year, 1, 2)
                .unwrap()
                .and_hms_opt(3, 4, 5)
                .unwrap()
                .and_utc();
            assert_eq!(ours(t), chronos(t));
        }
        assert_eq!(
            ours(Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap()),
            "\"2023-11-14T22:13:20.123456Z\""
        );
    }

    #[test]
    fn an_absent_timestamp_is_null() {
        #[derive(Serialize)]
        struct Maybe(#[serde(serialize_with = "rfc3339_opt")] Option<DateTime<Utc>>);
        assert_eq!(serde_json::to_string(&Maybe(None)).unwrap(), "null");
        let t = Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(serde_json::to_string(&Maybe(Some(t))).unwrap(), chronos(t));
    }
}
