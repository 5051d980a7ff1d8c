//! The HTTP JSON API as a backend calls it — reqwest on a real socket — and the same call
//! made over gRPC from the same JSON, so a test can compare the two answers.

use std::net::SocketAddr;

use serde_json::Value;
use wsgate_proto::pb;

use crate::{Gateway, GrpcClient};

/// A client of `POST /api/v1/<method>` on the control listener.
pub struct Api {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:port` or `https://localhost:port`.
    pub base: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub key: Option<String>,
}

/// An HTTP answer: status, headers, and the body as JSON (`Value::Null` when empty or
/// not JSON: `text` has it as sent).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub version: reqwest::Version,
    pub text: String,
    pub json: Value,
}

impl Answer {
    /// The `error` field of an error body.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// Asserts an error answer: status, code, a JSON content type and a message.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.error()), (status, code), "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error says why: {self:?}"
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    /// Plain HTTP/1.1 to `addr`.
    pub fn plain(addr: SocketAddr, key: Option<String>) -> Self {
        Self::with(
            reqwest::Client::builder().http1_only(),
            format!("http://{addr}"),
            key,
        )
    }

    /// A client from `builder` (its TLS set to ring with no roots unless given).
    pub fn with(builder: reqwest::ClientBuilder, base: String, key: Option<String>) -> Self {
        let client = builder
            .tls_backend_preconfigured(crate::tls::client_config("", &[b"h2", b"http/1.1"]))
            .build()
            .unwrap();
        Self { client, base, key }
    }

    /// A client from a builder whose TLS is already set.
    pub fn with_tls(client: reqwest::Client, base: String, key: Option<String>) -> Self {
        Self { client, base, key }
    }

    /// `POST /api/v1/{method}` with `body` as JSON and the API key.
    pub async fn call(&self, method: &str, body: &Value) -> Answer {
        let req = self
            .request(reqwest::Method::POST, &format!("/api/v1/{method}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        send(req).await
    }

    /// A request to `path` with the API key, to finish by hand.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        req
    }
}

/// Sends `req` and reads the whole answer.
pub async fn send(req: reqwest::RequestBuilder) -> Answer {
    let response = tokio::time::timeout(crate::WAIT, req.send())
        .await
        .expect("no HTTP answer within the wait")
        .expect("HTTP request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let version = response.version();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        version,
        text,
        json,
    }
}

impl Gateway {
    /// A client of the HTTP API on the control listener, with the gateway's first API key.
    pub fn api(&self) -> Api {
        Api::plain(self.grpc, self.settings.control.api_keys.first().cloned())
    }
}

/// Calls `method` over gRPC with the request decoded from `body` by the generated proto3
/// JSON mapping; the response as the JSON the HTTP API writes for it.
pub async fn grpc_call(
    grpc: &mut GrpcClient,
    method: &str,
    body: &Value,
) -> Result<Value, tonic::Status> {
    macro_rules! call {
        ($($name:ident: $req:ty),* $(,)?) => {
            match method {
                $(stringify!($name) => {
                    let req: $req = serde_json::from_value(body.clone())
                        .unwrap_or_else(|e| panic!("{method}: not a request: {e}: {body}"));
                    let req = grpc.req(req);
                    let r = grpc.inner.$name(req).await?.into_inner();
                    Ok(serde_json::to_value(&r).unwrap())
                })*
                other => panic!("no gRPC method {other}"),
            }
        };
    }
    call!(
        send_to_user: pb::SendToUserRequest,
        send_to_session: pb::SendToSessionRequest,
        publish: pb::PublishRequest,
        broadcast: pb::BroadcastRequest,
        disconnect: pb::DisconnectRequest,
        get_presence: pb::GetPresenceRequest,
        stats: pb::StatsRequest,
        history: pb::HistoryRequest,
    )
}

/// The HTTP status the API documents for a gRPC status code.
pub fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        InvalidArgument | FailedPrecondition | OutOfRange => 400,
        Unauthenticated => 401,
        NotFound => 404,
        ResourceExhausted => 429,
        Unavailable => 503,
        _ => 500,
    }
}

/// The `error` code the API documents for a gRPC status code: its name in lowercase.
pub fn error_code(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}
