//! Observability: one trace from a control call on one pod to the delivery on another,
//! spans for sessions and rejected handshakes with no secrets in them, Prometheus metrics
//! that parse and move, readiness that follows Redis and the pub/sub self-probe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_proto::pb;
use wsgate_tests::otlp::{Exported, start_receiver};
use wsgate_tests::pods::Pod;
use wsgate_tests::redis::RedisServer;
use wsgate_tests::*;

#[tokio::test]
async fn one_trace_follows_a_push_from_the_control_call_to_the_delivery_on_another_pod() {
    let (receiver, otlp) = start_receiver().await;
    let redis = RedisServer::start();
    let endpoint = format!("http://{otlp}");
    let api_key = "observability-api-key-0123456789";
    let env = [
        ("WSGATE__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("WSGATE__AUTH__MODE", "jwt"),
        ("WSGATE__AUTH__JWT__SECRET", SECRET),
        ("WSGATE__CONTROL__API_KEYS", api_key),
    ];
    let mut a = Pod::start("pod-a", &redis.url(), &env).await;
    let mut b = Pod::start("pod-b", &redis.url(), &env).await;

    // alice on pod A, with her token in the query string.
    let token = token("alice", Some(&["news"]));
    let url = format!("ws://{}/ws?access_token={token}", a.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut ws).await;
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();

    // A rejected handshake on A: a forged token (signed with another key).
    let forged = wsgate_core::auth::mint_hs256(
        b"another-secret-another-secret-0123456789",
        "mallory",
        Duration::from_secs(60),
        None,
        None,
        None,
    )
    .unwrap();
    let r = raw_request(
        a.http,
        &upgrade_request(&format!("/ws?access_token={forged}"), ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    // SendToUser through pod B reaches alice on pod A.
    let mut grpc = b.grpc().await;
    grpc.key = Some(api_key.into());
    let sent = grpc.send_to_user("alice", text("traced")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "traced");
    // And over the HTTP API of pod B, continuing the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let api = api::Api::plain(b.grpc, Some(api_key.into()));
    let by_http = api::send(
        api.request(reqwest::Method::POST, "/api/v1/send_to_user")
            .header("content-type", "application/json")
            .header(
                "traceparent",
                format!("00-{caller_trace}-00f067aa0ba902b7-01"),
            )
            .body(r#"{"user_id":"alice","payload":{"text":"traced over http"}}"#),
    )
    .await;
    assert_eq!(by_http.status, 200, "{by_http:?}");
    let http_message_id = by_http.json["message_id"].as_str().unwrap().to_owned();
    assert_eq!(next_json(&mut ws).await["data"], "traced over http");

    // alice leaves with 4000; then both pods shut down and flush their spans.
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4000u16.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.term();
    b.term();
    assert_eq!(a.wait(Duration::from_secs(10)).await, Some(0));
    assert_eq!(b.wait(Duration::from_secs(10)).await, Some(0));

    let spans = receiver.spans.lock().clone();
    let find = |pod: &str, name: &str, pred: &dyn Fn(&Exported) -> bool| -> Exported {
        spans
            .iter()
            .find(|s| s.pod == pod && s.span.name == name && pred(s))
            .cloned()
            .unwrap_or_else(|| {
                let seen: Vec<(String, String)> = spans
                    .iter()
                    .map(|s| (s.pod.clone(), s.span.name.clone()))
                    .collect();
                panic!("no {name} span from {pod}; exported: {seen:?}")
            })
    };
    let call = find("pod-b", "wsgate.v1.Gateway/SendToUser", &|_| true);
    assert_eq!(call.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    let publish = find("pod-b", "broker.publish", &|s| {
        s.attr("messaging.message.id").as_deref() == Some(sent.message_id.as_str())
    });
    assert_eq!(publish.span.trace_id, call.span.trace_id, "one trace");
    assert_eq!(
        publish.span.parent_span_id, call.span.span_id,
        "publish under the call"
    );
    let deliver = find("pod-a", "ws.deliver", &|s| {
        s.attr("messaging.message.id").as_deref() == Some(sent.message_id.as_str())
    });
    assert_eq!(
        deliver.span.trace_id, call.span.trace_id,
        "the delivery is in the same trace"
    );
    assert_eq!(
        deliver.span.parent_span_id, publish.span.span_id,
        "the delivery on A is a child of the publish on B"
    );
    assert_eq!(
        deliver.attr("wsgate.sessions.reached").as_deref(),
        Some("1")
    );
    assert_eq!(
        deliver.attr("wsgate.sessions").as_deref(),
        Some(session_id.as_str())
    );

    let http_call = find("pod-b", "POST /api/v1/send_to_user", &|_| true);
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&http_call.span.trace_id),
        caller_trace,
        "the caller's trace"
    );
    assert_eq!(
        http_call.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(http_call.attr("rpc.method").as_deref(), Some("SendToUser"));
    let http_publish = find("pod-b", "broker.publish", &|s| {
        s.attr("messaging.message.id").as_deref() == Some(http_message_id.as_str())
    });
    assert_eq!(http_publish.span.parent_span_id, http_call.span.span_id);
    let http_deliver = find("pod-a", "ws.deliver", &|s| {
        s.attr("messaging.message.id").as_deref() == Some(http_message_id.as_str())
    });
    assert_eq!(hex(&http_deliver.span.trace_id), caller_trace);

    let session = find("pod-a", "ws.session", &|s| {
        s.attr("session.id").as_deref() == Some(session_id.as_str())
    });
    assert_eq!(session.attr("ws.close.code").as_deref(), Some("4000"));
    assert_eq!(session.attr("ws.close.by").as_deref(), Some("client"));
    assert_eq!(session.attr("user.id").as_deref(), Some("alice"));

    let rejected = find("pod-a", "ws.handshake", &|s| {
        s.attr("wsgate.outcome").as_deref() == Some("rejected")
    });
    assert_eq!(
        rejected.attr("wsgate.rejection").as_deref(),
        Some("invalid_token")
    );
    assert_eq!(
        rejected.attr("http.response.status_code").as_deref(),
        Some("401")
    );
    let accepted = find("pod-a", "ws.handshake", &|s| {
        s.attr("wsgate.outcome").as_deref() == Some("accepted")
    });
    assert_eq!(accepted.attr("user.id").as_deref(), Some("alice"));

    // Nothing secret anywhere: tokens (whole or their signature part), the API key,
    // the JWT secret.
    let values = receiver.values.lock().clone();
    for secret in [
        token.as_str(),
        token.rsplit('.').next().unwrap(),
        forged.as_str(),
        forged.rsplit('.').next().unwrap(),
        api_key,
        SECRET,
    ] {
        let leaks: Vec<&String> = values.iter().filter(|v| v.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "a secret leaked into exported spans: {leaks:?}"
        );
    }
    assert!(
        values.iter().any(|v| v == "pod-a"),
        "resource carries the pod id"
    );
}

async fn metrics(gw: &Gateway) -> HashMap<String, f64> {
    let r = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    wsgate_tests::hostile::parse_metrics(&r.body).0
}

#[tokio::test]
async fn metrics_parse_and_move_as_the_gateway_works() {
    let gw = Gateway::start(base_settings()).await;
    let before = metrics(&gw).await;
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(get(&before, "wsgate_connections{}"), 0.0);
    assert_eq!(get(&before, "wsgate_ready{}"), 1.0);

    let (mut ws, _) = gw.connect_user("alice").await;
    let r = raw_request(
        gw.http,
        b"POST /ws HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    let mut grpc = gw.grpc().await;
    grpc.send_to_user("alice", text("counted")).await.unwrap();
    next_json(&mut ws).await;
    send_json(&mut ws, serde_json::json!({"op":"ping"})).await;
    next_json(&mut ws).await;
    let e = grpc.send_to_user("", text("x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let after = metrics(&gw).await;
    assert_eq!(get(&after, "wsgate_connections{}"), 1.0);
    assert_eq!(get(&after, "wsgate_handshakes_total{result=accepted}"), 1.0);
    assert_eq!(
        get(&after, "wsgate_handshakes_total{result=method_not_allowed}"),
        1.0
    );
    assert_eq!(get(&after, "wsgate_deliveries_total{}"), 1.0);
    assert_eq!(get(&after, "wsgate_broker_received_total{}"), 1.0);
    assert_eq!(
        get(&after, "wsgate_messages_received_total{}"),
        1.0,
        "the ping"
    );
    assert_eq!(
        get(&after, "wsgate_messages_sent_total{}"),
        3.0,
        "welcome, push, pong"
    );
    assert_eq!(
        get(
            &after,
            "wsgate_grpc_requests_total{code=OK,method=Gateway/SendToUser}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "wsgate_grpc_requests_total{code=INVALID_ARGUMENT,method=Gateway/SendToUser}"
        ),
        1.0
    );
    assert!(get(&after, "wsgate_broker_publish_duration_seconds_count{}") >= 1.0);
    assert!(get(&after, "wsgate_process_resident_memory_bytes{}") > 0.0);

    ws.close(None).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(&gw).await;
        if get(&m, "wsgate_connections{}") == 0.0 {
            assert_eq!(get(&m, "wsgate_sessions_closed_total{by=client}"), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "connection gauge did not drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health_status(pod: &Pod) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", pod.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    gateway_health(channel).await
}

async fn wait_ready(pod: &Pod, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if pod.ready().await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz did not become {want} within {within:?}:\n{}",
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_fails_while_the_pubsub_path_is_broken_and_heals_itself() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let redis = RedisServer::start();
    let pod = Pod::start("probed", &redis.url(), &[]).await;
    assert_eq!(health_status(&pod).await, ServingStatus::Serving as i32);

    // Redis keeps answering commands, but pub/sub is cut off: the ACL no longer allows
    // any channel, so Redis drops the subscriptions and refuses publishes. The registry
    // looks healthy (PING works); only the self-probe can tell that nothing published
    // reaches this pod any more.
    redis.cli(&["ACL", "SETUSER", "default", "resetchannels"]);
    // Redis also closes the subscriber connection, so readiness may first fail (and
    // recover) for the reconnect; what must follow is the failure the probe explains.
    let started = Instant::now();
    let failed_after = loop {
        let r = raw_request(pod.http, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        if r.status == 503 && r.body.contains("probe") {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "readiness did not fail with the probe's reason within 8 s (last: {} {}):\n{}",
            r.status,
            r.body,
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // gRPC health follows within its 1 s check.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(health_status(&pod).await, ServingStatus::NotServing as i32);

    // Healed: ready again, without a restart.
    // Channels allowed again: the probe notices its subscriptions are gone and makes
    // them again by itself.
    redis.cli(&["ACL", "SETUSER", "default", "allchannels"]);
    wait_ready(&pod, 200, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(health_status(&pod).await, ServingStatus::Serving as i32);
    eprintln!("readiness failed {failed_after:?} after the pub/sub path stopped");
}

#[tokio::test]
async fn readiness_fails_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let pod = Pod::start("redisless", &redis.url(), &[]).await;
    redis.kill();
    wait_ready(&pod, 503, Duration::from_secs(5)).await;
    redis.restart_empty();
    wait_ready(&pod, 200, Duration::from_secs(10)).await;
    let r = grpc_send(&pod).await;
    assert_eq!(r.targets, 0);
}

async fn grpc_send(pod: &Pod) -> pb::SendResponse {
    let mut grpc = pod.grpc().await;
    grpc.send_to_user("nobody", text("x")).await.unwrap()
}
