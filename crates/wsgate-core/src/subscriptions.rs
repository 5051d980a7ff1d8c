//! Broker subscriptions driven by local interest: a channel is subscribed when its first
//! local socket needs it and unsubscribed lazily after the last one leaves.
//!
//! Operations on one channel are serialized by a per-channel async lock, and the lazy
//! unsubscribe re-checks local interest under that lock. A socket that joins while an
//! unsubscribe is in flight therefore waits for it and then subscribes again: no window
//! where the pod holds an interested socket but not the subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{BackendError, Broker, Channel};

type Slot = Arc<tokio::sync::Mutex<bool>>;

/// This pod's broker subscriptions.
pub struct Subscriptions {
    broker: Arc<dyn Broker>,
    slots: Mutex<HashMap<Channel, Slot>>,
    linger: Duration,
}

impl Subscriptions {
    /// Manages `broker`'s subscriptions; an unneeded channel stays subscribed for `linger`
    /// (so a user who reconnects at once costs no unsubscribe/subscribe round trip).
    pub fn new(broker: Arc<dyn Broker>, linger: Duration) -> Arc<Self> {
        Arc::new(Self {
            broker,
            slots: Mutex::new(HashMap::new()),
            linger,
        })
    }

    fn slot(&self, channel: &Channel) -> Slot {
        self.slots
            .lock()
            .entry(channel.clone())
            .or_default()
            .clone()
    }

    /// Makes sure the pod is subscribed to `channel`; returns once the subscription is
    /// active, so messages published afterwards reach this pod.
    pub async fn ensure(&self, channel: &Channel) -> Result<(), BackendError> {
        let slot = self.slot(channel);
        let mut subscribed = slot.lock().await;
        if !*subscribed {
            self.broker.subscribe(channel).await?;
            *subscribed = true;
        }
        Ok(())
    }

    /// The last local interest in `channel` went away. After the linger period, and only
    /// if `still_needed` then says no, the channel is unsubscribed.
    pub fn release<F>(self: &Arc<Self>, channel: Channel, still_needed: F)
    where
        F: Fn(&Channel) -> bool + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.linger).await;
            this.release_now(&channel, still_needed).await;
        });
    }

    async fn release_now<F>(&self, channel: &Channel, still_needed: F)
    where
        F: Fn(&Channel) -> bool,
    {
        let slot = self.slot(channel);
        let mut subscribed = slot.lock().await;
        if still_needed(channel) {
            return;
        }
        if *subscribed {
            if let Err(e) = self.broker.unsubscribe(channel).await {
                // Staying subscribed only costs this pod unwanted messages, which the hub
                // drops; the next release retries.
                tracing::warn!(?channel, error = %e, "unsubscribe failed");
                return;
            }
            *subscribed = false;
        }
        drop(subscribed);
        // Forget the slot unless someone else holds it (a concurrent `ensure`).
        let mut slots = self.slots.lock();
        if slots
            .get(channel)
            .is_some_and(|s| Arc::strong_count(s) == 2)
        {
            slots.remove(channel);
        }
    }

    /// Channels currently subscribed (for resubscription and tests).
    pub fn active(&self) -> Vec<Channel> {
        self.slots
            .lock()
            .iter()
            .filter(|(_, s)| s.try_lock().map(|g| *g).unwrap_or(true))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBus;
    use crate::backend::{Command, Envelope, Inbox, Target};
    use crate::protocol::Payload;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Inbox for Count {
        fn deliver(&self, _: Arc<Envelope>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lazy_unsubscribe_rechecks_interest() {
        let bus = MemoryBus::new();
        let inbox = Arc::new(Count::default());
        let broker: Arc<dyn Broker> = Arc::new(bus.broker("p", inbox.clone()));
        let subs = Subscriptions::new(broker, Duration::from_secs(2));
        let ch = Channel::User("u".into());
        subs.ensure(&ch).await.unwrap();
        assert_eq!(bus.subscribers(&ch), 1);

        // Released, but a socket for the same user came back during the linger.
        let needed = Arc::new(AtomicBool::new(true));
        let n = needed.clone();
        subs.release(ch.clone(), move |_| n.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(bus.subscribers(&ch), 1, "still needed: kept");

        needed.store(false, Ordering::SeqCst);
        let n = needed.clone();
        subs.release(ch.clone(), move |_| n.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(bus.subscribers(&ch), 1, "lingers before unsubscribing");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(bus.subscribers(&ch), 0);
        assert!(subs.active().is_empty());

        // And a new interest subscribes again.
        subs.ensure(&ch).await.unwrap();
        let publisher = bus.broker("q", Arc::new(Count::default()));
        publisher
            .publish(
                &ch,
                Arc::new(Envelope::new(
                    "q",
                    Target::User("u".into()),
                    Command::Deliver(Payload::Text("x".into())),
                )),
            )
            .await
            .unwrap();
        assert_eq!(inbox.0.load(Ordering::SeqCst), 1);
    }
}
