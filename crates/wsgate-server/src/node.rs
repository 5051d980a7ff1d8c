//! The node: this pod's hub, its backends and the operations that keep them in step.
//!
//! Every path that changes local interest (a session opens or closes, subscribes or
//! unsubscribes) goes through here, so the hub, the broker subscriptions and the registry
//! cannot drift apart. The same paths emit the session events ([`crate::events`]): the
//! registry writes `connected` and `disconnected`, the node queues topic changes.
//! Sends (`Node::send`: count the targets, publish once) are in `node/send.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wsgate_core::admission::ConnectionGauge;
use wsgate_core::backend::memory::{MemoryBus, MemoryRegistry};
use wsgate_core::backend::memory_events::MemoryEventLog;
use wsgate_core::backend::{
    BackendError, Broker, Channel, EventLog, HistoryPage, Inbox, Liveness, Registry, SessionRecord,
};
use wsgate_core::events::{Closed, EventKind, Since};
use wsgate_core::hub::{Hub, SessionHandle, Subscribed};
use wsgate_core::ids::SessionId;
use wsgate_core::revocation::Revocation;
use wsgate_core::stream::{HistoryPolicy, HistoryRules};
use wsgate_core::subscriptions::Subscriptions;

use parking_lot::Mutex;

use crate::events::{EventBatch, EventOptions, Events, EventsError};
use crate::inbox::HubInbox;
use crate::metrics::Metrics;
use crate::removals::{self, PendingRemovals};
use crate::revocations::Revocations;

mod send;

pub use send::{SendError, Sent};

/// How long an unneeded broker channel stays subscribed before it is dropped.
const SUBSCRIPTION_LINGER: Duration = Duration::from_secs(2);

/// Longest a session's registration (the user's channel and the registry's record) may
/// take before its handshake is answered 503 `backend_unavailable`.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The user already has `limits.max_sessions_per_user` live sessions.
    #[error("the user has too many sessions")]
    UserLimit,
    /// The backend is unreachable.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One pod's state.
pub struct Node {
    /// This pod's id.
    pub pod_id: String,
    /// Local sessions.
    pub hub: Arc<Hub>,
    /// Open connections and the draining flag.
    pub gauge: Arc<ConnectionGauge>,
    /// Routes envelopes between pods.
    pub broker: Arc<dyn Broker>,
    /// Shared record of sessions and pods.
    pub registry: Arc<dyn Registry>,
    /// This pod's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Which streams keep history.
    pub history: HistoryRules,
    subscriptions: Arc<Subscriptions>,
    /// Registry records of this pod's sessions, to register them again when the registry
    /// lost them.
    records: Mutex<HashMap<SessionId, SessionRecord>>,
    /// Sessions that ended while the registry could not be reached: removed (and their
    /// `disconnected` written) by the next liveness refresh that gets through.
    unremoved: PendingRemovals,
    /// When this pod last found its own liveness lost (the registry had forgotten it, or
    /// a refresh failed): a Redis stall lapses every pod's liveness at once, so no pod
    /// reaps until a TTL after that (see [`Node::reap`]).
    liveness_lapsed: Mutex<Option<std::time::Instant>>,
    /// Session events, unless `events.enabled` is off.
    events: Option<Arc<Events>>,
    /// Keeps the inbox alive: brokers hold it weakly.
    inbox: Arc<HubInbox>,
    /// This pod's copy of the cluster's revocations.
    pub revocations: Arc<Revocations>,
}

impl Node {
    /// A node on the embedded in-memory backends (single node).
    pub async fn embedded(
        pod_id: String,
        history: HistoryRules,
        events: EventOptions,
    ) -> Result<Arc<Self>, BackendError> {
        let bus = MemoryBus::new();
        let log = events.enabled.then(|| MemoryEventLog::new(events.max_len));
        let registry = match &log {
            Some(log) => MemoryRegistry::with_events(log.clone()),
            None => MemoryRegistry::new(),
        };
        let events = log.map(|log| (log as Arc<dyn EventLog>, events));
        let broker_pod = pod_id.clone();
        Self::with_backends(pod_id, history, registry, events, move |inbox| async move {
            Ok(Arc::new(bus.broker(broker_pod, inbox)) as Arc<dyn Broker>)
        })
        .await
    }

