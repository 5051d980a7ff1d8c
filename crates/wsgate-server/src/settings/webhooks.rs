//! `[webhooks]`: the settings as written, their parser (a list of tables from a file, a
//! JSON array from the environment) and their building into the delivery side's
//! [`WebhookConfig`], with every problem of every entry reported at once. Problems name
//! the key and the entry, never a secret or a URL (it may carry credentials).

use std::time::Duration;

use config::{Value, ValueKind};
use sha2::{Digest, Sha256};
use wsgate_core::events::EventKind;

use super::Problem;
use super::rules::fmt_duration;
use super::sections::Settings;
use crate::webhooks::{Endpoint, WebhookConfig};

/// Shortest accepted HMAC key: shorter ones are guessable.
const MIN_SECRET_BYTES: usize = 16;

/// Longest endpoint `name`.
const MAX_NAME_CHARS: usize = 64;

/// `[webhooks]` section: session events POSTed, signed, to HTTP endpoints, each fed from
/// the event log by one pod at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// `[[webhooks.endpoints]]`: `{ url = "https://…", secret = "…", events = [...],
    /// name = "…" }` (`events` empty or absent = every type; `name` optional). In the
    /// environment a JSON array of such objects. Default `[]`.
    pub endpoints: Vec<WebhookEndpointSettings>,
    /// How long one event is retried before it is given up and skipped (duration,
    /// 1s ..= 24h). Default `1h`.
    pub retry_for: Duration,
    /// Time limit of one delivery attempt (duration, 100ms ..= 60s). Default `5s`.
    pub timeout: Duration,
    /// The first retry waits a random time up to this long, each further one up to twice
    /// as long as the one before, at most 30 s (or this, if longer) (duration,
    /// 10ms ..= 10s). Default `500ms`.
    pub retry_backoff: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            retry_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// One `webhooks.endpoints` entry, as written.
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointSettings {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC-SHA256 key of the `X-Wsgate-Signature` header (at least 16 bytes).
    pub secret: String,
    /// Event types sent to this endpoint; empty = every type.
    #[serde(default)]
    pub events: Vec<String>,
    /// The endpoint's name in metrics, logs and the backend (its cursor and lease):
    /// letters, digits, `.`, `_`, `-`. Default: derived from the URL, so changing the URL
    /// makes a new consumer that starts at the newest event.
    #[serde(default)]
    pub name: Option<String>,
}

impl std::fmt::Debug for WebhookEndpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is one, and the URL may carry credentials.
        f.debug_struct("WebhookEndpointSettings")
            .field("url", &"<set>")
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("name", &self.name)
            .finish()
    }
}

/// `webhooks.endpoints`: a list of tables from a file, or a JSON array of objects from the
/// environment (`[{"url":"…","secret":"…","events":["connected"]}]`).
pub(super) fn webhook_endpoints(v: Value) -> Result<Vec<WebhookEndpointSettings>, String> {
    let json = match v.kind {
        ValueKind::Nil => return Ok(Vec::new()),
        ValueKind::String(text) if text.trim().is_empty() => return Ok(Vec::new()),
        ValueKind::String(text) => {
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                format!("expected a JSON array of {{url, secret, events}} objects: {e}")
            })?
        }
        kind => config_to_json(Value::new(None, kind)),
    };
    let serde_json::Value::Array(items) = json else {
        return Err("expected a list of {url, secret, events} entries".to_owned());
    };
    items
        .into_iter()
        .enumerate()
        // serde's messages name fields and types, never the values (so no secret).
        .map(|(i, item)| serde_json::from_value(item).map_err(|e| format!("entry {i}: {e}")))
        .collect()
}

/// A `config` value as JSON (tables keep their keys, lowercased; scalars their types).
fn config_to_json(v: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v.kind {
        ValueKind::Nil => J::Null,
        ValueKind::Boolean(b) => J::Bool(b),
        ValueKind::I64(n) => J::from(n),
        ValueKind::I128(n) => J::from(n as f64),
        ValueKind::U64(n) => J::from(n),
        ValueKind::U128(n) => J::from(n as f64),
        ValueKind::Float(n) => J::from(n),
        ValueKind::String(s) => J::String(s),
        ValueKind::Array(items) => J::Array(items.into_iter().map(config_to_json).collect()),
        ValueKind::Table(table) => J::Object(
            table
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), config_to_json(v)))
                .collect(),
        ),
    }
}

