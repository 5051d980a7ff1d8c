//! The connect proxy (`auth.mode = "proxy"`) against a real HTTP backend started here:
//! cookie sessions let in with the backend's user and topics, refusals passed on, a
//! backend that is down or hangs answered 503 in time, only the allowed headers
//! forwarded, the cache, and the backend's `expires_at` closing the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate_server::settings::{AuthMode, Settings};
use wsgate_tests::*;

/// What the backend does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answer by the cookie: `sid=<user>` is that user; `sid=nobody` is 401, `sid=banned`
    /// 403.
    ByCookie,
    /// Never answer.
    Hang,
    /// 200 with a body that is not the expected JSON.
    Garbage,
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
struct Seen {
    body: Value,
    headers: HeaderMap,
}

/// The application's backend: answers the gateway's POSTs and records them.
struct AuthBackend {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Seconds from now to the `expires_at` it grants; none when `None`.
    expires_in: Arc<Mutex<Option<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::ByCookie));
        let expires_in = Arc::new(Mutex::new(None));
        let (c, s, b, e) = (
            calls.clone(),
            seen.clone(),
            behaviour.clone(),
            expires_in.clone(),
        );
        let app = axum::Router::new().route(
            "/ws-auth",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (c, s, b, e) = (c.clone(), s.clone(), b.clone(), e.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    s.lock().push(Seen {
                        body: body.clone(),
                        headers,
                    });
                    let behaviour = *b.lock();
                    match behaviour {
                        Behaviour::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            StatusCode::OK.into_response()
                        }
                        Behaviour::Garbage => "{\"user\": tru".into_response(),
                        Behaviour::ByCookie => {
                            let cookie = body["headers"]["cookie"][0].as_str().unwrap_or("");
                            match cookie.strip_prefix("sid=") {
                                Some("nobody") | None => StatusCode::UNAUTHORIZED.into_response(),
                                Some("banned") => StatusCode::FORBIDDEN.into_response(),
                                Some(user) => {
                                    let mut answer = json!({
                                        "user_id": user,
                                        "topics": ["news.*"],
                                        "publish": [],
                                    });
                                    if let Some(secs) = *e.lock() {
                                        answer["expires_at"] = json!(now_s() + secs);
                                    }
                                    axum::Json(answer).into_response()
                                }
                            }
                        }
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            calls,
            seen,
            behaviour,
            expires_in,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/ws-auth", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock() = behaviour;
    }
}

impl Drop for AuthBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn proxy_settings(url: &str) -> Settings {
    let mut s = base_settings();
    s.auth.mode = AuthMode::Proxy;
    s.auth.proxy.url = Some(url.to_owned());
    s.auth.proxy.headers = vec!["Cookie".to_owned()];
    s.auth.proxy.timeout = Duration::from_millis(500);
    // Required with cookies; these clients send no Origin, as non-browser clients do.
    s.preflight.allowed_origins = vec!["https://app.example.com".to_owned()];
    s.limits.handshakes_per_ip_per_s = 0;
    s
}

/// A raw handshake with `extra` header lines; its status and JSON body (`Null` on 101).
async fn handshake(gw: &Gateway, path: &str, extra: &str) -> (u16, Value) {
    let r = raw_request(gw.http, &upgrade_request(path, extra))
        .await
        .unwrap();
    if r.status == 101 {
        return (101, Value::Null);
    }
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    (r.status, r.json())
}

