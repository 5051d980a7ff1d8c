//! The pod's end of the broker: envelopes from other pods (and this one) handed to the
//! local hub, each under a delivery span that continues the sender's trace.

use std::sync::Arc;

use wsgate_core::backend::{Command, Envelope, Inbox, Target};
use wsgate_core::hub::Hub;
use wsgate_core::ids::SessionId;

use crate::metrics::Metrics;

/// Hands envelopes from the broker to the hub.
pub(crate) struct HubInbox {
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pod_id: String,
    /// Bumped when the broker may have missed envelopes; sessions then catch their
    /// streams up from history.
    pub(crate) resync: tokio::sync::watch::Sender<u64>,
}

/// Session ids listed on a delivery span (the count is always recorded).
const TRACED_SESSIONS: usize = 16;

impl Inbox for HubInbox {
    fn resubscribed(&self) {
        tracing::info!("broker resubscribed: sessions catch their streams up from history");
        self.resync.send_modify(|generation| *generation += 1);
    }

    fn deliver(&self, envelope: Arc<Envelope>) {
        self.metrics.broker_received.inc();
        // The delivery span continues the sender's trace, from the envelope.
        let span = tracing::info_span!(
            "ws.deliver",
            otel.kind = "consumer",
            messaging.system = "wsgate",
            messaging.message.id = %envelope.id,
            messaging.operation.type = "process",
            wsgate.origin_pod = %envelope.origin,
            wsgate.pod = %self.pod_id,
            wsgate.target = target_kind(&envelope.target),
            wsgate.sessions.reached = tracing::field::Empty,
            wsgate.sessions = tracing::field::Empty,
            wsgate.stream.offset = tracing::field::Empty,
        );
        if let Some(position) = &envelope.position {
            span.record("wsgate.stream.offset", position.offset as i64);
        }
        if let Some(parent) = &envelope.trace_context {
            crate::telemetry::extract(&span, parent);
        }
        let _entered = span.enter();
        let mut noted = Vec::new();
        let reached = self
            .hub
            .apply_noting(&envelope, &mut noted, TRACED_SESSIONS);
        if matches!(envelope.command, Command::Deliver(_)) {
            self.metrics.deliveries.inc_by(reached as u64);
        }
        span.record("wsgate.sessions.reached", reached as i64);
        if !noted.is_empty() {
            let ids: Vec<&str> = noted.iter().map(SessionId::as_str).collect();
            span.record("wsgate.sessions", ids.join(","));
        }
    }
}

fn target_kind(target: &Target) -> &'static str {
    match target {
        Target::User(_) => "user",
        Target::Session(_) => "session",
        Target::Topic(_) => "topic",
        Target::Broadcast => "broadcast",
    }
}
