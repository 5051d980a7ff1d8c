//! The HTTP JSON API on the control listener, called the way a backend calls it (reqwest
//! on a real socket): every method answers as the same call over gRPC does, errors have
//! their documented statuses and codes, nothing a caller sends breaks the server, and
//! gRPC, health and reflection still work on the same port, in plain text and with TLS.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate_server::settings::{Settings, TopicHistory};
use wsgate_tests::api::{Answer, Api, error_code, grpc_call, http_status, send};
use wsgate_tests::*;

/// Loopback, auth off, an API key, and `chat.*` keeping history.
fn settings() -> Settings {
    let mut s = base_settings();
    s.control.api_keys = vec![API_KEY.into()];
    s.history.topics = vec![TopicHistory {
        pattern: "chat.*".into(),
        size: 10,
        ttl: Duration::from_secs(300),
    }];
    s
}

/// `v` without `field` (a message id differs between two sends).
fn without(mut v: Value, field: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove(field);
    }
    v
}

/// Makes the call over HTTP and over gRPC and asserts both gave the same answer: the
/// same response (but for the message id), or the same error code and message with the
/// documented HTTP status. Returns the HTTP answer.
async fn same_both_ways(api: &Api, grpc: &mut GrpcClient, method: &str, body: Value) -> Answer {
    let http = api.call(method, &body).await;
    match grpc_call(grpc, method, &body).await {
        Ok(g) => {
            assert_eq!(http.status, 200, "{method} {body}: {http:?}");
            assert_eq!(
                without(http.json.clone(), "message_id"),
                without(g, "message_id"),
                "{method} {body}"
            );
        }
        Err(status) => {
            http.assert_error(http_status(status.code()), &error_code(status.code()));
            assert_eq!(
                http.json["message"].as_str(),
                Some(status.message()),
                "{method} {body}"
            );
        }
    }
    http
}

/// A send over HTTP, then the same over gRPC: both answer the same, and alice receives
/// the same frame twice (offsets apart, which count up).
async fn send_both_ways(
    api: &Api,
    grpc: &mut GrpcClient,
    ws: &mut Ws,
    method: &str,
    body: Value,
) -> (Value, Value) {
    let http = api.call(method, &body).await;
    assert_eq!(http.status, 200, "{method} {body}: {http:?}");
    assert_eq!(http.header("content-type"), Some("application/json"));
    let by_http = next_data(ws).await;
    let g = grpc_call(grpc, method, &body).await.unwrap();
    let by_grpc = next_data(ws).await;
    for r in [&http.json, &g] {
        assert!(
            r["message_id"].as_str().is_some_and(|id| id.len() == 26),
            "{r}"
        );
        assert!(r["targets"].is_string(), "uint64 is a string: {r}");
    }
    let (offset_h, offset_g) = (&http.json["offset"], &g["offset"]);
    assert_eq!(
        without(without(http.json.clone(), "message_id"), "offset"),
        without(without(g.clone(), "message_id"), "offset"),
    );
    match (by_http, by_grpc) {
        (Message::Binary(a), Message::Binary(b)) => assert_eq!(a, b),
        (Message::Text(a), Message::Text(b)) => {
            let a: Value = serde_json::from_str(a.as_str()).unwrap();
            let b: Value = serde_json::from_str(b.as_str()).unwrap();
            assert_eq!(without(a.clone(), "offset"), without(b.clone(), "offset"));
            if offset_h != "0" {
                assert_eq!(a["offset"].to_string(), offset_h.as_str().unwrap());
                assert_eq!(b["offset"].to_string(), offset_g.as_str().unwrap());
            }
        }
        other => panic!("{method}: different frames {other:?}"),
    }
    (http.json, g)
}