/// Connects over WebSocket with `cookie` and reads the welcome.
async fn connect_with_cookie(gw: &Gateway, cookie: &str) -> (Ws, Value) {
    let mut request = gw.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    (ws, welcome)
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let r = raw_request(gw.http, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    r.body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_cookie_session_gets_the_backends_user_and_topics() {
    let backend = AuthBackend::start().await;
    let gw = Gateway::start(proxy_settings(&backend.url())).await;

    let (mut ws, welcome) = connect_with_cookie(&gw, "sid=alice").await;
    assert_eq!(welcome["user_id"], "alice");
    send_json(
        &mut ws,
        json!({"op": "subscribe", "topic": "news.eu", "id": 1}),
    )
    .await;
    let granted = next_json(&mut ws).await;
    assert_eq!(granted["op"], "subscribed", "{granted}");
    send_json(
        &mut ws,
        json!({"op": "subscribe", "topic": "chat.1", "id": 2}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden_topic", "{refused}");

    // The session has no token to refresh: a clear error, and the session lives on.
    send_json(&mut ws, json!({"op": "refresh", "token": "x.y.z", "id": 3})).await;
    let refresh = next_json(&mut ws).await;
    assert_eq!(refresh["op"], "error", "{refresh}");
    assert!(
        refresh["message"].as_str().unwrap().contains("proxy"),
        "{refresh}"
    );
    send_json(&mut ws, json!({"op": "ping", "id": 4})).await;
    assert_eq!(next_json(&mut ws).await["op"], "pong");

    assert_eq!(backend.calls(), 1);
    assert_eq!(
        metric(
            &gw,
            "wsgate_auth_proxy_requests_total{outcome=\"accepted\"}"
        )
        .await,
        Some(1.0)
    );
    assert!(metric(&gw, "wsgate_auth_proxy_duration_seconds_count").await >= Some(1.0));
}

#[tokio::test]
async fn refusals_pass_the_backends_status_on() {
    let backend = AuthBackend::start().await;
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    for (cookie, status) in [("sid=nobody", 401), ("sid=banned", 403)] {
        let (got, body) = handshake(&gw, "/ws", &format!("Cookie: {cookie}\r\n")).await;
        assert_eq!(got, status, "{cookie}: {body}");
        assert_eq!(body["error"], "proxy_refused", "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // No cookie at all: the backend decides that too.
    assert_eq!(handshake(&gw, "/ws", "").await.0, 401);
    assert_eq!(backend.calls(), 3);
    assert_eq!(
        metric(&gw, "wsgate_auth_proxy_requests_total{outcome=\"refused\"}").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_backend_that_is_down_or_unreadable_is_503_auth_unavailable() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ws-auth", closed.local_addr().unwrap());
    drop(closed);
    let gw = Gateway::start(proxy_settings(&url)).await;
    let (status, body) = handshake(&gw, "/ws", "Cookie: sid=alice\r\n").await;
    assert_eq!((status, &body["error"]), (503, &json!("auth_unavailable")));

    let backend = AuthBackend::start().await;
    backend.set(Behaviour::Garbage);
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    let (status, body) = handshake(&gw, "/ws", "Cookie: sid=alice\r\n").await;
    assert_eq!((status, &body["error"]), (503, &json!("auth_unavailable")));
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        metric(
            &gw,
            "wsgate_auth_proxy_requests_total{outcome=\"unavailable\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_backend_that_hangs_is_503_within_about_the_timeout() {
    let backend = AuthBackend::start().await;
    backend.set(Behaviour::Hang);
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    let started = Instant::now();
    let (status, body) = handshake(&gw, "/ws", "Cookie: sid=alice\r\n").await;
    let took = started.elapsed();
    assert_eq!((status, &body["error"]), (503, &json!("auth_unavailable")));
    // The timeout is 500 ms.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(backend.calls(), 1);
}

#[tokio::test]
async fn only_the_allowed_headers_the_query_and_the_address_reach_the_backend() {
    let backend = AuthBackend::start().await;
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    let (status, _) = handshake(
        &gw,
        "/ws?room=7&lang=en",
        "Cookie: sid=alice\r\nAuthorization: Bearer very-secret\r\nX-Secret: hunter2\r\n",
    )
    .await;
    assert_eq!(status, 101);
    let seen = backend.seen.lock()[0].clone();
    assert_eq!(
        seen.body,
        json!({
            "headers": {"cookie": ["sid=alice"]},
            "query": "room=7&lang=en",
            "remote_addr": "127.0.0.1",
        })
    );
    // Nor as headers of the POST itself.
    for name in ["authorization", "x-secret", "cookie"] {
        assert!(seen.headers.get(name).is_none(), "{name} was forwarded");
    }
    let raw = format!("{:?}", seen.headers);
    assert!(
        !raw.contains("very-secret") && !raw.contains("hunter2"),
        "{raw}"
    );
    assert_eq!(seen.headers["content-type"], "application/json");
}

#[tokio::test]
async fn the_cache_saves_calls_for_the_same_cookie_only() {
    let backend = AuthBackend::start().await;
    let mut s = proxy_settings(&backend.url());
    s.auth.proxy.cache_ttl = Duration::from_secs(60);
    let gw = Gateway::start(s).await;
    for _ in 0..2 {
        let (_ws, welcome) = connect_with_cookie(&gw, "sid=alice").await;
        assert_eq!(welcome["user_id"], "alice");
    }
    assert_eq!(backend.calls(), 1, "the same cookie twice is one call");
    let (_ws, welcome) = connect_with_cookie(&gw, "sid=bob").await;
    assert_eq!(welcome["user_id"], "bob");
    assert_eq!(backend.calls(), 2, "another cookie is another call");
    assert_eq!(
        metric(&gw, "wsgate_auth_proxy_requests_total{outcome=\"cached\"}").await,
        Some(1.0)
    );
    // Refusals are not cached: each is asked again.
    for _ in 0..2 {
        assert_eq!(handshake(&gw, "/ws", "Cookie: sid=nobody\r\n").await.0, 401);
    }
    assert_eq!(backend.calls(), 4);

    // Without a cache every handshake asks.
    let backend = AuthBackend::start().await;
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    for _ in 0..2 {
        connect_with_cookie(&gw, "sid=alice").await;
    }
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn the_backends_expires_at_closes_the_session_with_3005() {
    let backend = AuthBackend::start().await;
    *backend.expires_in.lock() = Some(2);
    let gw = Gateway::start(proxy_settings(&backend.url())).await;
    let started = Instant::now();
    let (mut ws, welcome) = connect_with_cookie(&gw, "sid=alice").await;
    assert_eq!(welcome["user_id"], "alice");
    send_json(&mut ws, json!({"op": "ping", "id": 1})).await;
    assert_eq!(next_json(&mut ws).await["op"], "pong");
    assert_eq!(close_code(&mut ws).await, Some(3005));
    let took = started.elapsed();
    // expires_at is whole seconds: between 1 and 2 s from the answer, no leeway added.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn cheap_checks_answer_before_the_backend_is_asked() {
    let backend = AuthBackend::start().await;
    let mut s = proxy_settings(&backend.url());
    s.limits.handshakes_per_ip_per_s = 1;
    s.limits.handshake_burst = 1;
    let gw = Gateway::start(s).await;
    let (status, body) = handshake(
        &gw,
        "/ws",
        "Cookie: sid=alice\r\nOrigin: https://evil.example.com\r\n",
    )
    .await;
    assert_eq!((status, &body["error"]), (403, &json!("origin_forbidden")));
    let good = "Cookie: sid=alice\r\nOrigin: https://app.example.com\r\n";
    assert_eq!(handshake(&gw, "/ws", good).await.0, 101);
    let (status, body) = handshake(&gw, "/ws", good).await;
    assert_eq!((status, &body["error"]), (429, &json!("rate_limited")));
    assert_eq!(
        backend.calls(),
        1,
        "only the handshake that passed every cheap check"
    );
}

/// The real binary: proxy mode counts as auth on a public listener, and every bad
/// `auth.proxy` key is listed at once, exit 64, the URL never quoted.
#[test]
fn check_config_takes_proxy_mode_on_a_public_listener_and_lists_bad_keys() {
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(wsgate_binary())
            .arg("check-config")
            .env_clear()
            .env("POD_NAME", "proxy-check")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let base = [
        ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
        ("WSGATE__CONTROL__API_KEYS", "0123456789abcdef0123"),
        ("WSGATE__AUTH__MODE", "proxy"),
        (
            "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
            "https://app.example.com",
        ),
    ];
    let mut good = base.to_vec();
    good.extend([
        (
            "WSGATE__AUTH__PROXY__URL",
            "https://auth.example.com/ws-auth",
        ),
        ("WSGATE__AUTH__PROXY__HEADERS", "Cookie"),
    ]);
    let out = check(&good);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");

    let mut bad = base.to_vec();
    bad.extend([
        (
            "WSGATE__AUTH__PROXY__URL",
            "http://hunter2@auth.example.com/ws-auth",
        ),
        ("WSGATE__AUTH__PROXY__HEADERS", "Bad Header"),
        ("WSGATE__AUTH__PROXY__TIMEOUT", "5m"),
    ]);
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{err}");
    for key in ["auth.proxy.url", "auth.proxy.headers", "auth.proxy.timeout"] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}
