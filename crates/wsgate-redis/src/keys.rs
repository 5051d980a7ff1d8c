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
//! | `ns:hmu:{U}`, `ns:hmt:{T}` | hash, TTL `ttl` of the stream's policy | stream of user U / topic T: `epoch`, `top` (newest offset) |
//! | `ns:hlu:{U}`, `ns:hlt:{T}` | list, same TTL | the stream's kept messages, oldest first, at most `size` |
//! | `ns:hiu:{U}:K`, `ns:hit:{T}:K` | string, TTL the key's window | `epoch:offset` the publish with idempotency key K got |
//! | `ns:ev:{ns}:log` | stream, capped at `events.max_len` (`MAXLEN ~`) | session events |
//! | `ns:ev:{ns}:live:P` | hash | session id → user id, for P's sessions between their `connected` and `disconnected` |
//! | `ns:ev:{ns}:pods` | set | pods whose live hash is not empty |
//! | `ns:rv:{ns}:set` | hash | revocations: `u:U`, `s:S` or `t:J` (a `jti`) → until, ms |
//! | `ns:rv:{ns}:v` | string | the revocation set's version, moved on by every revoke |
//! | `ns:ev:{ns}:lease:C` | string, TTL the lease's | the holder of consumer C's lease (a webhook endpoint's delivering pod) |
//! | `ns:ev:{ns}:cursor:C` | string | consumer C's cursor: the id of the last event it is done with |
//!
//! The part in braces is the Redis Cluster hash tag: a pod's keys share a slot, so do a
//! session's. Per-user and per-topic hashes are single keys, so the per-user limit can be
//! checked and applied in one atomic script. A stream's keys have the hash tag of its
//! channel (`{U}` or `{T}`), so one script can append to the stream and publish on the
//! channel on the node that owns them, with every key it touches in one slot. The event
//! log and the pods' live-session hashes share the namespace's own tag, so one script
//! writes a session's `connected` or `disconnected` together with its mark in the hash;
//! consumers' leases and cursors share it as well, so a cursor is stored in one script
//! that checks the lease.
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
        let (start, end) = self.pod_alive_affixes();
        format!("{start}{pod}{end}")
    }

    /// What every pod's liveness key starts and ends with: a script that knows the pod
    /// writes `start .. pod .. end`.
    pub fn pod_alive_affixes(&self) -> (String, &'static str) {
        (format!("{}:pod:{{", self.ns), "}:alive")
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
        format!("{}{{{topic}}}", self.topic_prefix())
    }

    /// What every topic's key starts with: a script that knows the topic writes
    /// `prefix .. '{' .. topic .. '}'`.
    pub fn topic_prefix(&self) -> String {
        format!("{}:t:", self.ns)
    }

    /// The stream of session events.
    pub fn event_log(&self) -> String {
        format!("{ns}:ev:{{{ns}}}:log", ns = self.ns)
    }

    /// Pod `pod`'s sessions that are live in the event log: session id → user id.
    pub fn event_live(&self, pod: &str) -> String {
        format!("{ns}:ev:{{{ns}}}:live:{pod}", ns = self.ns)
    }

    /// The pods that have sessions live in the event log.
    pub fn event_pods(&self) -> String {
        format!("{ns}:ev:{{{ns}}}:pods", ns = self.ns)
    }

    /// The revocations in force: what (`u:U`, `s:S`, `t:J`) → until (ms).
    pub fn revocations(&self) -> String {
        format!("{ns}:rv:{{{ns}}}:set", ns = self.ns)
    }

    /// The version of the revocation set, moved on by every revoke.
    pub fn revocations_version(&self) -> String {
        format!("{ns}:rv:{{{ns}}}:v", ns = self.ns)
    }

    /// Who holds the lease of consumer `consumer` (a string with the lease's TTL).
    pub fn consumer_lease(&self, consumer: &str) -> String {
        format!("{ns}:ev:{{{ns}}}:lease:{consumer}", ns = self.ns)
    }

    /// The cursor of consumer `consumer`.
    pub fn consumer_cursor(&self, consumer: &str) -> String {
        format!("{ns}:ev:{{{ns}}}:cursor:{consumer}", ns = self.ns)
    }

    /// The hash of the stream of `channel` (`epoch`, `top`); only user and topic channels
    /// have streams.
    pub fn stream_meta(&self, channel: &Channel) -> Option<String> {
        self.stream_key("m", channel)
    }

    /// The list of messages the stream of `channel` keeps.
    pub fn stream_history(&self, channel: &Channel) -> Option<String> {
        self.stream_key("l", channel)
    }

    /// Where the stream of `channel` remembers a publish's idempotency `key`. The key
    /// follows the hash tag, so whatever it holds does not change the slot.
    pub fn stream_idempotency(&self, channel: &Channel, key: &str) -> Option<String> {
        self.stream_key("i", channel).map(|k| format!("{k}:{key}"))
    }

    /// `ns:h{role}u:{U}` or `ns:h{role}t:{T}`: the kind letter keeps a user and a topic of
    /// the same name apart, the braces keep the channel's slot.
    fn stream_key(&self, role: &str, channel: &Channel) -> Option<String> {
        match channel {
            Channel::User(u) => Some(format!("{}:h{role}u:{{{u}}}", self.ns)),
            Channel::Topic(t) => Some(format!("{}:h{role}t:{{{t}}}", self.ns)),
            Channel::Pod(_) | Channel::Broadcast => None,
        }
    }

    /// A user's channel name (what [`Keyspace::channel`] gives for `Channel::User`), from
    /// the id alone.
    pub fn user_channel(&self, user: &str) -> String {
        format!("{}:cu:{{{user}}}", self.ns)
    }

    /// The pub/sub channel for `channel`.
    pub fn channel(&self, channel: &Channel) -> String {
        match channel {
            Channel::User(u) => self.user_channel(u),
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

    #[test]
    fn the_event_log_and_the_live_hashes_share_a_slot() {
        let k = Keyspace::new("ns");
        assert_eq!(k.event_log(), "ns:ev:{ns}:log");
        assert_eq!(k.event_live("p-1"), "ns:ev:{ns}:live:p-1");
        let slot = |key: String| fred::util::redis_keyslot(key.as_bytes());
        assert_eq!(slot(k.event_log()), slot(k.event_live("p-1")));
        assert_eq!(slot(k.event_log()), slot(k.event_live("other")));
        assert_eq!(slot(k.event_log()), slot(k.event_pods()));
        assert_eq!(k.consumer_lease("wh-1"), "ns:ev:{ns}:lease:wh-1");
        assert_eq!(k.consumer_cursor("wh-1"), "ns:ev:{ns}:cursor:wh-1");
        // A consumer's name cannot move its keys to another slot, braces or not.
        for name in ["wh-1", "{x}", "}{"] {
            assert_eq!(slot(k.consumer_lease(name)), slot(k.event_log()));
            assert_eq!(slot(k.consumer_cursor(name)), slot(k.event_log()));
        }
        assert_ne!(
            slot(k.event_log()),
            slot(Keyspace::new("other").event_log()),
            "each namespace its own slot"
        );
    }

    #[test]
    fn a_streams_keys_share_its_channels_hash_tag() {
        let k = Keyspace::new("ns");
        let user = Channel::User("alice".into());
        let topic = Channel::Topic("alice".into());
        assert_eq!(k.stream_meta(&user).as_deref(), Some("ns:hmu:{alice}"));
        assert_eq!(k.stream_history(&user).as_deref(), Some("ns:hlu:{alice}"));
        assert_eq!(
            k.stream_idempotency(&user, "{x}:y").as_deref(),
            Some("ns:hiu:{alice}:{x}:y")
        );
        assert_eq!(k.stream_meta(&topic).as_deref(), Some("ns:hmt:{alice}"));
        assert_eq!(k.stream_history(&topic).as_deref(), Some("ns:hlt:{alice}"));
        assert_eq!(
            k.stream_idempotency(&topic, "k").as_deref(),
            Some("ns:hit:{alice}:k")
        );
        for channel in [&user, &topic] {
            let slot = |key: Option<String>| key.map(|k| fred::util::redis_keyslot(k.as_bytes()));
            let want = slot(Some(k.channel(channel)));
            assert_eq!(slot(k.stream_meta(channel)), want);
            assert_eq!(slot(k.stream_history(channel)), want);
            assert_eq!(slot(k.stream_idempotency(channel, "}{k}")), want);
        }
        assert_eq!(k.stream_meta(&Channel::Pod("p".into())), None);
        assert_eq!(k.stream_history(&Channel::Broadcast), None);
    }
}
