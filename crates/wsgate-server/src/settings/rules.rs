//! The rules on single values and between keys that no built object checks by itself:
//! ranges, paths, listeners, the secure-default rule for the control plane, Redis and
//! telemetry syntax.

use std::time::Duration;

use wsgate_core::stream::{HistoryPolicy, HistoryRules};

use super::sections::{RedisMode, Settings};
use super::{MIN_API_KEY_CHARS, Problem};
use crate::events::EventOptions;

impl Settings {
    pub(super) fn check_server(&self, p: &mut Vec<Problem>) {
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
        if s.listen == s.grpc_listen && s.listen.port() != 0 {
            p.push(Problem::new(
                "server.grpc_listen",
                format!("must differ from server.listen (both are {})", s.listen),
            ));
        }
        if let Some(admin) = s.admin_listen {
            for (key, other) in [
                ("server.listen", s.listen),
                ("server.grpc_listen", s.grpc_listen),
            ] {
                if same_port(admin, other) {
                    p.push(Problem::new(
                        "server.admin_listen",
                        format!("{admin} clashes with {key} ({other}); give it a port of its own"),
                    ));
                }
            }
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

    pub(super) fn check_limits(&self, p: &mut Vec<Problem>) {
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

    pub(super) fn check_session(&self, p: &mut Vec<Problem>) {
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

    pub(super) fn check_control(&self, p: &mut Vec<Problem>) {
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

    pub(super) fn check_redis(&self, p: &mut Vec<Problem>) {
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

    pub(super) fn check_telemetry(&self, p: &mut Vec<Problem>) {
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

    /// `history.*` as the rules the node applies.
    pub(super) fn history_rules(&self, p: &mut Vec<Problem>) -> HistoryRules {
        const MAX_SIZE: usize = 100_000;
        let h = &self.history;
        let mut topics = Vec::with_capacity(h.topics.len());
        for (i, rule) in h.topics.iter().enumerate() {
            let before = p.len();
            if !wsgate_core::auth::valid_pattern(&rule.pattern) {
                p.push(Problem::new(
                    "history.topics",
                    format!(
                        "entry {i}: invalid pattern {:?} (a topic, a prefix ending in \".*\", or \"*\")",
                        rule.pattern
                    ),
                ));
            }
            if !(1..=MAX_SIZE).contains(&rule.size) {
                p.push(Problem::new(
                    "history.topics",
                    format!(
                        "entry {i}: size must be between 1 and {MAX_SIZE}, got {}",
                        rule.size
                    ),
                ));
            }
            if rule.ttl.is_zero() {
                p.push(Problem::new(
                    "history.topics",
                    format!("entry {i}: ttl must be greater than 0"),
                ));
            }
            if p.len() == before {
                let policy = HistoryPolicy {
                    size: rule.size,
                    ttl: rule.ttl,
                };
                topics.push((rule.pattern.clone(), policy));
            }
        }
        if h.user.size > MAX_SIZE {
            p.push(Problem::new(
                "history.user.size",
                format!("must be at most {MAX_SIZE}, got {}", h.user.size),
            ));
        }
        if h.user.ttl.is_zero() {
            p.push(Problem::new("history.user.ttl", "must be greater than 0"));
        }
        let window = h.idempotency_window;
        if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
            p.push(Problem::new(
                "history.idempotency_window",
                format!("must be between 1s and 1h, got {}", fmt_duration(window)),
            ));
        }
        HistoryRules {
            topics,
            user: (h.user.size > 0).then_some(HistoryPolicy {
                size: h.user.size,
                ttl: h.user.ttl,
            }),
            idempotency_window: window,
        }
    }

    /// `events.*` as the node runs with it.
    pub(super) fn event_options(&self, p: &mut Vec<Problem>) -> EventOptions {
        const MAX_LEN: usize = 10_000_000;
        const MAX_QUEUE: usize = 1_000_000;
        let e = &self.events;
        if !(1..=MAX_LEN).contains(&e.max_len) {
            p.push(Problem::new(
                "events.max_len",
                format!("must be between 1 and {MAX_LEN}, got {}", e.max_len),
            ));
        }
        if !(1..=MAX_QUEUE).contains(&e.queue) {
            p.push(Problem::new(
                "events.queue",
                format!("must be between 1 and {MAX_QUEUE}, got {}", e.queue),
            ));
        }
        EventOptions {
            enabled: e.enabled,
            max_len: e.max_len,
            queue: e.queue,
        }
    }

    pub(super) fn check_registry_and_shutdown(&self, p: &mut Vec<Problem>) {
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
    }
}

impl Settings {
    /// The ranges of `rpc.*` and the token's form (the URL is checked by building the
    /// client).
    pub(super) fn check_rpc(&self, p: &mut Vec<Problem>) {
        let r = &self.rpc;
        if r.timeout < Duration::from_millis(1) || r.timeout > Duration::from_secs(600) {
            p.push(Problem::new(
                "rpc.timeout",
                format!(
                    "must be between 1ms and 10m, got {}",
                    fmt_duration(r.timeout)
                ),
            ));
        }
        if !(1..=1024).contains(&r.max_in_flight) {
            p.push(Problem::new(
                "rpc.max_in_flight",
                format!("must be between 1 and 1024, got {}", r.max_in_flight),
            ));
        }
        const MAX_RESPONSE: usize = 64 * 1024 * 1024;
        if !(1024..=MAX_RESPONSE).contains(&r.max_response_bytes) {
            p.push(Problem::new(
                "rpc.max_response_bytes",
                format!(
                    "must be between 1024 and {MAX_RESPONSE} (64 MiB), got {}",
                    r.max_response_bytes
                ),
            ));
        }
        if r.bearer_token.is_some() && r.url.is_none() {
            p.push(Problem::new(
                "rpc.bearer_token",
                "set without rpc.url: there is no backend to send it to",
            ));
        }
    }
}

pub(super) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether two listeners would contend for one port: the same port (0 picks a free one,
/// so never) on the same address, or on any address when either is the unspecified
/// one (`0.0.0.0`, `[::]`), which takes the port on every interface.
fn same_port(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
