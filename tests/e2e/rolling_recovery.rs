//! No message lost through a rolling upgrade (and through a pod SIGKILL): two real
//! `wsgate serve` pods on one `redis-server`, 100 clients that follow the reconnect
//! contract (full-jitter backoff, `since` on the user stream and on their topic), a
//! publisher sending ~200 messages a second in all — half to a topic with history, half
//! to the users, through both pods, retrying a failed call on the other pod with the
//! same idempotency key — while the pods are stopped and restarted one after the other.
//! At the end every client holds every message of both of its streams exactly once, in
//! offset order, counting every frame every one of its sessions received (no
//! client-side deduplication), and every rejoin was answered `recovered: true`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::jitter::Jitter;
use wsgate_tests::pods::Pod;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

const CLIENTS: usize = 100;
/// One message every this long, alternating topic and user: ~200 a second.
const EVERY: Duration = Duration::from_millis(5);
const TOPIC: &str = "feed";
/// How long the clients get, after the last publish, to hold everything.
const CATCH_UP: Duration = Duration::from_secs(20);

fn pod_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("WSGATE__HISTORY__TOPICS", "feed=10000/10m"),
        ("WSGATE__HISTORY__USER__SIZE", "500"),
        ("WSGATE__SHUTDOWN__GRACE", "2s"),
        ("WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S", "0"),
    ]
}

/// The pods' addresses as they are now (a restarted pod gets new ports), and one gRPC
/// channel per pod for the publisher (HTTP/2 multiplexes the calls: a connection per
/// message would make the publisher, not the gateway, the bottleneck on two cores).
#[derive(Clone, Default)]
struct Cluster {
    pods: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>,
    channels: Arc<Mutex<HashMap<SocketAddr, tonic::transport::Channel>>>,
}

impl Cluster {
    fn set(&self, index: usize, pod: &Pod) {
        let mut pods = self.pods.lock();
        if pods.len() <= index {
            pods.resize(index + 1, (pod.http, pod.grpc));
        }
        pods[index] = (pod.http, pod.grpc);
    }

    fn pick(&self, n: usize) -> (SocketAddr, SocketAddr) {
        let pods = self.pods.lock();
        pods[n % pods.len()]
    }

    /// The channel to the control plane at `addr` (connected lazily, kept).
    fn channel(&self, addr: SocketAddr) -> tonic::transport::Channel {
        self.channels
            .lock()
            .entry(addr)
            .or_insert_with(|| {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(2))
                    .connect_lazy()
            })
            .clone()
    }
}

/// What one client received, over all its sessions.
#[derive(Default)]
struct Seen {
    topic: Vec<u64>,
    user: Vec<u64>,
    /// Joins (reconnects and resubscribes) answered `recovered: false`.
    not_recovered: Vec<String>,
    /// Anything a correct run never shows.
    anomalies: Vec<String>,
    sessions: u32,
    /// When the publisher was seen done.
    done_at: Option<Instant>,
}

