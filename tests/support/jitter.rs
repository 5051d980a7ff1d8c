//! The reconnect contract's backoff for test clients: full jitter over an exponential
//! ceiling, each client drawing its own numbers from a small xorshift.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Full-jitter exponential backoff: `random(0, min(cap, base * 2^attempt))`.
pub struct Jitter {
    state: u64,
    base: Duration,
    cap: Duration,
}

impl Jitter {
    /// A generator seeded by the clock and `seed` (one per client).
    pub fn new(seed: u64, base: Duration, cap: Duration) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self {
            state: (nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            base,
            cap,
        }
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The delay before attempt number `attempt` (from 0).
    pub fn backoff(&mut self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        ceiling.mul_f64(self.next_f64())
    }
}
