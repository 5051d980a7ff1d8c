//! The session's side of the `rpc` op: calls run beside the session, not in its way.
//!
//! A call is a future in the session's [`Calls`], a `FuturesUnordered` that the event
//! loop polls as one more source of events, rather than a task of its own. So a call
//! needs no channel back and no task to track: its answer comes out of the loop like
//! any event and is written by the session itself, through `send_counted` (counted, under
//! the write limits, after whatever the session was writing); the number in flight is
//! the set's length; and when the session ends, dropping the set cancels every call
//! still out (its connection to the backend is closed, and the call is counted as
//! `cancelled`). The HTTP client drives its connections on tasks of its own, so a call
//! makes progress whenever the loop waits, which is nearly always.

use std::pin::Pin;

use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, Stream, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::protocol::{RawJson, Reply, RequestId, encode_reply};

use super::io::to_message;
use super::{Flow, Session};
use crate::rpc::{RpcOutcome, RpcRequest};

/// A call in flight: resolves to the request id to answer and how the call went.
type Call = Pin<Box<dyn Future<Output = (Option<RequestId>, RpcOutcome)> + Send>>;

/// The session's calls in flight. The set is made at the first call: an empty
/// `FuturesUnordered` allocates already, and most sessions never call.
#[derive(Default)]
pub(super) struct Calls(Option<FuturesUnordered<Call>>);

impl Calls {
    pub(super) fn new() -> Self {
        Self(None)
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, call: Call) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(call);
    }

    /// The next call to end; never resolves while none is out.
    pub(super) async fn next(&mut self) -> Option<(Option<RequestId>, RpcOutcome)> {
        match &mut self.0 {
            Some(set) if !set.is_empty() => set.next().await,
            _ => std::future::pending().await,
        }
    }
}

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// `rpc`: starts the call and answers nothing yet (`None`), or refuses it at once:
    /// rpc is not configured, or the session has `rpc.max_in_flight` calls out already.
    pub(super) fn start_rpc(
        &mut self,
        id: Option<RequestId>,
        method: &str,
        data: &RawJson,
    ) -> Option<Reply> {
        let metrics = &self.node.metrics;
        let Some(client) = &self.params.rpc else {
            metrics.rpc_calls.with_label_values(&["unavailable"]).inc();
            return Some(Reply::Error {
                code: "rpc_unavailable",
                message: "rpc is not configured on this gateway".into(),
            });
        };
        if self.calls.len() >= client.max_in_flight {
            metrics.rpc_calls.with_label_values(&["busy"]).inc();
            return Some(Reply::Error {
                code: "rpc_busy",
                message: format!(
                    "{} rpc calls are in flight already; retry after an answer",
                    client.max_in_flight
                ),
            });
        }
        let request = RpcRequest {
            user_id: &self.ctx.user_id,
            session_id: self.ctx.session_id.as_str(),
            method,
            data,
        };
        let call = client.call(request, metrics.clone());
        self.calls.push(Box::pin(async move { (id, call.await) }));
        None
    }

    /// A call ended: its answer goes to the client with the op's id.
    pub(super) async fn rpc_done(&mut self, id: Option<RequestId>, outcome: RpcOutcome) -> Flow {
        let reply = match outcome {
            RpcOutcome::Ok(data) => Reply::RpcResult(data),
            RpcOutcome::Failed { message, .. } => Reply::Error {
                code: "rpc_failed",
                message,
            },
            RpcOutcome::Timeout => Reply::Error {
                code: "rpc_timeout",
                message: match &self.params.rpc {
                    Some(client) => format!(
                        "the backend did not answer within {}",
                        humantime::format_duration(client.timeout)
                    ),
                    None => "the backend did not answer in time".into(),
                },
            },
        };
        let frame = encode_reply(&reply, id.as_ref());
        let len = frame.len() as u64;
        self.send_counted([to_message(frame)], len).await
    }
}
