//! The `rpc` op against a real HTTP backend that each test starts on loopback: the round
//! trip, every way a call can fail, the per-session cap with the session still working
//! while calls are out, cancellation when the session ends, and one trace from the
//! gateway's call span into the backend's request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::otlp::{hex, start_receiver};
use wsgate_tests::pods::Pod;
use wsgate_tests::*;

/// What the backend saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    /// The body as sent.
    raw: String,
    body: Value,
    traceparent: Option<String>,
    authorization: Option<String>,
}

/// A test backend: answers by the call's `method`; any other method echoes.
#[derive(Clone)]
struct Backend {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `hold` calls wait for a permit.
    release: Arc<Semaphore>,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn answer(State(b): State<Backend>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let raw = String::from_utf8(body.to_vec()).expect("UTF-8");
    let body: Value = serde_json::from_str(&raw).expect("the gateway sends JSON");
    b.seen.lock().push(Seen {
        raw,
        body: body.clone(),
        traceparent: header("traceparent"),
        authorization: header("authorization"),
    });
    match body["method"].as_str().unwrap_or_default() {
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": "not_found", "message": "order 7 not found" })),
        )
            .into_response(),
        "plain_fail" => (StatusCode::BAD_GATEWAY, "  upstream went away\n").into_response(),
        "not_json" => "this is not JSON".into_response(),
        "huge" => Json(json!({ "blob": "x".repeat(100_000) })).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!("late")).into_response()
        }
        "hold" => {
            b.release.acquire().await.expect("open semaphore").forget();
            Json(json!({ "released": body["data"] })).into_response()
        }
        "missing" => (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": "no such method" })),
        )
            .into_response(),
        _ => Json(json!({ "you_sent": body["data"], "user": body["user_id"] })).into_response(),
    }
}

/// Starts a backend on loopback; its URL is `http://ADDR/rpc`.
async fn backend() -> (Backend, String) {
    let b = Backend {
        seen: Arc::default(),
        release: Arc::new(Semaphore::new(0)),
    };
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(answer))
        .with_state(b.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/rpc", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (b, url)
}

/// A gateway calling `url`.
async fn gateway(url: &str, tune: impl FnOnce(&mut wsgate_server::settings::Settings)) -> Gateway {
    let mut s = base_settings();
    s.rpc.url = Some(url.to_owned());
    tune(&mut s);
    Gateway::start(s).await
}

async fn call(ws: &mut Ws, method: &str, data: Value, id: Value) {
    send_json(
        ws,
        json!({ "op": "rpc", "method": method, "data": data, "id": id }),
    )
    .await;
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    let r = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    wsgate_tests::hostile::parse_metrics(&r.body).get(name)
}

