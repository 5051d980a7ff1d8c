//! What the client's frames ask for: the `wsgate.v1` ops (subscribe, unsubscribe, ping,
//! rpc; publish in `publish.rs`, refresh in `refresh.rs`), echo mode, and the control frames tungstenite leaves to
//! the session.
//!
//! A new op is a [`ClientOp`] variant and one method here that answers it with a
//! [`Reply`]; writing the reply and counting it is done once, in `on_frame`. An `rpc`
//! that starts is answered later, when its call ends (`rpc.rs`).

use futures_util::{Sink, SinkExt, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::backend::{Channel, StreamPosition};
use wsgate_core::hub::Subscribed;
use wsgate_core::protocol::{ClientOp, OutFrame, Reply, decode_client, encode_reply};

use super::io::to_message;
use super::streams::{Join, StreamKey};
use super::{EndedBy, Exit, Flow, Session};

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Handles one frame from the client.
    pub(super) async fn on_frame(&mut self, msg: Message) -> Flow {
        if self.ctx.echo && (msg.is_text() || msg.is_binary()) {
            let len = msg.len();
            self.tally.received(len);
            return self.send_counted([msg], len as u64).await;
        }
        let mut notices = Vec::new();
        let (reply, join) = match msg {
            Message::Text(text) => {
                self.tally.received(text.len());
                match self.handle_op(text.as_str(), &mut notices).await {
                    (Some(reply), join) => (reply, join),
                    // A call started: its answer comes when it ends.
                    (None, _) => return Flow::Continue,
                }
            }
            Message::Binary(bytes) => {
                self.tally.received(bytes.len());
                let refusal = Reply::Error {
                    code: "bad_request",
                    message: "binary frames are not accepted from clients".into(),
                };
                (encode_reply(&refusal, None), None)
            }
            // tungstenite queues the Pong itself; flushing sends it now.
            Message::Ping(_) => {
                let outcome = self.write(std::iter::empty()).await;
                return self.after_write(outcome);
            }
            Message::Pong(_) | Message::Frame(_) => return Flow::Continue,
            Message::Close(frame) => {
                // tungstenite has queued the close reply; flush it and finish.
                let _ = tokio::time::timeout(self.params.heartbeat_timeout, self.ws.flush()).await;
                return Flow::Stop(Exit::Ended(EndedBy::Client(
                    frame.map(|f| u16::from(f.code)),
                )));
            }
        };
        notices.push(reply);
        let len = notices.iter().map(|f| f.len() as u64).sum();
        let frames: Vec<Message> = notices.into_iter().map(to_message).collect();
        match self.send_counted(frames, len).await {
            Flow::Continue => match join {
                // The missed messages follow the answer, before any live one.
                Some((key, join)) => self.replay(key, join).await,
                None => Flow::Continue,
            },
            stop => stop,
        }
    }

    /// Decodes a text frame as an op and answers it; the reply echoes the request id. A
    /// join of a stream with history comes back with it, to replay after the answer;
    /// frames the op makes the server send first go to `notices`. No reply: an rpc call
    /// started.
    async fn handle_op(
        &mut self,
        text: &str,
        notices: &mut Vec<OutFrame>,
    ) -> (Option<OutFrame>, Option<(StreamKey, Join)>) {
        let request = match decode_client(text) {
            Ok(r) => r,
            Err(e) => {
                let refusal = Reply::Error {
                    code: e.code,
                    message: e.message,
                };
                return (Some(encode_reply(&refusal, e.id.as_ref())), None);
            }
        };
        let (reply, join) = match request.op {
            ClientOp::Ping => (Reply::Pong, None),
            ClientOp::Subscribe { topic, since } => self.subscribe(topic, since).await,
            ClientOp::Unsubscribe { topic } => (self.unsubscribe(topic).await, None),
            ClientOp::Publish { topic, data } => (self.publish(topic, data).await, None),
            ClientOp::Refresh { token } => (self.refresh(&token, notices).await, None),
            ClientOp::Rpc { method, data } => {
                match self.start_rpc(request.id.clone(), &method, &data) {
                    Some(refusal) => (refusal, None),
                    None => return (None, None),
                }
            }
        };
        (Some(encode_reply(&reply, request.id.as_ref())), join)
    }

    /// `subscribe`: only topics the token allows; answered once pushes to the topic
    /// reach the session. A topic that keeps history answers with its position and, for a
    /// `since`, whether the missed messages follow (a `since` on a topic without history
    /// is ignored).
    async fn subscribe(
        &mut self,
        topic: String,
        since: Option<StreamPosition>,
    ) -> (Reply, Option<(StreamKey, Join)>) {
        if !self.ctx.topics.allows(&topic) {
            let refusal = Reply::Error {
                code: "forbidden_topic",
                message: format!("the token does not allow topic {topic:?}"),
            };
            return (refusal, None);
        }
        let unavailable = Reply::Error {
            code: "unavailable",
            message: "the subscription could not be made; try again".into(),
        };
        match self.node.subscribe(self.record(), &topic).await {
            Ok(Subscribed::Added { .. } | Subscribed::Already) => {}
            Ok(Subscribed::NoSession) => {
                let closing = Reply::Error {
                    code: "closing",
                    message: "the session is closing".into(),
                };
                return (closing, None);
            }
            Err(e) => {
                tracing::warn!(session = %self.ctx.session_id, error = %e, "subscribe failed");
                return (unavailable, None);
            }
        }
        // Subscribed first, so nothing published from here on is missed; the history
        // read then covers everything before.
        let channel = Channel::Topic(topic.clone());
        match self.read_for_join(&channel, since.as_ref()).await {
            Ok(None) => (Reply::Subscribed(topic), None),
            Ok(Some(join)) => {
                let reply = Reply::Joined {
                    topic: topic.clone(),
                    position: join.position.clone(),
                    recovered: join.recovered,
                };
                (reply, Some((Some(topic), join)))
            }
            Err(e) => {
                tracing::warn!(session = %self.ctx.session_id, error = %e, "history read failed");
                self.node.unsubscribe(self.record(), &topic).await;
                (unavailable, None)
            }
        }
    }

    /// `unsubscribe`: always answered, whether or not the session had the topic.
    async fn unsubscribe(&mut self, topic: String) -> Reply {
        self.node.unsubscribe(self.record(), &topic).await;
        self.cursors.remove(&Some(topic.clone()));
        Reply::Unsubscribed(topic)
    }
}