#[tokio::test]
async fn every_method_answers_over_http_as_over_grpc() {
    let gw = Gateway::start(settings()).await;
    let api = gw.api();
    let mut grpc = gw.grpc().await;
    let (mut alice, welcome) = gw.connect_user("alice").await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    send_json(
        &mut alice,
        json!({"op":"subscribe","topic":"chat.1","id":1}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["op"], "subscribed");

    let (h, _) = send_both_ways(
        &api,
        &mut grpc,
        &mut alice,
        "send_to_user",
        json!({"user_id": "alice", "payload": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        without(h, "message_id"),
        json!({"targets": "1", "offset": "0", "epoch": ""})
    );
    // lowerCamelCase names are accepted too, and a JSON payload arrives as JSON.
    send_both_ways(
        &api,
        &mut grpc,
        &mut alice,
        "send_to_user",
        json!({"userId": "alice", "payload": {"json": "{\"n\":1}"}}),
    )
    .await;
    send_both_ways(
        &api,
        &mut grpc,
        &mut alice,
        "send_to_session",
        json!({"session_id": session, "payload": {"text": "to the session"}}),
    )
    .await;
    // Bytes are base64; the client gets exactly them as one binary frame.
    send_both_ways(
        &api,
        &mut grpc,
        &mut alice,
        "broadcast",
        json!({"payload": {"binary": "AAEC/w=="}}),
    )
    .await;
    let (h, g) = send_both_ways(
        &api,
        &mut grpc,
        &mut alice,
        "publish",
        json!({"topic": "chat.1", "payload": {"text": "kept"}}),
    )
    .await;
    assert_eq!(
        (h["offset"].as_str(), g["offset"].as_str()),
        (Some("1"), Some("2"))
    );
    assert_eq!(h["epoch"], g["epoch"]);

    // Queries answer the very same JSON both ways.
    let presence =
        same_both_ways(&api, &mut grpc, "get_presence", json!({"user_id": "alice"})).await;
    assert_eq!(presence.json["online"], true);
    assert_eq!(presence.json["sessions"][0]["session_id"], session.as_str());
    assert!(presence.json["sessions"][0]["connected_at_ms"].is_string());
    let nobody = same_both_ways(
        &api,
        &mut grpc,
        "get_presence",
        json!({"user_id": "nobody"}),
    )
    .await;
    assert_eq!(
        nobody.json,
        json!({"user_id": "nobody", "online": false, "sessions": []}),
        "fields at their default are written"
    );
    let stats = same_both_ways(&api, &mut grpc, "stats", json!({})).await;
    assert_eq!(stats.json["total_connections"], "1");
    let history = same_both_ways(&api, &mut grpc, "history", json!({"topic": "chat.1"})).await;
    assert_eq!(history.json["offset"], "2");
    assert_eq!(
        history.json["messages"][0]["payload"],
        json!({"text": "kept"})
    );
    same_both_ways(
        &api,
        &mut grpc,
        "history",
        json!({"topic": "chat.1", "sinceOffset": 1, "limit": 1}),
    )
    .await;

    // Disconnect, once each way, with the caller's close code.
    let (mut bob, _) = gw.connect_user("bob").await;
    let r = api
        .call(
            "disconnect",
            &json!({"user_id": "bob", "code": 4001, "reason": "bye"}),
        )
        .await;
    assert_eq!((r.status, &r.json), (200, &json!({"targets": "1"})));
    assert_eq!(close_code(&mut bob).await, Some(4001));
    let g = grpc_call(
        &mut grpc,
        "disconnect",
        &json!({"session_id": session, "code": 4002}),
    )
    .await
    .unwrap();
    assert_eq!(g, json!({"targets": "1"}));
    assert_eq!(close_code(&mut alice).await, Some(4002));
}

#[tokio::test]
async fn invalid_arguments_are_the_same_400s_as_grpc_gives() {
    let gw = Gateway::start(settings()).await;
    let api = gw.api();
    let mut grpc = gw.grpc().await;
    let text = json!({"text": "x"});
    let cases = [
        ("send_to_user", json!({"user_id": "", "payload": text})),
        ("send_to_user", json!({"user_id": "alice"})),
        ("send_to_user", json!({"user_id": "alice", "payload": {}})),
        (
            "send_to_user",
            json!({"user_id": "alice", "payload": {"json": "{not json"}}),
        ),
        (
            "send_to_user",
            json!({"user_id": "a", "payload": text, "idempotency_key": "k".repeat(129)}),
        ),
        (
            "send_to_session",
            json!({"session_id": "", "payload": text}),
        ),
        (
            "send_to_session",
            json!({"session_id": "s".repeat(65), "payload": text}),
        ),
        ("publish", json!({"topic": "has space", "payload": text})),
        (
            "publish",
            json!({"topic": "t".repeat(201), "payload": text}),
        ),
        ("broadcast", json!({})),
        ("disconnect", json!({"code": 4000})),
        ("disconnect", json!({"user_id": "alice", "code": 1001})),
        ("disconnect", json!({"user_id": "alice", "code": 70000})),
        (
            "disconnect",
            json!({"user_id": "alice", "reason": "r".repeat(124)}),
        ),
        ("get_presence", json!({})),
        ("history", json!({})),
        ("history", json!({"topic": "bad topic"})),
        ("history", json!({"user_id": ""})),
    ];
    for (method, body) in cases {
        let r = same_both_ways(&api, &mut grpc, method, body.clone()).await;
        assert_eq!(r.error(), "invalid_argument", "{method} {body}");
    }
    // A stream that keeps no history: FAILED_PRECONDITION, also a 400.
    let r = same_both_ways(&api, &mut grpc, "history", json!({"topic": "news"})).await;
    r.assert_error(400, "failed_precondition");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("history.topics")
    );
    let r = same_both_ways(&api, &mut grpc, "history", json!({"user_id": "alice"})).await;
    r.assert_error(400, "failed_precondition");
}

#[tokio::test]
async fn errors_have_their_documented_status_and_code() {
    let gw = Gateway::start(jwt_settings()).await;
    let api = gw.api();

    // API keys: the same ones as gRPC, in an Authorization header.
    let r = Api::plain(gw.grpc, None).call("stats", &json!({})).await;
    r.assert_error(401, "unauthenticated");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for key in ["wrong-key-wrong-key-0000", ""] {
        let r = Api::plain(gw.grpc, Some(key.into()))
            .call("stats", &json!({}))
            .await;
        r.assert_error(401, "unauthenticated");
    }
    for authorization in [API_KEY.to_owned(), format!("Basic {API_KEY}")] {
        let req = Api::plain(gw.grpc, None)
            .request(reqwest::Method::POST, "/api/v1/stats")
            .header("authorization", authorization)
            .header("content-type", "application/json");
        send(req).await.assert_error(401, "unauthenticated");
    }
    let req = Api::plain(gw.grpc, None)
        .request(reqwest::Method::POST, "/api/v1/stats")
        .header("authorization", format!("bearer {API_KEY}"))
        .header("content-type", "application/json");
    assert_eq!(send(req).await.status, 200, "the scheme in any case");

    // POST only.
    for verb in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FROB"] {
        let verb = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
        let r = send(api.request(verb.clone(), "/api/v1/send_to_user")).await;
        r.assert_error(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("POST"), "{verb}");
    }
    let r = send(api.request(reqwest::Method::HEAD, "/api/v1/stats")).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));

    // Unknown methods, whatever the verb; other paths on the port.
    for path in [
        "/api/v1/nope",
        "/api/v1/SendToUser",
        "/api/v1/",
        "/api/v1/stats/more",
        "/api/v2/stats",
        "/api/",
        "/api",
        "/api/v1/%00%ff",
    ] {
        for verb in [reqwest::Method::POST, reqwest::Method::GET] {
            let r = send(
                api.request(verb, path)
                    .header("content-type", "application/json"),
            )
            .await;
            r.assert_error(404, "unknown_method");
            assert!(r.json["message"].as_str().unwrap().contains("send_to_user"));
        }
    }
    for path in ["/", "/metrics", "/apis", "/wsgate.v1.Gateway"] {
        let r = send(api.request(reqwest::Method::GET, path)).await;
        r.assert_error(404, "not_found");
    }

    // JSON only, as the content type says.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = api
            .request(reqwest::Method::POST, "/api/v1/stats")
            .body("{}");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        send(req).await.assert_error(415, "unsupported_media_type");
    }
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let req = api
            .request(reqwest::Method::POST, "/api/v1/stats")
            .header("content-type", content_type)
            .body("{}");
        assert_eq!(send(req).await.status, 200, "{content_type}");
    }
    // An empty body is `{}`.
    let req = api
        .request(reqwest::Method::POST, "/api/v1/stats")
        .header("content-type", "application/json");
    assert_eq!(send(req).await.status, 200);

    // Bodies that are not the method's request in proto3 JSON.
    for body in [
        "{",
        "[]",
        "\"text\"",
        r#"{"user_id": 7}"#,
        r#"{"user_id": "alice", "user": "bob"}"#,
        r#"{"user_id": "alice"} {}"#,
        "\u{feff}{}",
    ] {
        let req = api
            .request(reqwest::Method::POST, "/api/v1/get_presence")
            .header("content-type", "application/json")
            .body(body);
        send(req).await.assert_error(400, "bad_json");
    }
    let r = api
        .call(
            "send_to_user",
            &json!({"user_id": "a", "idempotencyKey": "k", "idempotency": 1}),
        )
        .await;
    r.assert_error(400, "bad_json");
    assert!(r.text.contains("idempotency"), "names the field: {r:?}");
    let r = api
        .call("history", &json!({"topic": "chat.1", "since_offset": "-1"}))
        .await;
    r.assert_error(400, "bad_json");

    // Larger than the limit: 413, and the server carries on.
    payload_too_large(&gw).await;
    assert_eq!(api.call("stats", &json!({})).await.status, 200);
}

