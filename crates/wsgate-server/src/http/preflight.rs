//! The preflight chain as tower layers: one [`CheckLayer`] per row of the table in
//! `docs/protocol.md`, each usable and testable on its own, and [`Preflight::wrap`] to stack them
//! on the WebSocket route in the documented order.
//!
//! The rules themselves live in `wsgate_core::preflight` and `wsgate_core::auth` as pure
//! functions; this module only adapts them to requests and turns a [`Rejection`] into a
//! JSON response. A rejected request never reaches the inner service, so nothing after a
//! failed check runs: no rate token is spent on a forbidden origin, no signature is
//! verified for a pod at capacity.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::routing::MethodRouter;
use http::header::{self, HeaderValue};
use http::request::Parts;
use ipnet::IpNet;
use tower::{Layer, Service};
use wsgate_core::admission::ConnectionGauge;
use wsgate_core::auth::{Authenticator, Identity};
use wsgate_core::preflight::{self, HandshakeLimiter, HostPolicy, OriginPolicy, Rejection};
use wsgate_core::revocation::Holder;

use crate::node::now_ms;
use crate::revocations::Revocations;

/// One preflight check over a request. It may read the request and add extensions for
/// later checks and the handler (the client address, the identity).
pub trait Check: Clone + Send + Sync + 'static {
    /// Runs the check; `Err` ends the request with that rejection.
    fn check(&self, req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send;
}

/// A layer that runs one [`Check`] before the inner service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            check: self.0.clone(),
            inner,
        }
    }
}

/// The service made by [`CheckLayer`]: on a rejection it answers with
/// [`rejection_response`] and never calls the inner service.
#[derive(Debug, Clone)]
pub struct CheckService<C, S> {
    check: C,
    inner: S,
}

impl<C, S> Service<Request> for CheckService<C, S>
where
    C: Check,
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let check = self.check.clone();
        // The clone may not be ready; the instance that was polled ready goes into the
        // future and the fresh clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if let Err(rejection) = check.check(&mut req).await {
                tracing::debug!(
                    status = rejection.status.as_u16(),
                    code = rejection.code,
                    "handshake rejected"
                );
                return Ok(rejection_response(rejection));
            }
            inner.call(req).await
        })
    }
}

