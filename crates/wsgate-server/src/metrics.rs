//! Prometheus metrics, served as text at `GET /metrics` on the HTTP listener.
//!
//! One [`Metrics`] per gateway (its own registry, not the global one), so several
//! gateways in one test process do not mix their numbers. Names follow Prometheus
//! conventions: `wsgate_…_total` counters, base units (seconds, bytes). The list with
//! meanings is in `docs/observability.md`.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub connections: IntGauge,
    /// Upgrade attempts by result: `accepted` or the rejection code.
    pub handshakes: IntCounterVec,
    /// Data frames received from clients.
    pub messages_received: IntCounter,
    /// Data frames sent to clients (pushes and replies).
    pub messages_sent: IntCounter,
    /// Payload bytes received from clients.
    pub bytes_received: IntCounter,
    /// Payload bytes sent to clients.
    pub bytes_sent: IntCounter,
    /// Frames queued for local sessions by incoming envelopes (one per session reached).
    pub deliveries: IntCounter,
    /// Handshakes that negotiated permessage-deflate.
    pub compression_negotiated: IntCounter,
    /// Payloads deflated (a push shared by many sessions counts once).
    pub deflate_runs: IntCounter,
    /// Data frames sent compressed.
    pub deflated_frames: IntCounter,
    /// Payload bytes compression kept off the wire.
    pub deflate_saved_bytes: IntCounter,
    /// Envelopes this pod received from the broker.
    pub broker_received: IntCounter,
    /// Sessions closed, by who closed them (`client`, `server`, `transport`).
    pub sessions_closed: IntCounterVec,
    /// Sessions closed because their outbound queue filled or a write stalled (3008).
    pub slow_consumer_closes: IntCounter,
    /// Sessions closed because the client did not answer heartbeats (3001).
    pub heartbeat_timeouts: IntCounter,
    /// Time to publish one envelope to the broker.
    pub broker_publish_seconds: Histogram,
    /// 1 while the backends are healthy (Redis reachable, pub/sub self-probe heard).
    pub backend_healthy: IntGauge,
    /// 1 while the pod takes connections (backends healthy and not draining).
    pub ready: IntGauge,
    /// Control-plane calls by method and gRPC status code.
    pub grpc_requests: IntCounterVec,
    /// HTTP JSON API calls by method (`unknown` for any other path) and outcome (`ok` or
    /// the error code of the answer).
    pub http_api_requests: IntCounterVec,
    /// Joins of streams with history by stream kind (`topic`, `user`) and outcome
    /// (`recovered`, `not_recovered`, `fresh`: no `since`) and, when not recovered, why
    /// (`epoch`, `trimmed`, `ahead`; else `none`).
    pub recoveries: IntCounterVec,
    /// Messages replayed from history to recovering clients.
    pub replayed: IntCounter,
    /// Reads of stream history (joins and the `History` call).
    pub history_reads: IntCounter,
    /// Streams a session stopped vouching for (an epoch change or a gap seen live), by
    /// stream kind: the client is told to join again with its last offset.
    pub stream_resets: IntCounterVec,
    /// `refresh` ops by outcome: `refreshed`, `refused`, `revoked`.
    pub token_refreshes: IntCounterVec,
    /// Live sessions closed with 3006 because a revocation named them.
    pub sessions_revoked: IntCounter,
    /// Revocations in this pod's copy of the cluster's set.
    pub revocations: IntGauge,
    /// Clients' `publish` ops by outcome (`published`, `forbidden`, `rate_limited`,
    /// `unavailable`).
    pub client_publishes: IntCounterVec,
    /// Client rpc calls by outcome: `ok`, `failed`, `timeout`, `cancelled` (the session
    /// ended first), and those never sent: `busy` (over `rpc.max_in_flight`),
    /// `unavailable` (rpc is not configured).
    pub rpc_calls: IntCounterVec,
    /// Time from a client's rpc op to the backend's complete answer (or the timeout).
    pub rpc_seconds: Histogram,
    /// Session events this pod wrote to the log, by type (a reaped pod's `disconnected`s
    /// count on the reaper).
    pub events_emitted: IntCounterVec,
    /// Topic events not written, by type and reason: `queue_full` (the writer's queue
    /// was full), `session_closed` (the session's `disconnected` was written first),
    /// `shutdown`.
    pub events_dropped: IntCounterVec,
    /// `WatchEvents` streams open now.
    pub event_watchers: IntGauge,
    /// Session events handed to consumers, by way: `watch` (the gRPC stream) or `poll`
    /// (the HTTP long poll).
    pub events_consumed: IntCounterVec,
    /// Webhook events and attempts by endpoint and outcome: `delivered` (an event got a
    /// 2xx), `failed_attempt` (one attempt did not), `gave_up` (an event skipped after
    /// `webhooks.retry_for`).
    pub webhook_deliveries: IntCounterVec,
    /// Time from an event's first attempt to its 2xx, retries included, by endpoint.
    pub webhook_seconds: HistogramVec,
    /// Events an endpoint never got, by endpoint and reason: `overflow` (the endpoint
    /// fell behind `events.max_len` and they were trimmed from the log), `reset` (the log
    /// was lost with the backend's data; counted as 1).
    pub webhook_dropped: IntCounterVec,
    /// 1 while this pod holds the endpoint's lease (delivers its events), by endpoint.
    pub webhook_lease: IntGaugeVec,
    /// Age of the event being delivered (now minus its `at_ms`) in seconds, 0 once the
    /// endpoint has caught up with the log; by endpoint, on the pod that holds its lease.
    pub webhook_lag: GaugeVec,
    /// JWKS fetches (`auth.jwt.jwks_url`) by outcome: `ok`, `unreachable` (connection or
    /// timeout), `http_status` (not 200), `invalid` (not a key set, too large, or no
    /// usable key).
    pub jwks_fetches: IntCounterVec,
    /// Seconds since the key set in use was fetched (0 until the first fetch).
    pub jwks_age_seconds: IntGauge,
    /// Usable keys in the key set in use (0 until the first fetch).
    pub jwks_keys: IntGauge,
    /// Connect-proxy checks (`auth.mode = "proxy"`) by outcome: `accepted`, `refused`
    /// (401/403), `unavailable` (no usable answer), `cached` (answered without a call).
    pub auth_proxy_requests: IntCounterVec,
    /// Time of one call to the connect proxy's backend, answer read.
    pub auth_proxy_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric in a fresh registry (plus the process collector: CPU, RSS,
    /// open file descriptors).
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("wsgate".into()), None).unwrap_or_else(|_| Registry::new());
        let m = Self {
            connections: IntGauge::with_opts(Opts::new(
                "connections",
                "WebSocket connections open now",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            handshakes: IntCounterVec::new(
                Opts::new(
                    "handshakes_total",
                    "WebSocket upgrade attempts by result: accepted or the rejection code",
                ),
                &["result"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            messages_received: counter("messages_received_total", "Data frames received from clients"),
            messages_sent: counter("messages_sent_total", "Data frames sent to clients"),
            bytes_received: counter("received_bytes_total", "Payload bytes received from clients"),
            bytes_sent: counter("sent_bytes_total", "Payload bytes sent to clients"),
            deliveries: counter(
                "deliveries_total",
                "Frames queued for local sessions by incoming envelopes",
            ),
            compression_negotiated: counter(
                "compression_negotiated_total",
                "Handshakes that negotiated permessage-deflate",
            ),
            deflate_runs: counter(
                "deflate_runs_total",
                "Payloads deflated (a push shared by many sessions counts once)",
            ),
            deflated_frames: counter(
                "deflated_frames_sent_total",
                "Data frames sent compressed",
            ),
            deflate_saved_bytes: counter(
                "deflate_saved_bytes_total",
                "Payload bytes compression kept off the wire",
            ),
            broker_received: counter(
                "broker_received_total",
                "Envelopes this pod received from the broker",
            ),
            sessions_closed: IntCounterVec::new(
                Opts::new("sessions_closed_total", "Sessions closed, by who closed them"),
                &["by"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            slow_consumer_closes: counter(
                "slow_consumer_closes_total",
                "Sessions closed as slow consumers (3008)",
            ),
            heartbeat_timeouts: counter(
                "heartbeat_timeouts_total",
                "Sessions closed for not answering heartbeats (3001)",
            ),
            broker_publish_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "broker_publish_duration_seconds",
                    "Time to publish one envelope to the broker",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .unwrap_or_else(|_| unreachable_metric()),
            backend_healthy: IntGauge::with_opts(Opts::new(
                "backend_healthy",
                "1 while Redis is reachable and the pub/sub self-probe is heard (always 1 embedded)",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            ready: IntGauge::with_opts(Opts::new(
                "ready",
                "1 while the pod takes connections: backends healthy and not draining",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            grpc_requests: IntCounterVec::new(
                Opts::new(
                    "grpc_requests_total",
                    "Control-plane calls by method and gRPC status code",
                ),
                &["method", "code"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            http_api_requests: IntCounterVec::new(
                Opts::new(
                    "http_api_requests_total",
                    "HTTP JSON API calls by method and outcome (ok or the error code)",
                ),
                &["method", "code"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            recoveries: IntCounterVec::new(
                Opts::new(
                    "recoveries_total",
                    "Joins of streams with history by stream kind, outcome and reason",
                ),
                &["stream", "outcome", "reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            replayed: counter(
                "replayed_messages_total",
                "Messages replayed from history to recovering clients",
            ),
            history_reads: counter("history_reads_total", "Reads of stream history"),
            stream_resets: IntCounterVec::new(
                Opts::new(
                    "stream_resets_total",
                    "Streams a session stopped vouching for (epoch change or gap seen live)",
                ),
                &["stream"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            token_refreshes: IntCounterVec::new(
                Opts::new(
                    "token_refreshes_total",
                    "Clients' refresh ops by outcome: refreshed, refused, revoked",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            sessions_revoked: counter(
                "sessions_revoked_total",
                "Live sessions closed with 3006 because a revocation named them",
            ),
            revocations: IntGauge::with_opts(Opts::new(
                "revocations",
                "Revocations in this pod's copy of the cluster's set",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            client_publishes: IntCounterVec::new(
                Opts::new(
                    "client_publishes_total",
                    "Clients' publish ops by outcome: published, forbidden, rate_limited, unavailable",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            rpc_calls: IntCounterVec::new(
                Opts::new("rpc_calls_total", "Client rpc calls to the backend by outcome"),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            rpc_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "rpc_duration_seconds",
                    "Time from a client's rpc op to the backend's complete answer",
                )
                .buckets(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
            )
            .unwrap_or_else(|_| unreachable_metric()),
            events_emitted: IntCounterVec::new(
                Opts::new(
                    "events_emitted_total",
                    "Session events this pod wrote to the event log, by type",
                ),
                &["type"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            events_dropped: IntCounterVec::new(
                Opts::new(
                    "events_dropped_total",
                    "Topic events not written, by type and reason",
                ),
                &["type", "reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            event_watchers: IntGauge::with_opts(Opts::new(
                "event_watchers",
                "WatchEvents streams open now",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            events_consumed: IntCounterVec::new(
                Opts::new(
                    "events_consumed_total",
                    "Session events handed to consumers, by way: watch (gRPC) or poll (HTTP)",
                ),
                &["via"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "webhook_deliveries_total",
                    "Webhook events and attempts by endpoint and outcome: delivered, failed_attempt, gave_up",
                ),
                &["endpoint", "outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            webhook_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "webhook_delivery_duration_seconds",
                    "Time from a webhook event's first attempt to its 2xx, retries included",
                )
                .buckets(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 300.0,
                ]),
                &["endpoint"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            webhook_dropped: IntCounterVec::new(
                Opts::new(
                    "webhook_dropped_total",
                    "Events a webhook endpoint never got: overflow (fell behind events.max_len), reset (log lost)",
                ),
                &["endpoint", "reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            webhook_lease: IntGaugeVec::new(
                Opts::new(
                    "webhook_lease_held",
                    "1 while this pod holds the webhook endpoint's lease and delivers its events",
                ),
                &["endpoint"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            webhook_lag: GaugeVec::new(
                Opts::new(
                    "webhook_lag_seconds",
                    "Age of the event a webhook endpoint is being sent; 0 once caught up",
                ),
                &["endpoint"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            jwks_fetches: IntCounterVec::new(
                Opts::new("jwks_fetches_total", "JWKS fetches by outcome"),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            jwks_age_seconds: IntGauge::with_opts(Opts::new(
                "jwks_age_seconds",
                "Seconds since the JWKS key set in use was fetched",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            jwks_keys: IntGauge::with_opts(Opts::new(
                "jwks_keys",
                "Usable keys in the JWKS key set in use",
            ))
            .unwrap_or_else(|_| unreachable_metric()),
            auth_proxy_requests: IntCounterVec::new(
                Opts::new(
                    "auth_proxy_requests_total",
                    "Connect-proxy handshake checks by outcome",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            auth_proxy_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "auth_proxy_duration_seconds",
                    "Time of one call to the connect proxy's backend",
                )
                .buckets(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .unwrap_or_else(|_| unreachable_metric()),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connections.clone()),
            Box::new(m.handshakes.clone()),
            Box::new(m.messages_received.clone()),
            Box::new(m.messages_sent.clone()),
            Box::new(m.bytes_received.clone()),
            Box::new(m.bytes_sent.clone()),
            Box::new(m.deliveries.clone()),
            Box::new(m.compression_negotiated.clone()),
            Box::new(m.deflate_runs.clone()),
            Box::new(m.deflated_frames.clone()),
            Box::new(m.deflate_saved_bytes.clone()),
            Box::new(m.broker_received.clone()),
            Box::new(m.sessions_closed.clone()),
            Box::new(m.slow_consumer_closes.clone()),
            Box::new(m.heartbeat_timeouts.clone()),
            Box::new(m.broker_publish_seconds.clone()),
            Box::new(m.backend_healthy.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.grpc_requests.clone()),
            Box::new(m.http_api_requests.clone()),
            Box::new(m.recoveries.clone()),
            Box::new(m.replayed.clone()),
            Box::new(m.history_reads.clone()),
            Box::new(m.stream_resets.clone()),
            Box::new(m.token_refreshes.clone()),
            Box::new(m.sessions_revoked.clone()),
            Box::new(m.revocations.clone()),
            Box::new(m.client_publishes.clone()),
            Box::new(m.rpc_calls.clone()),
            Box::new(m.rpc_seconds.clone()),
            Box::new(m.events_emitted.clone()),
            Box::new(m.events_dropped.clone()),
            Box::new(m.event_watchers.clone()),
            Box::new(m.events_consumed.clone()),
            Box::new(m.webhook_deliveries.clone()),
            Box::new(m.webhook_seconds.clone()),
            Box::new(m.webhook_dropped.clone()),
            Box::new(m.webhook_lease.clone()),
            Box::new(m.webhook_lag.clone()),
            Box::new(m.jwks_fetches.clone()),
            Box::new(m.jwks_age_seconds.clone()),
            Box::new(m.jwks_keys.clone()),
            Box::new(m.auth_proxy_requests.clone()),
            Box::new(m.auth_proxy_seconds.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            if let Err(e) = m.registry.register(c) {
                tracing::error!(error = %e, "metric registration failed");
            }
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable_metric())
}

/// Metric constructors fail only on invalid names or labels, which are constants here; a
/// unit test builds them all, so this is never reached in a released build.
fn unreachable_metric<T>() -> T {
    panic!("invalid metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_and_rendered() {
        let m = Metrics::new();
        m.handshakes.with_label_values(&["accepted"]).inc();
        m.grpc_requests
            .with_label_values(&["SendToUser", "OK"])
            .inc();
        m.http_api_requests
            .with_label_values(&["send_to_user", "ok"])
            .inc();
        m.sessions_closed.with_label_values(&["client"]).inc();
        m.broker_publish_seconds.observe(0.001);
        m.recoveries
            .with_label_values(&["topic", "recovered", "none"])
            .inc();
        m.stream_resets.with_label_values(&["user"]).inc();
        m.rpc_calls.with_label_values(&["busy"]).inc();
        m.rpc_seconds.observe(0.02);
        m.events_emitted.with_label_values(&["connected"]).inc();
        m.events_dropped
            .with_label_values(&["subscribed", "queue_full"])
            .inc();
        m.events_consumed.with_label_values(&["poll"]).inc_by(3);
        m.webhook_deliveries
            .with_label_values(&["hook", "delivered"])
            .inc();
        m.webhook_seconds.with_label_values(&["hook"]).observe(0.01);
        m.webhook_dropped
            .with_label_values(&["hook", "overflow"])
            .inc_by(3);
        m.webhook_lease.with_label_values(&["hook"]).set(1);
        m.webhook_lag.with_label_values(&["hook"]).set(0.5);
        m.jwks_fetches.with_label_values(&["ok"]).inc();
        m.auth_proxy_requests.with_label_values(&["cached"]).inc();
        m.auth_proxy_seconds.observe(0.01);
        let text = m.render();
        for name in [
            "wsgate_webhook_deliveries_total{endpoint=\"hook\",outcome=\"delivered\"} 1",
            "wsgate_webhook_delivery_duration_seconds_bucket",
            "wsgate_webhook_dropped_total{endpoint=\"hook\",reason=\"overflow\"} 3",
            "wsgate_webhook_lease_held{endpoint=\"hook\"} 1",
            "wsgate_webhook_lag_seconds{endpoint=\"hook\"} 0.5",
            "wsgate_connections",
            "wsgate_handshakes_total{result=\"accepted\"} 1",
            "wsgate_messages_received_total",
            "wsgate_messages_sent_total",
            "wsgate_deliveries_total",
            "wsgate_compression_negotiated_total",
            "wsgate_deflate_runs_total",
            "wsgate_deflated_frames_sent_total",
            "wsgate_deflate_saved_bytes_total",
            "wsgate_broker_received_total",
            "wsgate_slow_consumer_closes_total",
            "wsgate_heartbeat_timeouts_total",
            "wsgate_broker_publish_duration_seconds_bucket",
            "wsgate_backend_healthy",
            "wsgate_ready",
            "wsgate_grpc_requests_total{code=\"OK\",method=\"SendToUser\"} 1",
            "wsgate_http_api_requests_total{code=\"ok\",method=\"send_to_user\"} 1",
            "wsgate_recoveries_total{outcome=\"recovered\",reason=\"none\",stream=\"topic\"} 1",
            "wsgate_replayed_messages_total",
            "wsgate_history_reads_total",
            "wsgate_stream_resets_total{stream=\"user\"} 1",
            "wsgate_rpc_calls_total{outcome=\"busy\"} 1",
            "wsgate_rpc_duration_seconds_bucket",
            "wsgate_events_emitted_total{type=\"connected\"} 1",
            "wsgate_events_dropped_total{reason=\"queue_full\",type=\"subscribed\"} 1",
            "wsgate_event_watchers",
            "wsgate_events_consumed_total{via=\"poll\"} 3",
            "wsgate_jwks_fetches_total{outcome=\"ok\"} 1",
            "wsgate_jwks_age_seconds",
            "wsgate_jwks_keys",
            "wsgate_auth_proxy_requests_total{outcome=\"cached\"} 1",
            "wsgate_auth_proxy_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
