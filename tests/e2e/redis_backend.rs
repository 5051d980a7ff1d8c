//! The Redis backends against real `redis-server` processes: the conformance suite every
//! backend passes (standalone and Redis Cluster), pod liveness and reaping, the routing
//! property (a send reaches only the pods that need it), streams with history (the
//! history cases of the suite, and epochs that start over when Redis loses a stream), a
//! user's send counted and published in one script, and session events (the event cases
//! of the suite, racing reapers, a log Redis lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use wsgate_core::backend::{
    Broker, Channel, Command, Envelope, EventLog, HistoryPage, HistoryPolicy, Idempotency, Inbox,
    Liveness, ReadError, Reaped, Registry, SessionRecord, StreamPosition, Target,
};
use wsgate_core::conformance;
use wsgate_core::events::{Closed, ClosedBy, EventId, EventKind};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_redis::{RedisBroker, RedisEventLog, RedisOptions, RedisRegistry, Topology};
use wsgate_tests::redis::{RedisCluster, RedisServer};

fn options(url: String, cluster: bool) -> RedisOptions {
    // A namespace per test: tests may share a server and run in parallel.
    let ns = format!("t{}", wsgate_core::ids::message_id().to_lowercase());
    let topology = if cluster {
        Topology::Cluster
    } else {
        Topology::Standalone
    };
    let mut o = RedisOptions::new(url, ns, topology);
    o.pod_ttl = Duration::from_secs(1);
    o
}

async fn run_conformance(opts: RedisOptions) {
    let client = opts.connect().await.unwrap();
    let o = opts.clone();
    let c = client.clone();
    conformance::registry_suite(move || {
        let (o, c) = (o.clone(), c.clone());
        async move { Arc::new(RedisRegistry::new(c, &o)) as Arc<dyn Registry> }
    })
    .await;
    conformance::broker_suite(move |pod, inbox| {
        let (o, c) = (opts.clone(), client.clone());
        async move {
            Arc::new(RedisBroker::connect(&o, c, &pod, inbox).await.unwrap()) as Arc<dyn Broker>
        }
    })
    .await;
}

#[tokio::test]
async fn standalone_redis_passes_the_conformance_suite() {
    let redis = RedisServer::start();
    run_conformance(options(redis.url(), false)).await;
}

#[tokio::test]
async fn redis_cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start(3);
    run_conformance(options(cluster.url(), true)).await;
}

async fn run_history_cases(opts: RedisOptions) {
    let client = opts.connect().await.unwrap();
    conformance::history_suite(move |pod, inbox| {
        let (o, c) = (opts.clone(), client.clone());
        async move {
            Arc::new(RedisBroker::connect(&o, c, &pod, inbox).await.unwrap()) as Arc<dyn Broker>
        }
    })
    .await;
}

#[tokio::test]
async fn standalone_redis_passes_the_history_cases() {
    let redis = RedisServer::start();
    run_history_cases(options(redis.url(), false)).await;
}

#[tokio::test]
async fn redis_cluster_passes_the_history_cases() {
    let cluster = RedisCluster::start(3);
    run_history_cases(options(cluster.url(), true)).await;
}

async fn run_event_cases(opts: RedisOptions) {
    let client = opts.connect().await.unwrap();
    conformance::events::events_suite(move |max_len| {
        // A namespace per log: each call of the factory gets a log of its own.
        let mut o = opts.clone();
        o.namespace = format!(
            "{}-{}",
            o.namespace,
            wsgate_core::ids::message_id().to_lowercase()
        );
        let c = client.clone();
        async move {
            let log = RedisEventLog::load(c.clone(), &o, max_len).await.unwrap();
            let registry = RedisRegistry::with_events(c, &o, log.clone());
            (
                Arc::new(registry) as Arc<dyn Registry>,
                log as Arc<dyn EventLog>,
            )
        }
    })
    .await;
}

#[tokio::test]
async fn standalone_redis_passes_the_event_cases() {
    let redis = RedisServer::start();
    run_event_cases(options(redis.url(), false)).await;
}

#[tokio::test]
async fn redis_cluster_passes_the_event_cases() {
    let cluster = RedisCluster::start(3);
    run_event_cases(options(cluster.url(), true)).await;
}

