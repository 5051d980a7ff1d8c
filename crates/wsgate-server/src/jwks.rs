//! The JWKS fetcher (`auth.jwt.jwks_url`): one background task per gateway that keeps the
//! key set of `wsgate_core::jwks::JwksKeys` current.
//!
//! It fetches when the gateway starts serving, then every `auth.jwt.jwks_refresh`, and
//! at once when a handshake with an unknown `kid` asks for it (the core rate-limits
//! those asks to one per 10 s). A failed fetch — unreachable, not 200, not a usable key
//! set — keeps the set in use and is retried with backoff (1 s doubling, at most
//! [`MAX_RETRY`] or the refresh period), so a pod that never got a set recovers quickly
//! once the endpoint answers. Each fetch is bounded by [`FETCH_TIMEOUT`] and
//! [`MAX_DOCUMENT_BYTES`]; the client follows no redirects and honours no proxy
//! variables, like the rpc client, and speaks HTTPS with rustls (plain HTTP only where
//! the settings allowed it). Outcomes are counted in `wsgate_jwks_fetches_total`, and the
//! set's age and size kept in `wsgate_jwks_age_seconds` and `wsgate_jwks_keys`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wsgate_core::jwks::{JwksKeys, KeySet};

use crate::metrics::Metrics;

/// Longest a fetch may take, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest key set document read.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Longest wait between retries of a failing fetch.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where the keys come from and how often; built with the configuration.
#[derive(Clone)]
pub struct JwksSource {
    /// `auth.jwt.jwks_url`.
    pub url: url::Url,
    /// `auth.jwt.jwks_refresh`.
    pub refresh: Duration,
    /// The HTTP client (rustls, no proxy, no redirects).
    pub client: reqwest::Client,
    /// The store the verifier reads.
    pub keys: Arc<JwksKeys>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Host only: the URL may carry credentials in its path or query.
        f.debug_struct("JwksSource")
            .field("host", &self.url.host_str())
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl JwksSource {
    /// The client for a key set URL: rustls with the system's roots for https.
    pub fn client(https: bool) -> Result<reqwest::Client, String> {
        crate::http_client::pooled(https)
    }
}

/// Why a fetch failed; its `outcome` label.
#[derive(Debug)]
enum FetchError {
    Unreachable(String),
    Status(u16),
    Invalid(String),
}

impl FetchError {
    fn label(&self) -> &'static str {
        match self {
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Status(_) => "http_status",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => write!(f, "unreachable: {why}"),
            FetchError::Status(status) => write!(f, "answered HTTP {status}"),
            FetchError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

/// Runs until `stop`: fetches now, then on the timer, on request, and again after
/// failures.
pub async fn run(source: JwksSource, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut failures: u32 = 0;
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        source.keys.fetch_started();
        let fetched = tokio::select! {
            () = stop.cancelled() => {
                source.keys.fetch_finished(None);
                return;
            }
            fetched = fetch(&source) => fetched,
        };
        let next = match fetched {
            Ok(set) => {
                metrics.jwks_fetches.with_label_values(&["ok"]).inc();
                metrics
                    .jwks_keys
                    .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
                if failures > 0 || source.keys.current().is_none() {
                    tracing::info!(keys = set.len(), "JWKS key set fetched");
                }
                tracing::debug!(kids = ?set.kids().collect::<Vec<_>>(), "JWKS key set installed");
                source.keys.fetch_finished(Some(set));
                failures = 0;
                source.refresh
            }
            Err(error) => {
                metrics
                    .jwks_fetches
                    .with_label_values(&[error.label()])
                    .inc();
                let kept = source.keys.current().map(|s| s.len());
                tracing::warn!(%error, kept_keys = ?kept, "JWKS fetch failed; the last good key set stays in use");
                source.keys.fetch_finished(None);
                let delay = retry_delay(failures, source.refresh);
                failures = failures.saturating_add(1);
                delay
            }
        };
        let wake = tokio::time::sleep(next);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut wake => break,
                () = source.keys.refetch_wanted() => break,
                _ = gauges.tick() => {
                    if let Some(age) = source.keys.age() {
                        metrics
                            .jwks_age_seconds
                            .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
                    }
                }
            }
        }
    }
}

/// 1 s doubling per failure, capped by [`MAX_RETRY`] and the refresh period.
fn retry_delay(failures: u32, refresh: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(10))
        .min(MAX_RETRY)
        .min(refresh)
}

async fn fetch(source: &JwksSource) -> Result<KeySet, FetchError> {
    let mut response = source
        .client
        .get(source.url.clone())
        .timeout(FETCH_TIMEOUT)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .send()
        .await
        // Without the URL: it may carry credentials.
        .map_err(|e| FetchError::Unreachable(e.without_url().to_string()))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(FetchError::Invalid(format!(
            "the key set is larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Unreachable(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::Invalid(format!(
                "the key set is larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body).map_err(|e| FetchError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_within_their_caps() {
        let hour = Duration::from_secs(3600);
        let delays: Vec<u64> = (0..8).map(|n| retry_delay(n, hour).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(50, hour), MAX_RETRY);
        assert_eq!(
            retry_delay(3, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
