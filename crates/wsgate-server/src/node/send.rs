//! Sends: a command published once on the channel that reaches exactly the pods holding
//! its targets, with the registry's count of those targets as the answer.

use std::sync::Arc;

use tracing::Instrument;
use wsgate_core::backend::{
    BackendError, Channel, Command, Envelope, Idempotency, StreamPosition, Target,
};
use wsgate_core::stream::HistoryPolicy;

use super::Node;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The backend is unreachable.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The result of a send: how many sessions the registry knew as targets, the id of the
/// published message, and its place in its stream when the target keeps history.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Sessions targeted, as the registry knew them.
    pub targets: u64,
    /// The envelope's id.
    pub message_id: String,
    /// The message's epoch and offset, when its stream keeps history (for a repeated
    /// idempotency key: the first publish's).
    pub position: Option<StreamPosition>,
}

impl Node {
    /// Publishes a command for `target` once, on the channel that reaches exactly the pods
    /// holding matching sessions. Answers how many sessions the registry knew as targets.
    /// A push to a stream with history gets its offset in the same step; with an
    /// `idempotency_key`, a repeat within `history.idempotency_window` publishes nothing
    /// and answers the first publish's position (streams without history ignore the key).
    pub async fn send(
        &self,
        target: Target,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<Sent, SendError> {
        let channel = match &target {
            Target::User(u) => Channel::User(u.clone()),
            Target::Topic(t) => Channel::Topic(t.clone()),
            Target::Broadcast => Channel::Broadcast,
            Target::Session(s) => match self.registry.session(s).await? {
                Some(record) => Channel::Pod(record.pod_id),
                None => return Ok(Sent::default()),
            },
        };
        // Only pushes are kept; a disconnect is never replayed.
        let policy = match &command {
            Command::Deliver(_) => self.stream_policy(&channel),
            Command::Disconnect { .. } => None,
        };
        // A push to a user's channel without history is counted by the publish itself
        // where the broker can (one script on a one-server Redis: one round trip for the
        // whole send); any other send is counted first, so a failed count publishes
        // nothing.
        let plan = match policy {
            Some(policy) => Plan::Stream {
                targets: self.count_targets(&channel).await?,
                policy,
            },
            None if matches!(channel, Channel::User(_)) && self.broker.counts_user_sends() => {
                Plan::CountedByPublish
            }
            None => Plan::Publish {
                targets: self.count_targets(&channel).await?,
            },
        };
        let mut envelope = Envelope::new(self.pod_id.clone(), target, command);
        let message_id = envelope.id.clone();
        let span = tracing::info_span!(
            "broker.publish",
            otel.kind = "producer",
            messaging.system = "wsgate",
            messaging.operation.type = "publish",
            messaging.message.id = %message_id,
            messaging.destination.name = channel_kind(&channel),
            wsgate.targets = tracing::field::Empty,
            wsgate.stream.offset = tracing::field::Empty,
            wsgate.stream.duplicate = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let (targets, position) = async {
            envelope.trace_context = crate::telemetry::inject();
            let envelope = Arc::new(envelope);
            let span = tracing::Span::current();
            let (targets, position) = match plan {
                Plan::Publish { targets } => {
                    self.broker.publish(&channel, envelope).await?;
                    (targets, None)
                }
                Plan::CountedByPublish => (self.publish_counted(&channel, envelope).await?, None),
                Plan::Stream { targets, policy } => {
                    let idempotency = idempotency_key.map(|key| Idempotency {
                        key,
                        window: self.history.idempotency_window,
                    });
                    let appended = self
                        .broker
                        .publish_stream(&channel, envelope, &policy, idempotency.as_ref())
                        .await?;
                    span.record("wsgate.stream.offset", appended.position.offset as i64);
                    span.record("wsgate.stream.duplicate", appended.duplicate);
                    (targets, Some(appended.position))
                }
            };
            span.record("wsgate.targets", targets as i64);
            Ok::<_, BackendError>((targets, position))
        }
        .instrument(span)
        .await?;
        self.metrics
            .broker_publish_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Sent {
            targets: targets as u64,
            message_id,
            position,
        })
    }

    /// How many sessions a send on `channel` reaches, as the registry knows them.
    async fn count_targets(&self, channel: &Channel) -> Result<usize, BackendError> {
        match channel {
            Channel::User(user) => self.registry.count_user_sessions(user).await,
            Channel::Topic(topic) => self.registry.count_topic_subscribers(topic).await,
            Channel::Broadcast => self.registry.count_sessions().await,
            // A send to one session reaches its pod's channel once the session is found.
            Channel::Pod(_) => Ok(1),
        }
    }

    /// Publishes on `channel` and counts its targets: in one step where the broker can
    /// (a user's channel on a one-server Redis), else the registry's count first.
    async fn publish_counted(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
    ) -> Result<usize, BackendError> {
        if let Channel::User(user) = channel
            && let Some(targets) = self
                .broker
                .publish_to_user_counted(user, envelope.clone())
                .await?
        {
            return Ok(targets);
        }
        let targets = self.count_targets(channel).await?;
        self.broker.publish(channel, envelope).await?;
        Ok(targets)
    }
}

/// How a send is counted and published.
enum Plan {
    /// Counted already; published as it is.
    Publish { targets: usize },
    /// A user's channel whose broker counts with the publish.
    CountedByPublish,
    /// Counted already; appended to its stream with history.
    Stream {
        targets: usize,
        policy: HistoryPolicy,
    },
}

fn channel_kind(channel: &Channel) -> &'static str {
    match channel {
        Channel::User(_) => "user",
        Channel::Topic(_) => "topic",
        Channel::Pod(_) => "pod",
        Channel::Broadcast => "broadcast",
    }
}
