//! The table of configuration keys: each key's dotted path, the field it sets and the
//! parser for its value. Adding a key is one row here, its field (with its default) in
//! [`super::sections`] and its line in `docs/configuration.md`; a test keeps the table
//! and the document in step.

use config::Value;

use super::sections::Settings;
use super::values::{
    boolean, choice, duration, float, ip_nets, lowercase_list, opt_choice, opt_path,
    opt_socket_addr, opt_string, socket_addr, string, string_list, topic_history, uint,
};
use super::webhooks::webhook_endpoints;

/// Declares [`KEYS`] and `apply_key` from one list of `"path" => field: parser` rows.
macro_rules! keys {
    ($($path:literal => $($field:ident).+ : $parse:expr),* $(,)?) => {
        /// Every leaf key that the loader accepts, as `section.key` paths.
        pub const KEYS: &[&str] = &[$($path),*];

        /// Parses `v` into the field named `key`. `None` for an unknown key.
        pub(super) fn apply_key(s: &mut Settings, key: &str, v: Value) -> Option<Result<(), String>> {
            Some(match key {
                $($path => $parse(v).map(|x| s.$($field).+ = x),)*
                _ => return None,
            })
        }
    };
}

keys! {
    "server.listen" => server.listen: socket_addr,
    "server.ws_path" => server.ws_path: string,
    "server.echo_path" => server.echo_path: opt_string,
    "server.tls_cert_file" => server.tls_cert_file: opt_path,
    "server.tls_key_file" => server.tls_key_file: opt_path,
    "server.grpc_listen" => server.grpc_listen: socket_addr,
    "server.admin_listen" => server.admin_listen: opt_socket_addr,
    "server.pod_id" => server.pod_id: string,
    "server.header_read_timeout" => server.header_read_timeout: duration,
    "server.demo_page" => server.demo_page: boolean,
    "preflight.allowed_origins" => preflight.allowed_origins: lowercase_list,
    "preflight.require_origin" => preflight.require_origin: boolean,
    "preflight.allowed_hosts" => preflight.allowed_hosts: lowercase_list,
    "preflight.trusted_proxies" => preflight.trusted_proxies: ip_nets,
    "auth.mode" => auth.mode: choice,
    "auth.allow_insecure" => auth.allow_insecure: boolean,
    "auth.jwt.secret" => auth.jwt.secret: opt_string,
    "auth.jwt.public_key_file" => auth.jwt.public_key_file: opt_path,
    "auth.jwt.algorithm" => auth.jwt.algorithm: opt_choice,
    "auth.jwt.issuer" => auth.jwt.issuer: opt_string,
    "auth.jwt.audience" => auth.jwt.audience: opt_string,
    "auth.jwt.leeway" => auth.jwt.leeway: duration,
    "auth.jwt.jwks_url" => auth.jwt.jwks_url: opt_string,
    "auth.jwt.jwks_refresh" => auth.jwt.jwks_refresh: duration,
    "auth.proxy.url" => auth.proxy.url: opt_string,
    "auth.proxy.headers" => auth.proxy.headers: string_list,
    "auth.proxy.timeout" => auth.proxy.timeout: duration,
    "auth.proxy.cache_ttl" => auth.proxy.cache_ttl: duration,
    "limits.handshakes_per_ip_per_s" => limits.handshakes_per_ip_per_s: uint,
    "limits.handshake_burst" => limits.handshake_burst: uint,
    "limits.max_connections" => limits.max_connections: uint,
    "limits.max_sessions_per_user" => limits.max_sessions_per_user: uint,
    "limits.client_publish_per_s" => limits.client_publish_per_s: uint,
    "session.heartbeat_interval" => session.heartbeat_interval: duration,
    "session.heartbeat_timeout" => session.heartbeat_timeout: duration,
    "session.max_message_bytes" => session.max_message_bytes: uint,
    "session.max_frame_bytes" => session.max_frame_bytes: uint,
    "session.outbound_queue" => session.outbound_queue: uint,
    "session.read_buffer_bytes" => session.read_buffer_bytes: uint,
    "session.write_buffer_bytes" => session.write_buffer_bytes: uint,
    "session.client_publish" => session.client_publish: boolean,
    "session.compression" => session.compression: boolean,
    "session.compression_min_bytes" => session.compression_min_bytes: uint,
    "control.api_keys" => control.api_keys: string_list,
    "control.tls_cert_file" => control.tls_cert_file: opt_path,
    "control.tls_key_file" => control.tls_key_file: opt_path,
    "redis.url" => redis.url: opt_string,
    "redis.namespace" => redis.namespace: string,
    "redis.mode" => redis.mode: choice,
    "redis.sentinel_service" => redis.sentinel_service: opt_string,
    "registry.pod_ttl" => registry.pod_ttl: duration,
    "telemetry.otlp_endpoint" => telemetry.otlp_endpoint: opt_string,
    "telemetry.otlp_protocol" => telemetry.otlp_protocol: choice,
    "telemetry.sample_ratio" => telemetry.sample_ratio: float,
    "telemetry.log_format" => telemetry.log_format: choice,
    "telemetry.log_level" => telemetry.log_level: string,
    "shutdown.grace" => shutdown.grace: duration,
    "history.topics" => history.topics: topic_history,
    "history.user.size" => history.user.size: uint,
    "history.user.ttl" => history.user.ttl: duration,
    "history.idempotency_window" => history.idempotency_window: duration,
    "rpc.url" => rpc.url: opt_string,
    "rpc.timeout" => rpc.timeout: duration,
    "rpc.max_in_flight" => rpc.max_in_flight: uint,
    "rpc.max_response_bytes" => rpc.max_response_bytes: uint,
    "rpc.bearer_token" => rpc.bearer_token: opt_string,
    "events.enabled" => events.enabled: boolean,
    "events.max_len" => events.max_len: uint,
    "events.queue" => events.queue: uint,
    "webhooks.endpoints" => webhooks.endpoints: webhook_endpoints,
    "webhooks.retry_for" => webhooks.retry_for: duration,
    "webhooks.timeout" => webhooks.timeout: duration,
    "webhooks.retry_backoff" => webhooks.retry_backoff: duration,
}

/// Whether `path` names a section (a table of keys, `auth` or `auth.jwt`) rather than a key.
pub(super) fn is_section(path: &str) -> bool {
    KEYS.iter().any(|key| {
        key.strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Every section path, for suggestions.
pub(super) fn sections() -> impl Iterator<Item = &'static str> {
    let mut all: Vec<&'static str> = KEYS
        .iter()
        .flat_map(|key| key.match_indices('.').map(move |(i, _)| &key[..i]))
        .collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}