/// Over the 4 MiB limit: refused on the declared length before the body is read, and,
/// without a length (chunked), once the read passes the limit.
async fn payload_too_large(gw: &Gateway) {
    let head = format!(
        "POST /api/v1/send_to_user HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\n"
    );
    let declared = format!("{head}Content-Length: {}\r\n\r\n{{", (4 << 20) + 1);
    let r = raw_request(gw.grpc, declared.as_bytes()).await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let mut chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    chunked.extend_from_slice(format!("{:x}\r\n", 4 << 20).as_bytes());
    chunked.resize(chunked.len() + (4 << 20), b' ');
    chunked.extend_from_slice(b"\r\n2\r\n{}\r\n0\r\n\r\n");
    let r = raw_request(gw.grpc, &chunked).await.unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Over HTTP/2 the whole body goes out and the answer comes back.
    let h2c = Api::with(
        reqwest::Client::builder().http2_prior_knowledge(),
        format!("http://{}", gw.grpc),
        Some(API_KEY.into()),
    );
    let huge = json!({"user_id": "a", "payload": {"text": "x".repeat(5 << 20)}});
    h2c.call("send_to_user", &huge)
        .await
        .assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn grpc_health_reflection_and_the_api_share_one_port() {
    let gw = Gateway::start(jwt_settings()).await;
    let api = gw.api();
    let mut grpc = gw.grpc().await;
    assert_eq!(api.call("stats", &json!({})).await.status, 200);
    assert_eq!(
        grpc.send_to_user("alice", text("x")).await.unwrap().targets,
        0
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        gateway_health(channel.clone()).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let services = reflection_services(channel).await;
    assert!(
        services.contains(&"wsgate.v1.Gateway".to_owned()),
        "{services:?}"
    );

    // The JSON API over HTTP/2 without TLS (prior knowledge), too.
    let h2c = Api::with(
        reqwest::Client::builder().http2_prior_knowledge(),
        format!("http://{}", gw.grpc),
        Some(API_KEY.into()),
    );
    let r = h2c.call("get_presence", &json!({"user_id": "alice"})).await;
    assert_eq!(
        (r.status, r.version),
        (200, reqwest::Version::HTTP_2),
        "{r:?}"
    );

    // gRPC to a method or service that does not exist: UNIMPLEMENTED, as before.
    for path in ["/wsgate.v1.Gateway/Nope", "/no.such.Service/Call"] {
        let req = h2c
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0]);
        let r = send(req).await;
        assert_eq!(r.header("grpc-status"), Some("12"), "{path}: {r:?}");
    }

    // The metrics: one label value for every unknown method, on both sides.
    for name in ["nope", "other", "yet_another"] {
        api.call(name, &json!({}))
            .await
            .assert_error(404, "unknown_method");
    }
    let metrics = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap()
        .body;
    for line in [
        r#"wsgate_http_api_requests_total{code="ok",method="stats"} 1"#,
        r#"wsgate_http_api_requests_total{code="ok",method="get_presence"} 1"#,
        r#"wsgate_http_api_requests_total{code="unknown_method",method="unknown"} 3"#,
        r#"wsgate_grpc_requests_total{code="UNIMPLEMENTED",method="Gateway/unknown"} 1"#,
        r#"wsgate_grpc_requests_total{code="OK",method="Gateway/SendToUser"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("nope"), "{metrics}");
}

#[tokio::test]
async fn the_api_and_grpc_share_the_tls_listener() {
    let certs = tls::self_signed();
    let mut s = jwt_settings();
    s.control.tls_cert_file = Some(certs.cert.clone());
    s.control.tls_key_file = Some(certs.key.clone());
    let gw = Gateway::start(s).await;
    let base = format!("https://localhost:{}", gw.grpc.port());
    let client = |alpn: &[&[u8]]| {
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(&certs.cert_pem, alpn));
        let builder = if alpn == [b"http/1.1".as_slice()] {
            builder.http1_only()
        } else {
            builder
        };
        Api::with_tls(builder.build().unwrap(), base.clone(), Some(API_KEY.into()))
    };
    // An HTTP/1.1-only client (ALPN `http/1.1`), one that prefers h2, one without ALPN.
    for (alpn, version) in [
        (&[b"http/1.1".as_slice()][..], reqwest::Version::HTTP_11),
        (
            &[b"h2".as_slice(), b"http/1.1"][..],
            reqwest::Version::HTTP_2,
        ),
        (&[][..], reqwest::Version::HTTP_11),
    ] {
        let r = client(alpn).call("stats", &json!({})).await;
        assert_eq!((r.status, r.version), (200, version), "{alpn:?}: {r:?}");
        let r = Api::with_tls(client(alpn).client, base.clone(), None)
            .call("stats", &json!({}))
            .await;
        r.assert_error(401, "unauthenticated");
    }

    // gRPC and health over TLS on the same port.
    let channel = tonic::transport::Endpoint::from_shared(base.clone())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&certs.cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = GrpcClient {
        inner: wsgate_proto::pb::gateway_client::GatewayClient::new(channel.clone()),
        key: Some(API_KEY.into()),
    };
    let g = grpc_call(&mut grpc, "stats", &json!({})).await.unwrap();
    assert_eq!(g, client(&[b"h2"]).call("stats", &json!({})).await.json);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );

    // Plain HTTP to the TLS port gets no answer.
    let plain = Api::plain(gw.grpc, Some(API_KEY.into()));
    let r = plain
        .request(reqwest::Method::POST, "/api/v1/stats")
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered on a TLS listener: {r:?}");
}

