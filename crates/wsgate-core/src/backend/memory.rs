//! In-process backends: the embedded single-node default (no `redis.url`).
//!
//! A [`MemoryBus`] stands in for the shared pub/sub server: every pod made from the same
//! bus sees the others, which is how the conformance suite exercises several "pods" in one
//! process. A single-node gateway simply makes one bus and one pod.
//!
//! A [`MemoryRegistry`] made [`with_events`](MemoryRegistry::with_events) writes each
//! session's `connected` and `disconnected` into a [`MemoryEventLog`] under its own lock,
//! together with the change of the session's record.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use super::memory_events::MemoryEventLog;
use super::{
    Appended, BackendError, Broker, Channel, Envelope, HistoryPage, HistoryPolicy, Idempotency,
    Inbox, Liveness, PodRecord, Reaped, Registry, SessionRecord, StreamEntry, StreamPosition,
};
use crate::events::{Closed, ClosedBy};
use crate::ids::SessionId;
use crate::revocation::{Revocation, RevocationSet};

/// The pods subscribed to one channel, each with its inbox. Weak, so a dropped pod stops
/// receiving by itself. A list, not a map: a channel has a few pods at most, and every
/// user's channel holds one of these (a one-entry list is a quarter of a map's smallest
/// table).
#[derive(Default)]
struct ChannelPods(Vec<(Arc<str>, Weak<dyn Inbox>)>);

impl ChannelPods {
    fn insert(&mut self, pod_id: &Arc<str>, inbox: &Weak<dyn Inbox>) {
        match self.0.iter_mut().find(|(id, _)| id == pod_id) {
            Some(entry) => entry.1 = inbox.clone(),
            None => self.0.push((pod_id.clone(), inbox.clone())),
        }
    }

    fn remove(&mut self, pod_id: &str) {
        self.0.retain(|(id, _)| &**id != pod_id);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn inboxes(&self) -> Vec<Arc<dyn Inbox>> {
        self.0
            .iter()
            .filter_map(|(_, inbox)| inbox.upgrade())
            .collect()
    }
}

/// The in-process pub/sub "server" shared by the [`MemoryBroker`]s made from it.
#[derive(Default)]
pub struct MemoryBus {
    channels: RwLock<HashMap<Channel, ChannelPods>>,
    /// Streams with history. Publishing to a stream delivers under this lock, so every
    /// subscriber sees a stream's messages in offset order.
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    by_channel: HashMap<Channel, MemoryStream>,
    last_sweep: Option<Instant>,
}

/// One stream's history.
struct MemoryStream {
    epoch: String,
    top: u64,
    entries: VecDeque<StreamEntry>,
    /// Forgotten after this (`ttl` after the last publish).
    expires: Instant,
    /// Idempotency key → (offset it got, remembered until).
    seen: HashMap<String, (u64, Instant)>,
}

impl MemoryStream {
    fn new(policy: &HistoryPolicy, now: Instant) -> Self {
        Self {
            epoch: crate::ids::stream_epoch(),
            top: 0,
            entries: VecDeque::new(),
            expires: now + policy.ttl,
            seen: HashMap::new(),
        }
    }

    fn position(&self, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset,
        }
    }
}

impl Streams {
    /// The live stream of `channel`, made anew when it never existed or has expired.
    fn stream(
        &mut self,
        channel: &Channel,
        policy: &HistoryPolicy,
        now: Instant,
    ) -> &mut MemoryStream {
        // Forget expired streams once a second, so unused topics do not pile up.
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.by_channel.retain(|_, s| s.expires > now);
            self.last_sweep = Some(now);
        }
        let stream = self
            .by_channel
            .entry(channel.clone())
            .or_insert_with(|| MemoryStream::new(policy, now));
        if stream.expires <= now {
            *stream = MemoryStream::new(policy, now);
        }
        stream
    }
}