/// One client following the reconnect contract until `done` and it holds `want`.
async fn client(
    i: usize,
    cluster: Cluster,
    ready: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    want: Arc<Mutex<HashMap<String, u64>>>,
) -> Seen {
    let user = format!("u{i}");
    let mut seen = Seen::default();
    // The contract's shape, scaled down so the test stays short.
    let mut jitter = Jitter::new(i as u64, Duration::from_millis(50), Duration::from_secs(1));
    let mut topic_pos: Option<(String, u64)> = None;
    let mut user_pos: Option<(String, u64)> = None;
    let mut attempt = 0u32;
    let mut counted_ready = false;
    // A hard bound, whatever happens: the assertions then say what is missing.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let caught_up = |seen: &Seen| {
            let want = want.lock();
            let topic = want.get(TOPIC).copied().unwrap_or(0);
            let mine = want.get(&user).copied().unwrap_or(0);
            seen.topic.last().copied().unwrap_or(0) >= topic
                && seen.user.last().copied().unwrap_or(0) >= mine
        };
        if (done.load(Ordering::SeqCst) && caught_up(&seen)) || Instant::now() > deadline {
            return seen;
        }
        if done.load(Ordering::SeqCst)
            && seen.done_at.get_or_insert_with(Instant::now).elapsed() > CATCH_UP
        {
            return seen;
        }
        let (http, _) = cluster.pick(i + attempt as usize);
        let mut url = format!("ws://{http}/ws?user={user}");
        if let Some((epoch, offset)) = &user_pos {
            url.push_str(&format!("&since={epoch}:{offset}"));
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url),
        )
        .await;
        let Ok(Ok((mut ws, _))) = connected else {
            tokio::time::sleep(jitter.backoff(attempt)).await;
            attempt += 1;
            continue;
        };
        seen.sessions += 1;
        let mut subscribed = false;
        // One session: read until it ends.
        loop {
            let frame = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            let msg = match frame {
                Err(_) => {
                    let waited = done.load(Ordering::SeqCst)
                        && seen.done_at.get_or_insert_with(Instant::now).elapsed() > CATCH_UP;
                    if (done.load(Ordering::SeqCst) && caught_up(&seen)) || waited {
                        let _ = ws.close(None).await;
                        return seen;
                    }
                    continue;
                }
                Ok(Some(Ok(msg))) => msg,
                Ok(_) => break,
            };
            let Message::Text(text) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            match v["op"].as_str() {
                Some("welcome") => {
                    attempt = 0;
                    let stream = &v["user_stream"];
                    let position = (
                        stream["epoch"].as_str().unwrap().to_owned(),
                        stream["offset"].as_u64().unwrap(),
                    );
                    match &user_pos {
                        None => user_pos = Some(position),
                        Some(_) if v["recovered"] == true => {}
                        Some(_) => seen.not_recovered.push(format!("welcome {v}")),
                    }
                    let mut op = serde_json::json!({"op":"subscribe","topic":TOPIC});
                    if let Some((epoch, offset)) = &topic_pos {
                        op["since"] = serde_json::json!({"epoch":epoch,"offset":offset});
                    }
                    if ws.send(Message::text(op.to_string())).await.is_err() {
                        break;
                    }
                }
                Some("subscribed") => {
                    subscribed = true;
                    let position = (
                        v["epoch"].as_str().unwrap().to_owned(),
                        v["offset"].as_u64().unwrap(),
                    );
                    match &topic_pos {
                        None => topic_pos = Some(position),
                        Some(_) if v["recovered"] == true => {}
                        Some(_) => seen.not_recovered.push(format!("subscribe {v}")),
                    }
                    if !counted_ready {
                        counted_ready = true;
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some("message") => {
                    let offset = v["offset"].as_u64().unwrap();
                    let (list, pos) = if v["topic"] == TOPIC {
                        (&mut seen.topic, &mut topic_pos)
                    } else {
                        (&mut seen.user, &mut user_pos)
                    };
                    list.push(offset);
                    if let Some((_, last)) = pos {
                        *last = offset;
                    }
                    if v["topic"] == TOPIC && !subscribed {
                        seen.anomalies
                            .push(format!("topic push before subscribed: {v}"));
                    }
                }
                _ => seen.anomalies.push(format!("unexpected frame {v}")),
            }
        }
        tokio::time::sleep(jitter.backoff(attempt)).await;
        attempt += 1;
    }
}

/// Sends one message, retrying on the other pod with the same idempotency key until
/// it is accepted; returns its offset.
async fn send_once(cluster: &Cluster, k: usize) -> (String, u64) {
    let key = format!("k{k}");
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "message {k} could not be sent in 60 s"
        );
        let (_, grpc) = cluster.pick(k + attempt);
        let mut c = pb::gateway_client::GatewayClient::new(cluster.channel(grpc));
        let payload = Some(pb::Payload {
            body: Some(text(&format!("m{k}"))),
        });
        let (stream, result) = if k.is_multiple_of(2) {
            let r = c
                .publish(pb::PublishRequest {
                    topic: TOPIC.into(),
                    payload,
                    idempotency_key: key.clone(),
                })
                .await;
            (TOPIC.to_owned(), r)
        } else {
            let user = format!("u{}", (k / 2) % CLIENTS);
            let r = c
                .send_to_user(pb::SendToUserRequest {
                    user_id: user.clone(),
                    payload,
                    idempotency_key: key.clone(),
                })
                .await;
            (user, r)
        };
        match result {
            Ok(r) if r.get_ref().offset > 0 => return (stream, r.get_ref().offset),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    unreachable!("the loop only ends by returning or by the deadline's assertion")
}