    /// A node on the Redis backends (cluster mode).
    pub async fn redis(
        pod_id: String,
        history: HistoryRules,
        options: wsgate_redis::RedisOptions,
        events: EventOptions,
    ) -> Result<Arc<Self>, BackendError> {
        use wsgate_redis::{RedisEventLog, RedisRegistry};
        let client = options.connect().await?;
        let (registry, events) = if events.enabled {
            let log = RedisEventLog::load(client.clone(), &options, events.max_len).await?;
            let registry = RedisRegistry::with_events(client.clone(), &options, log.clone());
            (registry, Some((log as Arc<dyn EventLog>, events)))
        } else {
            (RedisRegistry::new(client.clone(), &options), None)
        };
        let broker_pod = pod_id.clone();
        Self::with_backends(
            pod_id,
            history,
            Arc::new(registry),
            events,
            move |inbox| async move {
                let broker =
                    wsgate_redis::RedisBroker::connect(&options, client, &broker_pod, inbox)
                        .await?;
                Ok(Arc::new(broker) as Arc<dyn Broker>)
            },
        )
        .await
    }

    /// A node on given backends. `make_broker` receives the inbox the broker must feed;
    /// `events` is the event log `registry` writes to, if session events are on.
    pub async fn with_backends<F, Fut>(
        pod_id: String,
        history: HistoryRules,
        registry: Arc<dyn Registry>,
        events: Option<(Arc<dyn EventLog>, EventOptions)>,
        make_broker: F,
    ) -> Result<Arc<Self>, BackendError>
    where
        F: FnOnce(Arc<dyn Inbox>) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<dyn Broker>, BackendError>>,
    {
        let hub = Arc::new(Hub::new());
        let metrics = Arc::new(Metrics::new());
        let inbox = Arc::new(HubInbox {
            hub: hub.clone(),
            metrics: metrics.clone(),
            pod_id: pod_id.clone(),
            resync: tokio::sync::watch::Sender::new(0),
        });
        let broker = make_broker(inbox.clone()).await?;
        let events =
            events.map(|(log, options)| Arc::new(Events::start(log, options, metrics.clone())));
        let node = Arc::new(Self {
            metrics,
            history,
            records: Mutex::new(HashMap::new()),
            unremoved: PendingRemovals::default(),
            liveness_lapsed: Mutex::new(None),
            events,
            subscriptions: Subscriptions::new(broker.clone(), SUBSCRIPTION_LINGER),
            pod_id,
            hub,
            gauge: Arc::new(ConnectionGauge::new()),
            broker,
            registry,
            inbox,
            revocations: Arc::new(Revocations::new()),
        });
        // The pod channel carries session-addressed sends; broadcast reaches every pod.
        node.subscriptions
            .ensure(&Channel::Pod(node.pod_id.clone()))
            .await?;
        node.subscriptions.ensure(&Channel::Broadcast).await?;
        node.registry.heartbeat_pod(&node.pod_id).await?;
        // Before the first handshake: a new pod refuses what the cluster revoked.
        node.refresh_revocations().await?;
        Ok(node)
    }

