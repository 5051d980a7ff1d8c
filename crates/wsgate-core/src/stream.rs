//! Streams with history, as a value: where a message stands in its stream
//! ([`StreamPosition`]), how long and how much a stream keeps ([`HistoryPolicy`]), and
//! the idempotency of a publish. A leaf module: the backends, the protocol codec and the
//! gateway all speak of positions.

use std::time::Duration;

/// How a stream keeps its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most messages kept (at least 1); older ones are trimmed.
    pub size: usize,
    /// How long the stream is kept after its last publish; then it is forgotten, and its
    /// next publish starts a new epoch.
    pub ttl: Duration,
}

/// A place in a stream: the epoch its offsets count in, and an offset (of a message, or
/// of the newest message when it describes the stream; 0 = no message yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct StreamPosition {
    /// Changes whenever the stream's history was lost (expired, or the backend restarted
    /// empty), so an offset means something only with its epoch.
    pub epoch: String,
    /// Offsets start at 1 and grow by 1 per message.
    pub offset: u64,
}

/// A repeat of a publish with the same key within `window` publishes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The caller's key for the publish.
    pub key: String,
    /// How long a key is remembered.
    pub window: Duration,
}

/// Which streams keep history (`history.*`): topics by pattern (the first matching rule
/// wins), and every user's own stream when `user` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules {
    /// `(pattern, policy)`, patterns as in a token's `topics` claim.
    pub topics: Vec<(String, HistoryPolicy)>,
    /// The user stream's policy (what `SendToUser` sends), when it keeps history.
    pub user: Option<HistoryPolicy>,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: Duration,
}

impl HistoryRules {
    /// The policy of `topic`'s stream, if it keeps history.
    pub fn for_topic(&self, topic: &str) -> Option<HistoryPolicy> {
        self.topics
            .iter()
            .find(|(pattern, _)| crate::auth::pattern_matches(pattern, topic))
            .map(|(_, policy)| *policy)
    }

    /// The policy of the user streams, if they keep history.
    pub fn for_user(&self) -> Option<HistoryPolicy> {
        self.user
    }
}
