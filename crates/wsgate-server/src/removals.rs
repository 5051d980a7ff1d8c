//! Session removals that failed while the registry could not be reached, kept so that a
//! later liveness refresh removes the session (and writes its `disconnected`): a
//! session's end is recorded late rather than never.
//!
//! A leaf: records in, records out; the node does the removing.

use std::collections::VecDeque;

use parking_lot::Mutex;
use wsgate_core::backend::SessionRecord;
use wsgate_core::events::Closed;

/// Most removals kept; beyond it the oldest are left to the pod's leaving (or a reaper),
/// which write their `disconnected` too.
const MAX_PENDING: usize = 100_000;

/// Removals retried per liveness refresh: the refresh must not take long enough for the
/// pod's own liveness to lapse.
pub const PER_REFRESH: usize = 512;

/// Removals retried at once.
pub const AT_ONCE: usize = 16;

/// The removals waiting for the registry, oldest first.
#[derive(Default)]
pub struct PendingRemovals {
    queue: Mutex<VecDeque<(SessionRecord, Closed)>>,
}

impl PendingRemovals {
    /// Keeps a removal for later (dropping the oldest beyond the cap).
    pub fn push(&self, record: SessionRecord, closed: Closed) {
        let mut queue = self.queue.lock();
        if queue.len() >= MAX_PENDING {
            queue.pop_front();
        }
        queue.push_back((record, closed));
    }

    /// Takes up to `n` of the oldest (all of them: `usize::MAX`).
    pub fn take(&self, n: usize) -> Vec<(SessionRecord, Closed)> {
        let mut queue = self.queue.lock();
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }
}
