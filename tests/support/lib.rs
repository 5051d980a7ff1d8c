//! Test support for wsgate's end-to-end tests: start the real gateway in-process on
//! `127.0.0.1:0` (or the real binary as a process), and talk to it the way clients do —
//! raw HTTP bytes, a WebSocket client, a tonic gRPC client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod api;
pub mod hostile;
pub mod jitter;
pub mod jwks;
pub mod otlp;
pub mod pods;
pub mod recorder;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsgate_proto::pb;
use wsgate_server::settings::Settings;

/// The HS256 secret [`jwt_settings`] configures.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// An API key for the control plane.
pub const API_KEY: &str = "test-api-key-0123456789";

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Grpc = pb::gateway_client::GatewayClient<tonic::transport::Channel>;

/// Settings for a test gateway: loopback on port 0, auth off, no API keys.
pub fn base_settings() -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    s.server.pod_id = "test-pod".into();
    s.shutdown.grace = Duration::from_secs(2);
    s
}

/// Settings with HS256 JWT auth ([`SECRET`]) and an API key ([`API_KEY`]).
pub fn jwt_settings() -> Settings {
    let mut s = base_settings();
    s.auth.mode = wsgate_server::settings::AuthMode::Jwt;
    s.auth.jwt.secret = Some(SECRET.into());
    s.control.api_keys = vec![API_KEY.into()];
    s
}

/// A token for `user` signed with [`SECRET`].
pub fn token(user: &str, topics: Option<&[&str]>) -> String {
    let topics: Option<Vec<String>> = topics.map(|t| t.iter().map(|s| s.to_string()).collect());
    wsgate_core::auth::mint_hs256(
        SECRET.as_bytes(),
        user,
        Duration::from_secs(3600),
        topics.as_deref(),
        None,
        None,
    )
    .unwrap()
}

/// A gateway running in this process.
pub struct Gateway {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin listener, bound when `settings.server.admin_listen` is set.
    pub admin: Option<SocketAddr>,
    pub settings: Settings,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), wsgate_server::RunError>>>,
}

impl Gateway {
    /// Starts the real server with `settings` on fresh loopback ports.
    pub async fn start(settings: Settings) -> Self {
        let gw = Self::start_unready(settings).await;
        gw.wait_ready().await;
        gw
    }

    /// [`Gateway::start`] without waiting for `/readyz` (a pod that is not ready yet, e.g.
    /// without a JWKS key set).
    pub async fn start_unready(settings: Settings) -> Self {
        let http = TcpListener::bind(settings.server.listen).await.unwrap();
        let grpc = TcpListener::bind(settings.server.grpc_listen)
            .await
            .unwrap();
        let admin = match settings.server.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.unwrap()),
            None => None,
        };
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let admin_addr = admin.as_ref().map(|a| a.local_addr().unwrap());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let config = settings
            .build()
            .unwrap_or_else(|e| panic!("invalid test settings:\n{e}"));
        let task = tokio::spawn(wsgate_server::run(
            wsgate_server::Listeners { http, grpc, admin },
            config,
            shutdown,
        ));
        Self {
            http: http_addr,
            grpc: grpc_addr,
            admin: admin_addr,
            settings,
            stop,
            task: Some(task),
        }
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served: the admin listener when
    /// there is one, else the public one.
    pub fn ops(&self) -> SocketAddr {
        self.admin.unwrap_or(self.http)
    }

    /// Waits until `/readyz` answers 200 (at most [`WAIT`]).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(resp) =
                raw_request(self.ops(), b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await
                && resp.status == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `ws://…{ws_path}` plus `query`.
    pub fn ws_url(&self, query: &str) -> String {
        format!(
            "ws://{}{}{}",
            self.http, self.settings.server.ws_path, query
        )
    }

    /// Connects a WebSocket client as `user` (auth off) and reads the welcome frame.
    pub async fn connect_user(&self, user: &str) -> (Ws, serde_json::Value) {
        self.connect_url(&self.ws_url(&format!("?user={user}")))
            .await
    }

    /// Connects with a bearer token and reads the welcome frame.
    pub async fn connect_token(&self, token: &str) -> (Ws, serde_json::Value) {
        self.connect_url(&self.ws_url(&format!("?access_token={token}")))
            .await
    }

    /// Connects to `url` and reads the welcome frame.
    pub async fn connect_url(&self, url: &str) -> (Ws, serde_json::Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// A gRPC client; adds the API key when the gateway has one.
    pub async fn grpc(&self) -> GrpcClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        GrpcClient {
            inner: pb::gateway_client::GatewayClient::new(channel),
            key: self.settings.control.api_keys.first().cloned(),
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), wsgate_server::RunError> {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("gateway did not stop in time")
            .expect("gateway task panicked")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gRPC client that sends the API key with every call.
pub struct GrpcClient {
    pub inner: Grpc,
    pub key: Option<String>,
}

impl GrpcClient {
    /// Wraps `msg` in a request with the `authorization` metadata.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(k) = &self.key {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        req
    }

    pub async fn send_to_user(
        &mut self,
        user: &str,
        payload: pb::payload::Body,
    ) -> Result<pb::SendResponse, tonic::Status> {
        let r = self.req(pb::SendToUserRequest {
            user_id: user.into(),
            payload: Some(pb::Payload {
                body: Some(payload),
            }),
            idempotency_key: String::new(),
        });
        self.inner.send_to_user(r).await.map(|r| r.into_inner())
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: pb::payload::Body,
    ) -> Result<pb::SendResponse, tonic::Status> {
        let r = self.req(pb::PublishRequest {
            topic: topic.into(),
            payload: Some(pb::Payload {
                body: Some(payload),
            }),
            idempotency_key: String::new(),
        });
        self.inner.publish(r).await.map(|r| r.into_inner())
    }
}

/// Text payload.
pub fn text(s: &str) -> pb::payload::Body {
    pb::payload::Body::Text(s.into())
}

/// Reads the next data frame as JSON (fails on timeout, close or binary).
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    match next_data(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads the next data (text or binary) or close frame, skipping pings/pongs.
pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame within the wait")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Asserts no data frame arrives within `quiet`.
pub async fn assert_silent(ws: &mut Ws, quiet: Duration) {
    let got = tokio::time::timeout(quiet, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    if let Ok(frame) = got {
        panic!("expected silence, got {frame:?}");
    }
}

/// Waits for the close frame and returns its code (skips data frames).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no close within the wait");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends a JSON text frame.
pub async fn send_json(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// A parsed raw HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends raw request bytes on a fresh TCP connection and reads one response head plus
/// body (by Content-Length; a 101 has none). A 101 response leaves the socket open but
/// it is dropped here.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    read_response(&mut stream).await
}

/// Reads one HTTP response (head, then a body by `Content-Length`) from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "body"))??;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A valid upgrade request for `path_and_query`, with `extra` header lines (each ending
/// in `\r\n`) appended.
pub fn upgrade_request(path_and_query: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// The `wsgate` binary built next to the test executable.
pub fn wsgate_binary() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("wsgate");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p wsgate` (the test command does)",
        bin.display()
    );
    bin
}

/// A free loopback port (bound and released; good enough for tests that start a
/// process). Never the same port twice in one test process: the kernel may hand a just
/// released port out again at once, and two servers of one test would then collide.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The health status of `wsgate.v1.Gateway` on a control-plane channel (no API key:
/// Kubernetes probes have none).
pub async fn gateway_health(channel: tonic::transport::Channel) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "wsgate.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// The services server reflection lists on a control-plane channel.
pub async fn reflection_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}
