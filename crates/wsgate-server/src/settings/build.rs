//! Building: the settings turned into the objects the gateway runs with, every rule
//! checked on the way and every problem reported at once.
//!
//! A value is checked by building what it configures: the Host and Origin policies
//! parse the allow-lists with the same grammar the running checks use, the JWT key file
//! is read once and handed to the verifier, the TLS files are read once and become the
//! listeners' configurations. So `wsgate check-config` and `wsgate serve` cannot
//! disagree, and [`crate::run`] has nothing left that could fail on configuration.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsgate_core::auth::Authenticator;
use wsgate_core::hosts::{HostPolicy, HostPort, OriginPolicy, OriginRule};
use wsgate_core::preflight::HandshakeLimiter;
use wsgate_core::stream::HistoryRules;

use super::sections::{AuthMode, RedisMode, Settings};
use super::{Problem, SettingsError};
use crate::rpc::{RpcClient, RpcConfig, RpcSetupError};
use crate::tls::{CONTROL_ALPN, HTTP_ALPN, PemPair};

/// The configuration the gateway runs with: the settings as loaded, and what they mean
/// built into the parts that use them.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The settings as loaded; plain values (paths, durations, limits) are read from here.
    pub settings: Arc<Settings>,
    /// `preflight.*` and the per-IP rate of `limits.*`.
    pub preflight: PreflightPolicies,
    /// `auth.*`: the authenticator, its key loaded.
    pub authenticator: Arc<Authenticator>,
    /// `session.*` and `auth.jwt.leeway`: what each session runs with.
    pub session: SessionParams,
    /// `session.*`: the WebSocket codec's buffers and limits.
    pub websocket: WebSocketConfig,
    /// `server.tls_*`: TLS for the HTTP/WebSocket listener.
    pub http_tls: Option<Arc<rustls::ServerConfig>>,
    /// `control.tls_*`: TLS for the control listener (gRPC and the HTTP JSON API).
    pub grpc_tls: Option<Arc<rustls::ServerConfig>>,
    /// `redis.*` and `registry.*`: which backends the node uses.
    pub backend: Backend,
    /// `history.*`: which streams keep history.
    pub history: HistoryRules,
    /// `events.*`: the session event log.
    pub events: crate::events::EventOptions,
    /// `webhooks.*`: where session events are POSTed.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// `auth.jwt.jwks_url`: where the fetcher gets the key set the authenticator reads;
    /// `None` without a JWKS.
    pub jwks: Option<crate::jwks::JwksSource>,
    /// `auth.proxy.*`: the connect proxy's backend client, which the authenticator calls
    /// (kept here so the gateway can attach its metrics); `None` in other modes.
    pub connect_proxy: Option<Arc<crate::connect_proxy::HttpConnectProxy>>,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("preflight", &self.preflight)
            .field("session", &self.session)
            .field("http_tls", &self.http_tls.is_some())
            .field("grpc_tls", &self.grpc_tls.is_some())
            .field("backend", &self.backend)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// What each session runs with, from `session.*` and `auth.jwt.leeway`.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// WebSocket Ping every this long.
    pub heartbeat_interval: Duration,
    /// No frame this long after a ping closes the session; also bounds a stalled write
    /// and the wait for the client's close reply.
    pub heartbeat_timeout: Duration,
    /// Outbound queue capacity in messages.
    pub outbound_queue: usize,
    /// Clock skew allowed on token expiry (`auth.jwt.leeway`).
    pub token_leeway: Duration,
    /// Auth off: every session may publish to every topic (`session.client_publish`).
    pub client_publish: bool,
    /// `publish` ops per second per session (`limits.client_publish_per_s`; 0 = no limit).
    pub client_publish_per_s: u32,
    /// Whether permessage-deflate is negotiated with clients that offer it
    /// (`session.compression`).
    pub compression: bool,
    /// Data frames under this size go uncompressed (`session.compression_min_bytes`).
    pub compression_min_bytes: usize,
    /// `rpc.*`: the backend's client, shared by every session; `None` when `rpc.url`
    /// is not set.
    pub rpc: Option<Arc<RpcClient>>,
    /// Verifies the tokens of `refresh` ops, as the handshake verifies the first.
    pub authenticator: Arc<Authenticator>,
}

