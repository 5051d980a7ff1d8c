//! The gRPC control plane's edges: API keys, argument validation, health, reflection,
//! and the HTTP edge's panic safety.

use tonic::Code;
use wsgate_proto::pb;
use wsgate_tests::*;

fn payload(body: pb::payload::Body) -> Option<pb::Payload> {
    Some(pb::Payload { body: Some(body) })
}

#[tokio::test]
async fn calls_without_or_with_a_wrong_key_are_unauthenticated() {
    let gw = Gateway::start(jwt_settings()).await;
    let mut grpc = gw.grpc().await;
    for key in [None, Some("wrong-key-wrong-key-0000"), Some("")] {
        grpc.key = key.map(String::from);
        let err = grpc.send_to_user("alice", text("x")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}: {err:?}");
        let req = grpc.req(pb::StatsRequest {});
        let err = grpc.inner.stats(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    // A raw header that is not a bearer scheme.
    let mut req = tonic::Request::new(pb::StatsRequest {});
    req.metadata_mut()
        .insert("authorization", API_KEY.parse().unwrap());
    assert_eq!(
        grpc.inner.stats(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    grpc.key = Some(API_KEY.into());
    assert_eq!(
        grpc.send_to_user("alice", text("x")).await.unwrap().targets,
        0
    );
}

#[tokio::test]
async fn bad_arguments_are_invalid_argument() {
    let gw = Gateway::start(base_settings()).await;
    let mut grpc = gw.grpc().await;
    let expect_invalid = |what: &str, status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}: a message says why");
        status
    };

    let e = grpc.send_to_user("", text("x")).await.unwrap_err();
    expect_invalid("empty user", e);
    let e = grpc
        .send_to_user("alice", pb::payload::Body::Json("{not json".into()))
        .await
        .unwrap_err();
    let e = expect_invalid("invalid json", e);
    assert!(e.message().contains("json"), "{}", e.message());
    let req = grpc.req(pb::SendToUserRequest {
        user_id: "alice".into(),
        payload: None,
        idempotency_key: String::new(),
    });
    let e = grpc.inner.send_to_user(req).await.unwrap_err();
    expect_invalid("missing payload", e);
    let req = grpc.req(pb::SendToUserRequest {
        user_id: "alice".into(),
        payload: Some(pb::Payload { body: None }),
        idempotency_key: String::new(),
    });
    let e = grpc.inner.send_to_user(req).await.unwrap_err();
    expect_invalid("empty payload", e);

    let req = grpc.req(pb::SendToSessionRequest {
        session_id: String::new(),
        payload: payload(text("x")),
    });
    let e = grpc.inner.send_to_session(req).await.unwrap_err();
    expect_invalid("empty session", e);

    for topic in ["", "has space", &"t".repeat(201)] {
        let e = grpc.publish(topic, text("x")).await.unwrap_err();
        expect_invalid("bad topic", e);
    }

    for (code, reason) in [
        (1001u32, ""),
        (2999, ""),
        (5000, ""),
        (70000, ""),
        (4000, &*"r".repeat(124)),
    ] {
        let req = grpc.req(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::UserId("alice".into())),
            code,
            reason: reason.into(),
        });
        let e = grpc.inner.disconnect(req).await.unwrap_err();
        expect_invalid("bad disconnect", e);
    }
    let req = grpc.req(pb::DisconnectRequest {
        target: None,
        code: 4000,
        reason: String::new(),
    });
    let e = grpc.inner.disconnect(req).await.unwrap_err();
    expect_invalid("no disconnect target", e);

    let req = grpc.req(pb::GetPresenceRequest {
        user_id: String::new(),
    });
    let e = grpc.inner.get_presence(req).await.unwrap_err();
    expect_invalid("empty presence user", e);

    // The server is fine afterwards.
    assert_eq!(
        grpc.send_to_user("alice", text("ok"))
            .await
            .unwrap()
            .targets,
        0
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let gw = Gateway::start(jwt_settings()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Health needs no API key: Kubernetes probes have none.
    assert_eq!(
        gateway_health(channel.clone()).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the Gateway service, so grpcurl works without the proto file.
    let names = reflection_services(channel).await;
    assert!(
        names.contains(&"wsgate.v1.Gateway".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_handler_panic_is_a_json_500_and_the_server_lives_on() {
    use axum::routing::get;
    let app = wsgate_server::http::with_edge_layers(
        axum::Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "fine" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(wsgate_server::http::serve::serve(
        listener,
        app,
        std::time::Duration::from_secs(5),
        None,
        stop.clone(),
    ));
    let r = raw_request(addr, b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "internal");
    assert!(!r.body.contains("handler bug"), "internals stay hidden");
    let r = raw_request(addr, b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "fine"));
    stop.cancel();
    server.await.unwrap();
}

async fn boom() -> &'static str {
    panic!("handler bug")
}
