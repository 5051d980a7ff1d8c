//! The connect proxy (`auth.mode = "proxy"`): the handshake's credentials are shown to
//! the application's own backend (`auth.proxy.url`), which answers who the user is, so
//! teams can keep their cookie sessions instead of minting JWTs.
//!
//! Like the JWKS (`super::jwks`), the work is split at the HTTP client, which core does
//! not have: this module owns every decision that touches security — which headers are
//! forwarded (only the configured ones), what the backend's answer must look like
//! (bounded, a [valid user id](super::valid_user_id), [valid patterns](super::valid_pattern),
//! an `expires_at` in the future), what is cached, under which key and for how long — and
//! `wsgate-server` implements [`ConnectProxy`], the one POST, with its shared client. The
//! seam is a trait object rather than a generic so that [`super::Authenticator`] stays one
//! plain enum that every crate can match on.
//!
//! The cache, when `auth.proxy.cache_ttl` is not zero, is keyed by the SHA-256 of the
//! exact body sent (headers, query and address as forwarded), so no credential is kept in
//! the clear; it holds only accepted answers, for at most the TTL and never past the
//! answer's `expires_at`, and at most [`MAX_CACHE_ENTRIES`] of them. Refusals are not
//! cached: a user who logs in right after a refusal must not stay locked out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::StatusCode;
use http::header::HeaderName;
use http::request::Parts;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Identity, TopicPolicy, valid_pattern, valid_user_id};
use crate::preflight::ClientAddr;
use crate::rejection::Rejection;

/// Largest answer body read from the backend; a larger one is refused unread.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Most answers the cache holds; when full, expired ones go first, then the one closest
/// to expiring.
pub const MAX_CACHE_ENTRIES: usize = 10_000;

/// The JSON body POSTed to the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyRequest {
    /// The allowed headers present on the handshake, by lowercase name, each with its
    /// values in the order received (a name may repeat). Values that are not UTF-8 are
    /// left out.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The raw query string of the handshake's URL, without `?` (`""` when none).
    pub query: String,
    /// The client's address after trusted proxies.
    pub remote_addr: String,
}

/// What the backend said, as the HTTP side read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyReply {
    /// 200 with this body (at most [`MAX_ANSWER_BYTES`]).
    Answer(Vec<u8>),
    /// 401 or 403: the credentials are refused.
    Refused(StatusCode),
    /// No usable answer: unreachable, timed out, another status, a body too large. The
    /// reason is logged, never shown to the client.
    Unavailable(String),
}

/// How one handshake's proxy check ended; the `outcome` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// The backend accepted the credentials.
    Accepted,
    /// The backend refused them (401 or 403).
    Refused,
    /// No usable answer (503 to the client).
    Unavailable,
    /// Answered from the cache, without a call.
    Cached,
}

impl ProxyOutcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ProxyOutcome::Accepted => "accepted",
            ProxyOutcome::Refused => "refused",
            ProxyOutcome::Unavailable => "unavailable",
            ProxyOutcome::Cached => "cached",
        }
    }
}

/// The HTTP side of the connect proxy, implemented by `wsgate-server`.
#[async_trait]
pub trait ConnectProxy: Send + Sync {
    /// POSTs `body` (a serialized [`ProxyRequest`]) to the backend, within the configured
    /// timeout, and reports what it answered.
    async fn call(&self, body: Vec<u8>) -> ProxyReply;

    /// Counts one handshake's outcome (metrics); nothing by default.
    fn record(&self, _outcome: ProxyOutcome) {}
}

/// The backend's answer to an accepted handshake.
#[derive(Deserialize)]
struct Answer {
    user_id: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// Reads a 200 answer into an [`Identity`]; `Err` says why it is unusable (for the log).
/// `now_s` is the current time in seconds since the Unix epoch.
pub fn parse_answer(body: &[u8], now_s: u64) -> Result<Identity, String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "the answer is larger than {MAX_ANSWER_BYTES} bytes"
        ));
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))?;
    if !valid_user_id(&answer.user_id) {
        return Err(
            "user_id is not a valid user id (1 to 256 bytes, no control characters)".to_owned(),
        );
    }
    for (field, patterns) in [("topics", &answer.topics), ("publish", &answer.publish)] {
        if let Some(bad) = patterns.iter().find(|p| !valid_pattern(p)) {
            return Err(format!(
                "{field} holds an invalid topic pattern {}",
                crate::rejection::quote(bad.as_bytes())
            ));
        }
    }
    if let Some(at) = answer.expires_at
        && at <= now_s
    {
        return Err(format!(
            "expires_at {at} is not in the future (now {now_s}); are the clocks apart?"
        ));
    }
    Ok(Identity {
        user_id: answer.user_id,
        topics: TopicPolicy::Patterns(answer.topics),
        publish: TopicPolicy::Patterns(answer.publish),
        expires_at: answer.expires_at,
        token_id: None,
    })
}

