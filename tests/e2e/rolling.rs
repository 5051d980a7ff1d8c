//! Rolling update with real processes: two `wsgate serve` pods on one `redis-server`,
//! clients on pod A, SIGTERM to A. The clients get 1001 spread over `shutdown.grace`
//! (not all at once), follow the documented reconnect contract (docs/protocol.md:
//! reconnect after 1001 with full-jitter exponential backoff) to pod B, and a
//! `SendToUser` through B afterwards reaches every one of them. A exits 0.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::jitter::Jitter;
use wsgate_tests::pods::Pod;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

/// `shutdown.grace` of pod A.
const GRACE: Duration = Duration::from_secs(2);
/// Clients on pod A, one user each.
const CLIENTS: usize = 8;
/// The reconnect contract's example: base 0.5 s, cap 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Attempts before a client gives up (the test then fails).
const MAX_ATTEMPTS: u32 = 8;

/// What one client saw.
struct Outcome {
    user: String,
    /// When the 1001 arrived.
    closed_at: Instant,
    code: u16,
    reason: String,
    /// The backoff it waited before the attempt that succeeded, summed.
    waited: Duration,
    attempts: u32,
    /// The new session, on pod B.
    ws: Ws,
    welcome: serde_json::Value,
}

/// Reads until the close frame; returns its code and reason and when it arrived.
async fn await_close(ws: &mut Ws) -> (Instant, u16, String) {
    loop {
        let msg = tokio::time::timeout(GRACE * 3, ws.next())
            .await
            .expect("no close frame within three grace periods");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                let at = Instant::now();
                // Keep reading like a real client: tungstenite answers the close.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
                return (at, frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// One client: wait for the close, then reconnect per the contract to `other_pod`.
async fn client(user: String, mut ws: Ws, other_pod: String, seed: u64) -> Outcome {
    let (closed_at, code, reason) = await_close(&mut ws).await;
    assert!(
        [1001, 1006, 1011, 3001, 3008].contains(&code),
        "{user}: close code {code} ({reason:?}) is not one the contract reconnects after"
    );
    let mut jitter = Jitter::new(seed, BACKOFF_BASE, BACKOFF_CAP);
    let mut waited = Duration::ZERO;
    let mut attempt = 0;
    loop {
        let delay = jitter.backoff(attempt);
        waited += delay;
        tokio::time::sleep(delay).await;
        let url = format!("{other_pod}?user={user}");
        match tokio_tungstenite::connect_async(&url).await {
            Ok((mut ws, _)) => {
                let welcome = next_json(&mut ws).await;
                assert_eq!(welcome["op"], "welcome", "{user}: {welcome}");
                return Outcome {
                    user,
                    closed_at,
                    code,
                    reason,
                    waited,
                    attempts: attempt + 1,
                    ws,
                    welcome,
                };
            }
            Err(e) => {
                attempt += 1;
                assert!(
                    attempt < MAX_ATTEMPTS,
                    "{user}: no reconnect after {attempt} attempts: {e}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_spreads_1001_over_the_grace_and_clients_move_to_the_other_pod() {
    let redis = RedisServer::start();
    let grace = format!("{}s", GRACE.as_secs());
    let env = [("WSGATE__SHUTDOWN__GRACE", grace.as_str())];
    let url = redis.url();
    let (mut a, b) = tokio::join!(
        Pod::start("pod-a", &url, &env),
        Pod::start("pod-b", &url, &env),
    );
    let b_ws = format!("ws://{}/ws", b.http);

    // CLIENTS users, each with one session on pod A.
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("roller-{i}");
        let (ws, welcome) = a.connect_user(&user).await;
        assert_eq!(welcome["user_id"], user.as_str(), "{welcome}");
        tasks.push(tokio::spawn(client(user, ws, b_ws.clone(), i as u64 + 1)));
    }

    let term_at = Instant::now();
    a.term();
    // Readiness goes off at once, so a load balancer stops sending new clients.
    let deadline = Instant::now() + GRACE / 2;
    while a.ready().await == 200 {
        assert!(
            Instant::now() < deadline,
            "pod A still answers /readyz 200 {:?} after SIGTERM",
            GRACE / 2
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task panicked"));
    }

    // Every client got 1001 with the reconnect reason...
    for o in &outcomes {
        assert_eq!(
            o.code, 1001,
            "{}: close code {} ({:?})",
            o.user, o.code, o.reason
        );
        assert!(
            o.reason.contains("reconnect"),
            "{}: the 1001 reason should tell the client to reconnect: {:?}",
            o.user,
            o.reason
        );
    }
    // ...spread over the grace period, not all in the same instant.
    let offsets: Vec<Duration> = outcomes
        .iter()
        .map(|o| o.closed_at.duration_since(term_at))
        .collect();
    let first = *offsets.iter().min().unwrap();
    let last = *offsets.iter().max().unwrap();
    let spread = last - first;
    eprintln!(
        "1001 closes after SIGTERM (ms): {:?}; spread {spread:?}; reconnect waits (ms): {:?}",
        offsets.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        outcomes
            .iter()
            .map(|o| (o.waited.as_millis(), o.attempts))
            .collect::<Vec<_>>()
    );
    assert!(
        spread >= GRACE / 4,
        "1001 closes within {spread:?}: they should be spread over the grace period ({GRACE:?})"
    );
    assert!(
        last <= GRACE + Duration::from_millis(500),
        "the last 1001 came {last:?} after SIGTERM, past the grace period {GRACE:?}"
    );
    let mut sorted = offsets.clone();
    sorted.sort();
    let bunched = sorted
        .windows(CLIENTS / 2)
        .any(|w| w[w.len() - 1] - w[0] < Duration::from_millis(100));
    assert!(
        !bunched,
        "half of the clients were closed within 100 ms of each other: {sorted:?}"
    );

    // Every client is on pod B now, with a new session; a send through B reaches each.
    let mut grpc = b.grpc().await;
    for o in &mut outcomes {
        let r = grpc
            .send_to_user(&o.user, text(&format!("after the roll, {}", o.user)))
            .await
            .unwrap_or_else(|e| panic!("SendToUser({}) through pod B: {e:?}", o.user));
        assert_eq!(
            r.targets, 1,
            "{}: the registry should know exactly the new session on B",
            o.user
        );
        let m = next_json(&mut o.ws).await;
        assert_eq!(m["op"], "message", "{}: {m}", o.user);
        assert_eq!(
            m["data"],
            format!("after the roll, {}", o.user).as_str(),
            "{m}"
        );
        assert!(o.welcome["session_id"].is_string(), "{}", o.welcome);
    }

    let code = a.wait(GRACE + Duration::from_secs(8)).await;
    assert_eq!(
        code,
        Some(0),
        "pod A should exit 0 after the drain; output:\n{}",
        a.stderr()
    );
}