    /// Registers a new session: in the hub, in the broker (its user channel) and in the
    /// registry, which admits it only while the user has fewer than `max_user_sessions`
    /// (0 = no limit). When this returns `Ok`, sends to the user reach the session.
    pub async fn open_session(
        &self,
        handle: Arc<SessionHandle>,
        record: &SessionRecord,
        max_user_sessions: usize,
    ) -> Result<(), OpenError> {
        self.hub.insert(handle.clone());
        // A revocation that came after the preflight and whose refresh did not see this
        // session yet: it closes as soon as it starts.
        self.revocations.close_if_revoked(&handle, now_ms());
        // The user's channel and the registry's record, side by side: one round trip's
        // wait, not two. Both are done before this returns, so sends to the user reach
        // the session from then on; a send in between is one made before the session was
        // open (a stream with history still has it for `since`).
        let user_channel = Channel::User(record.user_id.clone());
        let both = async {
            let (subscribed, registered) = tokio::join!(
                self.subscriptions.ensure(&user_channel),
                self.registry.add_session(record, max_user_sessions)
            );
            subscribed.and(registered)
        };
        // A handshake must not hang on a backend that does not answer.
        let registered = tokio::time::timeout(REGISTRATION_TIMEOUT, both)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Unavailable(
                    "the registry did not answer in time".into(),
                ))
            });
        match registered {
            Ok(true) => {
                self.records
                    .lock()
                    .insert(record.session_id.clone(), record.clone());
                if let Some(events) = &self.events {
                    events.emitted(EventKind::Connected, 1);
                }
                Ok(())
            }
            Ok(false) => {
                self.close_session(record, &Closed::unexplained(now_ms()))
                    .await;
                Err(OpenError::UserLimit)
            }
            Err(e) => {
                self.close_session(record, &Closed::unexplained(now_ms()))
                    .await;
                Err(e.into())
            }
        }
    }

    /// Removes a session everywhere, its `disconnected` saying how it ended. Safe to call
    /// more than once: only the first call does anything.
    pub async fn close_session(&self, record: &SessionRecord, closed: &Closed) {
        let Some(released) = self.hub.remove(&record.session_id) else {
            return;
        };
        self.records.lock().remove(&record.session_id);
        if released.user_gone {
            self.release(Channel::User(record.user_id.clone()));
        }
        for topic in released.topics_gone {
            self.release(Channel::Topic(topic));
        }
        if let Some(events) = &self.events {
            events.settle(&record.session_id).await;
        }
        self.unregister(record, closed).await;
    }

    /// Removes a session's record (and writes its `disconnected`); when the registry
    /// cannot be reached, keeps it for the next liveness refresh to retry, so the
    /// session's `disconnected` is late rather than missing.
    async fn unregister(&self, record: &SessionRecord, closed: &Closed) {
        match self.registry.remove_session(record, closed).await {
            Ok(written) => {
                if let Some(events) = &self.events {
                    events.emitted(EventKind::Disconnected, usize::from(written));
                }
            }
            Err(e) => {
                tracing::warn!(session = %record.session_id, error = %e, "registry removal failed; will retry");
                self.unremoved.push(record.clone(), *closed);
            }
        }
    }

    /// Retries up to `budget` of the removals that failed, oldest first, a few at once;
    /// those that fail again wait for the next call.
    async fn retry_removals(&self, budget: usize) {
        use futures_util::StreamExt;
        futures_util::stream::iter(self.unremoved.take(budget))
            .for_each_concurrent(removals::AT_ONCE, |(record, closed)| async move {
                self.unregister(&record, &closed).await;
            })
            .await;
    }

    fn release(&self, channel: Channel) {
        let hub = self.hub.clone();
        self.subscriptions.release(channel, move |ch| match ch {
            Channel::User(u) => hub.has_user(u),
            Channel::Topic(t) => hub.has_topic(t),
            Channel::Pod(_) | Channel::Broadcast => true,
        });
    }

    /// Subscribes a session to a topic; returns once messages published to the topic
    /// afterwards reach the session.
    pub async fn subscribe(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<Subscribed, BackendError> {
        let outcome = self.hub.subscribe(&record.session_id, topic);
        if let Subscribed::Added { .. } = outcome {
            let done = async {
                self.subscriptions
                    .ensure(&Channel::Topic(topic.to_owned()))
                    .await?;
                self.registry.add_subscription(record, topic).await
            }
            .await;
            if let Err(e) = done {
                self.leave_topic(record, topic, false).await;
                return Err(e);
            }
            self.topic_event(record, topic, true);
        }
        Ok(outcome)
    }

    /// Unsubscribes a session from a topic. Returns whether it was subscribed.
    pub async fn unsubscribe(&self, record: &SessionRecord, topic: &str) -> bool {
        self.leave_topic(record, topic, true).await
    }

    /// Queues a session's `subscribed` or `unsubscribed` (never waits).
    fn topic_event(&self, record: &SessionRecord, topic: &str, subscribed: bool) {
        if let Some(events) = &self.events {
            events.push_topic(record, topic, subscribed, now_ms());
        }
    }

    /// Takes a session off a topic; `announce`: with its `unsubscribed` (not for a
    /// subscription that was never completed).
    async fn leave_topic(&self, record: &SessionRecord, topic: &str, announce: bool) -> bool {
        let Some(last) = self.hub.unsubscribe(&record.session_id, topic) else {
            return false;
        };
        if announce {
            self.topic_event(record, topic, false);
        }
        if last {
            self.release(Channel::Topic(topic.to_owned()));
        }
        if let Err(e) = self.registry.remove_subscription(record, topic).await {
            tracing::warn!(session = %record.session_id, topic, error = %e, "registry unsubscribe failed");
        }
        true
    }

    /// Changes whenever the broker may have missed envelopes (see
    /// [`Inbox::resubscribed`]): sessions then catch their streams up from history.
    pub fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inbox.resync.subscribe()
    }

    /// Tells every session to catch its streams up, as after a broker reconnect.
    pub fn resync(&self) {
        self.inbox.resubscribed();
    }

    /// The history policy of the stream `channel` is, if it keeps history: a topic that
    /// matches a `history.topics` rule, or a user stream when `history.user` is on.
    pub fn stream_policy(&self, channel: &Channel) -> Option<HistoryPolicy> {
        match channel {
            Channel::Topic(t) => self.history.for_topic(t),
            Channel::User(_) => self.history.for_user(),
            Channel::Pod(_) | Channel::Broadcast => None,
        }
    }

    /// Reads what the stream of `channel` keeps after offset `after` (all of it, at most
    /// the policy's size); `None` when the stream keeps no history.
    pub async fn read_stream(
        &self,
        channel: &Channel,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Option<HistoryPage>, BackendError> {
        let Some(policy) = self.stream_policy(channel) else {
            return Ok(None);
        };
        let limit = limit.unwrap_or(policy.size).min(policy.size);
        let page = self
            .broker
            .read_stream(channel, after, limit, &policy)
            .await?;
        self.metrics.history_reads.inc();
        Ok(Some(page))
    }

    /// Revokes across the cluster: in the registry (every pod reads it within
    /// [`crate::revocations::REFRESH_EVERY`], new pods at start), at once on this pod.
    /// Returns the time in force.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<u64, BackendError> {
        let until = self.registry.revoke(revocation).await?;
        self.refresh_revocations().await?;
        Ok(until)
    }

    /// Reads the cluster's revocations when they changed and closes this pod's sessions
    /// that a new one names (3006).
    pub async fn refresh_revocations(&self) -> Result<(), BackendError> {
        self.revocations
            .refresh(self.registry.as_ref(), &self.hub, now_ms())
            .await?;
        self.metrics.revocations.set(self.revocations.len() as i64);
        Ok(())
    }

    /// Refreshes this pod's liveness in the registry. When the registry had lost this
    /// pod (Redis restarted empty, or the pod was cut off longer than its TTL), registers
    /// every local session and subscription again.
    pub async fn heartbeat(&self) -> Result<(), BackendError> {
        let liveness = match self.registry.heartbeat_pod(&self.pod_id).await {
            Ok(liveness) => liveness,
            Err(e) => {
                *self.liveness_lapsed.lock() = Some(std::time::Instant::now());
                return Err(e);
            }
        };
        self.retry_removals(removals::PER_REFRESH).await;
        if liveness == Liveness::Restored {
            *self.liveness_lapsed.lock() = Some(std::time::Instant::now());
            self.reregister().await?;
        }
        Ok(())
    }

    async fn reregister(&self) -> Result<(), BackendError> {
        let records: Vec<SessionRecord> = self.records.lock().values().cloned().collect();
        if records.is_empty() {
            return Ok(());
        }
        tracing::info!(sessions = records.len(), "registering local sessions again");
        for record in &records {
            // A session that closed meanwhile must not come back.
            if self.hub.get(&record.session_id).is_none() {
                continue;
            }
            self.registry.add_session(record, 0).await?;
            for topic in self.hub.topics_of(&record.session_id) {
                self.registry.add_subscription(record, &topic).await?;
            }
            if self.hub.get(&record.session_id).is_none() {
                // It closed meanwhile and was removed before it was added again.
                let closed = Closed::unexplained(now_ms());
                self.registry.remove_session(record, &closed).await?;
            }
        }
        Ok(())
    }

    /// Cleans up after pods that died without doing it themselves (`pod_ttl`: how long
    /// a pod's liveness lasts without a refresh).
    pub async fn reap(&self, pod_ttl: Duration) {
        // This pod's own liveness first: after a hang longer than the TTL (Redis stopped,
        // the pod cut off) the registry lists this pod as dead too, and reaping it would
        // write `pod_lost` for sessions that are alive here. The refresh re-registers them
        // and retries pending removals; a pod that cannot refresh itself reaps nothing.
        if let Err(e) = self.heartbeat().await {
            tracing::warn!(error = %e, "not reaping: this pod's liveness refresh failed");
            return;
        }
        // A stall that lapsed this pod's liveness lapsed every pod's: the others are not
        // dead, they have not refreshed yet. Within a TTL they have.
        if self
            .liveness_lapsed
            .lock()
            .is_some_and(|at| at.elapsed() < pod_ttl)
        {
            return;
        }
        match self.registry.reap_dead_pods().await {
            Ok(reaped) if reaped.pods == 0 => {}
            Ok(reaped) => {
                if let Some(events) = &self.events {
                    events.emitted(EventKind::Disconnected, reaped.sessions);
                }
                tracing::info!(
                    pods = reaped.pods,
                    sessions = reaped.sessions,
                    "reaped dead pods"
                );
            }
            Err(e) => tracing::warn!(error = %e, "reaping dead pods failed"),
        }
    }

    /// Whether the backends work and the pod is not draining (readiness). Keeps the
    /// `wsgate_ready` and `wsgate_backend_healthy` gauges current.
    pub async fn ready(&self) -> Result<(), String> {
        let backends = async {
            self.registry.healthy().await.map_err(|e| e.to_string())?;
            self.broker.healthy().await.map_err(|e| e.to_string())
        }
        .await;
        self.metrics
            .backend_healthy
            .set(i64::from(backends.is_ok()));
        let ready = if self.gauge.is_draining() {
            Err("draining".to_owned())
        } else {
            backends
        };
        self.metrics.ready.set(i64::from(ready.is_ok()));
        ready
    }

    /// This pod's session events, unless they are off.
    pub fn events(&self) -> Option<&Arc<Events>> {
        self.events.as_ref()
    }

    /// Reads session events for a consumer: the events after `since` whose type is in
    /// `kinds` (every type when empty), at most `limit` (capped at
    /// [`crate::events::MAX_READ`]); when there are none yet, waits up to `wait` for some.
    /// The answer's `next_id` is the `since` of the consumer's next read, also when it
    /// holds no event. This is the long poll behind `WatchEvents`; an HTTP handler can
    /// serve it as is.
    pub async fn read_events(
        &self,
        since: Since,
        kinds: &[EventKind],
        limit: usize,
        wait: Duration,
    ) -> Result<EventBatch, EventsError> {
        let events = self.events.as_ref().ok_or(EventsError::Disabled)?;
        events.read(since, kinds, limit, wait).await
    }

    /// Ends the consumers' reads (shutdown): they resume on another pod.
    pub fn stop_event_reads(&self) {
        if let Some(events) = &self.events {
            events.stop_reads();
        }
    }

    /// Takes this pod out of the registry (clean shutdown): writes the topic events still
    /// queued and the removals still pending, then removes the pod and what it still has.
    pub async fn leave(&self) {
        if let Some(events) = &self.events {
            events.stop_writer(Duration::from_secs(2)).await;
        }
        self.retry_removals(usize::MAX).await;
        if let Err(e) = self.registry.remove_pod(&self.pod_id).await {
            tracing::warn!(error = %e, "could not remove the pod from the registry");
        }
    }
}

/// The kind of a channel, for spans (names can hold user ids and topics; kinds are
/// enough to follow a message).
/// Milliseconds since the Unix epoch.
pub use wsgate_core::clock::now_ms;

/// A record for a session of this pod.
pub fn session_record(
    node: &Node,
    session_id: SessionId,
    user_id: &str,
    remote_addr: String,
) -> SessionRecord {
    SessionRecord {
        session_id,
        user_id: user_id.to_owned(),
        pod_id: node.pod_id.clone(),
        connected_at_ms: now_ms(),
        remote_addr,
    }
}
