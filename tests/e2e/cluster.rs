//! Cluster mode: several real `wsgate serve` processes sharing one real `redis-server`
//! (or a 3-master Redis Cluster): cross-pod fan-out exactly once, presence and stats that
//! agree from every pod, a SIGKILLed pod leaving presence within the bound, and Redis
//! lost and restarted empty without any client reconnecting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tonic::Code;
use wsgate_proto::pb;
use wsgate_tests::hostile::eventually;
use wsgate_tests::pods::Pod;
use wsgate_tests::recorder::*;
use wsgate_tests::redis::{RedisCluster, RedisServer};
use wsgate_tests::*;

/// How long a socket must stay quiet to count as "received nothing (more)".
const QUIET: Duration = Duration::from_millis(300);
/// Poll interval of the waits here (as in `hostile::eventually`).
const POLL: Duration = Duration::from_millis(100);

/// Reads the next frame and checks it is a push of text `data` (from `topic`, if any).
async fn expect_message(ws: &mut Ws, data: &str, topic: Option<&str>) {
    let m = next_json(ws).await;
    assert_eq!(m["op"], "message", "expected a push of {data:?}, got {m}");
    assert_eq!(m["data"], data, "{m}");
    match topic {
        Some(t) => assert_eq!(m["topic"], t, "{m}"),
        None => assert!(m.get("topic").is_none(), "a direct send has no topic: {m}"),
    }
}

/// After a close frame, keeps reading like a real client does: tungstenite sends its
/// close reply on the next read, and the server then ends the session.
async fn finish_close(ws: &mut Ws) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
}

async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"op": "subscribe", "topic": topic})).await;
    let r = next_json(ws).await;
    assert_eq!(r, json!({"op": "subscribed", "topic": topic}));
}

/// `(session id, pod id)` of `user`'s sessions, sorted.
async fn presence(grpc: &mut GrpcClient, user: &str) -> Result<Vec<(String, String)>, String> {
    let req = grpc.req(pb::GetPresenceRequest {
        user_id: user.into(),
    });
    let r = grpc
        .inner
        .get_presence(req)
        .await
        .map_err(|e| format!("GetPresence({user}): {e:?}"))?
        .into_inner();
    let mut v: Vec<(String, String)> = r
        .sessions
        .into_iter()
        .map(|s| (s.session_id, s.pod_id))
        .collect();
    v.sort();
    if r.online == v.is_empty() {
        return Err(format!("online = {} with sessions {v:?}", r.online));
    }
    Ok(v)
}

/// Stats as `pod id -> (connections, alive)`, plus the total.
async fn stats(grpc: &mut GrpcClient) -> Result<(BTreeMap<String, (u64, bool)>, u64), String> {
    let req = grpc.req(pb::StatsRequest {});
    let r = grpc
        .inner
        .stats(req)
        .await
        .map_err(|e| format!("Stats: {e:?}"))?
        .into_inner();
    let pods = r
        .pods
        .into_iter()
        .map(|p| (p.pod_id, (p.connections, p.alive)))
        .collect();
    Ok((pods, r.total_connections))
}

fn sessions(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(s, p)| (s.to_string(), p.to_string()))
        .collect();
    v.sort();
    v
}

/// Waits until every pod's GetPresence for each user and its Stats show `want_presence`
/// and `want_pods` (all alive).
async fn assert_views_agree(
    pods: &[&Pod],
    want_presence: &[(&str, Vec<(String, String)>)],
    want_pods: &[(&str, u64)],
) {
    let want_stats: BTreeMap<String, (u64, bool)> = want_pods
        .iter()
        .map(|(p, n)| (p.to_string(), (*n, true)))
        .collect();
    let want_total: u64 = want_pods.iter().map(|(_, n)| n).sum();
    for pod in pods {
        let mut grpc = pod.grpc().await;
        let grpc = &mut grpc;
        eventually(
            &format!("presence and stats seen from {}", pod.name),
            Duration::from_secs(3),
            async || {
                for (user, want) in want_presence {
                    let got = presence(grpc, user).await?;
                    if &got != want {
                        return Err(format!("presence({user}) = {got:?}, want {want:?}"));
                    }
                }
                let (got, total) = stats(grpc).await?;
                if got != want_stats || total != want_total {
                    return Err(format!(
                        "stats = {got:?} total {total}, want {want_stats:?} total {want_total}"
                    ));
                }
                Ok(())
            },
        )
        .await;
    }
}

