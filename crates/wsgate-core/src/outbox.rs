//! A session's outbound queue: bounded, filled by the hub without waiting, drained by
//! the session's task.
//!
//! Written here rather than taken from a channel crate because of what an idle session
//! pays for it. tokio's bounded mpsc allocates a 32-slot block with each channel (about
//! 2 KiB per session with our items, measured with heaptrack), async-channel allocates its
//! whole bounded array up front, and flume allocates a hook each time a receive has to
//! wait. This queue is a `VecDeque` that allocates only when frames wait and gives its
//! room back once it drains after a burst, next to a `Notify`; both live inline in the
//! session's handle, so an idle session's queue costs no allocation at all.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Room kept after the queue drains; a burst beyond it is given back to the allocator.
const KEEP_CAPACITY: usize = 8;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its capacity already.
    Full,
    /// The receiving session is gone.
    Closed,
}

/// A bounded queue with one consumer.
#[derive(Debug)]
pub struct Outbox<T> {
    state: Mutex<State<T>>,
    /// Signalled after each push: `notify_one` keeps a permit when the consumer is not
    /// waiting, so a push between its check and its wait is not missed.
    ready: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Outbox<T> {
    /// An empty queue of `capacity` items (at least 1); allocates nothing yet.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` unless the queue is full or closed.
    pub fn offer(&self, item: T) -> Result<(), Refused> {
        {
            let mut state = self.state.lock();
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest item, if one is queued.
    pub fn try_take(&self) -> Option<T> {
        let mut state = self.state.lock();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items = VecDeque::new();
        }
        item
    }

    /// The oldest item, waiting for one. Cancel-safe: an item is only taken in the poll
    /// that returns it.
    pub async fn take(&self) -> T {
        loop {
            if let Some(item) = self.try_take() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// Refuses every later offer and drops what is queued: the consumer is gone.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.items = VecDeque::new();
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn keeps_order_and_refuses_beyond_capacity() {
        let q = Outbox::new(2);
        assert_eq!(q.offer(1), Ok(()));
        assert_eq!(q.offer(2), Ok(()));
        assert_eq!(q.offer(3), Err(Refused::Full));
        assert_eq!(q.try_take(), Some(1));
        assert_eq!(q.offer(4), Ok(()));
        assert_eq!(q.try_take(), Some(2));
        assert_eq!(q.try_take(), Some(4));
        assert_eq!(q.try_take(), None);
    }

    #[test]
    fn a_closed_queue_refuses_and_forgets() {
        let q = Outbox::new(4);
        q.offer(1).unwrap();
        q.close();
        assert_eq!(q.offer(2), Err(Refused::Closed));
        assert_eq!(q.try_take(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn gives_room_back_after_a_burst() {
        let q = Outbox::new(1000);
        for i in 0..500 {
            q.offer(i).unwrap();
        }
        assert!(q.state.lock().items.capacity() >= 500);
        while q.try_take().is_some() {}
        assert_eq!(q.state.lock().items.capacity(), 0);
        // A small backlog keeps its room.
        for i in 0..3 {
            q.offer(i).unwrap();
        }
        while q.try_take().is_some() {}
        assert!(q.state.lock().items.capacity() > 0);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_for_each_push() {
        let q = Arc::new(Outbox::new(8));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..100 {
                    got.push(q.take().await);
                }
                got
            })
        };
        for i in 0..100 {
            // Let the consumer catch up so the queue never fills.
            while q.len() >= 8 {
                tokio::task::yield_now().await;
            }
            q.offer(i).unwrap();
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("the consumer got every item")
            .unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_cancelled_take_loses_nothing() {
        let q = Outbox::new(8);
        // A take that is dropped while waiting, then an offer: the next take gets it.
        let pending = tokio::time::timeout(Duration::from_millis(10), q.take()).await;
        assert!(pending.is_err());
        q.offer(7).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), q.take()).await;
        assert_eq!(got.ok(), Some(7));
    }
}