/// The policies of the preflight chain that come from configuration alone (the chain
/// also needs the node's connection gauge and registry).
#[derive(Debug, Clone)]
pub struct PreflightPolicies {
    /// `preflight.allowed_hosts`.
    pub host: Arc<HostPolicy>,
    /// `preflight.allowed_origins` and `preflight.require_origin`.
    pub origin: Arc<OriginPolicy>,
    /// `preflight.trusted_proxies`.
    pub trusted_proxies: Arc<[IpNet]>,
    /// `limits.handshakes_per_ip_per_s` and `limits.handshake_burst`.
    pub limiter: Arc<HandshakeLimiter>,
}

/// The node's backends.
#[derive(Debug, Clone)]
pub enum Backend {
    /// No `redis.url`: the embedded in-memory broker and registry (one pod).
    Embedded,
    /// Cluster mode over Redis.
    Redis(wsgate_redis::RedisOptions),
}

impl Settings {
    /// Builds the gateway's configuration, or reports every problem at once: bad values,
    /// broken cross-key rules, key and certificate files that cannot be read or used.
    pub fn build(&self) -> Result<GatewayConfig, SettingsError> {
        let mut p = Vec::new();
        self.check_server(&mut p);
        self.check_limits(&mut p);
        self.check_session(&mut p);
        self.check_control(&mut p);
        self.check_redis(&mut p);
        self.check_telemetry(&mut p);
        self.check_registry_and_shutdown(&mut p);
        let history = self.history_rules(&mut p);
        let rpc = self.rpc_client(&mut p);
        let events = self.event_options(&mut p);
        let webhooks = self.webhook_config(&mut p);
        let http_tls = tls_pair(
            &mut p,
            ("server.tls_cert_file", &self.server.tls_cert_file),
            ("server.tls_key_file", &self.server.tls_key_file),
            HTTP_ALPN,
        );
        let grpc_tls = tls_pair(
            &mut p,
            ("control.tls_cert_file", &self.control.tls_cert_file),
            ("control.tls_key_file", &self.control.tls_key_file),
            CONTROL_ALPN,
        );
        let preflight = self.preflight_policies(&mut p);
        let jwks = self.jwks_source(&mut p);
        let proxy = self.connect_proxy(&mut p);
        let authenticator =
            self.authenticator(&mut p, jwks.as_ref(), proxy.as_ref().map(|(_, v)| v));
        let (Some(http_tls), Some(grpc_tls), Some(preflight), Some(authenticator)) =
            (http_tls, grpc_tls, preflight, authenticator)
        else {
            return Err(SettingsError { problems: p });
        };
        if !p.is_empty() {
            return Err(SettingsError { problems: p });
        }
        // No fetcher when auth is off, even if a URL is set.
        let jwks = jwks.filter(|_| matches!(authenticator, Authenticator::Jwks(_)));
        let authenticator = Arc::new(authenticator);
        Ok(GatewayConfig {
            preflight,
            session: self.session_params(rpc, authenticator.clone()),
            authenticator,
            websocket: self.websocket_config(),
            http_tls,
            grpc_tls,
            backend: self.backend(),
            history,
            events,
            webhooks,
            jwks,
            connect_proxy: proxy.map(|(client, _)| client),
            settings: Arc::new(self.clone()),
        })
    }

    /// Every problem [`Settings::build`] finds; empty means the settings are valid.
    pub fn validate(&self) -> Vec<Problem> {
        self.build().err().map(|e| e.problems).unwrap_or_default()
    }

    fn preflight_policies(&self, p: &mut Vec<Problem>) -> Option<PreflightPolicies> {
        let pre = &self.preflight;
        let before = p.len();
        let hosts = parse_each(
            p,
            "preflight.allowed_hosts",
            "host",
            &pre.allowed_hosts,
            HostPort::parse_entry,
        );
        let origins = parse_each(
            p,
            "preflight.allowed_origins",
            "origin",
            &pre.allowed_origins,
            OriginRule::parse,
        );
        (p.len() == before).then(|| PreflightPolicies {
            host: Arc::new(HostPolicy::from_entries(hosts)),
            origin: Arc::new(OriginPolicy::from_rules(origins, pre.require_origin)),
            trusted_proxies: pre.trusted_proxies.clone().into(),
            limiter: Arc::new(HandshakeLimiter::new(
                self.limits.handshakes_per_ip_per_s,
                self.limits.handshake_burst,
            )),
        })
    }