/// The HTTP response for a rejection: its status and headers, `Content-Type:
/// application/json`, `Cache-Control: no-store`, and `{"error":…,"message":…}`.
pub fn rejection_response(r: Rejection) -> Response {
    let body = r.json_body();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = r.status;
    // For the handshake span and metric, which see only the response.
    response.extensions_mut().insert(RejectionCode(r.code));
    let headers = response.headers_mut();
    for (name, value) in r.headers {
        headers.append(name, value);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The error code of a rejected handshake, carried on the response for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionCode(pub &'static str);

/// Runs `f` on the request's parts in place (a move, not a copy).
fn with_parts<R>(req: &mut Request, f: impl FnOnce(&mut Parts) -> R) -> R {
    let (mut parts, body) = std::mem::take(req).into_parts();
    let out = f(&mut parts);
    *req = Request::from_parts(parts, body);
    out
}

/// A [`Check`] for one of the pure header checks of `wsgate_core::preflight`.
macro_rules! parts_check {
    ($(#[$doc:meta])* $name:ident => $f:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Check for $name {
            fn check(
                &self,
                req: &mut Request,
            ) -> impl Future<Output = Result<(), Rejection>> + Send {
                std::future::ready(with_parts(req, |parts| $f(parts)))
            }
        }
    };
}

parts_check!(
    /// The method is GET (or an HTTP/2 extended CONNECT): 405 with `Allow: GET`.
    MethodCheck => preflight::check_method
);
parts_check!(
    /// The request is HTTP/1.1 or later: 400.
    HttpVersionCheck => preflight::check_http_version
);
parts_check!(
    /// `Upgrade` lists `websocket`: 400.
    UpgradeCheck => preflight::check_upgrade_header
);
parts_check!(
    /// `Connection` lists `upgrade`: 400.
    ConnectionCheck => preflight::check_connection_header
);
parts_check!(
    /// `Sec-WebSocket-Version` is 13: 400 when missing, 426 otherwise.
    WsVersionCheck => preflight::check_ws_version
);
parts_check!(
    /// `Sec-WebSocket-Key` is base64 of 16 bytes: 400.
    WsKeyCheck => preflight::check_ws_key
);

/// The host is in `preflight.allowed_hosts`: 421.
#[derive(Debug, Clone)]
pub struct HostCheck(pub Arc<HostPolicy>);

impl Check for HostCheck {
    fn check(&self, req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send {
        std::future::ready(with_parts(req, |parts| self.0.check(parts)))
    }
}

/// The origin matches `preflight.allowed_origins`: 403.
#[derive(Debug, Clone)]
pub struct OriginCheck(pub Arc<OriginPolicy>);

impl Check for OriginCheck {
    fn check(&self, req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send {
        std::future::ready(with_parts(req, |parts| self.0.check(parts)))
    }
}

/// The client's address after trusted proxies, inserted into the request extensions by
/// [`RateLimitCheck`]. Defined in core, because the connect proxy's authenticator reads
/// it there too.
pub use wsgate_core::preflight::ClientAddr;

/// The TCP peer of a request: `ConnectInfo<SocketAddr>` as the server inserts it (or
/// axum's `MockConnectInfo` in tests).
fn peer_addr(req: &Request) -> SocketAddr {
    let extensions = req.extensions();
    if let Some(ConnectInfo(addr)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        return *addr;
    }
    if let Some(MockConnectInfo(addr)) = extensions.get::<MockConnectInfo<SocketAddr>>() {
        return *addr;
    }
    // Only a server wired without `into_make_service_with_connect_info` gets here. All
    // such requests then share one rate-limit bucket, which is loud enough in tests.
    static MISSING: Once = Once::new();
    MISSING.call_once(|| {
        tracing::debug!("no ConnectInfo<SocketAddr> on the request; using 127.0.0.1 as the peer");
    });
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The per-client-IP handshake rate (`limits.handshakes_per_ip_per_s`): 429 with
/// `Retry-After`. Also inserts [`ClientAddr`].
#[derive(Debug, Clone)]
pub struct RateLimitCheck {
    /// The per-IP limiter, shared by every request.
    pub limiter: Arc<HandshakeLimiter>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted: Arc<[IpNet]>,
}

impl Check for RateLimitCheck {
    fn check(&self, req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send {
        let ip = preflight::client_ip(peer_addr(req), req.headers(), &self.trusted);
        req.extensions_mut().insert(ClientAddr(ip));
        std::future::ready(self.limiter.check(ip))
    }
}

/// The pod is under `limits.max_connections` and not draining: 503 with `Retry-After`.
#[derive(Debug, Clone)]
pub struct CapacityCheck {
    /// The pod's connection gauge.
    pub gauge: Arc<ConnectionGauge>,
    /// `limits.max_connections`.
    pub max: usize,
}

impl Check for CapacityCheck {
    fn check(&self, _req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send {
        std::future::ready(preflight::check_capacity(&self.gauge, self.max))
    }
}

/// The token (or `?user=` with auth off): 401; with a JWKS and no key set yet, 503
/// `auth_unavailable`. Inserts the [`Identity`].
#[derive(Debug, Clone)]
pub struct AuthCheck(pub Arc<Authenticator>);

impl Check for AuthCheck {
    fn check(&self, req: &mut Request) -> impl Future<Output = Result<(), Rejection>> + Send {
        authenticate_into(self.0.clone(), req)
    }
}

/// Authenticates `req` and puts its [`Identity`] in the request extensions. Asynchronous
/// because a JWKS verifier may wait (briefly, bounded) for a refetch on an unknown `kid`.
async fn authenticate_into(auth: Arc<Authenticator>, req: &mut Request) -> Result<(), Rejection> {
    // The parts are moved out and back (not copied) around the wait.
    let (parts, body) = std::mem::take(req).into_parts();
    let verdict = auth.authenticate(&parts).await;
    *req = Request::from_parts(parts, body);
    let identity = verdict?;
    // The handshake span is current: name the user on it.
    tracing::Span::current().record("user.id", identity.user_id.as_str());
    req.extensions_mut().insert(identity);
    Ok(())
}

/// [`AuthCheck`] for the echo endpoint: with auth off and no `?user=`, the user is
/// `echo`; everything else (tokens in JWT mode included) is checked as usual.
#[derive(Debug, Clone)]
pub struct EchoAuthCheck(pub Arc<Authenticator>);

impl Check for EchoAuthCheck {
    async fn check(&self, req: &mut Request) -> Result<(), Rejection> {
        let anonymous = matches!(*self.0, Authenticator::None)
            && !req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|kv| kv.split('=').next() == Some(wsgate_core::auth::USER_QUERY_PARAM));
        if anonymous {
            req.extensions_mut().insert(Identity {
                user_id: "echo".to_owned(),
                topics: wsgate_core::auth::TopicPolicy::Any,
                publish: wsgate_core::auth::TopicPolicy::Patterns(Vec::new()),
                expires_at: None,
                token_id: None,
            });
            return Ok(());
        }
        authenticate_into(self.0.clone(), req).await
    }
}

/// No revocation names the handshake's user or its token's `jti`: 401 `revoked_token`.
/// Reads the [`Identity`] that [`AuthCheck`] inserted; costs at most two lookups in this
/// pod's copy of the revocations (none while there are none), never a round trip.
#[derive(Debug, Clone)]
pub struct RevocationCheck(pub Arc<Revocations>);

impl Check for RevocationCheck {
    async fn check(&self, req: &mut Request) -> Result<(), Rejection> {
        let Some(identity) = req.extensions().get::<Identity>() else {
            tracing::error!("RevocationCheck ran without an Identity; is AuthCheck missing?");
            return Err(Rejection::internal("the gateway is misconfigured"));
        };
        let holder = Holder {
            user_id: &identity.user_id,
            session_id: None,
            token_id: identity.token_id.as_deref(),
        };
        if self.0.revokes(holder, now_ms()) {
            return Err(Rejection::revoked_token());
        }
        Ok(())
    }
}

/// Everything the preflight chain needs, built once at start-up.
#[derive(Clone)]
pub struct Preflight {
    /// `preflight.allowed_hosts`.
    pub host: Arc<HostPolicy>,
    /// `preflight.allowed_origins` and `preflight.require_origin`.
    pub origin: Arc<OriginPolicy>,
    /// `limits.handshakes_per_ip_per_s`.
    pub limiter: Arc<HandshakeLimiter>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
    /// The pod's connection gauge.
    pub gauge: Arc<ConnectionGauge>,
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// `auth`.
    pub authenticator: Arc<Authenticator>,
    /// This pod's copy of the cluster's revocations.
    pub revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preflight")
            .field("host", &self.host)
            .field("origin", &self.origin)
            .field("limiter", &self.limiter)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Preflight {
    /// Wraps the WebSocket route in the whole chain, which then runs in the documented order:
    /// method, HTTP version, Upgrade, Connection, version, key, Host, Origin, rate,
    /// capacity, auth, revocation. The per-user session limit comes right after, in the
    /// handler: the session's registration applies it in one atomic step (a count here
    /// first would cost a registry round trip per handshake and decide nothing). The
    /// route should accept any method (`axum::routing::any`) so that the method check is
    /// the one that answers 405.
    pub fn wrap<S>(&self, route: MethodRouter<S, Infallible>) -> MethodRouter<S, Infallible>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.wrap_with_auth(route, AuthCheck(self.authenticator.clone()))
    }

    /// [`wrap`](Self::wrap) for the conformance echo endpoint: identical, except that with
    /// auth off a request without `?user=` is let in as user `echo` (test suites such as
    /// Autobahn cannot add query parameters).
    pub fn wrap_echo<S>(&self, route: MethodRouter<S, Infallible>) -> MethodRouter<S, Infallible>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.wrap_with_auth(route, EchoAuthCheck(self.authenticator.clone()))
    }

    fn wrap_with_auth<S, A>(
        &self,
        route: MethodRouter<S, Infallible>,
        auth: A,
    ) -> MethodRouter<S, Infallible>
    where
        S: Clone + Send + Sync + 'static,
        A: Check,
    {
        // One layer for the whole chain: each `MethodRouter::layer` boxes its service, so
        // a layer per check cost a clone, a boxed future and a poll level per check on
        // every handshake.
        route.layer::<_, Infallible>(CheckLayer(Chain {
            host: HostCheck(self.host.clone()),
            origin: OriginCheck(self.origin.clone()),
            rate: RateLimitCheck {
                limiter: self.limiter.clone(),
                trusted: self.trusted_proxies.clone(),
            },
            capacity: CapacityCheck {
                gauge: self.gauge.clone(),
                max: self.max_connections,
            },
            auth,
            revocation: RevocationCheck(self.revocations.clone()),
        }))
    }
}

/// The whole preflight as one check, in the documented order; the first rejection ends it.
#[derive(Clone)]
struct Chain<A> {
    host: HostCheck,
    origin: OriginCheck,
    rate: RateLimitCheck,
    capacity: CapacityCheck,
    auth: A,
    revocation: RevocationCheck,
}

impl<A: Check> Check for Chain<A> {
    async fn check(&self, req: &mut Request) -> Result<(), Rejection> {
        MethodCheck.check(req).await?;
        HttpVersionCheck.check(req).await?;
        UpgradeCheck.check(req).await?;
        ConnectionCheck.check(req).await?;
        WsVersionCheck.check(req).await?;
        WsKeyCheck.check(req).await?;
        self.host.check(req).await?;
        self.origin.check(req).await?;
        self.rate.check(req).await?;
        self.capacity.check(req).await?;
        self.auth.check(req).await?;
        self.revocation.check(req).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::any;
    use http::StatusCode;
    use http_body_util::BodyExt as _;
    use std::time::Duration;
    use tower::ServiceExt as _;
    use wsgate_core::auth::{JwtAlgorithm, JwtConfig, JwtKey, mint_hs256};

    const SECRET: &[u8] = b"preflight-layer-test-secret";
    const PEER: &str = "198.51.100.7:40000";

    fn handshake() -> http::request::Builder {
        http::Request::get("/ws")
            .header("host", "gw.example.com")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .extension(ConnectInfo(PEER.parse::<SocketAddr>().unwrap()))
    }

    fn req(builder: http::request::Builder) -> Request {
        builder.body(Body::empty()).unwrap()
    }

    async fn handler(req: Request) -> String {
        let client = req
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0.to_string());
        let user = req
            .extensions()
            .get::<Identity>()
            .map(|i| i.user_id.clone());
        format!("{client:?} {user:?}")
    }

    /// A router with one check in front of a 200 handler.
    fn one<C: Check>(check: C) -> Router {
        Router::new().route("/ws", any(handler).layer(CheckLayer(check)))
    }

    struct Reply {
        status: StatusCode,
        headers: http::HeaderMap,
        body: String,
    }

    impl Reply {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }

        fn assert_rejected(&self, status: StatusCode, code: &str) {
            assert_eq!(self.status, status, "{}", self.body);
            let json = self.json();
            assert_eq!(json["error"], code);
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(self.headers["content-type"], "application/json");
            assert_eq!(self.headers["cache-control"], "no-store");
        }
    }

    async fn send(router: &Router, request: Request) -> Reply {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    fn token(user: &str) -> String {
        mint_hs256(SECRET, user, Duration::from_secs(600), None, None, None).unwrap()
    }

    fn hs256() -> Arc<Authenticator> {
        Arc::new(
            Authenticator::jwt(JwtConfig {
                algorithm: JwtAlgorithm::HS256,
                key: JwtKey::Secret(SECRET.to_vec()),
                issuer: None,
                audience: None,
                leeway: Duration::ZERO,
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn header_checks_pass_and_fail() {
        let ok = req(handshake());
        assert_eq!(send(&one(MethodCheck), ok).await.status, StatusCode::OK);

        let r = send(&one(MethodCheck), req(handshake().method("POST"))).await;
        r.assert_rejected(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.headers["allow"], "GET");

        let v10 = req(handshake().version(http::Version::HTTP_10));
        send(&one(HttpVersionCheck), v10)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "http_version");
        assert_eq!(
            send(&one(HttpVersionCheck), req(handshake())).await.status,
            StatusCode::OK
        );

        let mut no_upgrade = req(handshake());
        no_upgrade.headers_mut().remove("upgrade");
        send(&one(UpgradeCheck), no_upgrade)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "upgrade_required");
        assert_eq!(
            send(&one(UpgradeCheck), req(handshake())).await.status,
            StatusCode::OK
        );

        let mut no_conn = req(handshake());
        no_conn
            .headers_mut()
            .insert("connection", HeaderValue::from_static("keep-alive"));
        send(&one(ConnectionCheck), no_conn)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "connection_upgrade");
        assert_eq!(
            send(&one(ConnectionCheck), req(handshake())).await.status,
            StatusCode::OK
        );

        let mut no_version = req(handshake());
        no_version.headers_mut().remove("sec-websocket-version");
        send(&one(WsVersionCheck), no_version)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "missing_version");
        let mut v8 = req(handshake());
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let r = send(&one(WsVersionCheck), v8).await;
        r.assert_rejected(StatusCode::UPGRADE_REQUIRED, "unsupported_version");
        assert_eq!(r.headers["sec-websocket-version"], "13");
        assert_eq!(
            send(&one(WsVersionCheck), req(handshake())).await.status,
            StatusCode::OK
        );

        let mut bad_key = req(handshake());
        // 15 bytes of key material.
        bad_key.headers_mut().insert(
            "sec-websocket-key",
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAA"),
        );
        send(&one(WsKeyCheck), bad_key)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "bad_key");
        assert_eq!(
            send(&one(WsKeyCheck), req(handshake())).await.status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn host_and_origin() {
        let host = one(HostCheck(Arc::new(
            HostPolicy::new(&["gw.example.com".to_owned()]).unwrap(),
        )));
        assert_eq!(send(&host, req(handshake())).await.status, StatusCode::OK);
        send(&host, req(handshake().header("host", "evil.com")))
            .await
            .assert_rejected(StatusCode::MISDIRECTED_REQUEST, "misdirected_host");

        let origin = one(OriginCheck(Arc::new(
            OriginPolicy::new(&["https://*.example.com".to_owned()], true).unwrap(),
        )));
        let ok = req(handshake().header("origin", "https://app.example.com"));
        assert_eq!(send(&origin, ok).await.status, StatusCode::OK);
        send(
            &origin,
            req(handshake().header("origin", "https://example.com.evil")),
        )
        .await
        .assert_rejected(StatusCode::FORBIDDEN, "origin_forbidden");
        send(&origin, req(handshake()))
            .await
            .assert_rejected(StatusCode::FORBIDDEN, "origin_required");
    }

    #[tokio::test]
    async fn rate_limit_inserts_client_addr_and_rejects_with_retry_after() {
        let check = RateLimitCheck {
            limiter: Arc::new(HandshakeLimiter::new(1, 1)),
            trusted: Arc::from(vec!["198.51.100.0/24".parse::<IpNet>().unwrap()]),
        };
        let router = one(check);
        let first = send(
            &router,
            req(handshake().header("x-forwarded-for", "203.0.113.5")),
        )
        .await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(first.body.contains("203.0.113.5"), "{}", first.body);

        let r = send(
            &router,
            req(handshake().header("x-forwarded-for", "203.0.113.5")),
        )
        .await;
        r.assert_rejected(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
        // Another client behind the same proxy has its own bucket.
        let other = send(
            &router,
            req(handshake().header("x-forwarded-for", "203.0.113.6")),
        )
        .await;
        assert_eq!(other.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn rate_limit_without_connect_info_uses_loopback() {
        let router = one(RateLimitCheck {
            limiter: Arc::new(HandshakeLimiter::new(0, 0)),
            trusted: Arc::from(Vec::new()),
        });
        let request = http::Request::get("/ws").body(Body::empty()).unwrap();
        let reply = send(&router, request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body.contains("127.0.0.1"), "{}", reply.body);
    }

    #[tokio::test]
    async fn capacity() {
        let gauge = Arc::new(ConnectionGauge::new());
        let router = one(CapacityCheck {
            gauge: gauge.clone(),
            max: 1,
        });
        assert_eq!(send(&router, req(handshake())).await.status, StatusCode::OK);
        let _slot = gauge.try_acquire(1).unwrap();
        let r = send(&router, req(handshake())).await;
        r.assert_rejected(StatusCode::SERVICE_UNAVAILABLE, "at_capacity");
        assert_eq!(r.headers["retry-after"], "5");
        gauge.start_draining();
        send(&router, req(handshake()))
            .await
            .assert_rejected(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }

    #[tokio::test]
    async fn auth_inserts_identity_or_rejects() {
        let router = one(AuthCheck(hs256()));
        let t = token("alice");
        let ok = send(
            &router,
            req(handshake().header("authorization", format!("Bearer {t}"))),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK);
        assert!(ok.body.contains("alice"));

        let r = send(&router, req(handshake())).await;
        r.assert_rejected(StatusCode::UNAUTHORIZED, "missing_token");
        assert_eq!(r.headers["www-authenticate"], "Bearer");

        let r = send(
            &router,
            req(handshake().uri("/ws?access_token=not.a.token")),
        )
        .await;
        r.assert_rejected(StatusCode::UNAUTHORIZED, "invalid_token");
        assert_eq!(
            r.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert!(!r.body.contains("not.a.token"));
    }

    struct Chain {
        router: Router,
        gauge: Arc<ConnectionGauge>,
        limiter: Arc<HandshakeLimiter>,
    }

    fn chain(max_connections: usize) -> Chain {
        let gauge = Arc::new(ConnectionGauge::new());
        let limiter = Arc::new(HandshakeLimiter::new(1, 1));
        let preflight = Preflight {
            host: Arc::new(HostPolicy::new(&["gw.example.com".to_owned()]).unwrap()),
            origin: Arc::new(
                OriginPolicy::new(&["https://app.example.com".to_owned()], false).unwrap(),
            ),
            limiter: limiter.clone(),
            trusted_proxies: Arc::from(Vec::new()),
            gauge: gauge.clone(),
            max_connections,
            authenticator: hs256(),
            revocations: Arc::new(Revocations::new()),
        };
        Chain {
            router: Router::new().route("/ws", preflight.wrap(any(handler))),
            gauge,
            limiter,
        }
    }

    fn authed() -> http::request::Builder {
        handshake()
            .header("origin", "https://app.example.com")
            .header("authorization", format!("Bearer {}", token("dave")))
    }

    #[tokio::test]
    async fn full_chain_passes_a_good_handshake() {
        let c = chain(10);
        let reply = send(&c.router, req(authed())).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.body.contains("dave") && reply.body.contains("198.51.100.7"));
    }

    #[tokio::test]
    async fn method_is_checked_before_the_key() {
        let c = chain(10);
        let mut request = req(authed().method("PUT"));
        request.headers_mut().remove("sec-websocket-key");
        let r = send(&c.router, request).await;
        r.assert_rejected(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.headers["allow"], "GET");
    }

    #[tokio::test]
    async fn forbidden_origin_spends_no_rate_token() {
        let c = chain(10);
        for _ in 0..3 {
            let r = send(
                &c.router,
                req(authed().header("origin", "https://evil.com")),
            )
            .await;
            // `header` appends, so the request has two Origin headers: still forbidden.
            r.assert_rejected(StatusCode::FORBIDDEN, "origin_forbidden");
        }
        let mut evil = req(authed());
        evil.headers_mut()
            .insert("origin", HeaderValue::from_static("https://evil.com"));
        send(&c.router, evil)
            .await
            .assert_rejected(StatusCode::FORBIDDEN, "origin_forbidden");
        assert!(c.limiter.is_empty(), "no rate token was taken");
        // The one token of this address is still there.
        assert_eq!(send(&c.router, req(authed())).await.status, StatusCode::OK);
        send(&c.router, req(authed()))
            .await
            .assert_rejected(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }

    #[tokio::test]
    async fn capacity_is_checked_before_auth() {
        let c = chain(1);
        let _slot = c.gauge.try_acquire(1).unwrap();
        // No token at all: auth would say 401, but capacity answers first.
        let mut request = req(authed());
        request.headers_mut().remove("authorization");
        send(&c.router, request)
            .await
            .assert_rejected(StatusCode::SERVICE_UNAVAILABLE, "at_capacity");
    }

    #[tokio::test]
    async fn key_before_host_before_origin() {
        let c = chain(10);
        let mut request = req(authed());
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("evil.com"));
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static("https://evil.com"));
        send(&c.router, request)
            .await
            .assert_rejected(StatusCode::MISDIRECTED_REQUEST, "misdirected_host");

        let mut request = req(authed());
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("evil.com"));
        request.headers_mut().remove("sec-websocket-key");
        send(&c.router, request)
            .await
            .assert_rejected(StatusCode::BAD_REQUEST, "bad_key");
    }
}
