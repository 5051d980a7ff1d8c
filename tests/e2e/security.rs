//! Security, as tests: TLS on both listeners, token clock checks, what a client can and
//! cannot do through the client protocol, and no secret in the logs.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate_proto::pb;
use wsgate_tests::*;

#[tokio::test]
async fn tls_on_the_websocket_and_grpc_listeners() {
    let tls = tls::self_signed();
    let mut s = base_settings();
    s.server.tls_cert_file = Some(tls.cert.clone());
    s.server.tls_key_file = Some(tls.key.clone());
    s.control.tls_cert_file = Some(tls.cert.clone());
    s.control.tls_key_file = Some(tls.key.clone());
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(wsgate_server::run(
        wsgate_server::Listeners {
            http,
            grpc,
            admin: None,
        },
        s.build().unwrap(),
        stop.clone().cancelled_owned(),
    ));

    // wss://: a TLS client completes the upgrade and gets the welcome frame.
    let connector = tls::connector(&tls.cert_pem);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = loop {
        if let Ok(tcp) = TcpStream::connect(http_addr).await
            && let Ok(s) = connector.connect(name.clone(), tcp).await
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stream
        .write_all(&upgrade_request("/ws?user=alice", ""))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("welcome") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Plaintext to the TLS port gets nothing, and the server carries on.
    assert!(
        raw_request(http_addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .is_err()
    );

    // gRPC over TLS, verified against the certificate.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", grpc_addr.port()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&tls.cert_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = pb::gateway_client::GatewayClient::new(channel);
    let stats = client
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.total_connections, 1);
    // A plaintext gRPC client cannot talk to it.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = pb::gateway_client::GatewayClient::new(channel)
            .stats(pb::StatsRequest {})
            .await;
        assert!(r.is_err(), "plaintext call succeeded on a TLS listener");
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[test]
fn tls_settings_are_validated() {
    let tls = tls::self_signed();
    let mut s = base_settings();
    s.server.tls_cert_file = Some(tls.cert.clone());
    let problems = s.validate();
    assert!(
        problems.iter().any(|p| p.key == "server.tls_key_file"),
        "{problems:?}"
    );
    s.server.tls_key_file = Some(tls.cert.clone());
    let problems = s.validate();
    assert!(
        problems.iter().any(|p| p.key == "server.tls_cert_file"),
        "a certificate is no key: {problems:?}"
    );
}

fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn token_clock_checks_allow_only_the_configured_skew() {
    let mut s = jwt_settings();
    s.auth.jwt.leeway = Duration::from_secs(30);
    let gw = Gateway::start(s).await;
    let t = now();
    for (what, claims, status) in [
        ("valid", serde_json::json!({"sub":"u","exp":t+60}), 101),
        (
            "expired within the skew",
            serde_json::json!({"sub":"u","exp":t-10}),
            101,
        ),
        (
            "expired beyond the skew",
            serde_json::json!({"sub":"u","exp":t-120}),
            401,
        ),
        (
            "not yet valid within the skew",
            serde_json::json!({"sub":"u","exp":t+600,"nbf":t+10}),
            101,
        ),
        (
            "not yet valid beyond the skew",
            serde_json::json!({"sub":"u","exp":t+600,"nbf":t+300}),
            401,
        ),
        ("no exp", serde_json::json!({"sub":"u"}), 401),
    ] {
        let path = format!("/ws?access_token={}", token_with(claims));
        let r = raw_request(gw.http, &upgrade_request(&path, ""))
            .await
            .unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.body);
    }
}

#[tokio::test]
async fn a_client_cannot_act_on_another_users_session() {
    let gw = Gateway::start(jwt_settings()).await;
    let (mut mallory, _) = gw
        .connect_token(&token("mallory", Some(&["public.*"])))
        .await;
    let (mut alice, welcome) = gw
        .connect_token(&token("alice", Some(&["private.alice"])))
        .await;
    let alice_session = welcome["session_id"].as_str().unwrap().to_owned();

    // There is no op that names another session or user: any such frame is refused.
    for attempt in [
        serde_json::json!({"op":"disconnect","session_id":alice_session}),
        serde_json::json!({"op":"send","user_id":"alice","data":"hi"}),
        serde_json::json!({"op":"subscribe","topic":"private.alice"}),
        serde_json::json!({"op":"subscribe","topic":"*"}),
    ] {
        send_json(&mut mallory, attempt.clone()).await;
        let reply = next_json(&mut mallory).await;
        assert_eq!(reply["op"], "error", "{attempt} was not refused: {reply}");
    }
    // alice's private topic does not reach mallory, and alice is untouched.
    send_json(
        &mut alice,
        serde_json::json!({"op":"subscribe","topic":"private.alice"}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["op"], "subscribed");
    let mut grpc = gw.grpc().await;
    let r = grpc.publish("private.alice", text("secret")).await.unwrap();
    assert_eq!(r.targets, 1);
    assert_eq!(next_json(&mut alice).await["data"], "secret");
    assert_silent(&mut mallory, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn no_token_or_api_key_reaches_the_logs() {
    use std::process::{Command, Stdio};
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let api_key = "log-test-api-key-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wsgate.log");
    let mut child = Command::new(wsgate_binary())
        .arg("serve")
        .env_clear()
        .env("POD_NAME", "log-test")
        .env("RUST_LOG", "debug")
        .env("WSGATE__TELEMETRY__LOG_FORMAT", "json")
        .env("WSGATE__SERVER__LISTEN", &http)
        .env("WSGATE__SERVER__GRPC_LISTEN", &grpc)
        .env("WSGATE__AUTH__MODE", "jwt")
        .env("WSGATE__AUTH__JWT__SECRET", SECRET)
        .env("WSGATE__CONTROL__API_KEYS", api_key)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = http.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while raw_request(addr, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Tokens in the query and in the header, good and forged; API keys good and wrong.
    let good = token("alice", None);
    let forged = wsgate_core::auth::mint_hs256(
        b"forged-secret-forged-secret-0123456789",
        "eve",
        Duration::from_secs(60),
        None,
        None,
        None,
    )
    .unwrap();
    eprintln!("connecting");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/ws?access_token={good}"))
            .await
            .unwrap();
    next_json(&mut ws).await;
    eprintln!("connected");
    for t in [&good, &forged] {
        let header = format!("Authorization: Bearer {t}\r\n");
        raw_request(addr, &upgrade_request("/ws", &header))
            .await
            .unwrap();
        raw_request(addr, &upgrade_request(&format!("/ws?access_token={t}"), ""))
            .await
            .unwrap();
    }
    let wrong_key = "wrong-api-key-wrong-api-key-000";
    for key in [api_key, wrong_key] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = GrpcClient {
            inner: pb::gateway_client::GatewayClient::new(channel),
            key: Some(key.into()),
        };
        let _ = client.send_to_user("alice", text("x")).await;
        // And the same key on the HTTP API of the same listener.
        let api = api::Api::plain(grpc.parse().unwrap(), Some(key.into()));
        api.call(
            "send_to_user",
            &serde_json::json!({"user_id": "alice", "payload": {"text": "x"}}),
        )
        .await;
    }
    drop(ws);
    eprintln!("stopping");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(waited.is_some(), "wsgate did not exit after SIGTERM");

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("handshake") || logs.contains("session"),
        "debug logs were written: {logs}"
    );
    for secret in [
        good.as_str(),
        good.rsplit('.').next().unwrap(),
        forged.as_str(),
        forged.rsplit('.').next().unwrap(),
        api_key,
        wrong_key,
        SECRET,
    ] {
        assert!(!logs.contains(secret), "a secret is in the logs: {secret}");
    }
}

#[tokio::test]
async fn a_session_does_not_outlive_its_token() {
    let mut s = jwt_settings();
    s.auth.jwt.leeway = Duration::from_secs(0);
    let gw = Gateway::start(s).await;
    let short = token_with(serde_json::json!({"sub":"brief","exp":now() + 2}));
    let (mut brief, _) = gw.connect_token(&short).await;
    let (mut lasting, _) = gw.connect_token(&token("lasting", None)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        close_code(&mut brief).await,
        Some(3005),
        "closed as token expired"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed {took:?} after connecting with 2 s left on the token"
    );
    // The other session, with a token valid for an hour, carries on.
    send_json(&mut lasting, serde_json::json!({"op":"ping"})).await;
    assert_eq!(next_json(&mut lasting).await["op"], "pong");
}