async fn send_to_session(
    grpc: &mut GrpcClient,
    session: &str,
    data: &str,
) -> Result<pb::SendResponse, tonic::Status> {
    let req = grpc.req(pb::SendToSessionRequest {
        session_id: session.into(),
        payload: Some(pb::Payload {
            body: Some(text(data)),
        }),
    });
    grpc.inner
        .send_to_session(req)
        .await
        .map(|r| r.into_inner())
}

async fn disconnect_session(
    grpc: &mut GrpcClient,
    session: &str,
    code: u32,
    reason: &str,
) -> Result<pb::DisconnectResponse, tonic::Status> {
    let req = grpc.req(pb::DisconnectRequest {
        target: Some(pb::disconnect_request::Target::SessionId(session.into())),
        code,
        reason: reason.into(),
    });
    grpc.inner.disconnect(req).await.map(|r| r.into_inner())
}

/// Starts three pods named `pod-a`, `pod-b`, `pod-c` at once.
async fn three_pods(url: &str, env: &[(&str, &str)]) -> (Pod, Pod, Pod) {
    tokio::join!(
        Pod::start("pod-a", url, env),
        Pod::start("pod-b", url, env),
        Pod::start("pod-c", url, env),
    )
}

#[test]
fn redis_harness_restarts_empty_on_the_same_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.cli(&["set", "k", "v"]).trim(), "OK");
    assert_eq!(redis.cli(&["get", "k"]).trim(), "v");
    redis.kill();
    assert!(!wsgate_tests::redis::answers_ping(port));
    redis.restart_empty();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.cli(&["dbsize"]).trim(), "0");
}

#[tokio::test]
async fn three_pods_fan_out_exactly_once() {
    let redis = RedisServer::start();
    let (a, b, c) = three_pods(&redis.url(), &[]).await;

    let (mut alice_a, w) = a.connect_user("alice").await;
    let sa = session_id(&w);
    let (mut alice_b, w) = b.connect_user("alice").await;
    let sb = session_id(&w);
    let (mut bob_c, w) = c.connect_user("bob").await;
    let sc = session_id(&w);

    // SendToUser via C reaches each of alice's sessions (on A and B) exactly once.
    let mut gc = c.grpc().await;
    let r = gc.send_to_user("alice", text("to-alice")).await.unwrap();
    assert_eq!(r.targets, 2, "{r:?}");
    expect_message(&mut alice_a, "to-alice", None).await;
    expect_message(&mut alice_b, "to-alice", None).await;
    tokio::join!(
        assert_silent(&mut alice_a, QUIET),
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );

    // Publish via B reaches the subscribers on A and C, not the non-subscriber on B.
    subscribe(&mut alice_a, "news").await;
    subscribe(&mut bob_c, "news").await;
    let mut gb = b.grpc().await;
    gb.publish("news", text("headline")).await.unwrap();
    expect_message(&mut alice_a, "headline", Some("news")).await;
    expect_message(&mut bob_c, "headline", Some("news")).await;
    tokio::join!(
        assert_silent(&mut alice_a, QUIET),
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );

    // SendToSession via A to bob's session on C reaches only it.
    let mut ga = a.grpc().await;
    let r = send_to_session(&mut ga, &sc, "to-bob").await.unwrap();
    assert_eq!(r.targets, 1, "{r:?}");
    expect_message(&mut bob_c, "to-bob", None).await;
    tokio::join!(
        assert_silent(&mut alice_a, QUIET),
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );

    // Presence and Stats agree from every pod.
    let pods = [&a, &b, &c];
    assert_views_agree(
        &pods,
        &[
            ("alice", sessions(&[(&sa, "pod-a"), (&sb, "pod-b")])),
            ("bob", sessions(&[(&sc, "pod-c")])),
        ],
        &[("pod-a", 1), ("pod-b", 1), ("pod-c", 1)],
    )
    .await;

    // Disconnect via B of alice's session on A closes exactly that socket, with the code.
    let r = disconnect_session(&mut gb, &sa, 4001, "kicked by test")
        .await
        .unwrap();
    assert_eq!(r.targets, 1, "{r:?}");
    assert_eq!(close_code(&mut alice_a).await, Some(4001));
    finish_close(&mut alice_a).await;
    tokio::join!(
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );
    assert_views_agree(
        &pods,
        &[
            ("alice", sessions(&[(&sb, "pod-b")])),
            ("bob", sessions(&[(&sc, "pod-c")])),
        ],
        &[("pod-a", 0), ("pod-b", 1), ("pod-c", 1)],
    )
    .await;
}

