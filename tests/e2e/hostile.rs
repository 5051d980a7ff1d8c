//! Hostile clients against the real `wsgate serve` binary (embedded backend), with real
//! sockets: slowloris, oversized header blocks, a flood of half-open TCP connections,
//! handshakes beyond the per-IP rate and the connection limit, clients that stop reading
//! during a publish storm, and abrupt disconnects in the middle of a frame.
//!
//! The gateway runs as its own process so that its file descriptors and resident memory
//! can be counted from `/proc/<pid>` without the test's own sockets mixed in. After every
//! test: `wsgate_connections` is 0, sessions closed == handshakes accepted (no session
//! task left behind), presence and `Stats` are empty, and the fd count is back at its
//! baseline (± [`FD_SLACK`]).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_tests::hostile::*;
use wsgate_tests::pods::Pod;
use wsgate_tests::*;

/// File descriptors the gateway may hold above its baseline once everything settled.
const FD_SLACK: usize = 3;
/// How long leak checks wait for the gateway to settle.
const SETTLE: Duration = Duration::from_secs(8);

const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `wsgate serve` without Redis (embedded backend), with `env` on top of the pod
/// defaults.
async fn gateway(name: &str, env: &[(&str, &str)]) -> Pod {
    Pod::start(name, "", env).await
}

fn pid(pod: &Pod) -> u32 {
    pod.pid().expect("gateway process runs")
}

