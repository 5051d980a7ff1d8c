//! Chaos with real processes: real `wsgate serve` pods on a real `redis-server`, and the
//! faults done to them with signals. Redis hung by SIGSTOP for longer than the probe
//! bound, a pod SIGKILLed while a sender pushes to users on both pods, Redis restarted
//! empty under load, and every client of a lost pod reconnecting to the survivor at
//! once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Error as WsError;
use tonic::Code;
use wsgate_tests::hostile::*;
use wsgate_tests::pods::Pod;
use wsgate_tests::recorder::*;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The `process_id` of a running `redis-server`, from `INFO server`.
fn redis_pid(redis: &RedisServer) -> u32 {
    let info = redis.cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server:\n{info}"))
}

/// Sends SIGCONT on drop, so that a failing test never leaves Redis stopped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Both pods' `/readyz` statuses.
async fn readiness(a: &Pod, b: &Pod) -> (u16, u16) {
    tokio::join!(a.ready(), b.ready())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_by_sigstop_fails_readiness_and_loses_no_session() {
    const HANG: Duration = Duration::from_secs(6);
    let redis = RedisServer::start();
    let rpid = redis_pid(&redis);
    let url = redis.url();
    let (a, b) = tokio::join!(
        Pod::start("stop-a", &url, &[]),
        Pod::start("stop-b", &url, &[]),
    );
    let (ws, w) = a.connect_user("alice").await;
    let sa1 = session_id(&w);
    let alice_a = Recorder::start(ws);
    let (ws, w) = b.connect_user("alice").await;
    let sa2 = session_id(&w);
    let alice_b = Recorder::start(ws);
    let (ws, w) = b.connect_user("bob").await;
    let sb = session_id(&w);
    let bob = Recorder::start(ws);
    let mut want_alice = vec![sa1.clone(), sa2.clone()];
    want_alice.sort();
    let want_bob = vec![sb.clone()];
    let (mut ga, mut gb) = (a.grpc().await, b.grpc().await);
    assert_eq!(presence_ids(&mut ga, "alice").await.unwrap(), want_alice);

    // Redis hangs: the process is stopped, its sockets stay open, nothing answers.
    let _resume = Resume(rpid);
    signal(rpid, "-STOP");
    let stopped = Instant::now();
    let failed_after = eventually(
        "/readyz fails on both pods while Redis is stopped",
        Duration::from_secs(7),
        async || match readiness(&a, &b).await {
            (503, 503) => Ok(stopped.elapsed()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // A send during the hang answers within its bound instead of hanging.
    let send_started = Instant::now();
    let during = tokio::time::timeout(
        Duration::from_secs(5),
        gb.send_to_user("alice", text("during-hang")),
    )
    .await;
    let send_took = send_started.elapsed();
    let during_code = match &during {
        Err(_) => panic!("SendToUser hung for 5 s while Redis was stopped"),
        Ok(Ok(r)) => format!("OK targets {}", r.targets),
        Ok(Err(s)) => format!("{:?}", s.code()),
    };
    if let Ok(Err(s)) = &during {
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    }
    // Readiness stays failed, and answers quickly, for the rest of the hang.
    let mut slowest_readyz = Duration::ZERO;
    while stopped.elapsed() < HANG {
        let t = Instant::now();
        let r = readiness(&a, &b).await;
        slowest_readyz = slowest_readyz.max(t.elapsed());
        assert_eq!(r, (503, 503), "{:?} into the hang", stopped.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No socket was closed by the outage.
    alice_a.assert_open("alice on pod-a");
    alice_b.assert_open("alice on pod-b");
    bob.assert_open("bob");

    signal(rpid, "-CONT");
    let resumed = Instant::now();
    let ready_after = eventually(
        "/readyz recovers on both pods after SIGCONT",
        Duration::from_secs(10),
        async || match readiness(&a, &b).await {
            (200, 200) => Ok(resumed.elapsed()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // Presence lists the original sessions, seen from both pods.
    for (name, g) in [("pod-a", &mut ga), ("pod-b", &mut gb)] {
        eventually(
            &format!("presence via {name} lists the original sessions"),
            Duration::from_secs(10),
            async || {
                let alice = presence_ids(g, "alice").await?;
                let bob = presence_ids(g, "bob").await?;
                if alice == want_alice && bob == want_bob {
                    Ok(())
                } else {
                    Err(format!("alice {alice:?}, bob {bob:?}"))
                }
            },
        )
        .await;
    }
    let presence_after = resumed.elapsed();
    // And a send reaches the same sockets.
    let within = Duration::from_secs(10);
    send_until_received(
        "alice on pod-a",
        within,
        &mut gb,
        "alice",
        "after-a",
        &alice_a,
    )
    .await;
    send_until_received(
        "alice on pod-b",
        within,
        &mut ga,
        "alice",
        "after-b",
        &alice_b,
    )
    .await;
    send_until_received("bob on pod-b", within, &mut ga, "bob", "after-bob", &bob).await;
    // Stable: presence still holds the same sessions a little later (no late reaping).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(presence_ids(&mut ga, "alice").await.unwrap(), want_alice);
    assert_eq!(presence_ids(&mut gb, "bob").await.unwrap(), want_bob);
    let late_during = alice_a.pushes().iter().any(|d| d == "during-hang");
    eprintln!(
        "redis SIGSTOP {HANG:?}: readiness failed {failed_after:?} after the stop; SendToUser during the hang \
         answered {during_code} in {send_took:?} (delivered after SIGCONT: {late_during}); slowest /readyz \
         during the hang {slowest_readyz:?}; ready again {ready_after:?} after SIGCONT, presence {presence_after:?}, \
         sends reach the same sessions {:?}",
        resumed.elapsed()
    );
    assert!(
        failed_after <= Duration::from_secs(6),
        "readiness failed only {failed_after:?} after Redis stopped (probe bound 4 s)"
    );
    assert!(
        slowest_readyz < Duration::from_secs(2),
        "/readyz took {slowest_readyz:?}"
    );
    for (who, rec) in [
        ("alice on pod-a", &alice_a),
        ("alice on pod-b", &alice_b),
        ("bob", &bob),
    ] {
        rec.assert_open(who);
        rec.assert_no_duplicates(who);
    }
}

/// One `SendToUser` of the load loop.
#[derive(Debug, Clone)]
struct Sent {
    user: String,
    data: String,
    at: Duration,
    result: Result<u64, Code>,
}

/// Sends `user-seq` to every user in `users` via `grpc`, one round every `every`, until
/// `stop`; returns every send and its answer (times relative to `t0`).
fn load(
    mut grpc: GrpcClient,
    users: Vec<String>,
    every: Duration,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut seq = 0u32;
        let mut tick = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            seq += 1;
            for user in &users {
                let data = format!("{user}-{seq}");
                let r = tokio::time::timeout(
                    Duration::from_secs(4),
                    grpc.send_to_user(user, text(&data)),
                )
                .await;
                let result = match r {
                    Err(_) => Err(Code::DeadlineExceeded),
                    Ok(Ok(r)) => Ok(r.targets),
                    Ok(Err(s)) => Err(s.code()),
                };
                sent.push(Sent {
                    user: user.clone(),
                    data,
                    at: t0.elapsed(),
                    result,
                });
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_under_load_the_other_keeps_delivering_and_its_sessions_drop_out() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut a, b) = tokio::join!(
        Pod::start("load-a", &url, &[]),
        Pod::start("load-b", &url, &[]),
    );
    let mut on_a = BTreeMap::new();
    let mut on_b = BTreeMap::new();
    for i in 0..4 {
        on_a.insert(
            format!("ua{i}"),
            Recorder::start(a.connect_user(&format!("ua{i}")).await.0),
        );
        on_b.insert(
            format!("ub{i}"),
            Recorder::start(b.connect_user(&format!("ub{i}")).await.0),
        );
    }
    // "both" has a session on each pod.
    let both_a = Recorder::start(a.connect_user("both").await.0);
    let (ws, w) = b.connect_user("both").await;
    let both_b_id = session_id(&w);
    let both_b = Recorder::start(ws);

    let mut users: Vec<String> = on_a.keys().chain(on_b.keys()).cloned().collect();
    users.push("both".into());
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = load(
        b.grpc().await,
        users,
        Duration::from_millis(50),
        t0,
        stop.clone(),
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill();
    let killed = t0.elapsed();
    let mut gb = b.grpc().await;
    let g = &mut gb;
    let left = eventually(
        "pod-a's sessions leave presence (via pod-b)",
        Duration::from_secs(5),
        async || {
            for u in ["ua0", "ua1", "ua2", "ua3"] {
                let ids = presence_ids(g, u).await?;
                if !ids.is_empty() {
                    return Err(format!("presence({u}) = {ids:?}"));
                }
            }
            let both = presence_ids(g, "both").await?;
            if both != [both_b_id.clone()] {
                return Err(format!("presence(both) = {both:?}"));
            }
            Ok(t0.elapsed() - killed)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every send via pod-b answered, before and after the kill.
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.result.is_err()).collect();
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    // pod-b's sessions got every message, in order, once.
    let mut delivered_b = 0;
    for (user, rec) in on_b.iter().chain([(&"both".to_string(), &both_b)]) {
        let want: Vec<String> = sent
            .iter()
            .filter(|s| &s.user == user)
            .map(|s| s.data.clone())
            .collect();
        assert_eq!(rec.pushes(), want, "{user} on pod-b");
        rec.assert_open(user);
        delivered_b += want.len();
    }
    let before_kill = sent.iter().filter(|s| s.at < killed).count();
    let got_a: usize =
        on_a.values().map(|r| r.pushes().len()).sum::<usize>() + both_a.pushes().len();
    let last_stale = sent
        .iter()
        .filter(|s| s.user.starts_with("ua") && s.result.is_ok_and(|t| t > 0))
        .map(|s| s.at)
        .max()
        .unwrap_or_default();
    eprintln!(
        "pod SIGKILL under load: {} sends via pod-b ({before_kill} before the kill at {killed:?}), none failed; \
         pod-b's sessions got all {delivered_b} of theirs; pod-a's sessions got {got_a} before dying; \
         pod-a's sessions left presence {left:?} after the kill (pod_ttl 1 s); \
         targets for pod-a's users last counted {:?} after the kill",
        sent.len(),
        last_stale.saturating_sub(killed),
    );
    assert!(
        left <= Duration::from_secs(3),
        "pod-a's sessions left presence {left:?} after SIGKILL; bound 2 x pod_ttl + 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_load_the_registry_is_rebuilt() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = tokio::join!(
        Pod::start("empty-a", &url, &[]),
        Pod::start("empty-b", &url, &[]),
    );
    let (ws, w) = a.connect_user("ra").await;
    let want_ra = vec![session_id(&w)];
    let ra = Recorder::start(ws);
    let (ws, w) = b.connect_user("rb").await;
    let want_rb = vec![session_id(&w)];
    let rb = Recorder::start(ws);

    // Load through both pods: pod-b sends to ra (on pod-a), pod-a to rb (on pod-b).
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let via_b = load(
        b.grpc().await,
        vec!["ra".into()],
        Duration::from_millis(50),
        t0,
        stop.clone(),
    );
    let via_a = load(
        a.grpc().await,
        vec!["rb".into()],
        Duration::from_millis(50),
        t0,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    tokio::task::block_in_place(|| redis.restart_empty());
    let restarted = t0.elapsed();
    let mut gb = b.grpc().await;
    let g = &mut gb;
    let rebuilt = eventually(
        "presence rebuilt after Redis restarted empty",
        Duration::from_secs(12),
        async || {
            let (x, y) = (presence_ids(g, "ra").await?, presence_ids(g, "rb").await?);
            if x == want_ra && y == want_rb {
                Ok(t0.elapsed() - restarted)
            } else {
                Err(format!("ra {x:?}, rb {y:?}"))
            }
        },
    )
    .await;
    // Deliveries resume: wait until both see a message sent after the rebuild.
    let rebuilt_at = restarted + rebuilt;
    let resumed = eventually(
        "sends reach both users again",
        Duration::from_secs(12).saturating_sub(rebuilt),
        async || {
            let seqs = |rec: &Recorder| {
                rec.pushes()
                    .iter()
                    .filter_map(|d| d.rsplit('-').next()?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
            };
            let (x, y) = (seqs(&ra), seqs(&rb));
            let now_seq = (t0.elapsed().as_millis() / 50) as u64;
            let rebuilt_seq = (rebuilt_at.as_millis() / 50) as u64;
            if x > rebuilt_seq && y > rebuilt_seq {
                Ok(t0.elapsed() - restarted)
            } else {
                Err(format!(
                    "last seq ra {x}, rb {y}; rebuilt at ~{rebuilt_seq}, now ~{now_seq}"
                ))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recovered_at = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = via_b.await.unwrap();
    sent.extend(via_a.await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Once deliveries resumed, every send answers OK and arrives.
    let _ = recovered_at;
    let (settled, early): (Vec<&Sent>, Vec<&Sent>) = sent
        .iter()
        .partition(|s| s.at > restarted + resumed + Duration::from_millis(200));
    let failed_early: BTreeMap<String, usize> =
        early
            .iter()
            .filter_map(|s| s.result.err())
            .fold(BTreeMap::new(), |mut m, c| {
                *m.entry(format!("{c:?}")).or_default() += 1;
                m
            });
    let mut lost_late = Vec::new();
    for s in &settled {
        assert!(s.result.is_ok(), "a send after recovery failed: {s:?}");
        let rec = if s.user == "ra" { &ra } else { &rb };
        if !rec.pushes().contains(&s.data) {
            lost_late.push(s.data.clone());
        }
    }
    assert!(
        lost_late.is_empty(),
        "sends after recovery did not arrive: {lost_late:?}"
    );
    assert!(!settled.is_empty(), "there was load after recovery");
    let ok_before_recovery = early.iter().filter(|s| s.result.is_ok()).count();
    let lost_ok_early = early
        .iter()
        .filter(|s| s.result.is_ok_and(|t| t > 0))
        .filter(|s| {
            let rec = if s.user == "ra" { &ra } else { &rb };
            !rec.pushes().contains(&s.data)
        })
        .count();
    let zero_targets_early = early.iter().filter(|s| s.result == Ok(0)).count();
    eprintln!(
        "redis restarted empty under load at {restarted:?}: presence rebuilt {rebuilt:?} after, deliveries resumed \
         {resumed:?} after; {} sends in total; before recovery: {} sends, {ok_before_recovery} OK ({lost_ok_early} \
         answered OK with targets > 0 yet never arrived, {zero_targets_early} answered targets 0), failures {failed_early:?}; after recovery: {} sends, all OK and delivered",
        sent.len(),
        early.len(),
        settled.len(),
    );
    for (who, rec) in [("ra", &ra), ("rb", &rb)] {
        rec.assert_open(who);
        rec.assert_no_duplicates(who);
    }
    assert!(rebuilt <= Duration::from_secs(12));
}

/// A tiny xorshift for backoff jitter (no `rand` in this crate).
fn jitter(seed: &AtomicU64, max: Duration) -> Duration {
    let mut x = seed.load(Ordering::Relaxed) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, Ordering::Relaxed);
    max.mul_f64((x % 10_000) as f64 / 10_000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_lost_pod_reconnecting_at_once_are_accepted_within_the_limits() {
    const CLIENTS: usize = 200;
    const IPS: usize = 20;
    const MAX: usize = 250;
    let redis = RedisServer::start();
    let url = redis.url();
    let max = MAX.to_string();
    let b_env = [
        ("WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S", "5"),
        ("WSGATE__LIMITS__HANDSHAKE_BURST", "3"),
        ("WSGATE__LIMITS__MAX_CONNECTIONS", max.as_str()),
    ];
    let (mut a, b) = tokio::join!(
        Pod::start("storm-a", &url, &[]),
        Pod::start("storm-b", &url, &b_env),
    );

    // 200 clients on pod-a, 10 per source address 127.0.0.10 … 127.0.0.29. Each one, when
    // its socket to pod-a ends, reconnects to pod-b: at once, then with full-jitter
    // backoff, never sooner than a refusal's Retry-After.
    let (b_http, b_url) = (b.http, b.ws_url(""));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let from = lo(10 + (i % IPS) as u8);
        let user = format!("storm-{i}");
        let mut ws = ws_from(from, a.http, &a.ws_url(&user))
            .await
            .unwrap_or_else(|e| panic!("{user} to pod-a: {e}"));
        assert_eq!(next_json(&mut ws).await["op"], "welcome");
        let b_url = format!("{b_url}{user}");
        clients.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
            let gone = Instant::now();
            drop(ws);
            let seed = AtomicU64::new(
                0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
            );
            let mut refusals: Vec<u16> = Vec::new();
            for attempt in 0u32.. {
                match ws_from(from, b_http, &b_url).await {
                    Ok(mut ws) => {
                        let w = next_json(&mut ws).await;
                        assert_eq!(w["op"], "welcome", "{w}");
                        return (ws, gone.elapsed(), refusals);
                    }
                    Err(WsError::Http(resp)) => {
                        let status = resp.status().as_u16();
                        assert!(
                            status == 429 || status == 503,
                            "reconnect refused with {status}: {:?}",
                            resp.body()
                                .as_ref()
                                .map(|b| String::from_utf8_lossy(b).to_string())
                        );
                        refusals.push(status);
                        let retry_after: u64 = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or_else(|| panic!("{status} without Retry-After"));
                        let cap = Duration::from_millis(250 * 2u64.pow(attempt.min(5)));
                        let wait = Duration::from_secs(retry_after).max(jitter(&seed, cap));
                        tokio::time::sleep(wait + jitter(&seed, Duration::from_millis(500))).await;
                    }
                    Err(e) => panic!("reconnect to pod-b failed: {e}"),
                }
                assert!(attempt < 30, "gave up after 30 attempts: {refusals:?}");
            }
            unreachable!()
        }));
    }
    let mut gb = b.grpc().await;
    assert_eq!(total_connections(&mut gb).await.unwrap(), CLIENTS as u64);

    // Watch pod-b while the storm lands: /readyz must stay 200, fast, and the connection
    // gauge must never exceed its limit.
    let watching = Arc::new(AtomicBool::new(true));
    let watch = {
        let watching = watching.clone();
        let b_http = b.http;
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut max_conns = 0.0f64;
            let mut not_ready = Vec::new();
            let t0 = Instant::now();
            while watching.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    raw_request(b_http, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"),
                )
                .await;
                worst = worst.max(t.elapsed());
                match r {
                    Ok(Ok(r)) if r.status == 200 => {}
                    other => not_ready.push((t0.elapsed(), format!("{other:?}"))),
                }
                max_conns = max_conns.max(scrape(b_http).await.get("wsgate_connections{}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (worst, max_conns, not_ready)
        })
    };

    a.kill();
    let killed = Instant::now();
    let mut reconnected = Vec::new();
    let mut took = Vec::new();
    let mut refusals: BTreeMap<u16, usize> = BTreeMap::new();
    let mut most_attempts = 0;
    for c in clients {
        let (ws, t, r) = tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .expect("a client did not reconnect within 20 s")
            .unwrap();
        reconnected.push(ws);
        took.push(t);
        most_attempts = most_attempts.max(r.len() + 1);
        for s in r {
            *refusals.entry(s).or_default() += 1;
        }
    }
    let all_in = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    watching.store(false, Ordering::Relaxed);
    let (worst_readyz, max_conns, not_ready) = watch.await.unwrap();
    took.sort();
    let m = scrape(b.http).await;
    eprintln!(
        "reconnect storm: {CLIENTS} clients from {IPS} addresses, pod-a SIGKILLed; all on pod-b {all_in:?} later \
         (median {:?}, max {:?} after their socket ended); refusals {refusals:?}, most attempts by one client \
         {most_attempts}; pod-b: /readyz always 200 = {}, slowest /readyz {worst_readyz:?}, max connections seen \
         {max_conns}, handshakes accepted {} rate_limited {} at_capacity {}",
        took[took.len() / 2],
        took[took.len() - 1],
        not_ready.is_empty(),
        m.get("wsgate_handshakes_total{result=accepted}"),
        m.get("wsgate_handshakes_total{result=rate_limited}"),
        m.get("wsgate_handshakes_total{result=at_capacity}"),
    );
    assert!(
        not_ready.is_empty(),
        "pod-b was not ready during the storm: {not_ready:?}"
    );
    assert!(
        worst_readyz < Duration::from_secs(1),
        "/readyz took {worst_readyz:?}"
    );
    assert!(max_conns <= MAX as f64);
    assert!(
        refusals.get(&429).copied().unwrap_or(0) > 0,
        "the per-IP limit held (some reconnects were refused)"
    );
    assert_eq!(m.get("wsgate_connections{}"), CLIENTS as f64);
    // The registry agrees once pod-a's leftovers are gone: every client once, on pod-b.
    eventually(
        "Stats count every client once, on pod-b",
        Duration::from_secs(5),
        async || match total_connections(&mut gb).await? {
            n if n == CLIENTS as u64 => Ok(()),
            n => Err(format!("total {n}")),
        },
    )
    .await;
    for i in (0..CLIENTS).step_by(37) {
        let ids = presence_ids(&mut gb, &format!("storm-{i}")).await.unwrap();
        assert_eq!(ids.len(), 1, "storm-{i}: {ids:?}");
    }
    // And pod-b still works for them.
    let r = gb
        .send_to_user("storm-0", text("welcome back"))
        .await
        .unwrap();
    assert_eq!(r.targets, 1);
    let ws = &mut reconnected[0];
    assert_eq!(next_json(ws).await["data"], "welcome back");
}
