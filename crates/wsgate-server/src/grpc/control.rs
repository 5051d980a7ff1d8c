//! `wsgate.v1.Gateway`: argument validation (INVALID_ARGUMENT with a message naming the
//! field), then one publish (or one stream read) through the node. `WatchEvents` is in
//! [`super::events`].

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wsgate_core::auth::{valid_topic, valid_user_id};
use wsgate_core::backend::{BackendError, Channel, Command, StreamEntry, Target};
use wsgate_core::close;
use wsgate_core::events::{EventKind, Since};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_core::revocation::{Revocation, Revoked};
use wsgate_proto::pb;

use crate::events::EventBatch;
use crate::node::{Node, SendError, Sent, now_ms};

/// Longest session id accepted (ULIDs are 26 characters).
const MAX_SESSION_ID: usize = 64;

/// Longest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// The longest a revocation may last: long enough for any token's lifetime, short enough
/// that a mistaken one does not lock a user out for good.
const MAX_REVOCATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The control service over a node.
#[derive(Clone)]
pub struct ControlService {
    node: Arc<Node>,
}

impl ControlService {
    /// A service sending through `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Publishes through the node; `idempotency_key` matters only to streams with history.
    async fn send(
        &self,
        target: Target,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<Sent, Status> {
        self.node
            .send(target, command, idempotency_key)
            .await
            .map_err(|e| match e {
                SendError::Backend(b) => backend_status(b),
            })
    }
}

fn backend_status(e: BackendError) -> Status {
    Status::unavailable(format!("{e}; retry later"))
}

fn payload(p: Option<pb::Payload>) -> Result<Payload, Status> {
    use pb::payload::Body;
    match p.and_then(|p| p.body) {
        Some(Body::Text(t)) => Ok(Payload::Text(t)),
        Some(Body::Binary(b)) => Ok(Payload::Binary(b)),
        Some(Body::Json(j)) => Payload::json(&j).map_err(Status::invalid_argument),
        None => Err(Status::invalid_argument(
            "payload is required: set one of payload.text, payload.binary, payload.json",
        )),
    }
}

fn user_id(id: &str) -> Result<String, Status> {
    if valid_user_id(id) {
        Ok(id.to_owned())
    } else {
        Err(Status::invalid_argument(
            "user_id must be 1 to 256 bytes without control characters",
        ))
    }
}

fn topic(topic: &str) -> Result<String, Status> {
    if valid_topic(topic) {
        Ok(topic.to_owned())
    } else {
        Err(Status::invalid_argument(
            "topic must be 1 to 200 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// An empty key is no key.
fn idempotency_key(key: String) -> Result<Option<String>, Status> {
    if key.is_empty() {
        Ok(None)
    } else if key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        Err(Status::invalid_argument(
            "idempotency_key must be at most 128 bytes without control characters",
        ))
    } else {
        Ok(Some(key))
    }
}

fn session_id(id: &str) -> Result<SessionId, Status> {
    if id.is_empty() || id.len() > MAX_SESSION_ID || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "session_id must be 1 to 64 characters without control characters",
        ));
    }
    Ok(SessionId::from_string(id))
}

fn sent(s: Sent) -> Response<pb::SendResponse> {
    let position = s.position.unwrap_or_default();
    Response::new(pb::SendResponse {
        targets: s.targets,
        message_id: s.message_id,
        offset: position.offset,
        epoch: position.epoch,
    })
}

/// The stream a history request names, and what to answer when it keeps no history
/// (naming the setting that would make it keep some).
fn history_stream(
    stream: Option<pb::history_request::Stream>,
) -> Result<(Channel, String), Status> {
    use pb::history_request::Stream as S;
    match stream {
        Some(S::Topic(t)) => {
            let t = topic(&t)?;
            let why = format!("topic {t:?} keeps no history: no history.topics rule matches it");
            Ok((Channel::Topic(t), why))
        }
        Some(S::UserId(u)) => Ok((
            Channel::User(user_id(&u)?),
            "user streams keep no history: history.user.size is 0".to_owned(),
        )),
        None => Err(Status::invalid_argument(
            "stream is required: set topic or user_id",
        )),
    }
}

/// A kept message as the caller sees it; `None` for anything but a push (streams keep
/// only pushes).
fn history_message(entry: StreamEntry) -> Option<pb::HistoryMessage> {
    let Command::Deliver(payload) = entry.envelope.command else {
        return None;
    };
    use pb::payload::Body;
    let body = match payload {
        Payload::Text(t) => Body::Text(t),
        Payload::Json(j) => Body::Json(j.get().to_owned()),
        Payload::Binary(b) => Body::Binary(b),
    };
    Some(pb::HistoryMessage {
        offset: entry.offset,
        payload: Some(pb::Payload { body: Some(body) }),
        published_at_ms: entry.published_at_ms,
    })
}

impl ControlService {
    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.node.metrics
    }

    /// One long-poll read of the session events (`POST /api/v1/watch_events`): the events
    /// after `since` of the `kinds` asked for, waiting up to `wait` for the first.
    pub async fn poll_events(
        &self,
        since: Since,
        kinds: &[EventKind],
        limit: usize,
        wait: Duration,
    ) -> Result<EventBatch, Status> {
        self.node
            .read_events(since, kinds, limit, wait)
            .await
            .map_err(super::events::status)
    }
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for ControlService {
    type WatchEventsStream = super::events::WatchStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        super::events::watch(self.node.events(), &self.node.metrics, req.into_inner()).await
    }