/// The gateway's fds once they stopped moving (no connection of ours in flight).
async fn settled_fds(pod: &Pod) -> usize {
    let pid = pid(pod);
    let mut last = fd_count(pid);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = fd_count(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Resource baseline of a gateway, taken after a warm-up session so that lazily created
/// state (the first session, the first scrape, the test's gRPC channel) is included.
struct Baseline {
    fds: usize,
    rss_kib: u64,
}

impl Baseline {
    async fn take(pod: &Pod) -> Self {
        let (mut ws, _) = pod.connect_user("warm-up").await;
        send_json(&mut ws, json!({"op": "ping"})).await;
        assert_eq!(next_json(&mut ws).await["op"], "pong");
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
        drop(ws);
        eventually("warm-up session closed", SETTLE, async || {
            let m = scrape(pod.http).await;
            match m.get("wsgate_connections{}") {
                0.0 => Ok(()),
                n => Err(format!("wsgate_connections = {n}")),
            }
        })
        .await;
        let fds = settled_fds(pod).await;
        let rss_kib = rss_kib(pid(pod));
        Self { fds, rss_kib }
    }
}

/// After a hostile run: no open connection, every accepted session closed exactly once,
/// nobody of `users` in presence, `Stats` empty, fds back to the baseline. Returns the
/// settled fd count.
async fn assert_no_leaks(
    pod: &Pod,
    grpc: &mut GrpcClient,
    base: &Baseline,
    users: &[String],
) -> usize {
    let m = eventually(
        "connections gauge 0 and sessions closed == handshakes accepted",
        SETTLE,
        async || {
            let m = scrape(pod.http).await;
            let open = m.get("wsgate_connections{}");
            let accepted = m.get("wsgate_handshakes_total{result=accepted}");
            let closed = m.sum("wsgate_sessions_closed_total");
            if open == 0.0 && closed == accepted {
                Ok(m)
            } else {
                Err(format!(
                    "wsgate_connections = {open}, accepted = {accepted}, closed = {closed}"
                ))
            }
        },
    )
    .await;
    for user in users {
        eventually(
            &format!("{user} leaves presence"),
            SETTLE,
            async || match presence_ids(grpc, user).await? {
                ids if ids.is_empty() => Ok(()),
                ids => Err(format!("presence({user}) = {ids:?}")),
            },
        )
        .await;
    }
    assert_eq!(total_connections(grpc).await.unwrap(), 0, "Stats total");
    let pid = pid(pod);
    let fds = eventually("fd count back to the baseline", SETTLE, async || {
        let n = fd_count(pid);
        if n <= base.fds + FD_SLACK {
            Ok(n)
        } else {
            Err(format!("{n} fds open, baseline {}", base.fds))
        }
    })
    .await;
    eprintln!(
        "leak check: fds {} -> {fds}, accepted = closed = {}, closed by {:?}",
        base.fds,
        m.get("wsgate_handshakes_total{result=accepted}"),
        ["client", "server", "transport"].map(|by| (
            by,
            m.get(&format!("wsgate_sessions_closed_total{{by={by}}}"))
        )),
    );
    fds
}

/// `GET /healthz` answers 200; returns how long it took.
async fn healthz(pod: &Pod) -> Duration {
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        raw_request(pod.http, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
    )
    .await
    .expect("/healthz hung")
    .expect("/healthz failed");
    assert_eq!(r.status, 200, "{r:?}");
    started.elapsed()
}

/// Reads from `stream` until the peer closes it (EOF or reset); returns the bytes read.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let gw = gateway(
        "hostile-slowloris",
        &[("WSGATE__SERVER__HEADER_READ_TIMEOUT", "1s")],
    )
    .await;
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;

    // Five clients trickle a valid upgrade request, one byte every 200 ms (the whole
    // head would take ~35 s). Each one's connection must be closed by the server about
    // one header read timeout after it connected.
    let request = upgrade_request("/ws?user=slowloris", "");
    let trickle = |request: Vec<u8>| async move {
        let mut stream = tcp_from(LOCALHOST, gw.http).await.unwrap();
        let started = Instant::now();
        let (mut rd, mut wr) = stream.split();
        let mut sent = 0usize;
        let mut response = Vec::new();
        let writer = async {
            for b in &request {
                if wr.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The whole request went out: not a slowloris any more.
            std::future::pending::<()>().await;
        };
        let reader = async {
            let mut buf = [0u8; 512];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            tokio::select! {
                () = writer => {}
                () = reader => {}
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a slowloris connection was still open after 6 s"
        );
        (
            started.elapsed(),
            sent,
            String::from_utf8_lossy(&response).to_string(),
        )
    };
    let loris = futures_util::future::join_all((0..5).map(|_| trickle(request.clone())));
    // Meanwhile a normal client connects and is welcomed, and /healthz answers.
    let good = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let (mut ws, welcome) = gw.connect_user("good").await;
        let took = started.elapsed();
        assert_eq!(welcome["user_id"], "good");
        let health = healthz(&gw).await;
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
        (took, health)
    };
    let (results, (good_took, health)) = tokio::join!(loris, good);
    eprintln!(
        "slowloris: closed after {:?} (bytes sent {:?} of {}); good client welcomed in {good_took:?}, /healthz {health:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        results.iter().map(|r| r.1).collect::<Vec<_>>(),
        request.len(),
    );
    for (took, sent, response) in &results {
        assert!(
            *took >= Duration::from_millis(800) && *took <= Duration::from_millis(2500),
            "slowloris closed after {took:?}, want about the 1 s header read timeout"
        );
        assert!(*sent < request.len(), "the request was never completed");
        assert!(
            !response.starts_with("HTTP/1.1 101"),
            "an incomplete head was upgraded: {response:?}"
        );
    }
    assert!(
        good_took < Duration::from_secs(1),
        "good client took {good_took:?}"
    );
    assert!(
        health < Duration::from_millis(500),
        "/healthz took {health:?}"
    );
    let m = scrape(gw.http).await;
    assert_eq!(
        m.get("wsgate_handshakes_total{result=accepted}"),
        2.0,
        "only warm-up and the good client were upgraded"
    );
    assert_no_leaks(&gw, &mut grpc, &base, &["slowloris".into(), "good".into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_after_the_head_are_cut_off_too() {
    let gw = gateway(
        "hostile-slow-frames",
        &[
            ("WSGATE__SERVER__HEADER_READ_TIMEOUT", "1s"),
            ("WSGATE__SESSION__HEARTBEAT_INTERVAL", "1s"),
            ("WSGATE__SESSION__HEARTBEAT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;

    // An idle keep-alive connection after one complete request: the next head never
    // comes, and the header read timeout applies to it as well.
    let idle = async {
        let mut s = tcp_from(LOCALHOST, gw.http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(r.status, 200);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), read_until_closed(&mut s))
            .await
            .expect("an idle keep-alive connection was still open after 5 s");
        started.elapsed()
    };
    // A WebSocket-level slowloris: after the upgrade, a masked 125-byte text frame
    // trickled one byte every 200 ms (the whole frame would take 26 s). A partial frame
    // is not a frame: the heartbeat (ping every 1 s, 1 s to answer) ends the session.
    let trickle = async {
        let mut s = tcp_from(LOCALHOST, gw.http).await.unwrap();
        s.write_all(&upgrade_request("/ws?user=trickler", ""))
            .await
            .unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(r.status, 101, "{r:?}");
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 125];
        frame.extend_from_slice(&mask);
        frame.extend((0..125usize).map(|i| b' ' ^ mask[i % 4]));
        let started = Instant::now();
        let (mut rd, mut wr) = s.split();
        let writer = async {
            for b in &frame {
                if wr.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            std::future::pending::<()>().await;
        };
        let mut got = Vec::new();
        let reader = async {
            let mut buf = [0u8; 512];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(8), async {
            tokio::select! {
                () = writer => {}
                () = reader => {}
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "a trickled frame kept the session open for 8 s"
        );
        // The server's close frame (0x88) carries 3001, heartbeat timeout.
        let close = got
            .windows(4)
            .find(|w| w[0] == 0x88 && w[1] >= 2)
            .map(|w| u16::from_be_bytes([w[2], w[3]]));
        (started.elapsed(), close)
    };
    let (idle_closed, (trickle_closed, close)) = tokio::join!(idle, trickle);
    eprintln!(
        "idle keep-alive closed after {idle_closed:?}; trickled frame: session closed after {trickle_closed:?} with {close:?}"
    );
    assert!(
        idle_closed <= Duration::from_millis(2500),
        "idle keep-alive connection closed only after {idle_closed:?}"
    );
    assert!(
        trickle_closed <= Duration::from_secs(4),
        "a trickled frame kept the session {trickle_closed:?} (heartbeat 1 s + 1 s)"
    );
    assert_eq!(close, Some(3001), "closed as a heartbeat timeout");
    assert_no_leaks(&gw, &mut grpc, &base, &["trickler".into()]).await;
}

#[tokio::test]
async fn oversized_header_blocks_get_431_and_the_gateway_carries_on() {
    let gw = gateway("hostile-headers", &[]).await;
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;

    // One huge header (20 KiB), on a WebSocket upgrade and on a plain GET.
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    for request in [
        upgrade_request("/ws?user=big", &big),
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{big}\r\n").into_bytes(),
    ] {
        let r = raw_request(gw.http, &request).await.unwrap();
        assert_eq!(r.status, 431, "{r:?}");
    }
    // Many small headers adding up to over 16 KiB (90 headers of ~200 bytes: under
    // hyper's header count limit, so it is the size that refuses them).
    let many: String = (0..90)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(190)))
        .collect();
    assert!(many.len() > 16 * 1024);
    let r = raw_request(gw.http, &upgrade_request("/ws?user=many", &many))
        .await
        .unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    // A request line (URL) longer than 16 KiB.
    let long_url = format!("/ws?user=long&pad={}", "c".repeat(17 * 1024));
    let r = raw_request(gw.http, &upgrade_request(&long_url, ""))
        .await
        .unwrap();
    assert!(
        r.status == 431 || r.status == 414,
        "a 17 KiB request line: {r:?}"
    );
    // 20 of them at once, each connection dropped without reading the answer.
    let burst = futures_util::future::join_all((0..20).map(|_| {
        let request = upgrade_request("/ws?user=big", &big);
        async move {
            let mut s = tcp_from(LOCALHOST, gw.http).await.unwrap();
            let _ = s.write_all(&request).await;
        }
    }));
    burst.await;

    // Just under the limit (12 KiB of headers) still upgrades.
    let pad = format!("X-Pad: {}\r\n", "d".repeat(12 * 1024));
    let mut s = tcp_from(LOCALHOST, gw.http).await.unwrap();
    s.write_all(&upgrade_request("/ws?user=padded", &pad))
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 101, "a 12 KiB head is within the limit: {r:?}");
    drop(s);

    healthz(&gw).await;
    let m = scrape(gw.http).await;
    assert_eq!(
        m.get("wsgate_handshakes_total{result=accepted}"),
        2.0,
        "warm-up and the padded client only"
    );
    assert_no_leaks(
        &gw,
        &mut grpc,
        &base,
        &["big".into(), "many".into(), "padded".into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_is_timed_out_and_good_clients_get_in() {
    const FLOOD: usize = 300;
    let gw = gateway(
        "hostile-halfopen",
        &[("WSGATE__SERVER__HEADER_READ_TIMEOUT", "1s")],
    )
    .await;
    let pid = pid(&gw);
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;

    // 300 connections that send nothing at all.
    let started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let from = lo(10 + (i % 50) as u8);
        flood.push(tcp_from(from, gw.http).await.unwrap());
    }
    let connected = started.elapsed();
    // The gateway accepts them (all of them, unless an fd limit says otherwise).
    let mut peak_fds = fd_count(pid);
    while started.elapsed() < Duration::from_millis(600) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_fds = peak_fds.max(fd_count(pid));
    }

    // While they hang there, good clients get in and /healthz answers fast.
    let good_started = Instant::now();
    let mut good = Vec::new();
    for i in 0..5 {
        good.push(gw.connect_user(&format!("good-{i}")).await.0);
    }
    let good_took = good_started.elapsed();
    let health = healthz(&gw).await;

    // The server closes every one of them about one header read timeout after it came.
    let closed_after = futures_util::future::join_all(flood.iter_mut().map(|s| async {
        tokio::time::timeout(Duration::from_secs(5), read_until_closed(s))
            .await
            .expect("a half-open connection was still open 5 s later");
        started.elapsed()
    }))
    .await;
    let last_closed = closed_after.iter().max().copied().unwrap();
    drop(flood);

    // The good clients were not affected.
    for ws in &mut good {
        send_json(ws, json!({"op": "ping"})).await;
        assert_eq!(next_json(ws).await["op"], "pong");
    }
    for mut ws in good {
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    }
    let users: Vec<String> = (0..5).map(|i| format!("good-{i}")).collect();
    let fds_after = assert_no_leaks(&gw, &mut grpc, &base, &users).await;
    eprintln!(
        "half-open flood: {FLOOD} connections in {connected:?}; gateway fds baseline {} -> peak {peak_fds} -> after {fds_after}; \
         all closed by the server within {last_closed:?} of the first connect; \
         5 good clients welcomed in {good_took:?}; /healthz {health:?}",
        base.fds
    );
    assert!(
        peak_fds >= base.fds + FLOOD,
        "the flood did reach the gateway (fds {peak_fds}, baseline {})",
        base.fds
    );
    assert!(
        last_closed <= connected + Duration::from_millis(2500),
        "half-open connections closed after {last_closed:?} (connecting took {connected:?})"
    );
    assert!(
        good_took < Duration::from_secs(2),
        "good clients took {good_took:?}"
    );
    assert!(
        health < Duration::from_millis(500),
        "/healthz took {health:?}"
    );
}

/// Status and `Retry-After` of a refused handshake, or `Ok` with the welcome.
async fn try_connect(
    from: Ipv4Addr,
    pod: &Pod,
    user: &str,
) -> Result<Ws, (u16, Option<u64>, Value)> {
    match ws_from(from, pod.http, &pod.ws_url(user)).await {
        Ok(mut ws) => {
            let welcome = next_json(&mut ws).await;
            assert_eq!(welcome["op"], "welcome", "{welcome}");
            Ok(ws)
        }
        Err(WsError::Http(resp)) => {
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), retry, body))
        }
        Err(e) => panic!("handshake of {user} from {from} failed: {e}"),
    }
}

async fn close_all(clients: Vec<Ws>) {
    futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        let _ = ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_limits_get_429_and_503_and_good_clients_still_get_in() {
    const MAX: usize = 20;
    let gw = gateway(
        "hostile-limits",
        &[
            ("WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S", "2"),
            ("WSGATE__LIMITS__HANDSHAKE_BURST", "5"),
            ("WSGATE__LIMITS__MAX_CONNECTIONS", "20"),
        ],
    )
    .await;
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await; // spends one token of 127.0.0.1
    let mut users: Vec<String> = Vec::new();

    // Per-IP rate: 30 handshakes at once from 127.0.0.2. The burst (5) gets in, the rest
    // are refused with 429 + Retry-After.
    let from = lo(2);
    let attempts = futures_util::future::join_all((0..30).map(|i| {
        let user = format!("flood-{i}");
        let gw = &gw;
        async move { try_connect(from, gw, &user).await }
    }))
    .await;
    users.extend((0..30).map(|i| format!("flood-{i}")));
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for a in attempts {
        match a {
            Ok(ws) => accepted.push(ws),
            Err(r) => refused.push(r),
        }
    }
    eprintln!(
        "rate limit: {} of 30 accepted; refusals {:?}",
        accepted.len(),
        refused
            .iter()
            .map(|r| (r.0, r.1))
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        (5..=7).contains(&accepted.len()),
        "burst 5 at 2/s: {} accepted",
        accepted.len()
    );
    for (status, retry, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert!(
            retry.is_some_and(|s| s >= 1),
            "429 without a usable Retry-After: {retry:?}"
        );
    }
    // Meanwhile a good client from another address gets in, and /healthz is fast.
    let started = Instant::now();
    let good = try_connect(lo(3), &gw, "good-a")
        .await
        .unwrap_or_else(|r| panic!("good client from 127.0.0.3 refused: {r:?}"));
    let good_took = started.elapsed();
    users.push("good-a".into());
    let health = healthz(&gw).await;
    assert!(
        health < Duration::from_millis(500),
        "/healthz took {health:?}"
    );
    eprintln!("good client from 127.0.0.3 welcomed in {good_took:?} during the flood");
    accepted.push(good);

    // max_connections: fill up to 20 open connections from fresh addresses (4 each, under
    // the burst), then 20 more at once from 20 other addresses: exactly the free slots
    // are granted, never more, the rest get 503 at_capacity + Retry-After.
    let mut next_ip = 20u8;
    let mut n = 0usize;
    while accepted.len() < MAX - 8 {
        let user = format!("fill-{n}");
        users.push(user.clone());
        let ws = try_connect(lo(next_ip), &gw, &user)
            .await
            .unwrap_or_else(|r| panic!("{user} refused below the limits: {r:?}"));
        accepted.push(ws);
        n += 1;
        if n.is_multiple_of(4) {
            next_ip += 1;
        }
    }
    let free = MAX - accepted.len();
    let racing = futures_util::future::join_all((0..20u8).map(|i| {
        let user = format!("race-{i}");
        let gw = &gw;
        async move { try_connect(lo(100 + i), gw, &user).await }
    }))
    .await;
    users.extend((0..20).map(|i| format!("race-{i}")));
    let mut granted = 0;
    let mut at_capacity = 0;
    for r in racing {
        match r {
            Ok(ws) => {
                granted += 1;
                accepted.push(ws);
            }
            Err((status, retry, body)) => {
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["error"], "at_capacity", "{body}");
                assert!(retry.is_some_and(|s| s >= 1), "503 without Retry-After");
                at_capacity += 1;
            }
        }
    }
    eprintln!(
        "capacity: {free} free slots, 20 racing handshakes: {granted} granted, {at_capacity} got 503"
    );
    assert_eq!(granted, free, "exactly the free slots are granted");
    let m = scrape(gw.http).await;
    assert_eq!(m.get("wsgate_connections{}"), MAX as f64);
    // At capacity: even a good client is turned away, quickly, and the gateway answers.
    let started = Instant::now();
    let r = try_connect(lo(200), &gw, "good-b").await;
    users.push("good-b".into());
    assert!(
        matches!(&r, Err((503, Some(_), _))),
        "{:?}",
        r.as_ref().err()
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    healthz(&gw).await;
    // One leaves: the good client gets in.
    let one = accepted.pop().unwrap();
    close_all(vec![one]).await;
    let ws = eventually("a freed slot is granted", SETTLE, async || {
        try_connect(lo(201), &gw, "good-b")
            .await
            .map_err(|r| format!("{r:?}"))
    })
    .await;
    accepted.push(ws);

    let m = scrape(gw.http).await;
    eprintln!(
        "handshakes: accepted {}, rate_limited {}, at_capacity {}",
        m.get("wsgate_handshakes_total{result=accepted}"),
        m.get("wsgate_handshakes_total{result=rate_limited}"),
        m.get("wsgate_handshakes_total{result=at_capacity}"),
    );
    close_all(accepted).await;
    assert_no_leaks(&gw, &mut grpc, &base, &users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_during_a_publish_storm_are_closed_and_memory_stays_bounded() {
    const STALLED: usize = 20;
    const MESSAGES: usize = 300;
    const SIZE: usize = 16 * 1024;
    let gw = gateway(
        "hostile-storm",
        &[
            ("WSGATE__SESSION__OUTBOUND_QUEUE", "32"),
            ("WSGATE__SESSION__HEARTBEAT_TIMEOUT", "2s"),
        ],
    )
    .await;
    let pid = pid(&gw);
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;
    // Warm the publish path with one storm-sized message to a subscriber.
    {
        let (mut ws, _) = gw.connect_user("warm-storm").await;
        send_json(&mut ws, json!({"op": "subscribe", "topic": "storm"})).await;
        next_json(&mut ws).await;
        grpc.publish("storm", text(&"w".repeat(SIZE)))
            .await
            .unwrap();
        next_json(&mut ws).await;
        close_all(vec![ws]).await;
    }
    let rss_before = rss_kib(pid);
    let hwm_before = peak_rss_kib(pid);

    // 20 clients with a tiny receive window subscribe, then stop reading.
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let stream = tcp_from_small_rcvbuf(LOCALHOST, gw.http, 4096)
            .await
            .unwrap();
        let mut ws = ws_on(stream, &gw.ws_url(&format!("stalled-{i}")))
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["op"], "welcome");
        send_json(&mut ws, json!({"op": "subscribe", "topic": "storm"})).await;
        assert_eq!(next_json(&mut ws).await["op"], "subscribed");
        stalled.push(ws);
    }
    // One client keeps reading.
    let (mut reader, _) = gw.connect_user("reader").await;
    send_json(&mut reader, json!({"op": "subscribe", "topic": "storm"})).await;
    assert_eq!(next_json(&mut reader).await["op"], "subscribed");
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::with_capacity(MESSAGES);
        while seqs.len() < MESSAGES {
            let m = tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("the reading client got nothing for 10 s")
                .expect("the reading client's stream ended")
                .expect("the reading client's socket failed");
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["op"], "message", "reading client got {v}");
                    let data = v["data"].as_str().unwrap();
                    assert_eq!(data.len(), SIZE);
                    seqs.push(data[..6].parse::<usize>().unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Message::Close(c) => panic!("the reading client was closed: {c:?}"),
                _ => {}
            }
        }
        (seqs, reader)
    });

    // The storm: 300 messages of 16 KiB, published one after another.
    let started = Instant::now();
    let mut peak_during = hwm_before;
    for seq in 0..MESSAGES {
        let mut data = format!("{seq:06}");
        data.push_str(&"x".repeat(SIZE - data.len()));
        let r = grpc.publish("storm", text(&data)).await.unwrap();
        assert!(r.targets >= 1, "{r:?}");
        if seq % 50 == 0 {
            peak_during = peak_during.max(rss_kib(pid));
        }
    }
    let storm = started.elapsed();
    let (seqs, reader) = tokio::time::timeout(Duration::from_secs(15), reading)
        .await
        .expect("the reading client did not get every message")
        .unwrap();
    assert_eq!(
        seqs,
        (0..MESSAGES).collect::<Vec<_>>(),
        "in order, none lost"
    );

    // Every staller is closed as a slow consumer (queue full, or a write stalled for
    // heartbeat_timeout).
    let m = eventually("every stalled client closed as slow", SETTLE, async || {
        let m = scrape(gw.http).await;
        let slow = m.get("wsgate_slow_consumer_closes_total{}");
        let open = m.get("wsgate_connections{}");
        if slow >= STALLED as f64 && open == 1.0 {
            Ok(m)
        } else {
            Err(format!("slow consumer closes {slow}, connections {open}"))
        }
    })
    .await;
    let rss_after_storm = rss_kib(pid);
    let hwm_after = peak_rss_kib(pid);
    // When they resume reading they get what the kernel buffered, then the 3008 close
    // frame or the end of the connection (the frame may not fit through a full socket).
    let codes = futures_util::future::join_all(stalled.into_iter().map(|mut ws| async move {
        let mut frames = 0usize;
        let code = loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
                Ok(Some(Ok(_))) => frames += 1,
                Ok(Some(Err(_)) | None) => break None,
                Err(_) => panic!("a stalled client's socket is still open after {frames} frames"),
            }
        };
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
        (frames, code)
    }))
    .await;
    eprintln!("stalled clients on resuming: (frames buffered, close code) = {codes:?}");
    for (_, code) in &codes {
        assert!(
            matches!(code, Some(3008) | None),
            "close code {code:?}, want 3008"
        );
    }
    close_all(vec![reader]).await;
    let mut users: Vec<String> = (0..STALLED).map(|i| format!("stalled-{i}")).collect();
    users.extend(["reader".into(), "warm-storm".into()]);
    let fds_after = assert_no_leaks(&gw, &mut grpc, &base, &users).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_settled = rss_kib(pid);

    let published_to_stalled = (MESSAGES * SIZE * STALLED) as u64 / 1024;
    let received_by_stalled: usize = codes.iter().map(|c| c.0).sum();
    eprintln!(
        "publish storm: {MESSAGES} x 16 KiB to {STALLED} stalled + 1 reader in {storm:?}; \
         slow consumer closes {}; stalled clients had {received_by_stalled} frames buffered in total; \
         gateway RSS {} KiB before (baseline {}), peak {} KiB (sampled {} KiB), {} KiB right after, {} KiB settled; \
         bytes addressed to stalled clients {published_to_stalled} KiB; fds {} -> {fds_after}",
        m.get("wsgate_slow_consumer_closes_total{}"),
        rss_before,
        base.rss_kib,
        hwm_after,
        peak_during,
        rss_after_storm,
        rss_settled,
        base.fds,
    );
    let _ = hwm_before;
    // Bounded memory: the gateway's peak growth is far below what was addressed to the
    // stalled clients (about 94 MiB), and it gives most of it back afterwards.
    let peak_growth = hwm_after.saturating_sub(rss_before);
    assert!(
        peak_growth < published_to_stalled / 4,
        "peak RSS grew by {peak_growth} KiB while {published_to_stalled} KiB were addressed to stalled clients"
    );
    let kept = rss_settled.saturating_sub(rss_before);
    assert!(
        kept < 16 * 1024,
        "RSS stayed {kept} KiB above its level before the storm"
    );
}