    fn session_params(
        &self,
        rpc: Option<Arc<RpcClient>>,
        authenticator: Arc<Authenticator>,
    ) -> SessionParams {
        let s = &self.session;
        SessionParams {
            heartbeat_interval: s.heartbeat_interval,
            heartbeat_timeout: s.heartbeat_timeout,
            outbound_queue: s.outbound_queue,
            // The connect proxy's `expires_at` is the backend's own decision, not a
            // token's claim checked against skewed clocks: it is kept to the second.
            token_leeway: if self.auth.mode == AuthMode::Proxy {
                Duration::ZERO
            } else {
                self.auth.jwt.leeway
            },
            client_publish: self.session.client_publish,
            client_publish_per_s: self.limits.client_publish_per_s,
            compression: self.session.compression,
            compression_min_bytes: self.session.compression_min_bytes,
            rpc,
            authenticator,
        }
    }

    /// The backend's client when `rpc.url` is set. Problems never quote the URL (it may
    /// carry credentials) or the token.
    fn rpc_client(&self, p: &mut Vec<Problem>) -> Option<Arc<RpcClient>> {
        let r = &self.rpc;
        let before = p.len();
        self.check_rpc(p);
        let raw = r.url.as_deref()?;
        let url = match url::Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Some(u),
            Ok(u) => {
                p.push(Problem::new(
                    "rpc.url",
                    format!(
                        "unsupported URL (scheme {:?}): expected http:// or https:// and a host",
                        u.scheme()
                    ),
                ));
                None
            }
            Err(e) => {
                p.push(Problem::new("rpc.url", format!("invalid URL: {e}")));
                None
            }
        };
        if p.len() > before {
            return None;
        }
        let config = RpcConfig {
            url: url?,
            timeout: r.timeout,
            max_in_flight: r.max_in_flight,
            max_response_bytes: r.max_response_bytes,
            bearer_token: r.bearer_token.clone(),
        };
        match RpcClient::new(config) {
            Ok(client) => Some(Arc::new(client)),
            Err(e) => {
                let key = match e {
                    RpcSetupError::BearerToken => "rpc.bearer_token",
                    RpcSetupError::Client(_) => "rpc.url",
                };
                p.push(Problem::new(key, e.to_string()));
                None
            }
        }
    }

    fn websocket_config(&self) -> WebSocketConfig {
        let s = &self.session;
        WebSocketConfig::default()
            .read_buffer_size(s.read_buffer_bytes)
            .write_buffer_size(s.write_buffer_bytes)
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_frame_bytes))
    }

    fn backend(&self) -> Backend {
        let redis = &self.redis;
        let Some(url) = &redis.url else {
            return Backend::Embedded;
        };
        let topology = match redis.mode {
            RedisMode::Standalone => wsgate_redis::Topology::Standalone,
            RedisMode::Cluster => wsgate_redis::Topology::Cluster,
            RedisMode::Sentinel => wsgate_redis::Topology::Sentinel {
                service: redis.sentinel_service.clone().unwrap_or_default(),
            },
        };
        let mut options =
            wsgate_redis::RedisOptions::new(url.clone(), redis.namespace.clone(), topology);
        options.pod_ttl = self.registry.pod_ttl;
        Backend::Redis(options)
    }
}

/// Parses every entry of a list, one problem per bad entry (`invalid host "x": why`).
fn parse_each<T>(
    p: &mut Vec<Problem>,
    key: &str,
    what: &str,
    entries: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut parsed = Vec::with_capacity(entries.len());
    for entry in entries {
        match parse(entry) {
            Ok(value) => parsed.push(value),
            Err(e) => p.push(Problem::new(key, format!("invalid {what} {entry:?}: {e}"))),
        }
    }
    parsed
}

/// A TLS certificate and key are set together, are read once and fit together.
/// `Some(None)`: TLS is off; `None`: a problem was reported.
fn tls_pair(
    p: &mut Vec<Problem>,
    (cert_key, cert): (&str, &Option<std::path::PathBuf>),
    (key_key, key): (&str, &Option<std::path::PathBuf>),
    alpn: &[&[u8]],
) -> Option<Option<Arc<rustls::ServerConfig>>> {
    let problem = |p: &mut Vec<Problem>, key: &str, message: String| {
        p.push(Problem::new(key, message));
        None
    };
    match (cert, key) {
        (None, None) => Some(None),
        (Some(_), None) => problem(p, key_key, format!("required with {cert_key}")),
        (None, Some(_)) => problem(p, cert_key, format!("required with {key_key}")),
        (Some(c), Some(k)) => {
            let pair = match PemPair::read(c, k) {
                Ok(pair) => pair,
                Err(e) => return problem(p, cert_key, e),
            };
            match pair.server_config(alpn) {
                Ok(config) => Some(Some(config)),
                Err(e) => problem(p, cert_key, e),
            }
        }
    }
}