/// Two live pods reap the same dead pod at once: each of its sessions gets exactly one
/// `disconnected` (by `pod_lost`, code 1006), and closing them again writes nothing.
#[tokio::test]
async fn racing_reapers_write_each_pod_lost_once() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let reaper = |name: &'static str| {
        let opts = opts.clone();
        async move {
            let client = opts.connect().await.unwrap();
            let log = RedisEventLog::load(client.clone(), &opts, 10_000)
                .await
                .unwrap();
            let registry = RedisRegistry::with_events(client, &opts, log.clone());
            assert_eq!(
                registry.heartbeat_pod(name).await.unwrap(),
                Liveness::Restored
            );
            (registry, log)
        }
    };
    let (a, log_a) = reaper("a").await;
    let (b, log_b) = reaper("b").await;
    let start = log_a.newest().await.unwrap();
    for dead in ["dead1", "dead2"] {
        a.heartbeat_pod(dead).await.unwrap();
        for i in 0..20 {
            assert!(
                a.add_session(&record(dead, &format!("u{i}")), 0)
                    .await
                    .unwrap()
            );
        }
    }
    // Both dead pods' liveness lapses; the live pods refresh theirs, then both reap.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stay_alive = async {
        for name in ["a", "b"] {
            a.heartbeat_pod(name).await.unwrap();
        }
    };
    stay_alive.await;
    let (ra, rb) = tokio::join!(a.reap_dead_pods(), b.reap_dead_pods());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.sessions + rb.sessions, 40, "{ra:?} {rb:?}");
    let lost = Closed::pod_lost(1);
    let (xa, xb) = tokio::join!(
        log_a.close_pod("dead2", &lost),
        log_b.close_pod("dead2", &lost)
    );
    assert_eq!(xa.unwrap() + xb.unwrap(), 0, "closing again writes nothing");

    let events = log_a.read(start, 1000).await.unwrap();
    let mut connected: Vec<&str> = Vec::new();
    let mut disconnected: Vec<&str> = Vec::new();
    for e in &events {
        match e.kind {
            EventKind::Connected => connected.push(&e.session_id),
            EventKind::Disconnected => {
                assert_eq!(
                    (e.code, e.by),
                    (Some(1006), Some(ClosedBy::PodLost)),
                    "{e:?}"
                );
                assert!(e.pod_id.starts_with("dead"), "{e:?}");
                disconnected.push(&e.session_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(connected.len(), 40);
    let mut once = disconnected.clone();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once.len(), disconnected.len(), "a session closed twice");
    connected.sort_unstable();
    assert_eq!(once, connected, "every connected has its disconnected");
}

/// A dead pod that the registry no longer lists (dropped by a reaper of a version that
/// wrote no events, during a rolling upgrade) still gets its sessions closed: reapers
/// also read the event log's own list of pods with live sessions.
#[tokio::test]
async fn a_dead_pod_the_registry_forgot_still_gets_its_disconnected_events() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let client = opts.connect().await.unwrap();
    let log = RedisEventLog::load(client.clone(), &opts, 1000)
        .await
        .unwrap();
    let registry = RedisRegistry::with_events(client.clone(), &opts, log.clone());
    let start = log.newest().await.unwrap();
    registry.heartbeat_pod("gone").await.unwrap();
    for i in 0..5 {
        registry
            .add_session(&record("gone", &format!("u{i}")), 0)
            .await
            .unwrap();
    }
    // An older reaper forgets the pod from the registry, leaving the event marks.
    RedisRegistry::new(client, &opts)
        .remove_pod("gone")
        .await
        .unwrap();
    let ns = &opts.namespace;
    assert_eq!(
        redis
            .cli(&["SISMEMBER", &format!("{ns}:pods"), "gone"])
            .trim(),
        "0"
    );
    assert_eq!(
        redis
            .cli(&["HLEN", &format!("{ns}:ev:{{{ns}}}:live:gone")])
            .trim(),
        "5"
    );

    registry.heartbeat_pod("me").await.unwrap();
    let reaped = registry.reap_dead_pods().await.unwrap();
    assert_eq!((reaped.pods, reaped.sessions), (1, 5));
    let events = log.read(start, 100).await.unwrap();
    let lost = events
        .iter()
        .filter(|e| e.by == Some(ClosedBy::PodLost))
        .count();
    assert_eq!(lost, 5);
    // Nothing is left for the next reaper.
    assert_eq!(
        redis
            .cli(&["EXISTS", &format!("{ns}:ev:{{{ns}}}:pods")])
            .trim(),
        "0"
    );
    assert_eq!(registry.reap_dead_pods().await.unwrap(), Reaped::default());
}

/// Reapers that race without the lock, on the log alone: still one `disconnected` each.
#[tokio::test]
async fn racing_closes_of_one_pod_split_the_sessions() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let client = opts.connect().await.unwrap();
    let log = RedisEventLog::load(client.clone(), &opts, 10_000)
        .await
        .unwrap();
    let registry = RedisRegistry::with_events(client.clone(), &opts, log.clone());
    let other = RedisEventLog::load(opts.connect().await.unwrap(), &opts, 10_000)
        .await
        .unwrap();
    let start = log.newest().await.unwrap();
    for i in 0..300 {
        registry
            .add_session(&record("dead", &format!("u{i}")), 0)
            .await
            .unwrap();
    }
    let lost = Closed::pod_lost(1);
    let (x, y) = tokio::join!(log.close_pod("dead", &lost), other.close_pod("dead", &lost));
    assert_eq!(x.unwrap() + y.unwrap(), 300);
    let events = log.read(start, 1000).await.unwrap();
    assert_eq!(events.len(), 600);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Disconnected)
            .count(),
        300
    );
}

