//! The Redis backends against real `redis-server` processes: the conformance suite every
//! backend passes (standalone and Redis Cluster), pod liveness and reaping, and the
//! routing property (a send reaches only the pods that need it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wsgate_core::backend::{
    Broker, Channel, Command, Envelope, Inbox, Liveness, Registry, SessionRecord, Target,
};
use wsgate_core::conformance;
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_redis::{RedisBroker, RedisOptions, RedisRegistry, Topology};
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
    assert_eq!(registry.session(&gone.session_id).await.unwrap(), None);
    let pods = registry.pods().await.unwrap();
    assert!(
        pods.iter().any(|p| p.pod_id == "dead" && !p.alive),
        "{pods:?}"
    );
    assert_eq!(registry.count_sessions().await.unwrap(), 1);

    // A live pod reaps the leftovers, once.
    assert_eq!(registry.reap_dead_pods().await.unwrap(), 1);
    assert_eq!(registry.reap_dead_pods().await.unwrap(), 0);
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