/// One way of leaving in the middle of a frame.
fn half_frame(variant: usize) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    match variant % 5 {
        // First byte of a header only.
        0 => vec![0x81],
        // Masked, 16-bit extended length announced but missing.
        1 => vec![0x81, 0x80 | 126],
        // Masked text frame of 100 bytes: header and mask, half the payload.
        2 => {
            let mut f = vec![0x81, 0x80 | 100];
            f.extend_from_slice(&mask);
            f.extend((0..50u8).map(|i| b'a' ^ mask[i as usize % 4]));
            f
        }
        // 64-bit length (60000) and 1000 bytes of it.
        3 => {
            let mut f = vec![0x81, 0x80 | 127];
            f.extend_from_slice(&60_000u64.to_be_bytes());
            f.extend_from_slice(&mask);
            f.extend(std::iter::repeat_n(0u8, 1000));
            f
        }
        // Half of the mask key of a fragment (FIN clear) after a complete first frame.
        _ => {
            let body = br#"{"op":"ping"}"#;
            let mut f = vec![0x81, 0x80 | body.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f.extend_from_slice(&[0x01, 0x80 | 10, 0x11, 0x22]);
            f
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnects_mid_frame_leak_nothing() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 10;
    let gw = gateway("hostile-abrupt", &[]).await;
    let pid = pid(&gw);
    let mut grpc = gw.grpc().await;
    let base = Baseline::take(&gw).await;

    let started = Instant::now();
    for round in 0..ROUNDS {
        futures_util::future::join_all((0..PER_ROUND).map(|i| {
            let n = round * PER_ROUND + i;
            let gw = &gw;
            async move {
                let mut s = tcp_from(lo(50 + i as u8), gw.http).await.unwrap();
                s.write_all(&upgrade_request(&format!("/ws?user=abrupt-{i}"), ""))
                    .await
                    .unwrap();
                let r = read_response(&mut s).await.unwrap();
                assert_eq!(r.status, 101, "{r:?}");
                // Wait for the start of the welcome frame: the session is running.
                if r.body.is_empty() {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.unwrap();
                }
                s.write_all(&half_frame(n)).await.unwrap();
                if n % 2 == 1 {
                    // Half of them reset the connection instead of closing it.
                    s.set_zero_linger().unwrap();
                }
                drop(s);
            }
        }))
        .await;
    }
    let took = started.elapsed();
    let peak_fds = fd_count(pid);
    let users: Vec<String> = (0..PER_ROUND).map(|i| format!("abrupt-{i}")).collect();
    let fds_after = assert_no_leaks(&gw, &mut grpc, &base, &users).await;
    let m = scrape(gw.http).await;
    eprintln!(
        "abrupt disconnects: {} in {took:?}; gateway fds baseline {} -> {peak_fds} right after -> {fds_after}; \
         sessions closed by transport {}, by client {}, by server {}",
        ROUNDS * PER_ROUND,
        base.fds,
        m.get("wsgate_sessions_closed_total{by=transport}"),
        m.get("wsgate_sessions_closed_total{by=client}"),
        m.get("wsgate_sessions_closed_total{by=server}"),
    );
    assert_eq!(
        m.get("wsgate_handshakes_total{result=accepted}"),
        (ROUNDS * PER_ROUND + 1) as f64
    );
    // And the gateway still serves.
    let (mut ws, _) = gw.connect_user("after").await;
    send_json(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["op"], "pong");
}