pub(crate) use crate::clock::now_ms;

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The broker of one pod on this bus. Envelopes for the pod go to `inbox`.
    pub fn broker(
        self: &Arc<Self>,
        pod_id: impl Into<String>,
        inbox: Arc<dyn Inbox>,
    ) -> MemoryBroker {
        MemoryBroker {
            bus: self.clone(),
            pod_id: Arc::from(pod_id.into()),
            inbox: Arc::downgrade(&inbox),
        }
    }

    /// The inboxes of the pods subscribed to `channel`, collected first: an inbox never
    /// runs under the channels lock.
    fn inboxes(&self, channel: &Channel) -> Vec<Arc<dyn Inbox>> {
        self.channels
            .read()
            .get(channel)
            .map(ChannelPods::inboxes)
            .unwrap_or_default()
    }

    /// How many pods are subscribed to `channel` (for tests of the routing property).
    pub fn subscribers(&self, channel: &Channel) -> usize {
        self.channels
            .read()
            .get(channel)
            .map_or(0, ChannelPods::len)
    }
}

/// One pod's view of a [`MemoryBus`].
pub struct MemoryBroker {
    bus: Arc<MemoryBus>,
    pod_id: Arc<str>,
    inbox: Weak<dyn Inbox>,
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, channel: &Channel) -> Result<(), BackendError> {
        self.bus
            .channels
            .write()
            .entry(channel.clone())
            .or_default()
            .insert(&self.pod_id, &self.inbox);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BackendError> {
        let mut channels = self.bus.channels.write();
        if let Some(pods) = channels.get_mut(channel) {
            pods.remove(&self.pod_id);
            if pods.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
    ) -> Result<(), BackendError> {
        for inbox in self.bus.inboxes(channel) {
            inbox.deliver(envelope.clone());
        }
        Ok(())
    }

    async fn publish_stream(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
        policy: &HistoryPolicy,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BackendError> {
        let now = Instant::now();
        let mut streams = self.bus.streams.lock();
        let stream = streams.stream(channel, policy, now);
        if let Some(idem) = idempotency {
            stream.seen.retain(|_, (_, until)| *until > now);
            if let Some((offset, _)) = stream.seen.get(&idem.key) {
                return Ok(Appended {
                    position: stream.position(*offset),
                    duplicate: true,
                });
            }
        }
        stream.top += 1;
        let position = stream.position(stream.top);
        if let Some(idem) = idempotency {
            stream
                .seen
                .insert(idem.key.clone(), (stream.top, now + idem.window));
        }
        let mut published = (*envelope).clone();
        published.position = Some(position.clone());
        stream.entries.push_back(StreamEntry {
            offset: stream.top,
            published_at_ms: now_ms(),
            envelope: published.clone(),
        });
        while stream.entries.len() > policy.size.max(1) {
            stream.entries.pop_front();
        }
        stream.expires = now + policy.ttl;
        let published = Arc::new(published);
        // Delivered under the streams lock: the next publish to any stream waits, so
        // offsets reach every inbox in order.
        for inbox in self.bus.inboxes(channel) {
            inbox.deliver(published.clone());
        }
        Ok(Appended {
            position,
            duplicate: false,
        })
    }

    async fn read_stream(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryPage, BackendError> {
        let mut streams = self.bus.streams.lock();
        let stream = streams.stream(channel, policy, Instant::now());
        let first_kept = stream.entries.front().map_or(stream.top + 1, |e| e.offset);
        let entries = stream
            .entries
            .iter()
            .filter(|e| e.offset > after)
            .take(limit)
            .cloned()
            .collect();
        Ok(HistoryPage {
            position: stream.position(stream.top),
            entries,
            first_kept,
        })
    }

    async fn healthy(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let mut channels = self.bus.channels.write();
        channels.retain(|_, pods| {
            pods.remove(&self.pod_id);
            !pods.is_empty()
        });
    }
}

#[derive(Default)]
struct RegistryState {
    sessions: HashMap<SessionId, SessionRecord>,
    /// user → session ids (a hash set: most users hold one or two sessions, and its
    /// smallest table is half a B-tree node's size; listings sort anyway).
    users: HashMap<String, HashSet<SessionId>>,
    /// topic → session ids.
    topics: HashMap<String, HashSet<SessionId>>,
    /// session → topics, to release memberships when the session goes.
    session_topics: HashMap<SessionId, HashSet<String>>,
    pods: BTreeMap<String, ()>,
    /// The revocation set and its version.
    revocations: RevocationSet,
    revocations_version: u64,
}

impl RegistryState {
    fn drop_session(&mut self, id: &SessionId) {
        let Some(record) = self.sessions.remove(id) else {
            return;
        };
        if let Some(sessions) = self.users.get_mut(&record.user_id) {
            sessions.remove(id);
            if sessions.is_empty() {
                self.users.remove(&record.user_id);
            }
        }
        for topic in self.session_topics.remove(id).unwrap_or_default() {
            if let Some(members) = self.topics.get_mut(&topic) {
                members.remove(id);
                if members.is_empty() {
                    self.topics.remove(&topic);
                }
            }
        }
    }
}

/// The in-process registry. Pods are always alive: they share the process.
#[derive(Default)]
pub struct MemoryRegistry {
    state: RwLock<RegistryState>,
    /// Where `connected` and `disconnected` go, when session events are on.
    events: Option<Arc<MemoryEventLog>>,
}

impl MemoryRegistry {
    /// An empty registry without session events.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty registry that writes sessions' `connected` and `disconnected` to `events`.
    pub fn with_events(events: Arc<MemoryEventLog>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::default(),
            events: Some(events),
        })
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat_pod(&self, pod_id: &str) -> Result<Liveness, BackendError> {
        Ok(
            match self.state.write().pods.insert(pod_id.to_owned(), ()) {
                Some(()) => Liveness::Refreshed,
                None => Liveness::Restored,
            },
        )
    }

    async fn reap_dead_pods(&self) -> Result<Reaped, BackendError> {
        // Pods share this process: none can die on its own.
        Ok(Reaped::default())
    }

    async fn remove_pod(&self, pod_id: &str) -> Result<(), BackendError> {
        let mut state = self.state.write();
        state.pods.remove(pod_id);
        let gone: Vec<SessionId> = state
            .sessions
            .values()
            .filter(|s| s.pod_id == pod_id)
            .map(|s| s.session_id.clone())
            .collect();
        for id in gone {
            state.drop_session(&id);
        }
        if let Some(events) = &self.events {
            let closed = Closed {
                code: crate::close::GOING_AWAY,
                by: ClosedBy::Server,
                at_ms: now_ms(),
            };
            events.close_pod(pod_id, &closed);
        }
        Ok(())
    }

    async fn add_session(
        &self,
        record: &SessionRecord,
        max_user_sessions: usize,
    ) -> Result<bool, BackendError> {
        let mut state = self.state.write();
        let sessions = state.users.entry(record.user_id.clone()).or_default();
        if max_user_sessions > 0
            && !sessions.contains(&record.session_id)
            && sessions.len() >= max_user_sessions
        {
            return Ok(false);
        }
        sessions.insert(record.session_id.clone());
        state
            .sessions
            .insert(record.session_id.clone(), record.clone());
        if let Some(events) = &self.events {
            events.open(record);
        }
        Ok(true)
    }

    async fn remove_session(
        &self,
        record: &SessionRecord,
        closed: &Closed,
    ) -> Result<bool, BackendError> {
        let mut state = self.state.write();
        state.drop_session(&record.session_id);
        Ok(self
            .events
            .as_ref()
            .is_some_and(|events| events.close(&record.session_id, closed)))
    }

    async fn add_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError> {
        let mut state = self.state.write();
        if !state.sessions.contains_key(&record.session_id) {
            // A subscription can only outlive its session through a race with the
            // session's removal; recording it would leak the membership.
            return Ok(());
        }
        state
            .topics
            .entry(topic.to_owned())
            .or_default()
            .insert(record.session_id.clone());
        state
            .session_topics
            .entry(record.session_id.clone())
            .or_default()
            .insert(topic.to_owned());
        Ok(())
    }

    async fn remove_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError> {
        let mut state = self.state.write();
        if let Some(members) = state.topics.get_mut(topic) {
            members.remove(&record.session_id);
            if members.is_empty() {
                state.topics.remove(topic);
            }
        }
        if let Some(topics) = state.session_topics.get_mut(&record.session_id) {
            topics.remove(topic);
        }
        Ok(())
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<SessionRecord>, BackendError> {
        Ok(self.state.read().sessions.get(session_id).cloned())
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        let state = self.state.read();
        let mut sessions: Vec<SessionRecord> = state
            .users
            .get(user_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| state.sessions.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default();
        sessions.sort_by(|a, b| {
            (a.connected_at_ms, &a.session_id).cmp(&(b.connected_at_ms, &b.session_id))
        });
        Ok(sessions)
    }

    async fn count_user_sessions(&self, user_id: &str) -> Result<usize, BackendError> {
        Ok(self.state.read().users.get(user_id).map_or(0, HashSet::len))
    }

    async fn count_topic_subscribers(&self, topic: &str) -> Result<usize, BackendError> {
        Ok(self.state.read().topics.get(topic).map_or(0, HashSet::len))
    }

    async fn count_sessions(&self) -> Result<usize, BackendError> {
        Ok(self.state.read().sessions.len())
    }

    async fn pods(&self) -> Result<Vec<PodRecord>, BackendError> {
        let state = self.state.read();
        let mut counts: BTreeMap<&str, u64> = state.pods.keys().map(|p| (p.as_str(), 0)).collect();
        for s in state.sessions.values() {
            *counts.entry(s.pod_id.as_str()).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(pod_id, connections)| PodRecord {
                pod_id: pod_id.to_owned(),
                connections,
                alive: state.pods.contains_key(pod_id),
            })
            .collect())
    }

    async fn healthy(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<u64, BackendError> {
        let mut state = self.state.write();
        state.revocations_version += 1;
        Ok(state.revocations.insert(revocation.clone()))
    }

    async fn revocations(
        &self,
        known: u64,
        now_ms: u64,
    ) -> Result<Option<(u64, Vec<Revocation>)>, BackendError> {
        let mut state = self.state.write();
        if state.revocations_version == known {
            return Ok(None);
        }
        state.revocations.prune(now_ms);
        Ok(Some((
            state.revocations_version,
            state.revocations.to_revocations(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_backends_pass_the_conformance_suite() {
        let bus = MemoryBus::new();
        crate::conformance::broker_suite(|pod, inbox| {
            let bus = bus.clone();
            async move { Arc::new(bus.broker(pod, inbox)) as Arc<dyn Broker> }
        })
        .await;
        crate::conformance::registry_suite(|| async { MemoryRegistry::new() as Arc<dyn Registry> })
            .await;
    }

    #[tokio::test]
    async fn memory_events_pass_the_event_cases() {
        crate::conformance::events::events_suite(|max_len| async move {
            let log = MemoryEventLog::new(max_len);
            (
                MemoryRegistry::with_events(log.clone()) as Arc<dyn Registry>,
                log as Arc<dyn super::super::EventLog>,
            )
        })
        .await;
    }

    #[tokio::test]
    async fn memory_streams_pass_the_history_cases() {
        let bus = MemoryBus::new();
        crate::conformance::history_suite(|pod, inbox| {
            let bus = bus.clone();
            async move { Arc::new(bus.broker(pod, inbox)) as Arc<dyn Broker> }
        })
        .await;
    }
}
