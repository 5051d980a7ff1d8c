//! Typed, validated gateway configuration.
//!
//! Settings are layered with the `config` crate:
//!
//! 1. built-in defaults ([`Settings::default`]),
//! 2. an optional file (TOML, YAML or JSON, chosen by extension),
//! 3. environment variables `WSGATE__SECTION__KEY` (e.g. `WSGATE__REDIS__URL`,
//!    `WSGATE__AUTH__JWT__SECRET`); list values are comma-separated.
//!
//! Keys are case-insensitive. Every key is parsed on its own and every problem (bad
//! value, unknown key, cross-key rule) is reported at once in a [`SettingsError`].
//! The environment is passed in explicitly; nothing here reads or writes the process
//! environment except [`load_from_process_env`].
//!
//! The reference for every key is `docs/configuration.md`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, FileFormat, Map, Source, Value, ValueKind};
use ipnet::IpNet;

/// Prefix of the environment variables that are configuration keys (`WSGATE__SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "WSGATE__";
/// Environment variable naming the configuration file when no `--config` is given.
pub const CONFIG_FILE_ENV: &str = "WSGATE_CONFIG";
/// Environment variable used as the default `server.pod_id` (set by Kubernetes downward API).
pub const POD_NAME_ENV: &str = "POD_NAME";

/// Smallest accepted HS256 secret, in bytes.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Smallest accepted control-plane API key, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

/// Every leaf key that the loader accepts, as `section.key` paths.
pub const KEYS: &[&str] = &[
    "server.listen",
    "server.ws_path",
    "server.echo_path",
    "server.tls_cert_file",
    "server.tls_key_file",
    "server.grpc_listen",
    "server.pod_id",
    "server.header_read_timeout",
    "server.demo_page",
    "preflight.allowed_origins",
    "preflight.require_origin",
    "preflight.allowed_hosts",
    "preflight.trusted_proxies",
    "auth.mode",
    "auth.allow_insecure",
    "auth.jwt.secret",
    "auth.jwt.public_key_file",
    "auth.jwt.algorithm",
    "auth.jwt.issuer",
    "auth.jwt.audience",
    "auth.jwt.leeway",
    "limits.handshakes_per_ip_per_s",
    "limits.handshake_burst",
    "limits.max_connections",
    "limits.max_sessions_per_user",
    "session.heartbeat_interval",
    "session.heartbeat_timeout",
    "session.max_message_bytes",
    "session.max_frame_bytes",
    "session.outbound_queue",
    "session.read_buffer_bytes",
    "session.write_buffer_bytes",
    "control.api_keys",
    "control.tls_cert_file",
    "control.tls_key_file",
    "redis.url",
    "redis.namespace",
    "redis.mode",
    "redis.sentinel_service",
    "registry.pod_ttl",
    "telemetry.otlp_endpoint",
    "telemetry.otlp_protocol",
    "telemetry.sample_ratio",
    "telemetry.log_format",
    "telemetry.log_level",
    "shutdown.grace",
];

/// Every section (table) that the loader accepts.
const SECTIONS: &[&str] = &[
    "server",
    "preflight",
    "auth",
    "auth.jwt",
    "limits",
    "session",
    "control",
    "redis",
    "registry",
    "telemetry",
    "shutdown",
];

// ---------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------

/// One configuration problem: the key path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`server.listen`), or the file path for file-level problems.
    pub key: String,
    /// Human-readable description; never contains secret values.
    pub message: String,
}

impl Problem {
    /// Creates a problem for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading and validating the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    /// All problems, one per bad key or rule (never empty when returned by [`load`]).
    pub problems: Vec<Problem>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------

/// How WebSocket clients authenticate (`auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthMode {
    /// `"jwt"`: a JWT is required (header or `access_token` query parameter).
    Jwt,
    /// `"none"`: no authentication; the user id comes from `?user=`. Default.
    #[default]
    None,
}

impl AuthMode {
    /// The configuration string of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::None => "none",
        }
    }
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jwt" => Ok(AuthMode::Jwt),
            "none" => Ok(AuthMode::None),
            _ => Err(format!("invalid value {s:?}: expected \"jwt\" or \"none\"")),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JWT signature algorithm (`auth.jwt.algorithm`): the one the verifier uses.
pub use wsgate_core::auth::JwtAlgorithm;

/// Redis deployment kind (`redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RedisMode {
    /// `"standalone"`: a single Redis (or a primary behind a proxy). Default.
    #[default]
    Standalone,
    /// `"cluster"`: Redis Cluster.
    Cluster,
    /// `"sentinel"`: a primary found through Redis Sentinel.
    Sentinel,
}

impl RedisMode {
    /// The configuration string of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

impl FromStr for RedisMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "standalone" => Ok(RedisMode::Standalone),
            "cluster" => Ok(RedisMode::Cluster),
            "sentinel" => Ok(RedisMode::Sentinel),
            _ => Err(format!(
                "invalid value {s:?}: expected \"standalone\", \"cluster\" or \"sentinel\""
            )),
        }
    }
}

impl fmt::Display for RedisMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Log output format (`telemetry.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// `"pretty"`: human-readable lines. Default.
    #[default]
    Pretty,
    /// `"json"`: one JSON object per line.
    Json,
}

impl LogFormat {
    /// The configuration string of this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "invalid value {s:?}: expected \"pretty\" or \"json\""
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OTLP transport (`telemetry.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OtlpProtocol {
    /// `"grpc"`: OTLP over gRPC (port 4317 by convention). Default.
    #[default]
    Grpc,
    /// `"http/protobuf"`: OTLP over HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The configuration string of this protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            _ => Err(format!(
                "invalid value {s:?}: expected \"grpc\" or \"http/protobuf\""
            )),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Settings structs
// ---------------------------------------------------------------------------

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
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// HTTP + WebSocket listener address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// URL path of the WebSocket endpoint; must start with `/`. Default `"/ws"`.
    pub ws_path: String,
    /// gRPC control-plane listener address; must differ from `listen`. Default `127.0.0.1:50051`.
    pub grpc_listen: SocketAddr,
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
    /// Client authentication mode, `"jwt"` or `"none"`. Default `"none"`.
    pub mode: AuthMode,
    /// Allow `mode = "none"` (and a control plane without API keys) on non-loopback
    /// listeners. Default `false`.
    pub allow_insecure: bool,
    /// `[auth.jwt]`: JWT verification.
    pub jwt: JwtSettings,
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
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            handshakes_per_ip_per_s: 50,
            handshake_burst: 100,
            max_connections: 100_000,
            max_sessions_per_user: 100,
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
        }
    }
}

/// `[control]` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlSettings {
    /// Bearer keys accepted by the gRPC control plane, each >= 16 characters.
    /// Default `[]` (no authentication on the control plane).
    pub api_keys: Vec<String>,
    /// PEM certificate (chain) for TLS on the gRPC listener. Set together with
    /// `tls_key_file`. Default: unset = plaintext gRPC.
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

