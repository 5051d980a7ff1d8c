//! The settings as the configuration file and the environment state them: one struct
//! per section, every field with its default and unit, and the enums of the keys that
//! name one of a few choices.
//!
//! These are plain values. What they mean for the running gateway (policies, keys, TLS
//! configurations) is built from them in [`super::build`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::layers::default_pod_id;

/// JWT signature algorithm (`auth.jwt.algorithm`): the one the verifier uses.
pub use wsgate_core::auth::JwtAlgorithm;

/// Declares a settings enum whose values are named in configuration: its string forms
/// (`Display`, `FromStr`, `&'static str`, the list of names for error messages) are
/// derived by strum, with the `#[strum(...)]` attributes given.
macro_rules! choice {
    ($(#[$meta:meta])* pub enum $name:ident { $($body:tt)* }) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            Default,
            strum::Display,
            strum::EnumString,
            strum::IntoStaticStr,
            strum::VariantNames,
        )]
        $(#[$meta])*
        pub enum $name { $($body)* }
    };
}

choice! {
    /// How WebSocket clients authenticate (`auth.mode`).
    #[strum(serialize_all = "lowercase", ascii_case_insensitive)]
    pub enum AuthMode {
        /// `"jwt"`: a JWT is required (header or `access_token` query parameter).
        Jwt,
        /// `"none"`: no authentication; the user id comes from `?user=`. Default.
        #[default]
        None,
        /// `"proxy"`: the handshake's allowed headers, query and address are POSTed to
        /// the application's backend (`auth.proxy.url`), whose answer names the user.
        Proxy,
    }
}

choice! {
    /// Redis deployment kind (`redis.mode`).
    #[strum(serialize_all = "lowercase", ascii_case_insensitive)]
    pub enum RedisMode {
        /// `"standalone"`: a single Redis (or a primary behind a proxy). Default.
        #[default]
        Standalone,
        /// `"cluster"`: Redis Cluster.
        Cluster,
        /// `"sentinel"`: a primary found through Redis Sentinel.
        Sentinel,
    }
}

choice! {
    /// Log output format (`telemetry.log_format`).
    #[strum(serialize_all = "lowercase", ascii_case_insensitive)]
    pub enum LogFormat {
        /// `"pretty"`: human-readable lines. Default.
        #[default]
        Pretty,
        /// `"json"`: one JSON object per line.
        Json,
    }
}

choice! {
    /// OTLP transport (`telemetry.otlp_protocol`).
    #[strum(ascii_case_insensitive)]
    pub enum OtlpProtocol {
        /// `"grpc"`: OTLP over gRPC (port 4317 by convention). Default.
        #[default]
        #[strum(serialize = "grpc")]
        Grpc,
        /// `"http/protobuf"`: OTLP over HTTP with protobuf bodies (port 4318 by convention).
        #[strum(serialize = "http/protobuf")]
        HttpProtobuf,
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    /// `[server]`: listeners and pod identity.
    pub server: ServerSettings,
    /// `[preflight]`: checks on the HTTP upgrade request before the handshake.
    pub preflight: PreflightSettings,
    /// `[auth]`: client authentication.
    pub auth: AuthSettings,
    /// `[limits]`: admission limits.
    pub limits: LimitsSettings,
    /// `[session]`: per-connection behaviour.
    pub session: SessionSettings,
    /// `[control]`: gRPC control plane access.
    pub control: ControlSettings,
    /// `[redis]`: shared backend (cluster mode).
    pub redis: RedisSettings,
    /// `[registry]`: shared pod/session registry (cluster mode).
    pub registry: RegistrySettings,
    /// `[telemetry]`: logs and traces.
    pub telemetry: TelemetrySettings,
    /// `[shutdown]`: graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// `[history]`: which streams keep history for recovery.
    pub history: HistorySettings,
    /// `[rpc]`: calls from clients to the application's backend.
    pub rpc: RpcSettings,
    /// `[events]`: the log of session events.
    pub events: EventsSettings,
    /// `[webhooks]`: session events POSTed to HTTP endpoints.
    pub webhooks: super::webhooks::WebhookSettings,
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// HTTP + WebSocket listener address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// URL path of the WebSocket endpoint; must start with `/`. Default `"/ws"`.
    pub ws_path: String,
    /// Control-plane listener address (gRPC and the HTTP JSON API); must differ from
    /// `listen`. Default `127.0.0.1:50051`.
    pub grpc_listen: SocketAddr,
    /// Operations listener address: when set, `/metrics`, `/healthz` and `/readyz` are
    /// served there (plain HTTP, nothing else) and no longer on `listen`; must differ from
    /// `listen` and `grpc_listen`. Default: unset = those endpoints stay on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Identity of this gateway instance, 1..=128 chars of `[A-Za-z0-9._-]`. Default: the
    /// `POD_NAME` environment variable, else the hostname + `-` + 6 random lowercase
    /// alphanumeric characters (hostname `wsgate` when unknown).
    pub pod_id: String,
    /// Time a client has to send complete request headers (duration, > 0). Default `10s`.
    pub header_read_timeout: Duration,
    /// Serve the try-it page at `/` (HTML and JavaScript built into the binary). Default:
    /// `true` when `listen` is a loopback address (the developer set-up), else `false`;
    /// [`load`] applies that rule when the key is not set, and [`Settings::default`]
    /// listens on loopback, so it is `true` there.
    pub demo_page: bool,
    /// Path of the conformance echo endpoint: the same preflight and session machinery
    /// as `ws_path`, but data frames are echoed back (for the Autobahn test suite). With
    /// `auth.mode = "none"` a missing `?user=` is allowed there (user `echo`). Default:
    /// unset = off.
    pub echo_path: Option<String>,
    /// PEM certificate (chain) for TLS on `listen` (wss://). Set together with
    /// `tls_key_file`. Default: unset = plain TCP (terminate TLS at the load balancer).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`. Default: unset.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            ws_path: "/ws".to_owned(),
            grpc_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051),
            admin_listen: None,
            pod_id: default_pod_id(&HashMap::new()),
            header_read_timeout: Duration::from_secs(10),
            demo_page: true,
            echo_path: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// `[preflight]` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreflightSettings {
    /// Allowed `Origin` values (lowercased): `"*"`, `"scheme://host[:port]"` (exact) or
    /// `"scheme://*.domain[:port]"` (any subdomain); scheme `http` or `https`. An entry
    /// with a port matches only that port, one without matches any port.
    /// Default `[]` (Origin not checked).
    pub allowed_origins: Vec<String>,
    /// Reject upgrade requests without an `Origin` header. Default `false`.
    pub require_origin: bool,
    /// Allowed `Host` values (lowercased), `"host"` or `"host:port"` (IPv6 in brackets).
    /// An entry with a port matches only that port. Default `[]` (Host not checked).
    pub allowed_hosts: Vec<String>,
    /// TCP peers whose `X-Forwarded-For` is honoured (CIDR networks; a bare IP means
    /// /32 or /128). Default `[]` (X-Forwarded-For ignored).
    pub trusted_proxies: Vec<IpNet>,
}

