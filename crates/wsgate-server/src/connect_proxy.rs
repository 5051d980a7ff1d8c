//! The connect proxy's HTTP side (`auth.mode = "proxy"`): the one POST to
//! `auth.proxy.url` that `wsgate_core::auth::proxy::ProxyVerifier` asks for at each
//! handshake it cannot answer from its cache.
//!
//! Core decides what is sent and what an answer means; this module only moves bytes, on
//! the shared client of [`crate::http_client`] (rustls, no proxy variables, no
//! redirects): the whole exchange, connection and body included, is bounded by
//! `auth.proxy.timeout`, the body read by `MAX_ANSWER_BYTES`, and only 200 (an answer),
//! 401 and 403 (a refusal) mean anything — every other status, a connection refused or a
//! timeout is "unavailable", which the client sees as 503 `auth_unavailable`. The
//! handshake span's `traceparent` goes with the request, as with rpc calls, so the
//! backend's spans join the connection's trace.
//!
//! The metrics are attached when the gateway starts ([`HttpConnectProxy::attach_metrics`]):
//! the authenticator is built with the configuration, before the node that owns the
//! [`Metrics`] exists.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wsgate_core::auth::proxy::{ConnectProxy, MAX_ANSWER_BYTES, ProxyOutcome, ProxyReply};

use crate::metrics::Metrics;

/// The backend's client, built once with the configuration.
pub struct HttpConnectProxy {
    url: url::Url,
    timeout: Duration,
    client: reqwest::Client,
    metrics: OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for HttpConnectProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Host only: the URL may carry credentials in its path or query.
        f.debug_struct("HttpConnectProxy")
            .field("host", &self.url.host_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpConnectProxy {
    /// A client POSTing to `url`, each call bounded by `timeout`.
    pub fn new(url: url::Url, timeout: Duration) -> Result<Self, String> {
        let client = crate::http_client::pooled(url.scheme() == "https")?;
        Ok(Self {
            url,
            timeout,
            client,
            metrics: OnceLock::new(),
        })
    }

    /// Counts into `metrics` from now on; the first call wins (a configuration serves
    /// one gateway).
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    async fn exchange(&self, body: Vec<u8>) -> ProxyReply {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(body);
        if let Some(traceparent) = crate::propagation::inject() {
            request = request.header("traceparent", traceparent);
        }
        // Errors without the URL: it may carry credentials.
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return ProxyReply::Unavailable(format!("no answer within {:?}", self.timeout));
            }
            Err(e) => return ProxyReply::Unavailable(e.without_url().to_string()),
        };
        let status = response.status();
        match status.as_u16() {
            200 => {}
            401 | 403 => return ProxyReply::Refused(status),
            other => return ProxyReply::Unavailable(format!("answered HTTP {other}")),
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return too_large();
        }
        let mut answer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return too_large();
                    }
                    answer.extend_from_slice(&chunk);
                }
                Ok(None) => return ProxyReply::Answer(answer),
                Err(e) if e.is_timeout() => {
                    return ProxyReply::Unavailable(format!(
                        "the answer did not arrive within {:?}",
                        self.timeout
                    ));
                }
                Err(e) => return ProxyReply::Unavailable(e.without_url().to_string()),
            }
        }
    }
}

fn too_large() -> ProxyReply {
    ProxyReply::Unavailable(format!(
        "the answer is larger than {MAX_ANSWER_BYTES} bytes"
    ))
}

#[async_trait]
impl ConnectProxy for HttpConnectProxy {
    async fn call(&self, body: Vec<u8>) -> ProxyReply {
        let started = Instant::now();
        let reply = self.exchange(body).await;
        if let Some(metrics) = self.metrics.get() {
            metrics
                .auth_proxy_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        reply
    }

    fn record(&self, outcome: ProxyOutcome) {
        if let Some(metrics) = self.metrics.get() {
            metrics
                .auth_proxy_requests
                .with_label_values(&[outcome.label()])
                .inc();
        }
    }
}
