//! Pod-wide admission state shared by the preflight and the session tasks: how many
//! WebSocket connections are open, and whether the pod is draining.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Counts open connections and carries the draining flag.
///
/// The preflight reads it (`limits.max_connections`, draining → 503); session tasks hold a
/// [`ConnectionSlot`] for their whole life so the count can never drift, whatever way a
/// session ends.
#[derive(Debug, Default)]
pub struct ConnectionGauge {
    open: AtomicUsize,
    draining: AtomicBool,
}

impl ConnectionGauge {
    /// A gauge with no connections, not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether the pod is draining (shutting down): new connections are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining; there is no way back (a drained pod exits).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Takes a slot if fewer than `max` are open; the slot gives it back on drop.
    ///
    /// This is the authoritative capacity check: the preflight's check is an early, cheap
    /// answer, and two handshakes racing past it are settled here.
    pub fn try_acquire(self: &std::sync::Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let mut current = self.open.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ConnectionSlot {
                        gauge: self.clone(),
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }
}

/// One open connection's place in the [`ConnectionGauge`]; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gauge: std::sync::Arc<ConnectionGauge>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn slots_are_bounded_and_released_on_drop() {
        let gauge = Arc::new(ConnectionGauge::new());
        let a = gauge.try_acquire(2);
        let b = gauge.try_acquire(2);
        assert!(a.is_some() && b.is_some());
        assert!(gauge.try_acquire(2).is_none());
        assert_eq!(gauge.open(), 2);
        drop(a);
        assert_eq!(gauge.open(), 1);
        assert!(gauge.try_acquire(2).is_some());
        assert_eq!(gauge.open(), 1, "the temporary slot was dropped at once");
    }
}