/// `[auth]` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthSettings {
    /// Client authentication mode, `"jwt"`, `"proxy"` or `"none"`. Default `"none"`.
    pub mode: AuthMode,
    /// Allow `mode = "none"` (and a control plane without API keys) on non-loopback
    /// listeners. Default `false`.
    pub allow_insecure: bool,
    /// `[auth.jwt]`: JWT verification.
    pub jwt: JwtSettings,
    /// `[auth.proxy]`: the connect proxy.
    pub proxy: ProxySettings,
}

/// `[auth.proxy]` section: the backend asked at each handshake with `auth.mode = "proxy"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Where the handshake's credentials are POSTed. `https://`, or `http://` to a
    /// loopback host (any host with `auth.allow_insecure`). Required in proxy mode.
    /// Default: unset.
    pub url: Option<String>,
    /// The request headers forwarded (names, case-insensitive), e.g. `["Cookie"]`; no
    /// other header is. At least one in proxy mode. Default `[]`.
    pub headers: Vec<String>,
    /// Longest wait for the backend's whole answer (duration, 100ms to 30s). Default `2s`.
    pub timeout: Duration,
    /// How long an accepted answer is reused for the same credentials, without asking
    /// again (duration, at most 10m; `0s` = no cache). Default `0s`.
    pub cache_ttl: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            url: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::ZERO,
        }
    }
}

/// `[auth.jwt]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    /// HS256 shared secret, at least 32 bytes. Default: unset.
    pub secret: Option<String>,
    /// Path of a PEM public key for RS256 or ES256. Default: unset.
    pub public_key_file: Option<PathBuf>,
    /// Signature algorithm. Default: unset, meaning HS256 when `secret` is set and RS256
    /// when `public_key_file` is set (see [`JwtSettings::effective_algorithm`]).
    pub algorithm: Option<JwtAlgorithm>,
    /// Required `iss` claim. Default: unset (not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim. Default: unset (not checked).
    pub audience: Option<String>,
    /// Allowed clock skew for `exp`/`nbf` (duration, at most 5m). Default `30s`.
    pub leeway: Duration,
    /// URL of a JSON Web Key Set to verify tokens with (RS256, ES256, EdDSA keys chosen
    /// by `kid`); exclusive with `secret` and `public_key_file`. `https://`, or `http://`
    /// to a loopback host (any host with `auth.allow_insecure`). Default: unset.
    pub jwks_url: Option<String>,
    /// How often the key set is fetched again (duration, 1s to 24h). Default `5m`.
    pub jwks_refresh: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            secret: None,
            public_key_file: None,
            algorithm: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
        }
    }
}