enum Disruption {
    /// SIGTERM and restart pod A, then pod B.
    RollingUpgrade,
    /// SIGKILL pod A, then restart it.
    Kill,
}

async fn run(disruption: Disruption, messages: usize) {
    let redis = RedisServer::start();
    let env = pod_env();
    let mut a = Pod::start("pod-a", &redis.url(), &env).await;
    let mut b = Pod::start("pod-b", &redis.url(), &env).await;
    let cluster = Cluster::default();
    cluster.set(0, &a);
    cluster.set(1, &b);

    let ready = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let want = Arc::new(Mutex::new(HashMap::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                cluster.clone(),
                ready.clone(),
                done.clone(),
                want.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    while ready.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "clients not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The publisher, paced, in its own task.
    let publisher = {
        let cluster = cluster.clone();
        let want = want.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            // At most this many calls in flight: a slow moment cannot pile up retries.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
            let mut sends = Vec::new();
            for k in 0..messages {
                tick.tick().await;
                let cluster = cluster.clone();
                let want = want.clone();
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                sends.push(tokio::spawn(async move {
                    let _permit = permit;
                    let (stream, offset) = send_once(&cluster, k).await;
                    let mut want = want.lock();
                    let top = want.entry(stream).or_insert(0);
                    *top = (*top).max(offset);
                }));
            }
            for s in sends {
                s.await.unwrap();
            }
        })
    };

    let run_for = EVERY * messages as u32;
    match disruption {
        Disruption::RollingUpgrade => {
            tokio::time::sleep(run_for / 5).await;
            a.term();
            assert_eq!(
                a.wait(Duration::from_secs(10)).await,
                Some(0),
                "pod A drains"
            );
            a = Pod::start("pod-a", &redis.url(), &env).await;
            cluster.set(0, &a);
            tokio::time::sleep(run_for / 5).await;
            b.term();
            assert_eq!(
                b.wait(Duration::from_secs(10)).await,
                Some(0),
                "pod B drains"
            );
            b = Pod::start("pod-b", &redis.url(), &env).await;
            cluster.set(1, &b);
        }
        Disruption::Kill => {
            tokio::time::sleep(run_for / 3).await;
            a.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            a = Pod::start("pod-a", &redis.url(), &env).await;
            cluster.set(0, &a);
        }
    }
    publisher.await.unwrap();
    done.store(true, Ordering::SeqCst);

    let want = want.lock().clone();
    let topic_top = want.get(TOPIC).copied().unwrap_or(0);
    assert_eq!(
        topic_top as usize,
        messages.div_ceil(2),
        "one offset per topic message"
    );
    let mut reconnects = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("client finished")
            .unwrap();
        let user = format!("u{i}");
        let user_top = want.get(&user).copied().unwrap_or(0);
        assert!(seen.anomalies.is_empty(), "{user}: {:?}", seen.anomalies);
        assert!(
            seen.not_recovered.is_empty(),
            "{user}: {:?}",
            seen.not_recovered
        );
        for (name, got, top) in [
            ("topic", &seen.topic, topic_top),
            ("user", &seen.user, user_top),
        ] {
            let want: Vec<u64> = (1..=top).collect();
            if *got != want {
                let missing: Vec<u64> = want.iter().filter(|o| !got.contains(o)).copied().collect();
                let mut repeated = got.clone();
                repeated.sort_unstable();
                repeated.dedup();
                panic!(
                    "{user}: the {name} stream is not every message exactly once in order: \
                     {} received, {} wanted, missing {missing:?}, {} repeats, sessions {}",
                    got.len(),
                    top,
                    got.len() - repeated.len(),
                    seen.sessions
                );
            }
        }
        reconnects += seen.sessions - 1;
    }
    assert!(
        reconnects >= CLIENTS as u32 / 2,
        "the disruption moved clients ({reconnects} reconnects)"
    );
    drop((a, b));
}

/// However the run goes, it ends: a stuck run fails instead of holding the suite.
const WHOLE_RUN: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_loses_no_message() {
    tokio::time::timeout(WHOLE_RUN, run(Disruption::RollingUpgrade, 3000))
        .await
        .expect("the rolling upgrade run finishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_killed_under_load_loses_no_message() {
    tokio::time::timeout(WHOLE_RUN, run(Disruption::Kill, 1600))
        .await
        .expect("the pod kill run finishes");
}
