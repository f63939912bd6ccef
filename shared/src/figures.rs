//! How figures are reported (health, statistics): durations in milliseconds to
//! the microsecond, ratios to a few decimals. Arithmetic never uses these.

/// A duration in milliseconds, to three decimals (microseconds).
pub fn millis(d: std::time::Duration) -> f64 {
    round_to(d.as_secs_f64() * 1000.0, 3)
}

/// `x` rounded to `decimals` places (health and stats figures, not arithmetic).
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}