impl JwtSettings {
    /// The algorithm in effect: `algorithm` when set, else HS256 with a secret, RS256 with
    /// a public key file, `None` without any key.
    pub fn effective_algorithm(&self) -> Option<JwtAlgorithm> {
        match (self.algorithm, &self.secret, &self.public_key_file) {
            (Some(a), _, _) => Some(a),
            (None, Some(_), _) => Some(JwtAlgorithm::HS256),
            (None, None, Some(_)) => Some(JwtAlgorithm::RS256),
            (None, None, None) => None,
        }
    }
}

/// `[limits]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsSettings {
    /// Sustained WebSocket handshakes per second per client IP (0 = no limit). Default `50`.
    pub handshakes_per_ip_per_s: u32,
    /// Token-bucket size for handshakes per client IP, in handshakes (>= 1 when the rate
    /// is > 0). Default `100`.
    pub handshake_burst: u32,
    /// Maximum concurrent WebSocket connections on this pod (>= 1). Default `100000`.
    pub max_connections: usize,
    /// Maximum concurrent sessions per user id (0 = unlimited). Default `100`.
    pub max_sessions_per_user: usize,
    /// `publish` ops per second per session, with a burst of one second's worth (0 = no
    /// limit). Default `20`.
    pub client_publish_per_s: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            handshakes_per_ip_per_s: 50,
            handshake_burst: 100,
            max_connections: 100_000,
            max_sessions_per_user: 100,
            client_publish_per_s: 20,
        }
    }
}

/// `[session]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// Interval between server pings (duration, > 0). Default `25s`.
    pub heartbeat_interval: Duration,
    /// No frame for this long after a ping closes the session (duration, > 0). Default `10s`.
    pub heartbeat_timeout: Duration,
    /// Largest inbound message in bytes (125 ..= 64 MiB). Default `65536`.
    pub max_message_bytes: usize,
    /// Largest inbound frame in bytes (125 ..= `max_message_bytes`). Default: the value
    /// of `max_message_bytes` (`65536`).
    pub max_frame_bytes: usize,
    /// Outbound messages queued per session before it is closed as a slow consumer
    /// (1 ..= 1000000). Default `256`.
    pub outbound_queue: usize,
    /// Socket read buffer per connection, allocated up front (bytes, >= 256). Default
    /// `1024`: most frames are small, larger ones are read in several calls; every
    /// idle connection pays for it.
    pub read_buffer_bytes: usize,
    /// Socket write buffer per connection in bytes (0 = write eagerly). Default `4096`.
    pub write_buffer_bytes: usize,
    /// With auth off, sessions may publish to every topic with the `publish` op (with
    /// JWT the token's `publish` claim decides). Default `false`.
    pub client_publish: bool,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it. Default `false`.
    pub compression: bool,
    /// Data frames smaller than this go uncompressed even when compression was
    /// negotiated (bytes). Default `256`.
    pub compression_min_bytes: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(10),
            max_message_bytes: 65_536,
            max_frame_bytes: 65_536,
            outbound_queue: 256,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 4096,
            client_publish: false,
            compression: false,
            compression_min_bytes: wsgate_core::deflate::MIN_COMPRESS_BYTES,
        }
    }
}

/// `[control]` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlSettings {
    /// Bearer keys accepted by the control plane (gRPC and the HTTP JSON API), each >= 16
    /// characters. Default `[]` (no authentication on the control plane).
    pub api_keys: Vec<String>,
    /// PEM certificate (chain) for TLS on the control listener (gRPC and the HTTP JSON
    /// API). Set together with `tls_key_file`. Default: unset = plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`. Default: unset.
    pub tls_key_file: Option<PathBuf>,
}

/// `[redis]` section (takes effect in cluster mode).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// Redis URL (`redis://` or `rediss://` for TLS). In cluster mode any node of the
    /// cluster (more with `?node=host:port&node=…`); in sentinel mode the sentinels.
    /// Default: unset = embedded in-memory backend (single pod).
    pub url: Option<String>,
    /// Prefix of every Redis key, `[A-Za-z0-9._-]+`. Default `"wsgate"`.
    pub namespace: String,
    /// `"standalone"`, `"cluster"` or `"sentinel"`. Default `"standalone"`.
    pub mode: RedisMode,
    /// The primary's service name known to the sentinels (required in sentinel mode).
    /// Default: unset.
    pub sentinel_service: Option<String>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            namespace: "wsgate".to_owned(),
            mode: RedisMode::Standalone,
            sentinel_service: None,
        }
    }
}

