//! A JWKS endpoint for tests: serves a key set it can switch at runtime, can play dead
//! (503), and counts the fetches. Keys come from the committed test fixtures in
//! `tests/fixtures/jwks/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wsgate_core::auth::{Grants, JwtAlgorithm, MintKey, mint, public_jwk};

/// Test-only private keys (PEM).
pub const RSA1: &str = include_str!("../fixtures/jwks/rsa1.key.pem");
pub const RSA1_PUB: &str = include_str!("../fixtures/jwks/rsa1.pub.pem");
pub const RSA2: &str = include_str!("../fixtures/jwks/rsa2.key.pem");
pub const EC: &str = include_str!("../fixtures/jwks/ec.key.pem");
pub const ED25519: &str = include_str!("../fixtures/jwks/ed25519.key.pem");

/// The public JWK of a private key, named `kid`.
pub fn jwk(alg: JwtAlgorithm, private_pem: &str, kid: &str) -> Value {
    public_jwk(alg, private_pem.as_bytes(), Some(kid)).unwrap()
}

/// A token for `user`, valid for `ttl`, signed with `private_pem` and naming `kid`.
pub fn signed(
    alg: JwtAlgorithm,
    private_pem: &str,
    kid: Option<&str>,
    user: &str,
    ttl: Duration,
) -> String {
    let key = MintKey {
        algorithm: alg,
        key: private_pem.as_bytes(),
        kid,
    };
    mint(&key, user, ttl, Grants::default(), None, None).unwrap()
}

/// The JWKS endpoint.
pub struct JwksServer {
    pub addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `keys` on a fresh loopback port.
    pub async fn start(keys: Vec<Value>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), keys).await
    }

    /// Serves `keys` on `addr`.
    pub async fn start_on(addr: SocketAddr, keys: Vec<Value>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, u, f) = (keys.clone(), up.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (k, u, f) = (k.clone(), u.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    if !u.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let body = json!({ "keys": *k.lock() }).to_string();
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                        .into_response()
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            keys,
            up,
            fetches,
            task,
        }
    }

    /// The key set URL.
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Serves `keys` from now on.
    pub fn set(&self, keys: Vec<Value>) {
        *self.keys.lock() = keys;
    }

    /// Answers 503 while `false`.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
