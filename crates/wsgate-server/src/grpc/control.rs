//! `wsgate.v1.Gateway`: argument validation (INVALID_ARGUMENT with a message naming the
//! field), then one publish through the node.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wsgate_core::auth::{valid_topic, valid_user_id};
use wsgate_core::backend::{BackendError, Command, Target};
use wsgate_core::close;
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_proto::pb;

use crate::node::{Node, SendError, Sent};

/// Longest session id accepted (ULIDs are 26 characters).
const MAX_SESSION_ID: usize = 64;

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

    async fn send(&self, target: Target, command: Command) -> Result<Sent, Status> {
        self.node
            .send(target, command, None)
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

fn session_id(id: &str) -> Result<SessionId, Status> {
    if id.is_empty() || id.len() > MAX_SESSION_ID || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "session_id must be 1 to 64 characters without control characters",
        ));
    }
    Ok(SessionId::from_string(id))
}

fn sent(s: Sent) -> Response<pb::SendResponse> {
    Response::new(pb::SendResponse {
        targets: s.targets,
        message_id: s.message_id,
    })
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for ControlService {
    async fn send_to_user(
        &self,
        req: Request<pb::SendToUserRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let payload = payload(req.payload)?;
        self.send(Target::User(user), Command::Deliver(payload))
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
        self.send(Target::Session(id), Command::Deliver(payload))
            .await
            .map(sent)
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        if !valid_topic(&req.topic) {
            return Err(Status::invalid_argument(
                "topic must be 1 to 200 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
        let payload = payload(req.payload)?;
        self.send(Target::Topic(req.topic), Command::Deliver(payload))
            .await
            .map(sent)
    }

    async fn broadcast(
        &self,
        req: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let payload = payload(req.into_inner().payload)?;
        self.send(Target::Broadcast, Command::Deliver(payload))
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
            )
            .await?;
        Ok(Response::new(pb::DisconnectResponse { targets: s.targets }))
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
}