// ---------------------------------------------------------------------------
// Pod id default
// ---------------------------------------------------------------------------

/// The default pod id: `POD_NAME` from `env` if set and non-empty, else the hostname
/// (`HOSTNAME` in `env`, else `/etc/hostname`, else `"wsgate"`) + `-` + 6 random
/// lowercase alphanumeric characters.
pub fn default_pod_id(env: &HashMap<String, String>) -> String {
    if let Some(pod) = env.get(POD_NAME_ENV).map(|s| s.trim())
        && !pod.is_empty()
    {
        return pod.to_owned();
    }
    let host = env
        .get("HOSTNAME")
        .map(|h| sanitize_hostname(h))
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| sanitize_hostname(&h))
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "wsgate".to_owned());
    format!("{host}-{}", random_suffix())
}

fn sanitize_hostname(h: &str) -> String {
    h.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(128 - 7)
        .collect()
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    let mut n = hasher.finish();
    let mut out = String::with_capacity(6);
    for _ in 0..6 {
        let idx = (n % ALPHABET.len() as u64) as usize;
        out.push(char::from(ALPHABET[idx]));
        n /= ALPHABET.len() as u64;
    }
    out
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Loads the settings: defaults, then `file` (TOML/YAML/JSON by extension) if given,
/// then the `WSGATE__SECTION__KEY` variables of `env`; validates everything.
///
/// `env` is also consulted for `POD_NAME` and `HOSTNAME` (default `server.pod_id`).
/// Every problem is reported at once in the error.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Settings, SettingsError> {
    let mut file_problems = Vec::new();
    let mut problems = Vec::new();

    let mut settings = Settings::default();
    settings.server.pod_id = default_pod_id(env);

    let mut builder = Config::builder();
    if let Some(path) = file
        && let Some(layer) = read_file_layer(path, &mut file_problems)
    {
        builder = builder.add_source(layer);
    }
    let env_vars: Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("WSGATE")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env_vars)),
    );
    let root = match builder.build().and_then(|c| c.collect()) {
        Ok(root) => root,
        Err(e) => {
            problems.push(Problem::new("configuration", e.to_string()));
            Map::new()
        }
    };

    let mut seen = HashSet::new();
    apply_table("", root, &mut settings, &mut problems, &mut seen);
    if !seen.contains("session.max_frame_bytes") {
        settings.session.max_frame_bytes = settings.session.max_message_bytes;
    }
    if !seen.contains("server.demo_page") {
        settings.server.demo_page = settings.server.listen.ip().is_loopback();
    }

    // Keys whose value did not parse keep their default; do not also report rule
    // violations of that default on the same key.
    let unparsable: HashSet<String> = problems.iter().map(|p| p.key.clone()).collect();
    problems.extend(
        settings
            .validate()
            .into_iter()
            .filter(|p| !unparsable.contains(&p.key)),
    );
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    file_problems.extend(problems);

    if file_problems.is_empty() {
        Ok(settings)
    } else {
        Err(SettingsError {
            problems: file_problems,
        })
    }
}

/// Loads the settings from the process: `file`, else the file named by `WSGATE_CONFIG`
/// (if set and non-empty), then all `WSGATE__*` variables of the process environment;
/// `POD_NAME` gives the default pod id. For the binary; tests should call [`load`].
pub fn load_from_process_env(file: Option<&Path>) -> Result<Settings, SettingsError> {
    let mut env = HashMap::new();
    let mut problems = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Ok(k) = k.into_string() else { continue };
        match v.into_string() {
            Ok(v) => {
                env.insert(k, v);
            }
            Err(_) if k.starts_with(ENV_PREFIX) || k == CONFIG_FILE_ENV => {
                problems.push(Problem::new(
                    env_key_path(&k),
                    format!("environment variable {k} is not valid UTF-8"),
                ));
            }
            Err(_) => {}
        }
    }
    let from_env = env
        .get(CONFIG_FILE_ENV)
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    let path = file.map(Path::to_path_buf).or(from_env);
    match load(path.as_deref(), &env) {
        Ok(s) if problems.is_empty() => Ok(s),
        Ok(_) => Err(SettingsError { problems }),
        Err(mut e) => {
            problems.append(&mut e.problems);
            Err(SettingsError { problems })
        }
    }
}

fn env_key_path(var: &str) -> String {
    match var.strip_prefix(ENV_PREFIX) {
        Some(rest) => rest.to_ascii_lowercase().replace("__", "."),
        None => var.to_owned(),
    }
}

/// An in-memory configuration layer (the parsed file with lowercased keys).
#[derive(Debug, Clone)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn read_file_layer(path: &Path, problems: &mut Vec<Problem>) -> Option<Layer> {
    let key = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let format = match ext.as_str() {
        "toml" => FileFormat::Toml,
        "yaml" | "yml" => FileFormat::Yaml,
        "json" => FileFormat::Json,
        _ => {
            problems.push(Problem::new(
                key,
                format!("unsupported file extension {ext:?}: use .toml, .yaml, .yml or .json"),
            ));
            return None;
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(Problem::new(key, "file not found"));
            return None;
        }
        Err(e) => {
            problems.push(Problem::new(key, format!("cannot read file: {e}")));
            return None;
        }
    };
    let parsed = Config::builder()
        .add_source(config::File::from_str(&text, format))
        .build()
        .and_then(|c| c.collect());
    match parsed {
        Ok(map) => Some(Layer(lowercase_table("", map, problems))),
        Err(e) => {
            problems.push(Problem::new(key, format!("cannot parse file: {e}")));
            None
        }
    }
}

