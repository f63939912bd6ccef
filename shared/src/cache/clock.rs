//! The cache's two clocks: wall time in microseconds (entry expiry, generation
//! seeds, shared with other replicas through Redis) and a monotonic one (how long
//! ago this replica last heard its subscription; never shared).

use std::sync::LazyLock;
use std::time::Instant;

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Microseconds on a monotonic clock since the process started (never 0).
pub fn mono_micros() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_micros() as u64 + 1
}
