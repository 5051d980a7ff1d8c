//! Wall-clock time as backends, events and the wire carry it: milliseconds since the
//! Unix epoch. One function so every part of the gateway reads the clock the same way
//! (and a clock before 1970 reads as 0 rather than panicking).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
