//! A one-way signal held inline: raised once, awaited by the session's task.
//!
//! A session's close request used tokio-util's `CancellationToken`, whose tree node (for
//! child tokens, which a session never makes) is a separate allocation of 112 bytes per
//! session. This is a flag and a `Notify`, inside the session's handle.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A flag that is raised once and can be awaited.
#[derive(Debug, Default)]
pub struct Signal {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// A signal not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal and wakes whoever waits; later calls change nothing.
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Whether it was raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once the signal is raised (at once if it was). Cancel-safe.
    pub async fn raised(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        loop {
            // Registered before the flag is read: a raise in between still wakes us.
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.notify.notified());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_raised_signal_resolves_at_once() {
        let s = Signal::new();
        assert!(!s.is_raised());
        s.raise();
        s.raise();
        assert!(s.is_raised());
        let done = tokio::time::timeout(Duration::from_secs(1), s.raised()).await;
        assert!(done.is_ok());
    }

    #[tokio::test]
    async fn waiters_wake_when_it_is_raised() {
        let s = Arc::new(Signal::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.raised().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for w in &waiters {
            assert!(!w.is_finished(), "nothing raised yet");
        }
        s.raise();
        for w in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(1), w).await;
            assert!(matches!(woke, Ok(Ok(()))));
        }
    }
}
