//! What the client's frames ask for: the `wsgate.v1` ops (subscribe, unsubscribe, ping),
//! echo mode, and the control frames tungstenite leaves to the session.
//!
//! A new op is a [`ClientOp`] variant and one method here that answers it with a
//! [`Reply`]; writing the reply and counting it is done once, in `on_frame`.

use futures_util::{Sink, SinkExt, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::hub::Subscribed;
use wsgate_core::protocol::{ClientOp, OutFrame, Reply, decode_client, encode_reply};

use super::io::to_message;
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
        let reply = match msg {
            Message::Text(text) => {
                self.tally.received(text.len());
                self.handle_op(text.as_str()).await
            }
            Message::Binary(bytes) => {
                self.tally.received(bytes.len());
                encode_reply(
                    &Reply::Error {
                        code: "bad_request",
                        message: "binary frames are not accepted from clients".into(),
                    },
                    None,
                )
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
        let len = reply.len() as u64;
        self.send_counted([to_message(reply)], len).await
    }

    /// Decodes a text frame as an op and answers it; the reply echoes the request id.
    async fn handle_op(&mut self, text: &str) -> OutFrame {
        let request = match decode_client(text) {
            Ok(r) => r,
            Err(e) => {
                return encode_reply(
                    &Reply::Error {
                        code: e.code,
                        message: e.message,
                    },
                    e.id.as_ref(),
                );
            }
        };
        let reply = match request.op {
            ClientOp::Ping => Reply::Pong,
            ClientOp::Subscribe { topic } => self.subscribe(topic).await,
            ClientOp::Unsubscribe { topic } => self.unsubscribe(topic).await,
        };
        encode_reply(&reply, request.id.as_ref())
    }

    /// `subscribe`: only topics the token allows; answered once pushes to the topic
    /// reach the session.
    async fn subscribe(&mut self, topic: String) -> Reply {
        if !self.ctx.topics.allows(&topic) {
            return Reply::Error {
                code: "forbidden_topic",
                message: format!("the token does not allow topic {topic:?}"),
            };
        }
        match self.node.subscribe(&self.record, &topic).await {
            Ok(Subscribed::Added { .. } | Subscribed::Already) => Reply::Subscribed(topic),
            Ok(Subscribed::NoSession) => Reply::Error {
                code: "closing",
                message: "the session is closing".into(),
            },
            Err(e) => {
                tracing::warn!(session = %self.ctx.session_id, error = %e, "subscribe failed");
                Reply::Error {
                    code: "unavailable",
                    message: "the subscription could not be made; try again".into(),
                }
            }
        }
    }

    /// `unsubscribe`: always answered, whether or not the session had the topic.
    async fn unsubscribe(&mut self, topic: String) -> Reply {
        self.node.unsubscribe(&self.record, &topic).await;
        Reply::Unsubscribed(topic)
    }
}