    async fn send_to_user(
        &self,
        req: Request<pb::SendToUserRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let payload = payload(req.payload)?;
        let key = idempotency_key(req.idempotency_key)?;
        self.send(Target::User(user), Command::Deliver(payload), key)
            .await
            .map(sent)
    }

    async fn send_to_session(
        &self,
        req: Request<pb::SendToSessionRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let id = session_id(&req.session_id)?;
        let payload = payload(req.payload)?;
        self.send(Target::Session(id), Command::Deliver(payload), None)
            .await
            .map(sent)
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let topic = topic(&req.topic)?;
        let payload = payload(req.payload)?;
        let key = idempotency_key(req.idempotency_key)?;
        self.send(Target::Topic(topic), Command::Deliver(payload), key)
            .await
            .map(sent)
    }

    async fn broadcast(
        &self,
        req: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let payload = payload(req.into_inner().payload)?;
        self.send(Target::Broadcast, Command::Deliver(payload), None)
            .await
            .map(sent)
    }

    async fn disconnect(
        &self,
        req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        use pb::disconnect_request::Target as T;
        let req = req.into_inner();
        let target = match req.target {
            Some(T::UserId(u)) => Target::User(user_id(&u)?),
            Some(T::SessionId(s)) => Target::Session(session_id(&s)?),
            None => {
                return Err(Status::invalid_argument(
                    "target is required: set user_id or session_id",
                ));
            }
        };
        let code = match req.code {
            0 => close::KICKED,
            c => u16::try_from(c)
                .ok()
                .filter(|c| close::is_caller_code(*c))
                .ok_or_else(|| {
                    Status::invalid_argument("code must be 4000-4999, 1000 or 3003 (0 means 3003)")
                })?,
        };
        if req.reason.len() > 123 {
            return Err(Status::invalid_argument(
                "reason must be at most 123 bytes of UTF-8",
            ));
        }
        let s = self
            .send(
                target,
                Command::Disconnect {
                    code,
                    reason: req.reason,
                },
                None,
            )
            .await?;
        Ok(Response::new(pb::DisconnectResponse { targets: s.targets }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target as T;
        let req = req.into_inner();
        let (what, target) = match req.target {
            Some(T::UserId(u)) => {
                let u = user_id(&u)?;
                (Revoked::User(u.clone()), Some(Target::User(u)))
            }
            Some(T::SessionId(s)) => {
                let s = session_id(&s)?;
                (Revoked::Session(s.clone()), Some(Target::Session(s)))
            }
            // Sessions are not addressed by token: each pod finds them at its next read
            // of the set.
            Some(T::TokenId(t)) if valid_user_id(&t) => (Revoked::Token(t), None),
            Some(T::TokenId(_)) => {
                return Err(Status::invalid_argument(
                    "token_id must be 1 to 256 bytes without control characters",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "target is required: set user_id, session_id or token_id",
                ));
            }
        };
        let now = now_ms();
        if req.until_ms <= now || req.until_ms > now + MAX_REVOCATION.as_millis() as u64 {
            return Err(Status::invalid_argument(
                "until_ms must be in the future and at most 90 days ahead (ms since the Unix \
                 epoch)",
            ));
        }
        let until_ms = self
            .node
            .revoke(&Revocation {
                what,
                until_ms: req.until_ms,
            })
            .await
            .map_err(backend_status)?;
        // The registry's set is what every pod applies; a disconnect through the broker
        // also closes a user's or a session's sessions at once, without waiting for the
        // other pods' next read.
        if let Some(target) = target {
            let closing = Command::Disconnect {
                code: close::REVOCATION.code,
                reason: close::REVOCATION.reason.to_owned(),
            };
            if let Err(error) = self.node.send(target, closing, None).await {
                tracing::warn!(%error, "revoked; the other pods close its sessions at their next read");
            }
        }
        Ok(Response::new(pb::RevokeResponse { until_ms }))
    }

    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let user = user_id(&req.into_inner().user_id)?;
        let sessions = self
            .node
            .registry
            .user_sessions(&user)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(pb::GetPresenceResponse {
            online: !sessions.is_empty(),
            sessions: sessions
                .into_iter()
                .map(|s| pb::Session {
                    session_id: s.session_id.to_string(),
                    user_id: s.user_id,
                    pod_id: s.pod_id,
                    connected_at_ms: s.connected_at_ms,
                    remote_addr: s.remote_addr,
                })
                .collect(),
            user_id: user,
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let pods = self.node.registry.pods().await.map_err(backend_status)?;
        let total_connections = pods.iter().filter(|p| p.alive).map(|p| p.connections).sum();
        Ok(Response::new(pb::StatsResponse {
            pods: pods
                .into_iter()
                .map(|p| pb::PodStats {
                    pod_id: p.pod_id,
                    connections: p.connections,
                    alive: p.alive,
                })
                .collect(),
            total_connections,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = req.into_inner();
        let (channel, no_history) = history_stream(req.stream)?;
        // 0 = everything kept; the node caps any limit at the stream's size.
        let limit = (req.limit > 0).then(|| usize::try_from(req.limit).unwrap_or(usize::MAX));
        let page = self
            .node
            .read_stream(&channel, req.since_offset, limit)
            .await
            .map_err(backend_status)?
            .ok_or_else(|| Status::failed_precondition(no_history))?;
        Ok(Response::new(pb::HistoryResponse {
            epoch: page.position.epoch,
            offset: page.position.offset,
            messages: page
                .entries
                .into_iter()
                .filter_map(history_message)
                .collect(),
        }))
    }
}
