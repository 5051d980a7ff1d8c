//! The node's side of session events, on the embedded backends: the long poll
//! (`Node::read_events`), topic events written in order and settled before the session's
//! `disconnected`, a full queue that drops rather than waits, and a removal that fails
//! while the registry is away and is retried until its `disconnected` is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use wsgate_core::backend::memory::{MemoryBus, MemoryRegistry};
use wsgate_core::backend::memory_events::MemoryEventLog;
use wsgate_core::backend::{
    BackendError, Broker, EventLog, Liveness, PodRecord, ReadError, Reaped, Registry, SessionRecord,
};
use wsgate_core::events::{Closed, ClosedBy, Event, EventId, EventKind, Since, TopicEvent};
use wsgate_core::hub::SessionHandle;
use wsgate_core::ids::SessionId;
use wsgate_core::revocation::Revocation;
use wsgate_core::stream::HistoryRules;

use super::EventOptions;
use crate::node::{Node, session_record};

async fn node_on(
    registry: Arc<dyn Registry>,
    log: Arc<dyn EventLog>,
    options: EventOptions,
) -> Arc<Node> {
    let bus = MemoryBus::new();
    Node::with_backends(
        "pod-e".to_owned(),
        HistoryRules::default(),
        registry,
        Some((log, options)),
        move |inbox| async move { Ok(Arc::new(bus.broker("pod-e", inbox)) as Arc<dyn Broker>) },
    )
    .await
    .expect("node")
}

async fn embedded() -> Arc<Node> {
    Node::embedded(
        "pod-e".to_owned(),
        HistoryRules::default(),
        EventOptions::default(),
    )
    .await
    .expect("node")
}

/// Opens a session of `user` on `node`, as a handshake does.
async fn open(node: &Node, user: &str) -> SessionRecord {
    let record = session_record(node, SessionId::generate(), user, "192.0.2.1".into());
    let (handle, outbound) = SessionHandle::new(record.session_id.clone(), user, 8);
    std::mem::forget(outbound);
    node.open_session(handle, &record, 0).await.expect("open");
    record
}

fn by_client() -> Closed {
    Closed {
        code: 1000,
        by: ClosedBy::Client,
        at_ms: 1,
    }
}

fn kinds(events: &[Event]) -> Vec<(EventKind, Option<&str>)> {
    events
        .iter()
        .map(|e| (e.kind, e.topic.as_deref()))
        .collect()
}

async fn everything(node: &Node) -> Vec<Event> {
    let read = node.read_events(Since::After(EventId::ZERO), &[], 1000, Duration::ZERO);
    read.await.expect("read").events
}

#[tokio::test]
async fn a_long_poll_waits_for_events_and_answers_the_next_cursor() {
    let node = embedded().await;
    let began = Instant::now();
    let empty = node
        .read_events(Since::New, &[], 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    assert!(began.elapsed() >= Duration::from_millis(150), "it waited");
    let cursor = empty.next_id;

    let opener = node.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open(&opener, "ann").await
    });
    let began = Instant::now();
    let batch = node
        .read_events(Since::After(cursor), &[], 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "woken by the event"
    );
    let ann = later.await.unwrap();
    assert_eq!(kinds(&batch.events), [(EventKind::Connected, None)]);
    assert_eq!(batch.events[0].session_id, ann.session_id.as_str());
    assert_eq!(batch.next_id, batch.events[0].id);

    // A filter that matches nothing still moves the cursor past what it looked at.
    let filtered = node
        .read_events(
            Since::After(cursor),
            &[EventKind::Disconnected],
            10,
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert!(filtered.events.is_empty());
    assert_eq!(filtered.next_id, batch.next_id);

    // At most `limit`, the cursor after the last one returned.
    for user in ["b", "c", "d"] {
        open(&node, user).await;
    }
    let page = node
        .read_events(Since::After(batch.next_id), &[], 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.next_id, page.events[1].id);
    let rest = node
        .read_events(Since::After(page.next_id), &[], 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 1);

    // The answer as a long poll serves it.
    let json = serde_json::to_value(&batch).unwrap();
    assert_eq!(json["next_id"], batch.next_id.to_string());
    assert_eq!(json["events"][0]["type"], "connected");
    assert_eq!(json["events"][0]["session_id"], ann.session_id.as_str());
    assert!(json["events"][0].get("code").is_none(), "{json}");

    // A cursor of another log is told apart from "nothing new".
    let foreign = EventId::new(cursor.ms + 1, 0);
    assert!(matches!(
        node.read_events(Since::After(foreign), &[], 2, Duration::ZERO)
            .await,
        Err(super::EventsError::Ahead { .. })
    ));
}

