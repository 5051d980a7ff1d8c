//! The Redis key and channel layout. Everything lives under `{namespace}:`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns:pods` | set | ids of pods that announced themselves |
//! | `ns:pod:{P}:alive` | string, TTL `registry.pod_ttl` | present while pod P is alive |
//! | `ns:pod:{P}:sessions` | set | session ids on pod P |
//! | `ns:pod:{P}:reaper` | string, short TTL | lock: one live pod reaps dead P |
//! | `ns:s:{S}` | hash | session S: `user`, `pod`, `at` (ms), `addr` |
//! | `ns:st:{S}` | set | topics of session S |
//! | `ns:u:{U}` | hash | session id → pod id, for user U |
//! | `ns:t:{T}` | hash | session id → pod id, for topic T |
//!
//! The part in braces is the Redis Cluster hash tag: a pod's keys share a slot, so do a
//! session's. Per-user and per-topic hashes are single keys, so the per-user limit can be
//! checked and applied in one atomic script.
//!
//! Channels: `ns:cu:{U}` (user), `ns:ct:{T}` (topic), `ns:cp:{P}` (pod), `ns:call`
//! (broadcast). User, topic and pod channels use sharded pub/sub in cluster mode.

use wsgate_core::backend::Channel;
use wsgate_core::ids::SessionId;

/// Builds every key and channel name for one namespace.
#[derive(Debug, Clone)]
pub struct Keyspace {
    ns: String,
}

impl Keyspace {
    /// The layout under `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            ns: namespace.into(),
        }
    }

    /// Set of announced pods.
    pub fn pods(&self) -> String {
        format!("{}:pods", self.ns)
    }

    /// A pod's liveness key.
    pub fn pod_alive(&self, pod: &str) -> String {
        format!("{}:pod:{{{pod}}}:alive", self.ns)
    }

    /// A pod's session set.
    pub fn pod_sessions(&self, pod: &str) -> String {
        format!("{}:pod:{{{pod}}}:sessions", self.ns)
    }

    /// The lock a live pod takes to reap a dead one.
    pub fn pod_reaper(&self, pod: &str) -> String {
        format!("{}:pod:{{{pod}}}:reaper", self.ns)
    }

    /// A session's hash.
    pub fn session(&self, id: &SessionId) -> String {
        format!("{}:s:{{{id}}}", self.ns)
    }

    /// A session's topic set.
    pub fn session_topics(&self, id: &SessionId) -> String {
        format!("{}:st:{{{id}}}", self.ns)
    }

    /// A user's sessions.
    pub fn user(&self, user: &str) -> String {
        format!("{}:u:{{{user}}}", self.ns)
    }

    /// A topic's subscribers.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}:t:{{{topic}}}", self.ns)
    }

    /// The pub/sub channel for `channel`.
    pub fn channel(&self, channel: &Channel) -> String {
        match channel {
            Channel::User(u) => format!("{}:cu:{{{u}}}", self.ns),
            Channel::Topic(t) => format!("{}:ct:{{{t}}}", self.ns),
            Channel::Pod(p) => format!("{}:cp:{{{p}}}", self.ns),
            Channel::Broadcast => format!("{}:call", self.ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_keys_and_a_pods_keys_share_hash_tags() {
        let k = Keyspace::new("ns");
        let id = SessionId::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV");
        assert_eq!(k.session(&id), "ns:s:{01ARZ3NDEKTSV4RRFFQ69G5FAV}");
        assert_eq!(k.session_topics(&id), "ns:st:{01ARZ3NDEKTSV4RRFFQ69G5FAV}");
        assert_eq!(k.pod_alive("p1"), "ns:pod:{p1}:alive");
        assert_eq!(k.pod_sessions("p1"), "ns:pod:{p1}:sessions");
        assert_eq!(k.channel(&Channel::User("alice".into())), "ns:cu:{alice}");
        assert_eq!(k.channel(&Channel::Broadcast), "ns:call");
    }
}