/// `[registry]` section (takes effect in cluster mode).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySettings {
    /// Liveness TTL of a pod in the shared registry (duration, >= 1s). Default `5s`.
    pub pod_ttl: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            pod_ttl: Duration::from_secs(5),
        }
    }
}

/// `[telemetry]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// OTLP trace exporter endpoint (http/https URL). Default: unset = no trace export
    /// (unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    pub otlp_endpoint: Option<String>,
    /// OTLP transport, `"grpc"` or `"http/protobuf"` (`OTEL_EXPORTER_OTLP_PROTOCOL` wins
    /// when set). Default `"grpc"`.
    pub otlp_protocol: OtlpProtocol,
    /// Fraction of traces sampled (ratio in 0.0 ..= 1.0). Default `1.0`.
    pub sample_ratio: f64,
    /// Log format, `"pretty"` or `"json"`. Default `"pretty"`.
    pub log_format: LogFormat,
    /// Log filter, a `tracing` EnvFilter directive (e.g. `"info,wsgate=debug"`).
    /// Default `"info"`.
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
        }
    }
}

/// `[shutdown]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownSettings {
    /// Period over which sockets are closed with 1001 on shutdown (duration, > 0, <= 1h).
    /// Default `10s`.
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
        }
    }
}

/// `[events]` section: session events (`connected`, `disconnected`, `subscribed`,
/// `unsubscribed`) kept in a capped log that consumers read with `WatchEvents`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsSettings {
    /// Keep session events. Default `true`.
    pub enabled: bool,
    /// Events the log keeps at least: the newest ones (1 ..= 10000000; in Redis the
    /// stream is trimmed by whole nodes, so a few more may be kept). Default `100000`.
    pub max_len: usize,
    /// Topic events (`subscribed`, `unsubscribed`) waiting to be written, per pod, before
    /// new ones are dropped and counted (1 ..= 1000000). Default `10000`.
    pub queue: usize,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_len: 100_000,
            queue: 10_000,
        }
    }
}

/// `[history]` section: streams that keep their last messages, so a client that comes
/// back gets what it missed.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySettings {
    /// Topics that keep history: `[{ pattern = "chat.*", size = 100, ttl = "10m" }, …]`
    /// (in the environment `chat.*=100/10m,news=50`); the first matching pattern wins.
    /// Default `[]` (no topic keeps history).
    pub topics: Vec<TopicHistory>,
    /// `[history.user]`: the users' own streams (what `SendToUser` sends).
    pub user: UserHistory,
    /// How long a publish's `idempotency_key` is remembered (duration, 1s ..= 1h).
    /// Default `2m`.
    pub idempotency_window: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            user: UserHistory::default(),
            idempotency_window: Duration::from_secs(120),
        }
    }
}

/// One `history.topics` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicHistory {
    /// Topic pattern, as in a token's `topics` claim (`chat.*`, `news`, `*`).
    pub pattern: String,
    /// Messages kept per topic (1 ..= 100000).
    pub size: usize,
    /// Kept this long after the topic's last publish (duration, > 0). Default `5m`.
    pub ttl: Duration,
}

/// `[history.user]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct UserHistory {
    /// Messages kept per user (0 = the user streams keep no history; at most 100000).
    /// Default `0`.
    pub size: usize,
    /// Kept this long after the user's last message (duration, > 0). Default `5m`.
    pub ttl: Duration,
}

impl Default for UserHistory {
    fn default() -> Self {
        Self {
            size: 0,
            ttl: Duration::from_secs(300),
        }
    }
}

/// `[rpc]` section: the `rpc` op, a client's call that the gateway POSTs to the
/// application's backend.
#[derive(Clone, PartialEq)]
pub struct RpcSettings {
    /// The backend's URL (`http://` or `https://`; https is recommended off the host or
    /// cluster network). Default: unset = rpc is off (the op answers `rpc_unavailable`).
    pub url: Option<String>,
    /// A call without a complete answer within this long answers `rpc_timeout`
    /// (duration, 1ms ..= 10m). Default `5s`.
    pub timeout: Duration,
    /// Calls one session may have in flight; one more answers `rpc_busy` (1 ..= 1024).
    /// Default `8`.
    pub max_in_flight: usize,
    /// Largest backend answer body in bytes; a larger one answers `rpc_failed`
    /// (1024 ..= 64 MiB). Default `65536`.
    pub max_response_bytes: usize,
    /// Sent to the backend as `Authorization: Bearer <token>` (visible ASCII, no
    /// spaces). Default: unset = no `Authorization` header.
    pub bearer_token: Option<String>,
}

impl Default for RpcSettings {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_secs(5),
            max_in_flight: 8,
            max_response_bytes: 65_536,
            bearer_token: None,
        }
    }
}

impl std::fmt::Debug for RpcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry credentials, and the token is one.
        f.debug_struct("RpcSettings")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_response_bytes", &self.max_response_bytes)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
