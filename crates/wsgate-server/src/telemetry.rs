//! Logs and traces.
//!
//! Logs: human-readable on a terminal, JSON lines when `telemetry.log_format = "json"`,
//! filtered by `telemetry.log_level` (or `RUST_LOG`).
//!
//! Traces: OpenTelemetry through `tracing-opentelemetry`, exported with OTLP when
//! `telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (gRPC by default,
//! HTTP/protobuf with `telemetry.otlp_protocol` or `OTEL_EXPORTER_OTLP_PROTOCOL`), and off
//! otherwise. The standard `OTEL_*` variables work (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, …). Sampling is
//! parent-based with ratio `telemetry.sample_ratio` unless `OTEL_TRACES_SAMPLER` says
//! otherwise. Only wsgate's own spans are exported, at INFO and above.
//!
//! Cross-pod context travels as W3C `traceparent` in the Redis envelope: [`inject`] on
//! the publishing pod, [`extract`] on the receiving one (both from [`crate::propagation`]).

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use crate::propagation::{extract, inject};
use crate::settings::{LogFormat, OtlpProtocol, Settings};

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (call once, on the way out).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("wsgate: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber and, when an endpoint is configured, the OTLP trace
/// pipeline. `env` is the process environment (passed in so tests can control it). Must
/// run inside a Tokio runtime (the gRPC exporter needs one). Calling it twice leaves the
/// first subscriber in place.
pub fn init(settings: &Settings, env: &HashMap<String, String>) -> Result<Telemetry, String> {
    let t = &settings.telemetry;
    let filter = env
        .get("RUST_LOG")
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&t.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match t.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };

    let provider = match endpoint(settings, env) {
        Some(endpoint) => Some(provider(settings, env, &endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        let own_spans = Targets::new()
            .with_target("wsgate_server", LevelFilter::INFO)
            .with_target("wsgate_redis", LevelFilter::INFO)
            .with_target("wsgate", LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("wsgate"))
            .with_filter(own_spans)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn endpoint(settings: &Settings, env: &HashMap<String, String>) -> Option<String> {
    settings.telemetry.otlp_endpoint.clone().or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|k| env.get(*k).filter(|v| !v.is_empty()).cloned())
    })
}

fn provider(
    settings: &Settings,
    env: &HashMap<String, String>,
    endpoint: &str,
) -> Result<SdkTracerProvider, String> {
    let protocol = match env.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str) {
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        _ => settings.telemetry.otlp_protocol,
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => {
            // A bare collector address gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT
            // would.
            let url = match url::Url::parse(endpoint) {
                Ok(u) if u.path() == "/" || u.path().is_empty() => {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                }
                _ => endpoint.to_owned(),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_headers(HashMap::new())
                .build()
        }
    }
    .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;

    let mut resource = Resource::builder();
    if !env.contains_key("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("wsgate");
    }
    let mut attributes = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", settings.server.pod_id.clone()),
    ];
    if let Some(pod) = env.get("POD_NAME") {
        attributes.push(KeyValue::new("k8s.pod.name", pod.clone()));
    }
    if let Some(ns) = env.get("POD_NAMESPACE") {
        attributes.push(KeyValue::new("k8s.namespace.name", ns.clone()));
    }
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.with_attributes(attributes).build());
    if !env.contains_key("OTEL_TRACES_SAMPLER") {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.telemetry.sample_ratio,
        ))));
    }
    Ok(builder.build())
}