/// Accepted answers by the SHA-256 of the request body that got them.
struct ProxyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl ProxyCache {
    fn get(&self, key: &[u8; 32]) -> Option<Identity> {
        let mut entries = self.entries.lock();
        let (identity, until) = entries.get(key)?;
        if *until > Instant::now() {
            return Some(identity.clone());
        }
        entries.remove(key);
        None
    }

    fn put(&self, key: [u8; 32], identity: &Identity, now_s: u64) {
        // Never past the answer's own expiry: a cached session must not outlive it.
        let lifetime = match identity.expires_at {
            Some(at) => self.ttl.min(Duration::from_secs(at.saturating_sub(now_s))),
            None => self.ttl,
        };
        if lifetime.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_CACHE_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_CACHE_ENTRIES
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k)
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(key, (identity.clone(), now + lifetime));
    }

    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// Authenticates handshakes by asking the backend (see the module documentation).
#[derive(Clone)]
pub struct ProxyVerifier {
    headers: Arc<[HeaderName]>,
    backend: Arc<dyn ConnectProxy>,
    cache: Option<Arc<ProxyCache>>,
}

impl fmt::Debug for ProxyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyVerifier")
            .field("headers", &self.headers)
            .field("cache_ttl", &self.cache.as_ref().map(|c| c.ttl))
            .finish_non_exhaustive()
    }
}

impl ProxyVerifier {
    /// A verifier forwarding `headers` (and nothing else) to `backend`, caching accepted
    /// answers for `cache_ttl` (zero: no cache).
    pub fn new(
        headers: Vec<HeaderName>,
        cache_ttl: Duration,
        backend: Arc<dyn ConnectProxy>,
    ) -> Self {
        let cache = (!cache_ttl.is_zero()).then(|| {
            Arc::new(ProxyCache {
                ttl: cache_ttl,
                entries: Mutex::new(HashMap::new()),
            })
        });
        Self {
            headers: headers.into(),
            backend,
            cache,
        }
    }

    /// How many answers the cache holds now (0 without a cache).
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// What would be forwarded for `parts`. `None` when the client address is missing,
    /// which only a wrongly wired preflight chain causes.
    pub fn request_of(&self, parts: &Parts) -> Option<ProxyRequest> {
        let ClientAddr(ip) = parts.extensions.get::<ClientAddr>()?;
        let mut headers = BTreeMap::new();
        for name in self.headers.iter() {
            let values: Vec<String> = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok().map(str::to_owned))
                .collect();
            if !values.is_empty() {
                headers.insert(name.as_str().to_owned(), values);
            }
        }
        Some(ProxyRequest {
            headers,
            query: parts.uri.query().unwrap_or("").to_owned(),
            remote_addr: ip.to_string(),
        })
    }

    /// Authenticates a handshake: from the cache, or by the backend's answer. 401/403
    /// `proxy_refused` when the backend refuses, 503 `auth_unavailable` when it gives no
    /// usable answer.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Identity, Rejection> {
        let Some(request) = self.request_of(parts) else {
            tracing::error!("connect proxy without a client address; is the rate check missing?");
            return Err(Rejection::internal("the gateway is misconfigured"));
        };
        // Serializing a map of strings cannot fail; fail closed if it ever did.
        let body = serde_json::to_vec(&request)
            .map_err(|_| Rejection::internal("the gateway is misconfigured"))?;
        let key: [u8; 32] = Sha256::digest(&body).into();
        if let Some(identity) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            self.backend.record(ProxyOutcome::Cached);
            return Ok(identity);
        }
        let (outcome, verdict) = match self.backend.call(body).await {
            ProxyReply::Answer(answer) => {
                let now_s = crate::clock::now_ms() / 1000;
                match parse_answer(&answer, now_s) {
                    Ok(identity) => {
                        if let Some(cache) = &self.cache {
                            cache.put(key, &identity, now_s);
                        }
                        (ProxyOutcome::Accepted, Ok(identity))
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "connect proxy: unusable answer from the backend");
                        (
                            ProxyOutcome::Unavailable,
                            Err(Rejection::auth_backend_unavailable()),
                        )
                    }
                }
            }
            ProxyReply::Refused(status)
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                tracing::debug!(
                    status = status.as_u16(),
                    "connect proxy: credentials refused"
                );
                (ProxyOutcome::Refused, Err(Rejection::proxy_refused(status)))
            }
            ProxyReply::Refused(status) => {
                // Only 401 and 403 are passed on; anything else is a backend fault.
                tracing::warn!(
                    status = status.as_u16(),
                    "connect proxy: unexpected refusal status"
                );
                (
                    ProxyOutcome::Unavailable,
                    Err(Rejection::auth_backend_unavailable()),
                )
            }
            ProxyReply::Unavailable(why) => {
                tracing::warn!(reason = %why, "connect proxy: the backend is unavailable");
                (
                    ProxyOutcome::Unavailable,
                    Err(Rejection::auth_backend_unavailable()),
                )
            }
        };
        self.backend.record(outcome);
        verdict
    }
}

#[cfg(test)]
mod tests;