#[tokio::test]
async fn nothing_a_caller_sends_breaks_the_server() {
    let gw = Gateway::start(settings()).await;
    let api = gw.api();
    let methods = [
        "send_to_user",
        "send_to_session",
        "publish",
        "broadcast",
        "disconnect",
        "get_presence",
        "stats",
        "history",
    ];
    let seeds = [
        r#"{"user_id":"alice","payload":{"text":"hi"},"idempotency_key":"k"}"#,
        r#"{"session_id":"01M8D3709C","payload":{"binary":"AAEC/w=="}}"#,
        r#"{"topic":"chat.1","payload":{"json":"{\"n\":[1,2.5,null]}"}}"#,
        r#"{"user_id":"bob","code":4000,"reason":"bye"}"#,
        r#"{"topic":"chat.1","since_offset":"18446744073709551615","limit":4294967295}"#,
        r#"{"sessionId":"x","payload":{"text":"\ud83d\ude00"}}"#,
    ];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut bodies: Vec<Vec<u8>> = vec![
        "[".repeat(10_000).into_bytes(),
        format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000)).into_bytes(),
        br#"{"since_offset":"99999999999999999999999"}"#.to_vec(),
        br#"{"code":-1}"#.to_vec(),
        br#"{"limit":1.5}"#.to_vec(),
        b"\xff\xfe\x00{}".to_vec(),
        br#"{"payload":{"text":"a","json":"1"}}"#.to_vec(),
        br#"{"payload":{"binary":"not base64!"}}"#.to_vec(),
        br#"{"user_id":null,"payload":null}"#.to_vec(),
    ];
    for _ in 0..400 {
        let mut body = seeds[(next() % seeds.len() as u64) as usize]
            .as_bytes()
            .to_vec();
        for _ in 0..=(next() % 4) {
            let at = (next() % (body.len() as u64 + 1)) as usize;
            const BYTES: &[u8] = b"{}[]\":,\\0-9eEnulltrfa \xff";
            let byte = BYTES[(next() % BYTES.len() as u64) as usize];
            match next() % 3 {
                0 if at < body.len() => body[at] = byte,
                1 if at < body.len() => {
                    body.remove(at);
                }
                _ => body.insert(at, byte),
            }
        }
        bodies.push(body);
    }
    let started = Instant::now();
    for (i, body) in bodies.into_iter().enumerate() {
        let method = methods[i % methods.len()];
        let req = api
            .request(reqwest::Method::POST, &format!("/api/v1/{method}"))
            .header("content-type", "application/json")
            .body(body.clone());
        let r = send(req).await;
        assert!(
            r.status == 200 || (400..500).contains(&r.status),
            "{method} {:?}: {r:?}",
            String::from_utf8_lossy(&body)
        );
        if r.status != 200 {
            assert!(r.json["error"].is_string(), "{r:?}");
        }
    }
    eprintln!("fuzzed in {:?}", started.elapsed());
    assert_eq!(api.call("stats", &json!({})).await.status, 200);
}