/// Lowercases every table key (keys are case-insensitive), reporting duplicates.
fn lowercase_table(
    prefix: &str,
    table: Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in table {
        let lower = k.to_lowercase();
        let path = join(prefix, &lower);
        let origin = v.origin().map(str::to_owned);
        let v = match v.kind {
            ValueKind::Table(t) => Value::new(
                origin.as_ref(),
                ValueKind::Table(lowercase_table(&path, t, problems)),
            ),
            kind => Value::new(origin.as_ref(), kind),
        };
        if out.insert(lower, v).is_some() {
            problems.push(Problem::new(
                path,
                "key given twice (keys are case-insensitive)",
            ));
        }
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn apply_table(
    prefix: &str,
    table: Map<String, Value>,
    settings: &mut Settings,
    problems: &mut Vec<Problem>,
    seen: &mut HashSet<String>,
) {
    for (k, v) in table {
        let path = join(prefix, &k.to_lowercase());
        if SECTIONS.contains(&path.as_str()) {
            match v.kind {
                ValueKind::Table(t) => apply_table(&path, t, settings, problems, seen),
                ValueKind::Nil => {}
                _ => problems.push(Problem::new(
                    path,
                    "expected a section (table of keys), got a single value",
                )),
            }
            continue;
        }
        match apply_key(settings, &path, v) {
            Some(Ok(())) => {
                seen.insert(path);
            }
            Some(Err(msg)) => {
                seen.insert(path.clone());
                problems.push(Problem::new(path, msg));
            }
            None => {
                let msg = unknown_key_message(&path);
                problems.push(Problem::new(path, msg));
            }
        }
    }
}

fn unknown_key_message(path: &str) -> String {
    let best = KEYS
        .iter()
        .chain(SECTIONS.iter())
        .map(|k| (edit_distance(path, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 => format!("unknown key (did you mean {k}?)"),
        _ => "unknown key".to_owned(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            let del = prev[j + 1] + 1;
            let ins = cur[j] + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses `v` into the field named `key`. `None` for an unknown key.
fn apply_key(s: &mut Settings, key: &str, v: Value) -> Option<Result<(), String>> {
    let r = match key {
        "server.listen" => socket_addr(v).map(|x| s.server.listen = x),
        "server.ws_path" => string(v).map(|x| s.server.ws_path = x),
        "server.echo_path" => opt_string(v).map(|x| s.server.echo_path = x),
        "server.tls_cert_file" => {
            opt_string(v).map(|x| s.server.tls_cert_file = x.map(PathBuf::from))
        }
        "server.tls_key_file" => {
            opt_string(v).map(|x| s.server.tls_key_file = x.map(PathBuf::from))
        }
        "control.tls_cert_file" => {
            opt_string(v).map(|x| s.control.tls_cert_file = x.map(PathBuf::from))
        }
        "control.tls_key_file" => {
            opt_string(v).map(|x| s.control.tls_key_file = x.map(PathBuf::from))
        }
        "server.grpc_listen" => socket_addr(v).map(|x| s.server.grpc_listen = x),
        "server.pod_id" => string(v).map(|x| s.server.pod_id = x),
        "server.header_read_timeout" => duration(v).map(|x| s.server.header_read_timeout = x),
        "server.demo_page" => boolean(v).map(|x| s.server.demo_page = x),
        "preflight.allowed_origins" => string_list(v)
            .map(|x| s.preflight.allowed_origins = x.iter().map(|o| o.to_lowercase()).collect()),
        "preflight.require_origin" => boolean(v).map(|x| s.preflight.require_origin = x),
        "preflight.allowed_hosts" => string_list(v)
            .map(|x| s.preflight.allowed_hosts = x.iter().map(|o| o.to_lowercase()).collect()),
        "preflight.trusted_proxies" => ip_nets(v).map(|x| s.preflight.trusted_proxies = x),
        "auth.mode" => parsed::<AuthMode>(v).map(|x| s.auth.mode = x),
        "auth.allow_insecure" => boolean(v).map(|x| s.auth.allow_insecure = x),
        "auth.jwt.secret" => opt_string(v).map(|x| s.auth.jwt.secret = x),
        "auth.jwt.public_key_file" => {
            opt_string(v).map(|x| s.auth.jwt.public_key_file = x.map(PathBuf::from))
        }
        "auth.jwt.algorithm" => opt_parsed::<JwtAlgorithm>(v).map(|x| s.auth.jwt.algorithm = x),
        "auth.jwt.issuer" => opt_string(v).map(|x| s.auth.jwt.issuer = x),
        "auth.jwt.audience" => opt_string(v).map(|x| s.auth.jwt.audience = x),
        "auth.jwt.leeway" => duration(v).map(|x| s.auth.jwt.leeway = x),
        "limits.handshakes_per_ip_per_s" => {
            uint::<u32>(v).map(|x| s.limits.handshakes_per_ip_per_s = x)
        }
        "limits.handshake_burst" => uint::<u32>(v).map(|x| s.limits.handshake_burst = x),
        "limits.max_connections" => uint::<usize>(v).map(|x| s.limits.max_connections = x),
        "limits.max_sessions_per_user" => {
            uint::<usize>(v).map(|x| s.limits.max_sessions_per_user = x)
        }
        "session.heartbeat_interval" => duration(v).map(|x| s.session.heartbeat_interval = x),
        "session.heartbeat_timeout" => duration(v).map(|x| s.session.heartbeat_timeout = x),
        "session.max_message_bytes" => uint::<usize>(v).map(|x| s.session.max_message_bytes = x),
        "session.max_frame_bytes" => uint::<usize>(v).map(|x| s.session.max_frame_bytes = x),
        "session.outbound_queue" => uint::<usize>(v).map(|x| s.session.outbound_queue = x),
        "session.read_buffer_bytes" => uint::<usize>(v).map(|x| s.session.read_buffer_bytes = x),
        "session.write_buffer_bytes" => uint::<usize>(v).map(|x| s.session.write_buffer_bytes = x),
        "control.api_keys" => string_list(v).map(|x| s.control.api_keys = x),
        "redis.url" => opt_string(v).map(|x| s.redis.url = x),
        "redis.namespace" => string(v).map(|x| s.redis.namespace = x),
        "redis.mode" => parsed::<RedisMode>(v).map(|x| s.redis.mode = x),
        "redis.sentinel_service" => opt_string(v).map(|x| s.redis.sentinel_service = x),
        "registry.pod_ttl" => duration(v).map(|x| s.registry.pod_ttl = x),
        "telemetry.otlp_endpoint" => opt_string(v).map(|x| s.telemetry.otlp_endpoint = x),
        "telemetry.otlp_protocol" => {
            parsed::<OtlpProtocol>(v).map(|x| s.telemetry.otlp_protocol = x)
        }
        "telemetry.sample_ratio" => float(v).map(|x| s.telemetry.sample_ratio = x),
        "telemetry.log_format" => parsed::<LogFormat>(v).map(|x| s.telemetry.log_format = x),
        "telemetry.log_level" => string(v).map(|x| s.telemetry.log_level = x),
        "shutdown.grace" => duration(v).map(|x| s.shutdown.grace = x),
        _ => return None,
    };
    Some(r)
}

// --- per-key value parsers -------------------------------------------------

/// A single scalar as a string (numbers and booleans are converted).
fn scalar(v: Value) -> Result<String, String> {
    match v.kind {
        ValueKind::String(s) => Ok(s),
        ValueKind::Boolean(b) => Ok(b.to_string()),
        ValueKind::I64(n) => Ok(n.to_string()),
        ValueKind::I128(n) => Ok(n.to_string()),
        ValueKind::U64(n) => Ok(n.to_string()),
        ValueKind::U128(n) => Ok(n.to_string()),
        ValueKind::Float(n) => Ok(n.to_string()),
        ValueKind::Nil => Err("expected a value, got nothing (null)".to_owned()),
        ValueKind::Table(_) => Err("expected a single value, got a table".to_owned()),
        ValueKind::Array(_) => Err("expected a single value, got a list".to_owned()),
    }
}

fn string(v: Value) -> Result<String, String> {
    scalar(v)
}

fn opt_string(v: Value) -> Result<Option<String>, String> {
    if matches!(v.kind, ValueKind::Nil) {
        return Ok(None);
    }
    let s = scalar(v)?;
    Ok(if s.trim().is_empty() { None } else { Some(s) })
}

fn socket_addr(v: Value) -> Result<SocketAddr, String> {
    let s = scalar(v)?;
    s.trim().parse().map_err(|_| {
        format!("invalid socket address {s:?} (expected IP:PORT, e.g. \"0.0.0.0:8080\")")
    })
}

fn duration(v: Value) -> Result<Duration, String> {
    let s = scalar(v)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?}: {e} (use e.g. \"25s\", \"1m30s\", \"500ms\")")
    })
}

fn boolean(v: Value) -> Result<bool, String> {
    if let ValueKind::Boolean(b) = v.kind {
        return Ok(b);
    }
    let s = scalar(v)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}: expected true or false")),
    }
}

fn uint<T: TryFrom<u64>>(v: Value) -> Result<T, String> {
    let s = scalar(v)?;
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid number {s:?}: expected a non-negative integer"))?;
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn float(v: Value) -> Result<f64, String> {
    let s = scalar(v)?;
    s.trim()
        .parse()
        .map_err(|_| format!("invalid number {s:?}: expected a decimal number"))
}

fn parsed<T: FromStr<Err = String>>(v: Value) -> Result<T, String> {
    scalar(v)?.parse()
}

fn opt_parsed<T: FromStr<Err = String>>(v: Value) -> Result<Option<T>, String> {
    opt_string(v)?.map(|s| s.parse()).transpose()
}

/// A list: a real list, or a comma-separated string (environment variables).
/// Entries are trimmed; empty entries are dropped.
fn string_list(v: Value) -> Result<Vec<String>, String> {
    let raw: Vec<String> = match v.kind {
        ValueKind::Nil => Vec::new(),
        ValueKind::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| scalar(item).map_err(|e| format!("entry {i}: {e}")))
            .collect::<Result<_, _>>()?,
        kind => scalar(Value::new(None, kind))?
            .split(',')
            .map(str::to_owned)
            .collect(),
    };
    Ok(raw
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

fn ip_nets(v: Value) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for entry in string_list(v)? {
        if let Ok(net) = entry.parse::<IpNet>() {
            nets.push(net);
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else {
            bad.push(format!("{entry:?}"));
        }
    }
    if bad.is_empty() {
        Ok(nets)
    } else {
        Err(format!(
            "invalid IP network {} (expected CIDR like \"10.0.0.0/8\" or a bare IP)",
            bad.join(", ")
        ))
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// A TLS certificate and key are set together, and they load.
fn tls_pair(
    p: &mut Vec<Problem>,
    (cert_key, cert): (&str, &Option<PathBuf>),
    (key_key, key): (&str, &Option<PathBuf>),
) {
    match (cert, key) {
        (None, None) => {}
        (Some(_), None) => p.push(Problem::new(key_key, format!("required with {cert_key}"))),
        (None, Some(_)) => p.push(Problem::new(cert_key, format!("required with {key_key}"))),
        (Some(c), Some(k)) => {
            if let Err(e) = crate::tls::read_pem(c, k) {
                p.push(Problem::new(cert_key, e));
            }
        }
    }
}

impl Settings {
    /// Checks every value rule and cross-key rule (ranges, syntax of origins/hosts/URLs,
    /// the secure-default rule, JWT key consistency including reading the public key
    /// file). Returns every problem; empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        self.validate_server(&mut p);
        self.validate_preflight(&mut p);
        self.validate_auth(&mut p);
        self.validate_limits(&mut p);
        self.validate_session(&mut p);
        self.validate_control(&mut p);
        self.validate_redis(&mut p);
        self.validate_telemetry(&mut p);
        if self.registry.pod_ttl < Duration::from_secs(1) {
            p.push(Problem::new(
                "registry.pod_ttl",
                format!(
                    "must be at least 1s, got {}",
                    fmt_duration(self.registry.pod_ttl)
                ),
            ));
        }
        if self.shutdown.grace.is_zero() || self.shutdown.grace > Duration::from_secs(3600) {
            p.push(Problem::new(
                "shutdown.grace",
                format!(
                    "must be greater than 0 and at most 1h, got {}",
                    fmt_duration(self.shutdown.grace)
                ),
            ));
        }
        p
    }

    fn validate_server(&self, p: &mut Vec<Problem>) {
        let s = &self.server;
        if !s.ws_path.starts_with('/') {
            p.push(Problem::new(
                "server.ws_path",
                format!("must start with '/', got {:?}", s.ws_path),
            ));
        } else if s
            .ws_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            p.push(Problem::new(
                "server.ws_path",
                format!(
                    "must be a plain path without spaces, '?' or '#', got {:?}",
                    s.ws_path
                ),
            ));
        }
        if let Some(echo) = &s.echo_path {
            let reserved = ["/healthz", "/readyz", "/metrics"];
            if !echo.starts_with('/')
                || echo
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
            {
                p.push(Problem::new(
                    "server.echo_path",
                    format!("must be a plain path starting with '/', got {echo:?}"),
                ));
            } else if *echo == s.ws_path || reserved.contains(&echo.as_str()) {
                p.push(Problem::new(
                    "server.echo_path",
                    format!("{echo:?} is already taken (server.ws_path or a built-in endpoint)"),
                ));
            } else if s.demo_page && (echo == "/" || echo.starts_with("/demo/")) {
                p.push(Problem::new(
                    "server.echo_path",
                    format!("{echo:?} is taken by the try-it page; set server.demo_page = false"),
                ));
            }
        }
        tls_pair(
            p,
            ("server.tls_cert_file", &s.tls_cert_file),
            ("server.tls_key_file", &s.tls_key_file),
        );
        tls_pair(
            p,
            ("control.tls_cert_file", &self.control.tls_cert_file),
            ("control.tls_key_file", &self.control.tls_key_file),
        );
        if s.listen == s.grpc_listen && s.listen.port() != 0 {
            p.push(Problem::new(
                "server.grpc_listen",
                format!("must differ from server.listen (both are {})", s.listen),
            ));
        }
        if s.pod_id.is_empty() || s.pod_id.len() > 128 || !s.pod_id.chars().all(is_name_char) {
            p.push(Problem::new(
                "server.pod_id",
                format!(
                    "must be 1 to 128 characters of [A-Za-z0-9._-], got {:?}",
                    s.pod_id
                ),
            ));
        }
        if s.header_read_timeout.is_zero() {
            p.push(Problem::new(
                "server.header_read_timeout",
                "must be greater than 0",
            ));
        }
    }

    fn validate_preflight(&self, p: &mut Vec<Problem>) {
        for origin in &self.preflight.allowed_origins {
            if let Err(e) = check_origin_pattern(origin) {
                p.push(Problem::new(
                    "preflight.allowed_origins",
                    format!("invalid origin {origin:?}: {e}"),
                ));
            }
        }
        for host in &self.preflight.allowed_hosts {
            if let Err(e) = split_host_port(host).and_then(|(h, _)| check_host(h)) {
                p.push(Problem::new(
                    "preflight.allowed_hosts",
                    format!("invalid host {host:?}: {e}"),
                ));
            }
        }
    }

    fn validate_auth(&self, p: &mut Vec<Problem>) {
        let auth = &self.auth;
        let jwt = &auth.jwt;
        if auth.mode == AuthMode::None
            && !auth.allow_insecure
            && !self.server.listen.ip().is_loopback()
        {
            p.push(Problem::new(
                "auth.mode",
                format!(
                    "auth is off but the WebSocket listener {} is not on loopback; \
                     set auth.mode = \"jwt\" or auth.allow_insecure = true",
                    self.server.listen
                ),
            ));
        }
        if let Some(secret) = &jwt.secret
            && secret.len() < MIN_JWT_SECRET_BYTES
        {
            p.push(Problem::new(
                "auth.jwt.secret",
                format!(
                    "too short ({} bytes); an HS256 secret needs at least {MIN_JWT_SECRET_BYTES} bytes",
                    secret.len()
                ),
            ));
        }
        if jwt.leeway > Duration::from_secs(300) {
            p.push(Problem::new(
                "auth.jwt.leeway",
                format!("must be at most 5m, got {}", fmt_duration(jwt.leeway)),
            ));
        }
        for (key, value) in [
            ("auth.jwt.issuer", &jwt.issuer),
            ("auth.jwt.audience", &jwt.audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                p.push(Problem::new(key, "must not be empty when set"));
            }
        }
        if auth.mode != AuthMode::Jwt {
            return;
        }
        match (&jwt.secret, &jwt.public_key_file) {
            (None, None) => p.push(Problem::new(
                "auth.jwt",
                "auth.mode = \"jwt\" needs a key: set auth.jwt.secret (HS256) or \
                 auth.jwt.public_key_file (RS256/ES256)",
            )),
            (Some(_), Some(_)) => p.push(Problem::new(
                "auth.jwt",
                "set only one of auth.jwt.secret and auth.jwt.public_key_file",
            )),
            (Some(_), None) => {
                if let Some(alg) = jwt.algorithm.filter(|a| a.uses_public_key()) {
                    p.push(Problem::new(
                        "auth.jwt.algorithm",
                        format!(
                            "{alg} needs auth.jwt.public_key_file; auth.jwt.secret is only for HS256"
                        ),
                    ));
                }
            }
            (None, Some(path)) => {
                let alg = jwt.algorithm.unwrap_or(JwtAlgorithm::RS256);
                if !alg.uses_public_key() {
                    p.push(Problem::new(
                        "auth.jwt.algorithm",
                        "HS256 needs auth.jwt.secret; auth.jwt.public_key_file is only for RS256 or ES256",
                    ));
                } else if let Err(e) = check_public_key_file(path, alg) {
                    p.push(Problem::new("auth.jwt.public_key_file", e));
                }
            }
        }
    }

    fn validate_limits(&self, p: &mut Vec<Problem>) {
        let l = &self.limits;
        if l.handshakes_per_ip_per_s > 0 && l.handshake_burst == 0 {
            p.push(Problem::new(
                "limits.handshake_burst",
                "must be at least 1 when limits.handshakes_per_ip_per_s is greater than 0",
            ));
        }
        if l.max_connections == 0 {
            p.push(Problem::new("limits.max_connections", "must be at least 1"));
        }
    }

    fn validate_session(&self, p: &mut Vec<Problem>) {
        const MIN_FRAME: usize = 125;
        const MAX_MESSAGE: usize = 64 * 1024 * 1024;
        let s = &self.session;
        if s.heartbeat_interval.is_zero() {
            p.push(Problem::new(
                "session.heartbeat_interval",
                "must be greater than 0",
            ));
        }
        if s.heartbeat_timeout.is_zero() {
            p.push(Problem::new(
                "session.heartbeat_timeout",
                "must be greater than 0",
            ));
        }
        let message_ok = (MIN_FRAME..=MAX_MESSAGE).contains(&s.max_message_bytes);
        if !message_ok {
            p.push(Problem::new(
                "session.max_message_bytes",
                format!(
                    "must be between {MIN_FRAME} and {MAX_MESSAGE} (64 MiB), got {}",
                    s.max_message_bytes
                ),
            ));
        }
        if s.max_frame_bytes < MIN_FRAME {
            p.push(Problem::new(
                "session.max_frame_bytes",
                format!("must be at least {MIN_FRAME}, got {}", s.max_frame_bytes),
            ));
        } else if message_ok && s.max_frame_bytes > s.max_message_bytes {
            p.push(Problem::new(
                "session.max_frame_bytes",
                format!(
                    "must not exceed session.max_message_bytes ({}), got {}",
                    s.max_message_bytes, s.max_frame_bytes
                ),
            ));
        }
        if !(1..=1_000_000).contains(&s.outbound_queue) {
            p.push(Problem::new(
                "session.outbound_queue",
                format!("must be between 1 and 1000000, got {}", s.outbound_queue),
            ));
        }
        if s.read_buffer_bytes < 256 {
            p.push(Problem::new(
                "session.read_buffer_bytes",
                format!("must be at least 256, got {}", s.read_buffer_bytes),
            ));
        }
    }

    fn validate_control(&self, p: &mut Vec<Problem>) {
        for (i, key) in self.control.api_keys.iter().enumerate() {
            if key.chars().count() < MIN_API_KEY_CHARS {
                p.push(Problem::new(
                    "control.api_keys",
                    format!(
                        "entry {} is shorter than {MIN_API_KEY_CHARS} characters",
                        i + 1
                    ),
                ));
            }
        }
        if self.control.api_keys.is_empty()
            && !self.auth.allow_insecure
            && !self.server.grpc_listen.ip().is_loopback()
        {
            p.push(Problem::new(
                "control.api_keys",
                format!(
                    "the control plane has no API keys but the gRPC listener {} is not on \
                     loopback; set control.api_keys or auth.allow_insecure = true",
                    self.server.grpc_listen
                ),
            ));
        }
    }

    fn validate_redis(&self, p: &mut Vec<Problem>) {
        if let Some(raw) = &self.redis.url {
            match url::Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
                Ok(u) => p.push(Problem::new(
                    "redis.url",
                    format!(
                        "unsupported scheme {:?}: expected redis:// or rediss://",
                        u.scheme()
                    ),
                )),
                // The URL may carry a password: do not echo it.
                Err(e) => p.push(Problem::new("redis.url", format!("invalid URL: {e}"))),
            }
        }
        match (&self.redis.mode, &self.redis.sentinel_service) {
            (RedisMode::Sentinel, None) => p.push(Problem::new(
                "redis.sentinel_service",
                "required when redis.mode = \"sentinel\": the primary's name known to the sentinels",
            )),
            (RedisMode::Sentinel, Some(name)) if name.trim().is_empty() => p.push(Problem::new(
                "redis.sentinel_service",
                "must not be empty",
            )),
            _ => {}
        }
        let ns = &self.redis.namespace;
        if ns.is_empty() || !ns.chars().all(is_name_char) {
            p.push(Problem::new(
                "redis.namespace",
                format!("must be 1 or more characters of [A-Za-z0-9._-], got {ns:?}"),
            ));
        }
    }

    fn validate_telemetry(&self, p: &mut Vec<Problem>) {
        let t = &self.telemetry;
        if let Some(raw) = &t.otlp_endpoint {
            match url::Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                Ok(_) => p.push(Problem::new(
                    "telemetry.otlp_endpoint",
                    format!("invalid endpoint {raw:?}: expected an http:// or https:// URL"),
                )),
                Err(e) => p.push(Problem::new(
                    "telemetry.otlp_endpoint",
                    format!("invalid URL {raw:?}: {e}"),
                )),
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            p.push(Problem::new(
                "telemetry.sample_ratio",
                format!("must be between 0 and 1, got {}", t.sample_ratio),
            ));
        }
        if t.log_level.trim().is_empty() {
            p.push(Problem::new("telemetry.log_level", "must not be empty"));
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&t.log_level) {
            p.push(Problem::new(
                "telemetry.log_level",
                format!("invalid filter directive {:?}: {e}", t.log_level),
            ));
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_public_key_file(path: &Path, alg: JwtAlgorithm) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("file {} not found", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    let parsed = match alg {
        JwtAlgorithm::ES256 => jsonwebtoken::DecodingKey::from_ec_pem(&pem).map(|_| ()),
        _ => jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map(|_| ()),
    };
    let kind = if alg == JwtAlgorithm::ES256 {
        "EC"
    } else {
        "RSA"
    };
    parsed.map_err(|e| {
        format!(
            "{} is not a PEM {kind} public key usable for {alg}: {e}",
            path.display()
        )
    })
}

/// Splits `host[:port]` (IPv6 in brackets) and validates the port (1..=65535).
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "missing ']' after IPv6 address".to_owned())?;
        let after = &rest[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "unexpected characters after ']'".to_owned())?,
            )
        };
        (&s[..end + 2], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err("IPv6 addresses must be in brackets, e.g. [::1]".to_owned()),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok((host, port))
}

/// Validates a hostname, an IPv4 address or a bracketed IPv6 address.
fn check_host(host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("invalid IPv6 address {inner:?}"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    check_dns_name(host)
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host".to_owned());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("invalid host name label {label:?}"));
        }
    }
    Ok(())
}

/// Validates an `allowed_origins` entry.
fn check_origin_pattern(origin: &str) -> Result<(), String> {
    let origin = origin.to_lowercase();
    if origin == "*" {
        return Ok(());
    }
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| "expected \"*\" or \"scheme://host[:port]\"".to_owned())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme must be http or https, got {scheme:?}"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query or user info".to_owned());
    }
    let (host, _port) = split_host_port(rest)?;
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.contains('*') {
            return Err("a wildcard is only allowed as the whole leftmost label".to_owned());
        }
        check_dns_name(domain)
    } else if host.contains('*') {
        Err("a wildcard is only allowed as the whole leftmost label (\"*.example.com\")".to_owned())
    } else {
        check_host(host)
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::Write;

    const RSA_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAk+qUuqCsWQzaz/M3FnOk
ss+x6AnB48iSBpaeFk8BGRd8gZz8WTIPk2gCUDvFYzc8E83I62iLzlGhEEye1Mi+
b5vApV7Rs5VvkwQ3ZjsifElWfFJcC0skiJTIk8fRxmZrygM5Mq7gC9MTBzvIPGVS
Fz3Wcx6auGWJ20aHE/lVuj7/P6ybypQircykEJ6DK9uJ7FCmw2pQC170QRECTBeb
ZRb4zW15x2xYKQF8jqR7/MtsaOZRsUp7GsZ1C8obwo0ijRMWofxd5qokGsluVMCC
ANI+WUn5kCLugHPyHThkeanU5uw/13fb1cACyXuszApYsKIjETJqTymZ2CruSzhA
CwIDAQAB
-----END PUBLIC KEY-----
";

    const EC_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEK/UgFaV9w0zxxB58meX6JGfUDqFT
c0MLmiNOERrgpVC569U0QDF1/jHzy9umCCX7v5BETtBZNoLmG4xfm+ewGA==
-----END PUBLIC KEY-----
";

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write_file(suffix: &str, content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f.flush().unwrap();
        f
    }

    fn keys(err: &SettingsError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    fn problem<'a>(err: &'a SettingsError, key: &str) -> &'a Problem {
        err.problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in:\n{err}"))
    }

    #[test]
    fn defaults_load_and_validate_clean() {
        let s = load(None, &HashMap::new()).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.server.ws_path, "/ws");
        assert_eq!(s.server.grpc_listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.auth.mode, AuthMode::None);
        assert_eq!(s.auth.jwt.leeway, Duration::from_secs(30));
        assert_eq!(s.limits.handshakes_per_ip_per_s, 50);
        assert_eq!(s.limits.handshake_burst, 100);
        assert_eq!(s.limits.max_connections, 100_000);
        assert_eq!(s.session.heartbeat_interval, Duration::from_secs(25));
        assert_eq!(s.session.max_frame_bytes, 65_536);
        assert_eq!(s.session.outbound_queue, 256);
        assert_eq!(s.redis.namespace, "wsgate");
        assert_eq!(s.redis.mode, RedisMode::Standalone);
        assert_eq!(s.registry.pod_ttl, Duration::from_secs(5));
        assert_eq!(s.telemetry.sample_ratio, 1.0);
        assert_eq!(s.telemetry.log_level, "info");
        assert_eq!(s.shutdown.grace, Duration::from_secs(10));
        assert!(s.validate().is_empty());
        assert!(Settings::default().validate().is_empty());
    }

    #[test]
    fn every_key_is_accepted_and_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        for key in KEYS {
            let mut s = Settings::default();
            assert!(
                apply_key(&mut s, key, Value::new(None, ValueKind::Nil)).is_some(),
                "{key} not handled"
            );
            assert!(
                docs.contains(key),
                "{key} missing from docs/configuration.md"
            );
        }
    }

    #[test]
    fn pod_id_defaults() {
        let s = load(None, &env(&[("POD_NAME", "gw-7")])).unwrap();
        assert_eq!(s.server.pod_id, "gw-7");
        let s = load(None, &env(&[("HOSTNAME", "node1")])).unwrap();
        let suffix = s.server.pod_id.strip_prefix("node1-").unwrap();
        assert_eq!(suffix.len(), 6);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        let s = load(None, &env(&[("WSGATE__SERVER__POD_ID", "explicit")])).unwrap();
        assert_eq!(s.server.pod_id, "explicit");
        let e = load(None, &env(&[("POD_NAME", "bad name!")])).unwrap_err();
        assert_eq!(keys(&e), ["server.pod_id"]);
    }

    #[test]
    fn toml_with_several_bad_keys_reports_all() {
        let f = write_file(
            ".toml",
            r#"
[server]
listen = "foo"
lisen = "127.0.0.1:1"
header_read_timeout = "10 parsecs"

[auth]
mode = "kerberos"

[session]
outbound_queue = -3

[servr]
x = 1
"#,
        );
        let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.listen: invalid socket address \"foo\""),
            "{text}"
        );
        assert!(
            problem(&err, "server.lisen")
                .message
                .starts_with("unknown key")
        );
        assert!(
            problem(&err, "server.lisen")
                .message
                .contains("server.listen")
        );
        assert!(
            problem(&err, "server.header_read_timeout")
                .message
                .contains("invalid duration")
        );
        assert!(problem(&err, "auth.mode").message.contains("kerberos"));
        problem(&err, "session.outbound_queue");
        assert!(problem(&err, "servr").message.starts_with("unknown key"));
        assert_eq!(err.problems.len(), 6, "{text}");
        assert_eq!(text.lines().count(), 6);
    }

    #[test]
    fn env_overrides_file_and_parses_lists() {
        let f = write_file(
            ".toml",
            r#"
[server]
ws_path = "/from-file"
listen = "127.0.0.1:9000"

[preflight]
allowed_origins = ["https://file.example"]
"#,
        );
        let e = env(&[
            ("WSGATE__SERVER__WS_PATH", "/from-env"),
            (
                "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
                "https://a.com, https://*.B.com:8443",
            ),
            (
                "WSGATE__CONTROL__API_KEYS",
                "k1-0123456789abcdef,k2-0123456789abcdef",
            ),
            (
                "WSGATE__PREFLIGHT__TRUSTED_PROXIES",
                "10.0.0.0/8,192.168.1.1,::1",
            ),
            ("WSGATE__LIMITS__MAX_CONNECTIONS", "7"),
            ("WSGATE__PREFLIGHT__REQUIRE_ORIGIN", "true"),
            ("WSGATE__AUTH__JWT__LEEWAY", "1m30s"),
            ("wsgate__server__grpc_listen", "0.0.0.0:1"), // not a config key: wrong case
            ("WSGATE_CONFIG", "/nonexistent.toml"),       // not a config key
            ("PATH", "/usr/bin"),
        ]);
        let s = load(Some(f.path()), &e).unwrap();
        assert_eq!(s.server.ws_path, "/from-env");
        assert_eq!(s.server.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            s.preflight.allowed_origins,
            ["https://a.com", "https://*.b.com:8443"]
        );
        assert_eq!(
            s.control.api_keys,
            ["k1-0123456789abcdef", "k2-0123456789abcdef"]
        );
        assert_eq!(
            s.preflight.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.1/32".parse().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        assert_eq!(s.limits.max_connections, 7);
        assert!(s.preflight.require_origin);
        assert_eq!(s.auth.jwt.leeway, Duration::from_secs(90));
        assert_eq!(s.server.grpc_listen, "127.0.0.1:50051".parse().unwrap());
    }

    #[test]
    fn keys_are_case_insensitive_and_env_wins() {
        let f = write_file(".toml", "[Server]\nWS_Path = \"/file\"\n");
        let s = load(Some(f.path()), &HashMap::new()).unwrap();
        assert_eq!(s.server.ws_path, "/file");
        let s = load(Some(f.path()), &env(&[("WSGATE__SERVER__WS_PATH", "/env")])).unwrap();
        assert_eq!(s.server.ws_path, "/env");
    }

    #[test]
    fn env_problems_are_reported_per_key() {
        let e = env(&[
            ("WSGATE__SERVER__LISEN", "x"),
            ("WSGATE__SESSION__MAX_MESSAGE_BYTES", "lots"),
            ("WSGATE__TELEMETRY__SAMPLE_RATIO", "2"),
            (
                "WSGATE__PREFLIGHT__ALLOWED_ORIGINS",
                "ftp://a.com,https://a.*.com,*",
            ),
            ("WSGATE__PREFLIGHT__TRUSTED_PROXIES", "10.0.0.0/33"),
            ("WSGATE__CONTROL__API_KEYS", "tiny-key-xyz"),
            ("WSGATE__REDIS__URL", "http://redis:6379"),
        ]);
        let err = load(None, &e).unwrap_err();
        for key in [
            "server.lisen",
            "session.max_message_bytes",
            "telemetry.sample_ratio",
            "preflight.trusted_proxies",
            "control.api_keys",
            "redis.url",
        ] {
            problem(&err, key);
        }
        let origin_problems = err
            .problems
            .iter()
            .filter(|p| p.key == "preflight.allowed_origins")
            .count();
        assert_eq!(origin_problems, 2, "{err}");
        // The API key itself is never echoed.
        assert!(!err.to_string().contains("tiny-key-xyz"), "{err}");
    }

    #[test]
    fn demo_page_follows_loopback_listen_unless_set() {
        assert!(Settings::default().server.demo_page);
        assert!(load(None, &HashMap::new()).unwrap().server.demo_page);
        let public = [
            ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
            ("WSGATE__AUTH__ALLOW_INSECURE", "true"),
        ];
        assert!(!load(None, &env(&public)).unwrap().server.demo_page);
        let mut on = public.to_vec();
        on.push(("WSGATE__SERVER__DEMO_PAGE", "true"));
        assert!(load(None, &env(&on)).unwrap().server.demo_page);
        let off = env(&[("WSGATE__SERVER__DEMO_PAGE", "false")]);
        assert!(!load(None, &off).unwrap().server.demo_page);
        let err = load(None, &env(&[("WSGATE__SERVER__DEMO_PAGE", "maybe")])).unwrap_err();
        assert_eq!(keys(&err), ["server.demo_page"]);
    }

    #[test]
    fn max_frame_follows_max_message_unless_set() {
        let s = load(
            None,
            &env(&[("WSGATE__SESSION__MAX_MESSAGE_BYTES", "1024")]),
        )
        .unwrap();
        assert_eq!(s.session.max_frame_bytes, 1024);
        let e = env(&[
            ("WSGATE__SESSION__MAX_MESSAGE_BYTES", "1024"),
            ("WSGATE__SESSION__MAX_FRAME_BYTES", "2048"),
        ]);
        let err = load(None, &e).unwrap_err();
        assert_eq!(keys(&err), ["session.max_frame_bytes"]);
    }

    #[test]
    fn non_loopback_without_auth_is_refused_unless_insecure() {
        let e = env(&[("WSGATE__SERVER__LISTEN", "0.0.0.0:8080")]);
        let err = load(None, &e).unwrap_err();
        assert_eq!(keys(&err), ["auth.mode"]);
        let msg = &err.problems[0].message;
        assert!(
            msg.contains("loopback") && msg.contains("0.0.0.0:8080"),
            "{msg}"
        );

        let e = env(&[("WSGATE__SERVER__GRPC_LISTEN", "[::]:50051")]);
        let err = load(None, &e).unwrap_err();
        assert_eq!(keys(&err), ["control.api_keys"]);
        assert!(err.problems[0].message.contains("loopback"));

        let e = env(&[
            ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
            ("WSGATE__SERVER__GRPC_LISTEN", "0.0.0.0:50051"),
            ("WSGATE__AUTH__ALLOW_INSECURE", "true"),
        ]);
        assert!(load(None, &e).is_ok());

        let e = env(&[
            ("WSGATE__SERVER__LISTEN", "0.0.0.0:8080"),
            ("WSGATE__SERVER__GRPC_LISTEN", "0.0.0.0:50051"),
            ("WSGATE__AUTH__MODE", "JWT"),
            ("WSGATE__AUTH__JWT__SECRET", SECRET),
            ("WSGATE__CONTROL__API_KEYS", "0123456789abcdef"),
        ]);
        let s = load(None, &e).unwrap();
        assert_eq!(s.auth.mode, AuthMode::Jwt);
        assert_eq!(s.auth.jwt.effective_algorithm(), Some(JwtAlgorithm::HS256));
    }

    #[test]
    fn listen_and_grpc_listen_must_differ() {
        let mut s = Settings::default();
        s.server.grpc_listen = s.server.listen;
        let p = s.validate();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "server.grpc_listen");
        // Port 0 means "any free port": both may ask for one.
        s.server.listen = "127.0.0.1:0".parse().unwrap();
        s.server.grpc_listen = s.server.listen;
        assert!(s.validate().is_empty());
    }

    #[test]
    fn jwt_key_rules() {
        let mut s = Settings::default();
        s.auth.mode = AuthMode::Jwt;
        let p = s.validate();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "auth.jwt");

        let key_file = write_file(".pem", RSA_PUB);
        s.auth.jwt.secret = Some(SECRET.to_owned());
        s.auth.jwt.public_key_file = Some(key_file.path().to_path_buf());
        let p = s.validate();
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("only one"), "{:?}", p);

        s.auth.jwt.public_key_file = None;
        s.auth.jwt.secret = Some("too-short".to_owned());
        let p = s.validate();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "auth.jwt.secret");
        assert!(!p[0].message.contains("too-short"));

        s.auth.jwt.secret = Some(SECRET.to_owned());
        s.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
        assert_eq!(s.validate()[0].key, "auth.jwt.algorithm");

        s.auth.jwt.secret = None;
        s.auth.jwt.public_key_file = Some(key_file.path().to_path_buf());
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        s.auth.jwt.algorithm = None;
        assert!(s.validate().is_empty());
        assert_eq!(s.auth.jwt.effective_algorithm(), Some(JwtAlgorithm::RS256));
        s.auth.jwt.algorithm = Some(JwtAlgorithm::HS256);
        assert_eq!(s.validate()[0].key, "auth.jwt.algorithm");

        s.auth.jwt.algorithm = Some(JwtAlgorithm::ES256);
        let ec_file = write_file(".pem", EC_PUB);
        s.auth.jwt.public_key_file = Some(ec_file.path().to_path_buf());
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        s.auth.jwt.algorithm = Some(JwtAlgorithm::RS256);
        assert_eq!(s.validate()[0].key, "auth.jwt.public_key_file");

        let garbage = write_file(".pem", "not a key");
        s.auth.jwt.public_key_file = Some(garbage.path().to_path_buf());
        assert_eq!(s.validate()[0].key, "auth.jwt.public_key_file");
    }

    #[test]
    fn rs256_with_missing_key_file_via_env() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = env(&[
            ("WSGATE__AUTH__MODE", "jwt"),
            ("WSGATE__AUTH__JWT__ALGORITHM", "RS256"),
            (
                "WSGATE__AUTH__JWT__PUBLIC_KEY_FILE",
                missing.to_str().unwrap(),
            ),
        ]);
        let err = load(None, &e).unwrap_err();
        assert_eq!(keys(&err), ["auth.jwt.public_key_file"]);
        assert!(err.problems[0].message.contains("not found"));
    }

    #[test]
    fn yaml_and_json_files_work() {
        let f = write_file(
            ".yaml",
            "server:\n  ws_path: /yaml\n  header_read_timeout: 500ms\nredis:\n  url: redis://localhost:6379\n  mode: cluster\ntelemetry:\n  log_format: json\n  sample_ratio: 0.25\npreflight:\n  allowed_hosts: [example.com, \"[::1]:8080\"]\n",
        );
        let s = load(Some(f.path()), &HashMap::new()).unwrap();
        assert_eq!(s.server.ws_path, "/yaml");
        assert_eq!(s.server.header_read_timeout, Duration::from_millis(500));
        assert_eq!(s.redis.url.as_deref(), Some("redis://localhost:6379"));
        assert_eq!(s.redis.mode, RedisMode::Cluster);
        assert_eq!(s.telemetry.log_format, LogFormat::Json);
        assert_eq!(s.telemetry.sample_ratio, 0.25);
        assert_eq!(s.preflight.allowed_hosts, ["example.com", "[::1]:8080"]);

        let f = write_file(".json", r#"{"shutdown": {"grace": "2h"}}"#);
        let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
        assert_eq!(keys(&err), ["shutdown.grace"]);
    }

    #[test]
    fn file_problems() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = load(Some(&missing), &HashMap::new()).unwrap_err();
        assert!(err.problems[0].message.contains("not found"));

        let f = write_file(".toml", "[server\nlisten = ");
        let err = load(Some(f.path()), &env(&[("WSGATE__SERVER__LISTEN", "nope")])).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].message.contains("cannot parse"));
        assert_eq!(err.problems[1].key, "server.listen");

        let f = write_file(".ini", "");
        let err = load(Some(f.path()), &HashMap::new()).unwrap_err();
        assert!(err.problems[0].message.contains("extension"));
    }

    #[test]
    fn host_and_origin_syntax() {
        for ok in [
            "*",
            "https://example.com",
            "http://localhost:3000",
            "https://*.example.com",
            "https://*.example.com:8443",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            assert!(check_origin_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://a.*.com",
            "https://*",
            "https://ex*.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://",
        ] {
            assert!(check_origin_pattern(bad).is_err(), "{bad}");
        }
        for ok in [
            "example.com",
            "example.com:8080",
            "10.0.0.1",
            "[::1]",
            "[::1]:80",
        ] {
            assert!(
                split_host_port(ok).and_then(|(h, _)| check_host(h)).is_ok(),
                "{ok}"
            );
        }
        for bad in ["::1", "exa mple.com", "-a.com", "a.com:x", "[::1", ""] {
            assert!(
                split_host_port(bad)
                    .and_then(|(h, _)| check_host(h))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_display_is_one_problem_per_line() {
        let e = SettingsError {
            problems: vec![
                Problem::new("server.listen", "invalid socket address \"foo\""),
                Problem::new("server.lisen", "unknown key"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "server.listen: invalid socket address \"foo\"\nserver.lisen: unknown key"
        );
    }
}
