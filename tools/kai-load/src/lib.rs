//! kai-load and kai-verify: Kai's load-test and deployment-verification commands.
//! See docs/PERFORMANCE.md for how to run them and what the numbers mean.

pub mod load;
pub mod metrics;
pub mod report;
pub mod scenarios;
pub mod seed;
pub mod spawn;
pub mod text;
pub mod verify;

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            super::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(super::parse_duration("3h").is_err());
        assert!(super::parse_duration("x").is_err());
    }
}