/// Redis restarted empty: the log is gone, and a consumer's cursor from before says so
/// (trimmed), instead of reading on as if nothing was missed.
#[tokio::test]
async fn a_cursor_from_a_log_redis_lost_reads_as_trimmed() {
    let mut redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let client = opts.connect().await.unwrap();
    let log = RedisEventLog::load(client.clone(), &opts, 100)
        .await
        .unwrap();
    let registry = RedisRegistry::with_events(client, &opts, log.clone());
    registry.add_session(&record("p", "u"), 0).await.unwrap();
    let seen = log.newest().await.unwrap();
    redis.restart_empty();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match log.read(seen, 10).await {
            Err(ReadError::Ahead { newest }) => {
                assert_eq!(newest, EventId::ZERO);
                break;
            }
            Err(ReadError::Backend(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("an empty Redis read {other:?}"),
        }
    }
    // The next event makes a new log; the old cursor is behind its start.
    tokio::time::sleep(Duration::from_millis(5)).await;
    registry.add_session(&record("p", "v"), 0).await.unwrap();
    assert!(matches!(
        log.read(seen, 10).await,
        Err(ReadError::Trimmed { oldest: Some(_) })
    ));
    assert_eq!(log.read(EventId::ZERO, 10).await.unwrap().len(), 1);
}

fn record(pod: &str, user: &str) -> SessionRecord {
    SessionRecord {
        session_id: SessionId::generate(),
        user_id: user.into(),
        pod_id: pod.into(),
        connected_at_ms: 1,
        remote_addr: "127.0.0.1".into(),
    }
}

#[tokio::test]
async fn a_silent_pod_drops_out_of_presence_and_is_reaped() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let registry = RedisRegistry::new(opts.connect().await.unwrap(), &opts);
    assert_eq!(
        registry.heartbeat_pod("dead").await.unwrap(),
        Liveness::Restored
    );
    assert_eq!(
        registry.heartbeat_pod("live").await.unwrap(),
        Liveness::Restored
    );
    let gone = record("dead", "alice");
    let kept = record("live", "alice");
    for r in [&gone, &kept] {
        assert!(registry.add_session(r, 0).await.unwrap());
    }
    registry.add_subscription(&gone, "news").await.unwrap();
    assert_eq!(registry.count_user_sessions("alice").await.unwrap(), 2);

    // "live" keeps refreshing; "dead" stops. After one TTL only the live session counts.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            registry.heartbeat_pod("live").await.unwrap(),
            Liveness::Refreshed
        );
    }
    let presence = registry.user_sessions("alice").await.unwrap();
    assert_eq!(presence, vec![kept.clone()]);
    assert_eq!(
        registry.count_user_sessions("alice").await.unwrap(),
        1,
        "a session on a pod whose liveness key expired does not count"
    );
    assert_eq!(registry.session(&gone.session_id).await.unwrap(), None);
    let pods = registry.pods().await.unwrap();
    assert!(
        pods.iter().any(|p| p.pod_id == "dead" && !p.alive),
        "{pods:?}"
    );
    assert_eq!(registry.count_sessions().await.unwrap(), 1);

    // A live pod reaps the leftovers, once.
    assert_eq!(registry.reap_dead_pods().await.unwrap().pods, 1);
    assert_eq!(registry.reap_dead_pods().await.unwrap().pods, 0);
    assert_eq!(registry.count_user_sessions("alice").await.unwrap(), 1);
    assert_eq!(registry.count_topic_subscribers("news").await.unwrap(), 0);
    assert!(
        registry
            .pods()
            .await
            .unwrap()
            .iter()
            .all(|p| p.pod_id != "dead")
    );
    let keys = redis.cli(&["--scan", "--pattern", "*dead*"]);
    assert!(keys.trim().is_empty(), "dead pod keys left: {keys}");
    let keys = redis.cli(&["--scan", "--pattern", &format!("*{}*", gone.session_id)]);
    assert!(keys.trim().is_empty(), "dead session keys left: {keys}");

    // Redis losing everything is seen as a restored pod on the next heartbeat.
    redis.cli(&["FLUSHALL"]);
    assert_eq!(
        registry.heartbeat_pod("live").await.unwrap(),
        Liveness::Restored
    );
}