#[tokio::test]
async fn a_call_goes_to_the_backend_with_who_called_and_its_answer_comes_back() {
    let (backend, url) = backend().await;
    let gw = gateway(&url, |s| {
        s.rpc.bearer_token = Some("gateway-to-backend-token".into());
    })
    .await;
    let (mut ws, welcome) = gw.connect_user("alice").await;

    let data = json!({ "order": 7, "items": ["a", "b"], "note": "ünïcode" });
    call(&mut ws, "orders.get", data.clone(), json!("c1")).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(
        answer,
        json!({ "op": "rpc_result", "id": "c1", "data": { "you_sent": data, "user": "alice" } })
    );

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        json!({
            "user_id": "alice",
            "session_id": welcome["session_id"],
            "method": "orders.get",
            "data": data,
        })
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer gateway-to-backend-token")
    );

    // Numeric ids and calls without data (null) work too; the pool reuses the connection.
    call(&mut ws, "echo", Value::Null, json!(2)).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["data"]["you_sent"], Value::Null);
    // `data` goes to the backend exactly as the client wrote it: key order, big integers.
    let written = r#"{"z":1,"a":123456789012345678901234567890,"f":1e2}"#;
    let frame = format!(r#"{{"op":"rpc","method":"raw","data":{written},"id":"raw"}}"#);
    ws.send(Message::Text(frame.into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["id"], "raw");
    let raw = backend.seen()[2].raw.clone();
    assert!(raw.contains(&format!(r#""data":{written}"#)), "{raw}");

    // A call without an id is refused: its answer could not be matched.
    send_json(&mut ws, json!({ "op": "rpc", "method": "echo" })).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    assert_eq!(
        backend.seen().len(),
        3,
        "a refused op never reaches the backend"
    );
    assert_eq!(metric(&gw, "wsgate_rpc_calls_total{outcome=ok}").await, 3.0);
    assert_eq!(
        metric(&gw, "wsgate_rpc_duration_seconds_count{}").await,
        3.0
    );
}

#[tokio::test]
async fn backend_failures_answer_rpc_failed_with_the_backends_message() {
    let (_backend, url) = backend().await;
    let gw = gateway(&url, |s| s.rpc.max_response_bytes = 10_000).await;
    let (mut ws, _) = gw.connect_user("bob").await;

    for (method, message) in [
        ("fail", "order 7 not found"),
        ("plain_fail", "upstream went away"),
        ("not_json", "the backend's answer is not JSON"),
        ("huge", "the backend's answer is larger than 10000 bytes"),
        ("missing", "no such method"),
    ] {
        call(&mut ws, method, json!({}), json!(method)).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(
            answer,
            json!({ "op": "error", "code": "rpc_failed", "message": message, "id": method }),
            "{method}"
        );
    }
    assert_eq!(
        metric(&gw, "wsgate_rpc_calls_total{outcome=failed}").await,
        5.0
    );
}

#[tokio::test]
async fn a_backend_that_is_down_fails_the_call_at_once() {
    // A port nobody listens on: connections are refused.
    let port = free_port();
    let gw = gateway(&format!("http://127.0.0.1:{port}/rpc"), |_| {}).await;
    let (mut ws, _) = gw.connect_user("carol").await;
    let started = Instant::now();
    call(&mut ws, "echo", json!(1), json!("down")).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["code"], "rpc_failed", "{answer}");
    assert_eq!(answer["message"], "the backend could not be reached");
    assert_eq!(answer["id"], "down");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_backend_slower_than_the_timeout_answers_rpc_timeout() {
    let (_backend, url) = backend().await;
    let gw = gateway(&url, |s| s.rpc.timeout = Duration::from_millis(300)).await;
    let (mut ws, _) = gw.connect_user("dave").await;
    let started = Instant::now();
    call(&mut ws, "slow", json!(null), json!("t")).await;
    let answer = next_json(&mut ws).await;
    let took = started.elapsed();
    assert_eq!(
        answer,
        json!({ "op": "error", "code": "rpc_timeout", "message": "the backend did not answer within 300ms", "id": "t" })
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        metric(&gw, "wsgate_rpc_calls_total{outcome=timeout}").await,
        1.0
    );
}

#[tokio::test]
async fn over_the_cap_a_call_is_busy_and_the_session_keeps_working_while_calls_are_out() {
    let (backend, url) = backend().await;
    let gw = gateway(&url, |s| s.rpc.max_in_flight = 2).await;
    let (mut ws, _) = gw.connect_user("erin").await;

    call(&mut ws, "hold", json!(1), json!("h1")).await;
    call(&mut ws, "hold", json!(2), json!("h2")).await;
    call(&mut ws, "hold", json!(3), json!("h3")).await;
    let busy = next_json(&mut ws).await;
    assert_eq!(busy["code"], "rpc_busy", "{busy}");
    assert_eq!(busy["id"], "h3");

    // Two calls are out: pings, subscriptions and pushes go on meanwhile.
    send_json(&mut ws, json!({ "op": "ping", "id": "p" })).await;
    assert_eq!(next_json(&mut ws).await, json!({ "op": "pong", "id": "p" }));
    send_json(&mut ws, json!({ "op": "subscribe", "topic": "news" })).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let mut grpc = gw.grpc().await;
    grpc.send_to_user("erin", text("while calls are out"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "while calls are out");
    grpc.publish("news", text("news too")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["data"], "news too");

    // Both held calls reached the backend; released, both answer, each with its id.
    let deadline = Instant::now() + WAIT;
    while backend.seen().len() < 2 {
        assert!(Instant::now() < deadline, "held calls did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.release.add_permits(2);
    let mut answers = vec![next_json(&mut ws).await, next_json(&mut ws).await];
    answers.sort_by_key(|a| a["id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        answers,
        vec![
            json!({ "op": "rpc_result", "id": "h1", "data": { "released": 1 } }),
            json!({ "op": "rpc_result", "id": "h2", "data": { "released": 2 } }),
        ]
    );
    // Room again.
    call(&mut ws, "echo", json!("again"), json!("e")).await;
    assert_eq!(next_json(&mut ws).await["op"], "rpc_result");
    assert_eq!(
        metric(&gw, "wsgate_rpc_calls_total{outcome=busy}").await,
        1.0
    );
    assert_eq!(metric(&gw, "wsgate_rpc_calls_total{outcome=ok}").await, 3.0);
}

#[tokio::test]
async fn a_session_that_ends_cancels_its_calls() {
    let (backend, url) = backend().await;
    let gw = gateway(&url, |_| {}).await;
    let (mut ws, _) = gw.connect_user("frank").await;
    call(&mut ws, "hold", json!(null), json!(1)).await;
    let deadline = Instant::now() + WAIT;
    while backend.seen().is_empty() {
        assert!(Instant::now() < deadline, "the call did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ws.close(None).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while metric(&gw, "wsgate_rpc_calls_total{outcome=cancelled}").await < 1.0 {
        assert!(Instant::now() < deadline, "the call was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&gw, "wsgate_connections{}").await, 0.0);
}

#[tokio::test]
async fn without_rpc_url_the_op_answers_rpc_unavailable() {
    let gw = Gateway::start(base_settings()).await;
    let (mut ws, _) = gw.connect_user("gina").await;
    call(&mut ws, "echo", json!(1), json!("u")).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(
        answer,
        json!({ "op": "error", "code": "rpc_unavailable", "message": "rpc is not configured on this gateway", "id": "u" })
    );
}

#[tokio::test]
async fn one_trace_runs_from_the_gateways_call_span_into_the_backend() {
    let (receiver, otlp) = start_receiver().await;
    let (backend, url) = backend().await;
    let endpoint = format!("http://{otlp}");
    let token = "rpc-token-that-must-stay-secret";
    let env = [
        ("WSGATE__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("WSGATE__RPC__URL", url.as_str()),
        ("WSGATE__RPC__BEARER_TOKEN", token),
    ];
    // An empty redis.url: the embedded backend, one pod.
    let mut pod = Pod::start("rpc-pod", "", &env).await;
    let (mut ws, welcome) = pod.connect_user("hana").await;
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();
    call(&mut ws, "orders.get", json!({ "n": 1 }), json!("tr")).await;
    assert_eq!(next_json(&mut ws).await["op"], "rpc_result");
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pod.term();
    assert_eq!(pod.wait(Duration::from_secs(10)).await, Some(0));

    let traceparent = backend.seen()[0]
        .traceparent
        .clone()
        .expect("the backend got a traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let spans = receiver.spans.lock().clone();
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    let rpc = spans
        .iter()
        .find(|s| s.span.name == "ws.rpc")
        .unwrap_or_else(|| panic!("no ws.rpc span; exported: {names:?}"));
    assert_eq!(
        hex(&rpc.span.trace_id),
        parts[1],
        "one trace across the hop"
    );
    assert_eq!(
        hex(&rpc.span.span_id),
        parts[2],
        "the backend's parent is the call span"
    );
    assert_eq!(rpc.attr("rpc.method").as_deref(), Some("orders.get"));
    assert_eq!(rpc.attr("wsgate.outcome").as_deref(), Some("ok"));
    assert_eq!(
        rpc.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(rpc.attr("session.id").as_deref(), Some(session_id.as_str()));
    let session = spans
        .iter()
        .find(|s| s.span.name == "ws.session")
        .unwrap_or_else(|| panic!("no ws.session span; exported: {names:?}"));
    assert_eq!(rpc.span.trace_id, session.span.trace_id);
    assert_eq!(
        rpc.span.parent_span_id, session.span.span_id,
        "the call is a child of its session"
    );
    let values = receiver.values.lock().clone();
    let leaks: Vec<&String> = values
        .iter()
        .filter(|v| v.contains(token) || v.contains(&url))
        .collect();
    assert!(leaks.is_empty(), "the token or the URL leaked: {leaks:?}");
}
