//! Reading JSONB columns back without refusing what PostgreSQL stored.
//!
//! PostgreSQL keeps a JSONB number as an exact decimal and writes it out in full
//! on the way back: `1.7976931348623157e308` (a valid JSON number, and what a
//! client may send) returns as 309 digits, which serde_json refuses as "out of
//! range" — so a row could be written and then never read (a panic in the
//! row mapping before this existed). [`Jsonb`] parses the column as usual and, only
//! if that fails, rewrites long numbers in exponent form and parses again.

use std::error::Error;

use serde_json::Value;
use tokio_postgres::types::{FromSql, Type};

/// A JSON or JSONB column as a `serde_json::Value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Jsonb(pub Value);

impl<'a> FromSql<'a> for Jsonb {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        // The binary JSONB format is a version byte (1) and the text.
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported JSONB version".into()),
            }
        } else {
            raw
        };
        let text = std::str::from_utf8(text)?;
        match serde_json::from_str(text) {
            Ok(v) => Ok(Self(v)),
            Err(_) => Ok(Self(serde_json::from_str(&exponent_form(text))?)),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

/// `text` with every number of more than 17 digits written as
/// `<first 17 digits, as a decimal>e<exponent>` (what an f64 holds anyway).
fn exponent_form(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut in_string = false;
    while let Some((i, c)) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            continue;
        }
        if c == '-' || c.is_ascii_digit() {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_digit() || matches!(d, '.' | 'e' | 'E' | '+' | '-') {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push_str(&shorten(&text[i..end]));
            continue;
        }
        out.push(c);
    }
    out
}

fn shorten(number: &str) -> String {
    if number.contains(['e', 'E']) {
        return number.to_owned();
    }
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = format!("{int}{frac}");
    let leading_zeros = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_start_matches('0');
    if significant.len() <= 17 {
        return number.to_owned();
    }
    // value = 0.significant × 10^(int.len() - leading_zeros)
    let exponent = int.len() as i64 - leading_zeros as i64 - 1;
    let mantissa = &significant[..17];
    format!("{sign}{}.{}e{exponent}", &mantissa[..1], &mantissa[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Value {
        let mut raw = vec![1u8];
        raw.extend_from_slice(text.as_bytes());
        Jsonb::from_sql(&Type::JSONB, &raw).expect("readable").0
    }

    #[test]
    fn numbers_postgresql_writes_out_in_full_are_read_back() {
        let max = format!("17976931348623157{}", "0".repeat(292));
        assert_eq!(
            read(&format!(r#"{{"a": [{max}, -{max}], "b": "{max}"}}"#)),
            serde_json::json!({"a": [f64::MAX, -f64::MAX], "b": max})
        );
        let tiny = format!("0.{}2225073858507203", "0".repeat(307));
        assert_eq!(
            read(&format!("[{tiny}]"))[0].as_f64(),
            Some(2.225073858507203e-308)
        );
        assert_eq!(
            read(r#"{"x": 1, "y": "\"1\"", "z": 1.5}"#),
            serde_json::json!({"x": 1, "y": "\"1\"", "z": 1.5})
        );
    }
}