impl Settings {
    /// `webhooks.*` as the delivery side takes it (the lease lasts `registry.pod_ttl`);
    /// problems are added to `p`.
    pub(super) fn webhook_config(&self, p: &mut Vec<Problem>) -> WebhookConfig {
        let w = &self.webhooks;
        let key = "webhooks.endpoints";
        if !w.endpoints.is_empty() && !self.events.enabled {
            p.push(Problem::new(
                key,
                "webhooks are fed from the session event log: they need events.enabled = true",
            ));
        }
        // With the entry each came from, for the message about a repeated name.
        let mut endpoints: Vec<(usize, Endpoint)> = Vec::with_capacity(w.endpoints.len());
        for (i, entry) in w.endpoints.iter().enumerate() {
            if let Some(endpoint) = endpoint(p, key, i, entry) {
                if let Some((j, _)) = endpoints.iter().find(|(_, e)| e.name == endpoint.name) {
                    p.push(Problem::new(
                        key,
                        format!(
                            "entry {i}: the same name as entry {j} (the name keeps the \
                             endpoint's place in the log; give each endpoint its own, or its \
                             own url)"
                        ),
                    ));
                    continue;
                }
                endpoints.push((i, endpoint));
            }
        }
        let ranges = [
            ("webhooks.retry_for", w.retry_for, (1_000, 86_400_000)),
            ("webhooks.timeout", w.timeout, (100, 60_000)),
            ("webhooks.retry_backoff", w.retry_backoff, (10, 10_000)),
        ];
        for (key, value, (min, max)) in ranges {
            let (min, max) = (Duration::from_millis(min), Duration::from_millis(max));
            if value < min || value > max {
                p.push(Problem::new(
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        fmt_duration(min),
                        fmt_duration(max),
                        fmt_duration(value)
                    ),
                ));
            }
        }
        let endpoints: Vec<Endpoint> = endpoints.into_iter().map(|(_, e)| e).collect();
        let client = if endpoints.is_empty() {
            None
        } else {
            let https = endpoints.iter().any(|e| e.url.scheme() == "https");
            match crate::http_client::pooled(https) {
                Ok(client) => Some(client),
                Err(e) => {
                    p.push(Problem::new(key, e));
                    None
                }
            }
        };
        WebhookConfig {
            endpoints,
            client,
            retry_for: w.retry_for,
            timeout: w.timeout,
            retry_backoff: w.retry_backoff,
            lease_ttl: self.registry.pod_ttl,
        }
    }
}

/// One entry checked and parsed, or its problems added to `p`.
fn endpoint(
    p: &mut Vec<Problem>,
    key: &str,
    i: usize,
    entry: &WebhookEndpointSettings,
) -> Option<Endpoint> {
    let before = p.len();
    let url = match url::Url::parse(&entry.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
        Ok(_) => {
            p.push(Problem::new(
                key,
                format!("entry {i}: url must be an http:// or https:// URL with a host"),
            ));
            None
        }
        Err(e) => {
            p.push(Problem::new(key, format!("entry {i}: invalid url: {e}")));
            None
        }
    };
    if entry.secret.len() < MIN_SECRET_BYTES {
        p.push(Problem::new(
            key,
            format!(
                "entry {i}: secret must be at least {MIN_SECRET_BYTES} bytes (it keys the \
                 signature receivers check)"
            ),
        ));
    }
    let mut events = Vec::with_capacity(entry.events.len());
    for event in &entry.events {
        match event.parse::<EventKind>() {
            Ok(kind) => events.push(kind),
            Err(_) => p.push(Problem::new(
                key,
                format!(
                    "entry {i}: unknown event type {event:?}; expected connected, \
                     disconnected, subscribed or unsubscribed"
                ),
            )),
        }
    }
    if let Some(name) = &entry.name {
        let valid = (1..=MAX_NAME_CHARS).contains(&name.chars().count())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            p.push(Problem::new(
                key,
                format!(
                    "entry {i}: name must be 1 to {MAX_NAME_CHARS} letters, digits, '.', '_' \
                     or '-'"
                ),
            ));
        }
    }
    let url = url?;
    if p.len() > before {
        return None;
    }
    let (name, label) = match &entry.name {
        Some(name) => (name.clone(), name.clone()),
        None => (url_name(&url), url_label(&url)),
    };
    Some(Endpoint {
        name,
        label,
        url,
        secret: entry.secret.as_bytes().into(),
        events,
    })
}

/// The name of an endpoint without one: `url-` and the first 16 hex digits of the
/// SHA-256 of its URL, the same on every pod and across restarts and reorderings, and no
/// credentials in Redis keys.
pub(crate) fn url_name(url: &url::Url) -> String {
    let digest = Sha256::digest(url.as_str().as_bytes());
    format!("url-{}", &hex::encode(digest)[..16])
}

/// The endpoint's label in metrics and logs when it has no name: its URL without
/// credentials, query or fragment.
pub(crate) fn url_label(url: &url::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}