#[tokio::test]
async fn the_control_listener_stops_promptly_with_idle_api_connections_open() {
    let gw = Gateway::start(settings()).await;
    let h1 = gw.api();
    let h2c = Api::with(
        reqwest::Client::builder().http2_prior_knowledge(),
        format!("http://{}", gw.grpc),
        Some(API_KEY.into()),
    );
    // Both keep their connection open (keep-alive, an HTTP/2 session) after the call.
    assert_eq!(h1.call("stats", &json!({})).await.status, 200);
    assert_eq!(h2c.call("stats", &json!({})).await.status, 200);
    let mut grpc = gw.grpc().await;
    grpc.send_to_user("alice", text("x")).await.unwrap();
    let addr = gw.grpc;
    let started = Instant::now();
    gw.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn a_backend_outage_is_a_503_as_it_is_unavailable_over_grpc() {
    let mut redis = redis::RedisServer::start();
    let mut s = settings();
    s.redis.url = Some(redis.url());
    let gw = Gateway::start(s).await;
    let api = gw.api();
    let mut grpc = gw.grpc().await;
    let body = json!({"user_id": "alice", "payload": {"text": "x"}});
    same_both_ways(&api, &mut grpc, "send_to_user", body.clone()).await;
    redis.kill();
    let r = same_both_ways(&api, &mut grpc, "send_to_user", body).await;
    r.assert_error(503, "unavailable");
    assert_eq!(
        r.header("retry-after"),
        Some("5"),
        "a 503 says when to retry"
    );
    same_both_ways(&api, &mut grpc, "get_presence", json!({"user_id": "alice"}))
        .await
        .assert_error(503, "unavailable");
}
