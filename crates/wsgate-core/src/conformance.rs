//! The conformance suite every backend must pass, unchanged (feature `test-util`).
//!
//! A backend's own test calls [`broker_suite`], [`registry_suite`], [`history_suite`] and
//! [`events::events_suite`] with a factory. The suite names its channels, users and pods
//! uniquely per call, so suites for one backend may share a server; a Redis backend
//! should still hand each test its own namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod events;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backend::{
    Appended, Broker, Channel, Command, Envelope, HistoryPolicy, Idempotency, Inbox, Liveness,
    Registry, SessionRecord, StreamPosition, Target,
};
use crate::ids::SessionId;
use crate::protocol::Payload;

/// How long the suite waits for an envelope that must arrive.
const ARRIVAL: Duration = Duration::from_secs(5);

/// An inbox that records what arrives, for assertions.
pub struct RecordingInbox {
    tx: mpsc::UnboundedSender<Arc<Envelope>>,
}

impl Inbox for RecordingInbox {
    fn deliver(&self, envelope: Arc<Envelope>) {
        let _ = self.tx.send(envelope);
    }
}

/// One simulated pod: its broker and what its inbox received.
pub struct TestPod {
    /// The pod's id.
    pub id: String,
    /// Its broker.
    pub broker: Arc<dyn Broker>,
    /// Envelopes received, in order.
    pub received: mpsc::UnboundedReceiver<Arc<Envelope>>,
    _inbox: Arc<RecordingInbox>,
}

impl TestPod {
    /// Waits for the next envelope; fails the test after [`ARRIVAL`].
    pub async fn next(&mut self) -> Arc<Envelope> {
        tokio::time::timeout(ARRIVAL, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("pod {} received nothing within {ARRIVAL:?}", self.id))
            .expect("inbox closed")
    }

    /// Proves nothing else arrived: subscribes a private barrier channel, publishes a
    /// marker on it and requires the marker to be the very next envelope. Pub/sub keeps
    /// order per subscriber connection, so anything stray would arrive first.
    pub async fn assert_nothing_else(&mut self, tag: &str) {
        let barrier = Channel::Pod(format!("barrier-{}-{tag}", self.id));
        self.broker.subscribe(&barrier).await.unwrap();
        let marker = Arc::new(Envelope::new(
            "suite",
            Target::Broadcast,
            Command::Deliver(Payload::Text(format!("barrier {tag}"))),
        ));
        self.broker.publish(&barrier, marker.clone()).await.unwrap();
        let next = self.next().await;
        assert_eq!(
            next.id, marker.id,
            "pod {} received an envelope it should not have ({tag}): {next:?}",
            self.id
        );
        self.broker.unsubscribe(&barrier).await.unwrap();
    }
}

async fn pod<F, Fut>(make: &F, id: String) -> TestPod
where
    F: Fn(String, Arc<dyn Inbox>) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let (tx, received) = mpsc::unbounded_channel();
    let inbox = Arc::new(RecordingInbox { tx });
    let broker = make(id.clone(), inbox.clone()).await;
    TestPod {
        id,
        broker,
        received,
        _inbox: inbox,
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", crate::ids::message_id().to_lowercase())
}

fn text(origin: &str, target: Target, text: &str) -> Arc<Envelope> {
    Arc::new(Envelope::new(
        origin,
        target,
        Command::Deliver(Payload::Text(text.to_owned())),
    ))
}