#[derive(Default)]
struct Counter(AtomicUsize);

impl Inbox for Counter {
    fn deliver(&self, _: Arc<Envelope>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_send_to_a_user_reaches_only_the_pod_that_holds_the_user() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let client = opts.connect().await.unwrap();
    let mut pods = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let inbox = Arc::new(Counter::default());
        let broker = RedisBroker::connect(&opts, client.clone(), name, inbox.clone())
            .await
            .unwrap();
        // What every pod subscribes to no matter what: its own channel and broadcast.
        broker.subscribe(&Channel::Broadcast).await.unwrap();
        pods.push((broker, inbox));
    }
    let user = Channel::User("alice".into());
    pods[0].0.subscribe(&user).await.unwrap();

    for i in 0..20 {
        let envelope = Envelope::new(
            "d",
            Target::User("alice".into()),
            Command::Deliver(Payload::Text(format!("m{i}"))),
        );
        pods[3].0.publish(&user, Arc::new(envelope)).await.unwrap();
    }
    // Pod a's own channel as a barrier: once its marker is in, the 20 are too.
    tokio::time::timeout(Duration::from_secs(5), async {
        while pods[0].1.0.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("pod a did not receive the 20 sends");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received: Vec<usize> = pods
        .iter()
        .map(|(_, c)| c.0.load(Ordering::SeqCst))
        .collect();
    assert_eq!(received, vec![20, 0, 0, 0], "messages received per pod");

    // Redis itself agrees: exactly one subscriber connection for the user's channel.
    let numsub = redis.cli(&[
        "PUBSUB",
        "NUMSUB",
        &format!("{}:cu:{{alice}}", opts.namespace),
    ]);
    assert!(numsub.trim().ends_with('1'), "PUBSUB NUMSUB: {numsub}");
}

#[tokio::test]
async fn a_send_to_a_user_is_counted_and_published_in_one_script() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let client = opts.connect().await.unwrap();
    let registry = RedisRegistry::new(client.clone(), &opts);
    for pod in ["live", "dead"] {
        assert_eq!(
            registry.heartbeat_pod(pod).await.unwrap(),
            Liveness::Restored
        );
    }
    for pod in ["live", "live", "dead"] {
        assert!(
            registry
                .add_session(&record(pod, "alice"), 0)
                .await
                .unwrap()
        );
    }
    // "dead" is gone as after its TTL: its liveness key has expired.
    let alive = format!("{}:pod:{{dead}}:alive", opts.namespace);
    assert_eq!(redis.cli(&["DEL", &alive]).trim(), "1");
    let inbox = Arc::new(Counter::default());
    let broker = RedisBroker::connect(&opts, client.clone(), "live", inbox.clone())
        .await
        .unwrap();
    broker
        .subscribe(&Channel::User("alice".into()))
        .await
        .unwrap();

    // Fresh again: connecting and subscribing can outlast the test's short TTL.
    assert!(registry.heartbeat_pod("live").await.is_ok());
    let push = |user: &str| {
        Arc::new(Envelope::new(
            "live",
            Target::User(user.into()),
            Command::Deliver(Payload::Text("hi".into())),
        ))
    };
    assert_eq!(
        broker
            .publish_to_user_counted("alice", push("alice"))
            .await
            .unwrap(),
        Some(2),
        "the sessions on live pods, not the dead pod's"
    );
    assert_eq!(
        broker
            .publish_to_user_counted("nobody", push("nobody"))
            .await
            .unwrap(),
        Some(0)
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while inbox.0.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the push reached the user's channel");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inbox.0.load(Ordering::SeqCst), 1, "published once");
}

/// A Redis Sentinel process watching one primary, killed on drop.
struct Sentinel {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(primary_port: u16, service: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = wsgate_tests::free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {service} 127.0.0.1 {primary_port} 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !wsgate_tests::redis::answers_ping(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "sentinel did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_primary_is_found_through_sentinel() {
    let primary = RedisServer::start();
    let sentinel = Sentinel::start(primary.port(), "mymaster");
    let mut opts = options(format!("redis://127.0.0.1:{}", sentinel.port), false);
    opts.topology = Topology::Sentinel {
        service: "mymaster".into(),
    };
    let client = opts.connect().await.unwrap();
    let registry = RedisRegistry::new(client.clone(), &opts);
    assert_eq!(
        registry.heartbeat_pod("p").await.unwrap(),
        Liveness::Restored
    );
    // The write landed on the primary, found through the sentinel.
    let keys = primary.cli(&["--scan", "--pattern", &format!("{}:*", opts.namespace)]);
    assert!(keys.contains(":pod:{p}:alive"), "{keys}");
    run_conformance(opts).await;
}

/// An inbox that hands over what arrives.
struct Recorder(mpsc::UnboundedSender<Arc<Envelope>>);

impl Inbox for Recorder {
    fn deliver(&self, envelope: Arc<Envelope>) {
        let _ = self.0.send(envelope);
    }
}

async fn stream_pod(
    opts: &RedisOptions,
    name: &str,
) -> (RedisBroker, mpsc::UnboundedReceiver<Arc<Envelope>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = opts.connect().await.unwrap();
    let broker = RedisBroker::connect(opts, client, name, Arc::new(Recorder(tx)))
        .await
        .unwrap();
    (broker, rx)
}

fn binary(i: u32) -> Arc<Envelope> {
    // Every byte value, then the index: a payload no text path would keep intact.
    let mut bytes: Vec<u8> = (0..=255).collect();
    bytes.extend_from_slice(&i.to_be_bytes());
    Arc::new(Envelope::new(
        "a",
        Target::Topic("t".into()),
        Command::Deliver(Payload::Binary(Bytes::from(bytes))),
    ))
}

const KEEP: HistoryPolicy = HistoryPolicy {
    size: 10,
    ttl: Duration::from_secs(60),
};

/// Reads until Redis answers again (the client reconnects after a restart).
async fn read_when_back(broker: &RedisBroker, channel: &Channel) -> HistoryPage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker.read_stream(channel, 0, 10, &KEEP).await {
            Ok(page) => return page,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Redis did not come back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_redis_restarted_empty_starts_its_streams_over() {
    let mut redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let (broker, _rx) = stream_pod(&opts, "a").await;
    let topic = Channel::Topic("news".into());
    for i in 0..2 {
        broker
            .publish_stream(&topic, binary(i), &KEEP, None)
            .await
            .unwrap();
    }
    let before = broker.read_stream(&topic, 0, 10, &KEEP).await.unwrap();
    assert_eq!(before.position.offset, 2);
    let seen = StreamPosition {
        epoch: before.position.epoch.clone(),
        offset: 1,
    };
    assert!(before.recovers(&seen));

    redis.restart_empty();
    // The next read makes a new epoch: what a client saw before cannot be recovered, and
    // it is told so instead of being given a wrong "nothing missed".
    let after = read_when_back(&broker, &topic).await;
    assert_ne!(after.position.epoch, before.position.epoch);
    assert_eq!(after.position.offset, 0);
    assert!(after.entries.is_empty());
    assert!(!after.recovers(&seen));
    assert!(!after.recovers(&before.position));
    // The scripts were lost with the restart too (EVALSHA falls back to EVAL); the next
    // publish continues the reader's epoch.
    let appended = broker
        .publish_stream(&topic, binary(2), &KEEP, None)
        .await
        .unwrap();
    assert_eq!(
        appended.position,
        StreamPosition {
            epoch: after.position.epoch.clone(),
            offset: 1
        }
    );
}

#[tokio::test]
async fn a_stream_whose_meta_hash_is_lost_starts_over_without_its_old_history() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let (broker, _rx) = stream_pod(&opts, "a").await;
    let topic = Channel::Topic("orders".into());
    let key = Idempotency {
        key: "order-1".into(),
        window: Duration::from_secs(60),
    };
    let first = broker
        .publish_stream(&topic, binary(0), &KEEP, Some(&key))
        .await
        .unwrap();
    broker
        .publish_stream(&topic, binary(1), &KEEP, None)
        .await
        .unwrap();

    // Eviction (or anything else) takes the meta hash alone; its history and the
    // idempotency key stay behind.
    let meta = format!("{}:hmt:{{orders}}", opts.namespace);
    let history = format!("{}:hlt:{{orders}}", opts.namespace);
    assert_eq!(redis.cli(&["LLEN", &history]).trim(), "2");
    assert_eq!(redis.cli(&["DEL", &meta]).trim(), "1");

    let page = broker.read_stream(&topic, 0, 10, &KEEP).await.unwrap();
    assert_ne!(page.position.epoch, first.position.epoch);
    assert_eq!(page.position.offset, 0);
    assert!(page.entries.is_empty(), "{:?}", page.entries);
    assert_eq!(page.first_kept, 1);
    assert_eq!(redis.cli(&["EXISTS", &history]).trim(), "0");
    // The key remembered from the lost epoch does not make the repeat a duplicate.
    let again = broker
        .publish_stream(&topic, binary(0), &KEEP, Some(&key))
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.position.epoch, page.position.epoch);
    assert_eq!(again.position.offset, 1);
}

#[tokio::test]
async fn positions_and_times_cross_the_wire_past_one_varint_byte() {
    let redis = RedisServer::start();
    let opts = options(redis.url(), false);
    let (broker, mut rx) = stream_pod(&opts, "a").await;
    let user = Channel::User("bob".into());
    broker.subscribe(&user).await.unwrap();
    let small = HistoryPolicy {
        size: 5,
        ttl: Duration::from_secs(60),
    };
    let start_ms = now_ms();
    let mut last = None;
    for i in 0..200 {
        let sent = binary(i);
        let appended = broker
            .publish_stream(&user, sent.clone(), &small, None)
            .await
            .unwrap();
        assert_eq!(appended.position.offset, u64::from(i) + 1);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.position, Some(appended.position.clone()));
        assert_eq!(got.command, sent.command, "payload byte-exact at {i}");
        last = Some(appended.position);
    }
    let page = broker.read_stream(&user, 150, 100, &small).await.unwrap();
    assert_eq!(Some(page.position.clone()), last);
    assert_eq!(page.first_kept, 196);
    let kept: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
    assert_eq!(kept, [196, 197, 198, 199, 200]);
    for entry in &page.entries {
        assert_eq!(
            entry.envelope.command,
            binary(entry.offset as u32 - 1).command
        );
        assert!(
            entry.published_at_ms + 5_000 >= start_ms && entry.published_at_ms <= now_ms() + 5_000,
            "published_at_ms {} is not now ({start_ms})",
            entry.published_at_ms
        );
    }
    // Streams are for user and topic channels only.
    assert!(matches!(
        broker.read_stream(&Channel::Broadcast, 0, 1, &small).await,
        Err(wsgate_core::backend::BackendError::Protocol(_))
    ));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