#[tokio::test]
async fn a_killed_pod_leaves_presence_within_the_bound() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut a, b) = tokio::join!(
        Pod::start("pod-a", &url, &[]),
        Pod::start("pod-b", &url, &[]),
    );
    let (_alice_a, w) = a.connect_user("alice").await;
    let sa = session_id(&w);
    let (mut alice_b, w) = b.connect_user("alice").await;
    let sb = session_id(&w);
    assert_views_agree(
        &[&b],
        &[("alice", sessions(&[(&sa, "pod-a"), (&sb, "pod-b")]))],
        &[("pod-a", 1), ("pod-b", 1)],
    )
    .await;

    a.kill();
    let killed = Instant::now();
    let mut gb = b.grpc().await;
    let g = &mut gb;
    let want = sessions(&[(&sb, "pod-b")]);
    eventually(
        "pod-a's session leaves presence and stats (via pod-b)",
        Duration::from_secs(4),
        async || {
            let got = presence(g, "alice").await?;
            if got != want {
                return Err(format!("presence(alice) = {got:?}"));
            }
            let (pods, total) = stats(g).await?;
            let a_gone = pods.get("pod-a").is_none_or(|(_, alive)| !alive);
            if !a_gone || pods.get("pod-b") != Some(&(1, true)) || total != 1 {
                return Err(format!("stats = {pods:?} total {total}"));
            }
            Ok(())
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("pod-a left presence and stats {took:?} after SIGKILL (pod_ttl 1s)");
    assert!(
        took <= Duration::from_secs(3),
        "a dead pod must vanish within 2 x pod_ttl (+1 s slack); took {took:?}"
    );

    // B's session is untouched and still reachable, every time; and once the live pod
    // has cleaned up A's leftovers (within the same bound), the registry counts only it.
    let mut n = 0;
    loop {
        n += 1;
        let data = format!("still-here-{n}");
        let r = gb.send_to_user("alice", text(&data)).await.unwrap();
        expect_message(&mut alice_b, &data, None).await;
        if r.targets == 1 {
            break;
        }
        assert!(
            killed.elapsed() <= Duration::from_secs(3),
            "SendToUser(alice) still counts {} targets {:?} after pod-a was killed \
             (pod-a's leftovers not cleaned within 2 x pod_ttl + 1 s)",
            r.targets,
            killed.elapsed()
        );
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "SendToUser counted only pod-b's session {:?} after SIGKILL",
        killed.elapsed()
    );
    assert_silent(&mut alice_b, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_empty_rebuilds_presence_without_reconnects() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (a, b) = tokio::join!(
        Pod::start("pod-a", &url, &[]),
        Pod::start("pod-b", &url, &[]),
    );
    let (ws, w) = a.connect_user("alice").await;
    let sa = session_id(&w);
    let alice = Recorder::start(ws);
    let (ws, w) = b.connect_user("bob").await;
    let sb = session_id(&w);
    let bob = Recorder::start(ws);

    let mut ga = a.grpc().await;
    let mut gb = b.grpc().await;
    let r = gb.send_to_user("alice", text("before")).await.unwrap();
    assert_eq!(r.targets, 1, "{r:?}");
    eventually(
        "alice gets a send before the outage",
        WAIT,
        async || match alice.pushes().as_slice() {
            [d] if d == "before" => Ok(()),
            other => Err(format!("alice got {other:?}")),
        },
    )
    .await;

    // Redis dies: sends answer UNAVAILABLE, readiness fails, sockets stay up.
    redis.kill();
    let g = &mut gb;
    let status = eventually(
        "SendToUser via pod-b answers UNAVAILABLE while Redis is down",
        Duration::from_secs(5),
        async || {
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_millis(4500),
                g.send_to_user("alice", text("during-outage")),
            )
            .await;
            eprintln!(
                "SendToUser during the outage answered in {:?}",
                started.elapsed()
            );
            match r {
                Err(_) => Err("the call hung for 4.5 s".to_string()),
                Ok(Ok(r)) => Err(format!("succeeded: {r:?}")),
                Ok(Err(s)) if s.code() == Code::Unavailable => Ok(s),
                Ok(Err(s)) => Err(format!("wrong status: {s:?}")),
            }
        },
    )
    .await;
    assert!(
        !status.message().is_empty(),
        "UNAVAILABLE says why: {status:?}"
    );
    eventually(
        "/readyz fails on both pods while Redis is down",
        Duration::from_secs(5),
        async || {
            let started = Instant::now();
            let (ra, rb) = tokio::join!(a.ready(), b.ready());
            eprintln!(
                "/readyz during the outage: pod-a {ra}, pod-b {rb} in {:?}",
                started.elapsed()
            );
            if (ra, rb) == (503, 503) {
                Ok(())
            } else {
                Err(format!("pod-a {ra}, pod-b {rb}"))
            }
        },
    )
    .await;
    alice.assert_open("alice");
    bob.assert_open("bob");

    // Redis comes back empty on the same port: everything is rebuilt by the pods.
    redis.restart_empty();
    let restarted = Instant::now();
    let left = || Duration::from_secs(12).saturating_sub(restarted.elapsed());
    let want_alice = sessions(&[(&sa, "pod-a")]);
    let want_bob = sessions(&[(&sb, "pod-b")]);
    let g = &mut gb;
    eventually(
        "presence rebuilt after Redis restarted empty",
        left(),
        async || {
            let got = presence(g, "alice").await?;
            if got != want_alice {
                return Err(format!("presence(alice) via pod-b = {got:?}"));
            }
            let got = presence(g, "bob").await?;
            if got != want_bob {
                return Err(format!("presence(bob) via pod-b = {got:?}"));
            }
            Ok(())
        },
    )
    .await;
    eprintln!("presence rebuilt {:?} after restart", restarted.elapsed());
    send_until_received(
        "a SendToUser via pod-b reaches alice on pod-a after the restart",
        left(),
        &mut gb,
        "alice",
        "after",
        &alice,
    )
    .await;
    send_until_received(
        "a SendToUser via pod-a reaches bob on pod-b after the restart",
        left(),
        &mut ga,
        "bob",
        "after",
        &bob,
    )
    .await;
    eventually("/readyz is 200 again on both pods", left(), async || {
        let (ra, rb) = (a.ready().await, b.ready().await);
        if (ra, rb) == (200, 200) {
            Ok(())
        } else {
            Err(format!("pod-a {ra}, pod-b {rb}"))
        }
    })
    .await;
    eprintln!("recovered {:?} after restart", restarted.elapsed());

    // Nobody was dropped or reconnected: same sockets, same session ids in presence, and
    // no message arrived twice.
    alice.assert_open("alice");
    bob.assert_open("bob");
    assert_eq!(presence(&mut ga, "alice").await.unwrap(), want_alice);
    assert_eq!(presence(&mut ga, "bob").await.unwrap(), want_bob);
    for (who, rec) in [("alice", &alice), ("bob", &bob)] {
        let pushes = rec.pushes();
        let unique: BTreeSet<&String> = pushes.iter().collect();
        assert_eq!(
            unique.len(),
            pushes.len(),
            "{who} got a message twice: {pushes:?}"
        );
    }
}

#[tokio::test]
async fn redis_cluster_fan_out_with_sharded_pubsub() {
    let cluster = RedisCluster::start(3);
    let (a, b, c) = three_pods(&cluster.url(), &[("WSGATE__REDIS__MODE", "cluster")]).await;

    let (mut alice_a, w) = a.connect_user("alice").await;
    let sa = session_id(&w);
    let (mut alice_b, w) = b.connect_user("alice").await;
    let sb = session_id(&w);
    let (mut bob_c, w) = c.connect_user("bob").await;
    let sc = session_id(&w);

    let mut gc = c.grpc().await;
    let r = gc.send_to_user("alice", text("to-alice")).await.unwrap();
    assert_eq!(r.targets, 2, "{r:?}");
    expect_message(&mut alice_a, "to-alice", None).await;
    expect_message(&mut alice_b, "to-alice", None).await;
    tokio::join!(
        assert_silent(&mut alice_a, QUIET),
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );

    subscribe(&mut alice_a, "news").await;
    subscribe(&mut bob_c, "news").await;
    let mut gb = b.grpc().await;
    gb.publish("news", text("headline")).await.unwrap();
    expect_message(&mut alice_a, "headline", Some("news")).await;
    expect_message(&mut bob_c, "headline", Some("news")).await;
    tokio::join!(
        assert_silent(&mut alice_a, QUIET),
        assert_silent(&mut alice_b, QUIET),
        assert_silent(&mut bob_c, QUIET),
    );

    // Per-user and per-topic channels are sharded channels (SSUBSCRIBE), spread over
    // the masters.
    let per_node: Vec<Vec<String>> = cluster
        .cli_all(&["pubsub", "shardchannels"])
        .iter()
        .map(|out| {
            out.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .collect();
    eprintln!("sharded channels per master: {per_node:?}");
    let total: usize = per_node.iter().map(Vec::len).sum();
    assert!(
        total > 0,
        "no sharded pub/sub channel on any master while alice and news have subscribers"
    );

    assert_views_agree(
        &[&a, &b, &c],
        &[
            ("alice", sessions(&[(&sa, "pod-a"), (&sb, "pod-b")])),
            ("bob", sessions(&[(&sc, "pod-c")])),
        ],
        &[("pod-a", 1), ("pod-b", 1), ("pod-c", 1)],
    )
    .await;
}