/// Runs every broker check. `make(pod_id, inbox)` returns a broker for a new pod; all pods
/// of one call must share the same pub/sub server.
pub async fn broker_suite<F, Fut>(make: F)
where
    F: Fn(String, Arc<dyn Inbox>) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let run = unique("run");
    let mut a = pod(&make, format!("{run}-a")).await;
    let mut b = pod(&make, format!("{run}-b")).await;
    let mut c = pod(&make, format!("{run}-c")).await;

    // A user channel reaches exactly the pods subscribed to it, once each, even when the
    // subscription was requested twice.
    let user = Channel::User(unique("user"));
    a.broker.subscribe(&user).await.unwrap();
    a.broker.subscribe(&user).await.unwrap();
    b.broker.subscribe(&user).await.unwrap();
    let sent = text(&c.id, Target::User("u".into()), "to user");
    c.broker.publish(&user, sent.clone()).await.unwrap();
    assert_eq!(*a.next().await, *sent);
    assert_eq!(*b.next().await, *sent);
    a.assert_nothing_else("user-a").await;
    b.assert_nothing_else("user-b").await;
    c.assert_nothing_else("user-c").await;

    // After unsubscribe nothing more arrives; the other subscriber is unaffected.
    b.broker.unsubscribe(&user).await.unwrap();
    b.broker.unsubscribe(&user).await.unwrap();
    let second = text(&c.id, Target::User("u".into()), "after unsubscribe");
    c.broker.publish(&user, second.clone()).await.unwrap();
    assert_eq!(*a.next().await, *second);
    a.assert_nothing_else("unsub-a").await;
    b.assert_nothing_else("unsub-b").await;

    // Topic, pod and broadcast channels route the same way; a publisher subscribed to the
    // channel hears its own message too.
    let topic = Channel::Topic(unique("topic"));
    for p in [&a, &c] {
        p.broker.subscribe(&topic).await.unwrap();
    }
    let t = text(&a.id, Target::Topic("t".into()), "topic");
    a.broker.publish(&topic, t.clone()).await.unwrap();
    assert_eq!(*a.next().await, *t);
    assert_eq!(*c.next().await, *t);
    b.assert_nothing_else("topic-b").await;

    let pod_channel = Channel::Pod(b.id.clone());
    b.broker.subscribe(&pod_channel).await.unwrap();
    let s = text(
        &a.id,
        Target::Session(SessionId::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV")),
        "session",
    );
    a.broker.publish(&pod_channel, s.clone()).await.unwrap();
    assert_eq!(*b.next().await, *s);
    a.assert_nothing_else("pod-a").await;
    c.assert_nothing_else("pod-c").await;

    // Every envelope field survives the trip: each payload kind, byte-exact binary,
    // disconnect commands, trace context.
    let mut full = Envelope::new(
        &a.id,
        Target::Broadcast,
        Command::Deliver(Payload::Binary(Bytes::from_static(&[0, 1, 2, 255, 254, 0]))),
    );
    full.trace_context = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let kinds = [
        full.clone(),
        Envelope::new(
            &a.id,
            Target::Topic("orders.7".into()),
            Command::Deliver(Payload::json(r#"{"n":1,"s":"é\u0000"}"#).unwrap()),
        ),
        Envelope::new(
            &a.id,
            Target::User("ünïcode user".into()),
            Command::Deliver(Payload::Text(String::new())),
        ),
        Envelope::new(
            &a.id,
            Target::Session(SessionId::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV")),
            Command::Disconnect {
                code: 4001,
                reason: "bye".into(),
            },
        ),
    ];
    let everyone = Channel::Broadcast;
    b.broker.subscribe(&everyone).await.unwrap();
    for envelope in kinds {
        let envelope = Arc::new(envelope);
        a.broker.publish(&everyone, envelope.clone()).await.unwrap();
        assert_eq!(*b.next().await, *envelope);
    }
    b.broker.unsubscribe(&everyone).await.unwrap();
    b.assert_nothing_else("fidelity").await;

    for p in [&a, &b, &c] {
        p.broker.healthy().await.unwrap();
    }
}

fn record(pod: &str, user: &str, connected_at_ms: u64) -> SessionRecord {
    SessionRecord {
        session_id: SessionId::generate(),
        user_id: user.to_owned(),
        pod_id: pod.to_owned(),
        connected_at_ms,
        remote_addr: "127.0.0.1".to_owned(),
    }
}

/// Runs every registry check against a fresh registry from `make`.
pub async fn registry_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Registry>>,
{
    let reg = make().await;
    let pod_a = unique("pod-a");
    let pod_b = unique("pod-b");
    assert_eq!(reg.heartbeat_pod(&pod_a).await.unwrap(), Liveness::Restored);
    assert_eq!(
        reg.heartbeat_pod(&pod_a).await.unwrap(),
        Liveness::Refreshed
    );
    assert_eq!(reg.heartbeat_pod(&pod_b).await.unwrap(), Liveness::Restored);
    let user = unique("user");
    let other = unique("other");

    // s2 is older than s1 although its id is newer: presence lists by connection time.
    let s1 = record(&pod_a, &user, 1_700_000_000_500);
    let s2 = record(&pod_b, &user, 1_700_000_000_000);
    let s3 = record(&pod_b, &other, 1_700_000_000_900);
    for s in [&s1, &s2, &s3] {
        assert!(reg.add_session(s, 0).await.unwrap());
    }
    // Re-registration (after a backend restart) must not double-count.
    assert!(reg.add_session(&s1, 0).await.unwrap());
    // The per-user limit is checked atomically with the insert; a known session is
    // always re-admitted.
    let s4 = record(&pod_a, &user, 1_700_000_000_700);
    assert!(!reg.add_session(&s4, 2).await.unwrap(), "user at the limit");
    assert!(
        reg.add_session(&s1, 2).await.unwrap(),
        "re-adding is not a new session"
    );
    assert_eq!(reg.session(&s4.session_id).await.unwrap(), None);

    assert_eq!(reg.session(&s1.session_id).await.unwrap(), Some(s1.clone()));
    assert_eq!(
        reg.session(&SessionId::generate()).await.unwrap(),
        None,
        "unknown session"
    );
    assert_eq!(
        reg.user_sessions(&user).await.unwrap(),
        vec![s2.clone(), s1.clone()],
        "oldest first"
    );
    assert_eq!(reg.count_user_sessions(&user).await.unwrap(), 2);
    assert_eq!(reg.count_user_sessions(&unique("nobody")).await.unwrap(), 0);
    assert!(
        reg.user_sessions(&unique("nobody"))
            .await
            .unwrap()
            .is_empty()
    );

    let pods = reg.pods().await.unwrap();
    let find = |id: &str| pods.iter().find(|p| p.pod_id == id).cloned();
    let a = find(&pod_a).expect("pod a listed");
    let b = find(&pod_b).expect("pod b listed");
    assert_eq!((a.connections, a.alive), (1, true));
    assert_eq!((b.connections, b.alive), (2, true));

    // Topic memberships count per session, idempotently, and go with the session.
    let topic = unique("topic");
    reg.add_subscription(&s1, &topic).await.unwrap();
    reg.add_subscription(&s1, &topic).await.unwrap();
    reg.add_subscription(&s3, &topic).await.unwrap();
    assert_eq!(reg.count_topic_subscribers(&topic).await.unwrap(), 2);
    reg.remove_subscription(&s3, &topic).await.unwrap();
    reg.remove_subscription(&s3, &topic).await.unwrap();
    assert_eq!(reg.count_topic_subscribers(&topic).await.unwrap(), 1);
    let total_before = reg.count_sessions().await.unwrap();
    assert!(
        total_before >= 3,
        "at least this suite's sessions: {total_before}"
    );

    let closed = crate::events::Closed {
        code: crate::close::NORMAL,
        by: crate::events::ClosedBy::Client,
        at_ms: 1_700_000_001_000,
    };
    reg.remove_session(&s1, &closed).await.unwrap();
    reg.remove_session(&s1, &closed).await.unwrap();
    assert_eq!(reg.session(&s1.session_id).await.unwrap(), None);
    assert_eq!(reg.count_topic_subscribers(&topic).await.unwrap(), 0);
    assert_eq!(reg.user_sessions(&user).await.unwrap(), vec![s2.clone()]);
    assert_eq!(reg.count_sessions().await.unwrap(), total_before - 1);

    // A pod that leaves takes its sessions with it.
    reg.remove_pod(&pod_b).await.unwrap();
    assert_eq!(reg.count_user_sessions(&user).await.unwrap(), 0);
    assert_eq!(reg.session(&s3.session_id).await.unwrap(), None);
    let pods = reg.pods().await.unwrap();
    assert!(
        pods.iter().all(|p| p.pod_id != pod_b || !p.alive),
        "removed pod still alive: {pods:?}"
    );
    assert_eq!(reg.count_sessions().await.unwrap(), total_before - 3);
    assert_eq!(
        reg.reap_dead_pods().await.unwrap().pods,
        0,
        "every pod is alive"
    );
    reg.healthy().await.unwrap();
    revocations(&*reg).await;
}

/// The revocation set: the later time wins, the version moves with every revoke and only
/// then is the set read again, and what is over is left out.
async fn revocations(reg: &dyn Registry) {
    use crate::revocation::{Revocation, Revoked};
    let now = 1_900_000_000_000u64;
    let (v0, _) = reg
        .revocations(u64::MAX, now)
        .await
        .unwrap()
        .expect("a version that is not ours reads the set");
    assert_eq!(reg.revocations(v0, now).await.unwrap(), None, "unchanged");
    let user = Revoked::User(unique("revoked-user"));
    let session = Revoked::Session(SessionId::generate());
    let token = Revoked::Token(unique("jti"));
    let r = |what: &Revoked, until_ms| Revocation {
        what: what.clone(),
        until_ms,
    };
    assert_eq!(
        reg.revoke(&r(&user, now + 60_000)).await.unwrap(),
        now + 60_000
    );
    assert_eq!(
        reg.revoke(&r(&user, now + 1_000)).await.unwrap(),
        now + 60_000,
        "a revocation never shortens another"
    );
    assert_eq!(
        reg.revoke(&r(&session, now + 2_000)).await.unwrap(),
        now + 2_000
    );
    assert_eq!(
        reg.revoke(&r(&token, now + 3_000)).await.unwrap(),
        now + 3_000
    );
    let (v1, set) = reg.revocations(v0, now).await.unwrap().expect("changed");
    assert!(v1 > v0);
    for want in [
        r(&user, now + 60_000),
        r(&session, now + 2_000),
        r(&token, now + 3_000),
    ] {
        assert!(set.contains(&want), "{want:?} in {set:?}");
    }
    // Ten seconds on: the session and the token are over, the user is not.
    let (_, later) = reg
        .revocations(u64::MAX, now + 10_000)
        .await
        .unwrap()
        .expect("read");
    assert!(later.contains(&r(&user, now + 60_000)), "{later:?}");
    assert!(
        !later.iter().any(|x| x.what == session || x.what == token),
        "{later:?}"
    );
}

fn policy(size: usize, ttl_ms: u64) -> HistoryPolicy {
    HistoryPolicy {
        size,
        ttl: Duration::from_millis(ttl_ms),
    }
}

/// Publishes text `body` to the stream of `channel`.
async fn append(
    broker: &Arc<dyn Broker>,
    channel: &Channel,
    body: &str,
    policy: &HistoryPolicy,
    idempotency: Option<&Idempotency>,
) -> Appended {
    let envelope = text("suite", Target::Topic("t".into()), body);
    broker
        .publish_stream(channel, envelope, policy, idempotency)
        .await
        .unwrap()
}

/// The next `n` envelopes of `pod`, with their offsets.
async fn offsets(pod: &mut TestPod, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let envelope = pod.next().await;
        let position = envelope
            .position
            .clone()
            .unwrap_or_else(|| panic!("a stream message without a position: {envelope:?}"));
        got.push(position.offset);
    }
    got
}

/// Runs every check of streams with history (offsets, epochs, trimming, expiry,
/// idempotency, order under concurrent publishers). `make` as for [`broker_suite`].
pub async fn history_suite<F, Fut>(make: F)
where
    F: Fn(String, Arc<dyn Inbox>) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let run = unique("hist");
    let mut a = pod(&make, format!("{run}-a")).await;
    let mut b = pod(&make, format!("{run}-b")).await;
    let keep = policy(100, 60_000);

    // A stream is created by its first read: an epoch, offset 0, nothing kept; the
    // epoch stays the same for later reads and for the first publish.
    let topic = Channel::Topic(unique("stream"));
    let empty = a.broker.read_stream(&topic, 0, 100, &keep).await.unwrap();
    assert!(!empty.position.epoch.is_empty());
    assert_eq!(empty.position.offset, 0);
    assert!(empty.entries.is_empty());
    assert_eq!(empty.first_kept, 1);
    let again = b.broker.read_stream(&topic, 0, 100, &keep).await.unwrap();
    assert_eq!(again.position, empty.position);
    let epoch = empty.position.epoch.clone();

    // Publishes get offsets 1, 2, 3 in the stream's epoch; every subscriber receives
    // them in that order with their positions, payloads intact.
    a.broker.subscribe(&topic).await.unwrap();
    b.broker.subscribe(&topic).await.unwrap();
    for i in 1..=3u64 {
        let sent = text(&a.id, Target::Topic("t".into()), &format!("m{i}"));
        let appended = b
            .broker
            .publish_stream(&topic, sent.clone(), &keep, None)
            .await
            .unwrap();
        assert!(!appended.duplicate);
        assert_eq!(
            appended.position,
            StreamPosition {
                epoch: epoch.clone(),
                offset: i
            }
        );
        for p in [&mut a, &mut b] {
            let got = p.next().await;
            assert_eq!(got.id, sent.id);
            assert_eq!(got.command, sent.command);
            assert_eq!(got.position, Some(appended.position.clone()));
        }
    }
    a.assert_nothing_else("stream-a").await;

    // Reading after an offset gives what came later, oldest first, with its positions.
    let page = a.broker.read_stream(&topic, 1, 100, &keep).await.unwrap();
    assert_eq!(page.position.offset, 3);
    assert_eq!(page.first_kept, 1);
    let kept: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(kept, [2, 3]);
    for entry in &page.entries {
        assert_eq!(
            entry.envelope.position.as_ref().map(|p| p.offset),
            Some(entry.offset)
        );
        assert!(entry.published_at_ms > 0);
    }
    assert_eq!(
        page.entries[0].envelope.command,
        Command::Deliver(Payload::Text("m2".into()))
    );
    let since = |offset| StreamPosition {
        epoch: epoch.clone(),
        offset,
    };
    assert!(page.recovers(&since(1)));
    assert!(page.recovers(&since(0)));
    assert!(page.recovers(&since(3)), "nothing missed is recovered");
    assert!(!page.recovers(&since(4)), "ahead of the stream");
    assert!(!page.recovers(&StreamPosition {
        epoch: "other".into(),
        offset: 1
    }));
    let limited = a.broker.read_stream(&topic, 0, 2, &keep).await.unwrap();
    let kept: Vec<u64> = limited.entries.iter().map(|e| e.offset).collect();
    assert_eq!(kept, [1, 2], "limit keeps the oldest first");

    // A stream keeps at most `size` messages: trimmed ones cannot be recovered.
    let small = policy(3, 60_000);
    let trimmed = Channel::User(unique("trim-user"));
    b.broker.subscribe(&trimmed).await.unwrap();
    for i in 0..5 {
        let binary = Arc::new(Envelope::new(
            &a.id,
            Target::User("u".into()),
            Command::Deliver(Payload::Binary(Bytes::from(vec![0, 255, i]))),
        ));
        a.broker
            .publish_stream(&trimmed, binary, &small, None)
            .await
            .unwrap();
    }
    assert_eq!(offsets(&mut b, 5).await, [1, 2, 3, 4, 5]);
    let page = a
        .broker
        .read_stream(&trimmed, 0, 100, &small)
        .await
        .unwrap();
    let kept: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(kept, [3, 4, 5]);
    assert_eq!(page.first_kept, 3);
    assert_eq!(
        page.entries[0].envelope.command,
        Command::Deliver(Payload::Binary(Bytes::from(vec![0, 255, 2])))
    );
    let trim_epoch = page.position.epoch.clone();
    let at = |offset| StreamPosition {
        epoch: trim_epoch.clone(),
        offset,
    };
    assert!(!page.recovers(&at(1)), "offset 2 was trimmed");
    assert!(page.recovers(&at(2)));

    // Idempotency: a repeated key within its window publishes nothing and answers the
    // first offset; another key publishes; after the window the key publishes again.
    let idem_topic = Channel::Topic(unique("idem"));
    a.broker.subscribe(&idem_topic).await.unwrap();
    let key = Idempotency {
        key: "order-7".into(),
        window: Duration::from_millis(400),
    };
    let first = append(&a.broker, &idem_topic, "x", &keep, Some(&key)).await;
    let repeat = append(&b.broker, &idem_topic, "x", &keep, Some(&key)).await;
    assert!(!first.duplicate);
    assert!(repeat.duplicate);
    assert_eq!(repeat.position, first.position);
    let other = Idempotency {
        key: "order-8".into(),
        window: key.window,
    };
    let second = append(&a.broker, &idem_topic, "y", &keep, Some(&other)).await;
    assert_eq!(second.position.offset, first.position.offset + 1);
    assert_eq!(offsets(&mut a, 2).await, [1, 2]);
    a.assert_nothing_else("idem").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = append(&b.broker, &idem_topic, "x", &keep, Some(&key)).await;
    assert!(!later.duplicate, "the window is over");
    assert_eq!(later.position.offset, 3);
    assert_eq!(offsets(&mut a, 1).await, [3]);

    // A stream is forgotten `ttl` after its last publish: a new epoch starts at 0.
    let brief = policy(10, 300);
    let fleeting = Channel::Topic(unique("ttl"));
    let before = append(&a.broker, &fleeting, "z", &brief, None).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let after = a
        .broker
        .read_stream(&fleeting, 0, 10, &brief)
        .await
        .unwrap();
    assert_ne!(after.position.epoch, before.position.epoch);
    assert_eq!(after.position.offset, 0);
    assert!(after.entries.is_empty());
    assert!(!after.recovers(&before.position));

    // Concurrent publishers on two pods: one order, offsets 1..=100 without a gap or a
    // repeat, the same for every subscriber and in the kept history.
    let busy = Channel::Topic(unique("busy"));
    a.broker.subscribe(&busy).await.unwrap();
    b.broker.subscribe(&busy).await.unwrap();
    let wide = policy(200, 60_000);
    let publishers = [a.broker.clone(), b.broker.clone()].map(|broker| {
        let busy = busy.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let m = text("p", Target::Topic("t".into()), &format!("{i}"));
                broker.publish_stream(&busy, m, &wide, None).await.unwrap();
            }
        })
    });
    for p in publishers {
        p.await.unwrap();
    }
    let expected: Vec<u64> = (1..=100).collect();
    assert_eq!(offsets(&mut a, 100).await, expected);
    assert_eq!(offsets(&mut b, 100).await, expected);
    let page = b.broker.read_stream(&busy, 0, 200, &wide).await.unwrap();
    let kept: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(kept, expected);
    a.assert_nothing_else("busy-a").await;
    b.assert_nothing_else("busy-b").await;
}