#[tokio::test]
async fn topic_events_land_in_order_before_the_sessions_disconnected() {
    let node = embedded().await;
    let r = open(&node, "ann").await;
    node.subscribe(&r, "a").await.unwrap();
    node.subscribe(&r, "b").await.unwrap();
    node.subscribe(&r, "b").await.unwrap();
    node.unsubscribe(&r, "a").await;
    node.unsubscribe(&r, "zzz").await;
    // Closed at once: the queued topic events are written first.
    node.close_session(&r, &by_client()).await;
    assert_eq!(
        kinds(&everything(&node).await),
        [
            (EventKind::Connected, None),
            (EventKind::Subscribed, Some("a")),
            (EventKind::Subscribed, Some("b")),
            (EventKind::Unsubscribed, Some("a")),
            (EventKind::Disconnected, None),
        ]
    );
    let m = node.metrics.render();
    assert!(
        m.contains("wsgate_events_emitted_total{type=\"subscribed\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("wsgate_events_emitted_total{type=\"disconnected\"} 1"),
        "{m}"
    );
}

/// A log whose appends wait for a permit, to hold the writer.
struct Gated {
    log: Arc<MemoryEventLog>,
    permits: Semaphore,
}

#[async_trait]
impl EventLog for Gated {
    async fn append(&self, events: &[TopicEvent]) -> Result<Vec<bool>, BackendError> {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
        self.log.append(events).await
    }
    async fn newest(&self) -> Result<EventId, BackendError> {
        self.log.newest().await
    }
    async fn read(&self, after: EventId, limit: usize) -> Result<Vec<Event>, ReadError> {
        self.log.read(after, limit).await
    }
    async fn wait(&self, after: EventId, timeout: Duration) {
        self.log.wait(after, timeout).await;
    }
    async fn claim(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.log.claim(consumer, holder, ttl).await
    }
    async fn release(&self, consumer: &str, holder: &str) -> Result<(), BackendError> {
        self.log.release(consumer, holder).await
    }
    async fn cursor(&self, consumer: &str) -> Result<Option<EventId>, BackendError> {
        self.log.cursor(consumer).await
    }
    async fn store_cursor(
        &self,
        consumer: &str,
        holder: &str,
        id: EventId,
    ) -> Result<bool, BackendError> {
        self.log.store_cursor(consumer, holder, id).await
    }
}

#[tokio::test]
async fn a_full_queue_drops_topic_events_and_never_waits() {
    let log = MemoryEventLog::new(100);
    let gated = Arc::new(Gated {
        log: log.clone(),
        permits: Semaphore::new(0),
    });
    let options = EventOptions {
        queue: 1,
        ..EventOptions::default()
    };
    let node = node_on(MemoryRegistry::with_events(log), gated.clone(), options).await;
    let r = open(&node, "ann").await;
    // The writer takes the first and waits on the log; the second waits in the queue;
    // the rest find it full. None of the subscribes waits for any of it.
    let began = Instant::now();
    for topic in ["t1", "t2", "t3", "t4"] {
        node.subscribe(&r, topic).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(began.elapsed() < Duration::from_secs(1));
    let m = node.metrics.render();
    assert!(
        m.contains("wsgate_events_dropped_total{reason=\"queue_full\",type=\"subscribed\"} 2"),
        "{m}"
    );
    gated.permits.add_permits(10);
    node.close_session(&r, &by_client()).await;
    assert_eq!(
        kinds(&everything(&node).await),
        [
            (EventKind::Connected, None),
            (EventKind::Subscribed, Some("t1")),
            (EventKind::Subscribed, Some("t2")),
            (EventKind::Disconnected, None),
        ]
    );
}

/// The memory registry with removals that fail while `down` is set.
struct Flaky {
    inner: Arc<MemoryRegistry>,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable("down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Registry for Flaky {
    async fn heartbeat_pod(&self, pod_id: &str) -> Result<Liveness, BackendError> {
        self.check()?;
        self.inner.heartbeat_pod(pod_id).await
    }
    async fn reap_dead_pods(&self) -> Result<Reaped, BackendError> {
        self.inner.reap_dead_pods().await
    }
    async fn remove_pod(&self, pod_id: &str) -> Result<(), BackendError> {
        self.inner.remove_pod(pod_id).await
    }
    async fn add_session(&self, r: &SessionRecord, max: usize) -> Result<bool, BackendError> {
        self.inner.add_session(r, max).await
    }
    async fn remove_session(&self, r: &SessionRecord, c: &Closed) -> Result<bool, BackendError> {
        self.check()?;
        self.inner.remove_session(r, c).await
    }
    async fn add_subscription(&self, r: &SessionRecord, t: &str) -> Result<(), BackendError> {
        self.inner.add_subscription(r, t).await
    }
    async fn remove_subscription(&self, r: &SessionRecord, t: &str) -> Result<(), BackendError> {
        self.inner.remove_subscription(r, t).await
    }
    async fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, BackendError> {
        self.inner.session(id).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionRecord>, BackendError> {
        self.inner.user_sessions(user).await
    }
    async fn count_user_sessions(&self, user: &str) -> Result<usize, BackendError> {
        self.inner.count_user_sessions(user).await
    }
    async fn count_topic_subscribers(&self, topic: &str) -> Result<usize, BackendError> {
        self.inner.count_topic_subscribers(topic).await
    }
    async fn count_sessions(&self) -> Result<usize, BackendError> {
        self.inner.count_sessions().await
    }
    async fn pods(&self) -> Result<Vec<PodRecord>, BackendError> {
        self.inner.pods().await
    }
    async fn healthy(&self) -> Result<(), BackendError> {
        self.check()
    }
    async fn revoke(&self, r: &Revocation) -> Result<u64, BackendError> {
        self.inner.revoke(r).await
    }
    async fn revocations(
        &self,
        known: u64,
        now_ms: u64,
    ) -> Result<Option<(u64, Vec<Revocation>)>, BackendError> {
        self.inner.revocations(known, now_ms).await
    }
}

#[tokio::test]
async fn a_removal_that_fails_is_retried_until_its_disconnected_is_written() {
    let log = MemoryEventLog::new(100);
    let registry = Arc::new(Flaky {
        inner: MemoryRegistry::with_events(log.clone()),
        down: AtomicBool::new(false),
    });
    let node = node_on(registry.clone(), log, EventOptions::default()).await;
    let r = open(&node, "ann").await;
    registry.down.store(true, Ordering::SeqCst);
    let closed = Closed {
        code: 3008,
        by: ClosedBy::Server,
        at_ms: 42,
    };
    node.close_session(&r, &closed).await;
    assert!(node.heartbeat().await.is_err(), "still away");
    assert_eq!(
        kinds(&everything(&node).await),
        [(EventKind::Connected, None)]
    );

    registry.down.store(false, Ordering::SeqCst);
    node.heartbeat().await.unwrap();
    node.heartbeat().await.unwrap();
    let events = everything(&node).await;
    assert_eq!(
        kinds(&events),
        [
            (EventKind::Connected, None),
            (EventKind::Disconnected, None)
        ]
    );
    // As it ended, not as it was retried.
    let last = &events[1];
    assert_eq!(
        (last.code, last.by, last.at_ms),
        (Some(3008), Some(ClosedBy::Server), 42)
    );
    assert_eq!(registry.count_user_sessions("ann").await.unwrap(), 0);
}
