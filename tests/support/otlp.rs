//! An OTLP/gRPC trace receiver, like a collector's, for tests that export a gateway's
//! spans and look at them: which spans, in which trace, under which parent.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;

/// A span as exported, with the pod that exported it.
#[derive(Debug, Clone)]
pub struct Exported {
    pub pod: String,
    pub span: Span,
}

impl Exported {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(value_text)
    }
}

pub fn value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/gRPC trace receiver, like a collector's.
#[derive(Clone, Default)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<Exported>>>,
    /// Every attribute value exported, resource attributes included.
    pub values: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        for rs in request.resource_spans {
            let resource: Vec<KeyValue> = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let pod = resource
                .iter()
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| kv.value.as_ref())
                .map(value_text)
                .unwrap_or_default();
            let mut values = self.values.lock();
            values.extend(
                resource
                    .iter()
                    .filter_map(|kv| kv.value.as_ref())
                    .map(value_text),
            );
            for ss in rs.scope_spans {
                for span in ss.spans {
                    values.push(span.name.clone());
                    values.extend(
                        span.attributes
                            .iter()
                            .filter_map(|kv| kv.value.as_ref())
                            .map(value_text),
                    );
                    self.spans.lock().push(Exported {
                        pod: pod.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn start_receiver() -> (Receiver, std::net::SocketAddr) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, addr)
}

/// Lowercase hex, as W3C `traceparent` writes trace and span ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
