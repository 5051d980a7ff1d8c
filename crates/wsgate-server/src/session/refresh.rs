//! The `refresh` op: a new token for the live session, so that a session can outlive its
//! first token without a reconnect (and without losing its subscriptions).
//!
//! The new token is verified exactly as a handshake's is and must name the same user
//! (`sub`): a session never changes hands. Then, all at once and before the answer: the
//! 3005 deadline moves to the new `exp`, the new `publish` claim applies to the next
//! `publish` op, and the new `topics` claim to the session's subscriptions — each topic
//! it no longer allows is left, and the client is told with
//! `{"op":"unsubscribed","topic":"T","reason":"forbidden"}` (sent before `refreshed`). A
//! token that fails any check answers `invalid_token` and changes nothing; a token a
//! revocation names (its `jti`, or the user) answers `revoked_token` and changes nothing.

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::protocol::{OutFrame, Reply, encode_reply};
use wsgate_core::revocation::Holder;

use super::Session;
use crate::node::now_ms;

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// Answers a `refresh` op; the `unsubscribed` frames of the topics it dropped go to
    /// `notices`, to be written ahead of the answer.
    pub(super) async fn refresh(&mut self, token: &str, notices: &mut Vec<OutFrame>) -> Reply {
        let verified = match self.params.authenticator.verify_token(token).await {
            Some(verified) => verified,
            None => {
                return Reply::Error {
                    code: "bad_request",
                    message: "this session was not opened with a token (auth.mode = \"none\" \
                              or \"proxy\"): nothing to refresh"
                        .into(),
                };
            }
        };
        let identity = match verified {
            Ok(identity) => identity,
            Err(refusal) => return self.refused(refusal.message),
        };
        if identity.user_id != self.ctx.user_id {
            return self.refused(
                "the token is for another user (its sub differs): a session keeps its user; \
                 connect anew for another"
                    .into(),
            );
        }
        let Some(expires_at) = identity.expires_at else {
            // A verified JWT always has an `exp` (it is a required claim).
            return self.refused("the token has no exp".into());
        };
        let holder = Holder {
            user_id: &identity.user_id,
            session_id: Some(&self.ctx.session_id),
            token_id: identity.token_id.as_deref(),
        };
        if self.node.revocations.revokes(holder, now_ms()) {
            self.node
                .metrics
                .token_refreshes
                .with_label_values(&["revoked"])
                .inc();
            return Reply::Error {
                code: "revoked_token",
                message: "the token is revoked".into(),
            };
        }

        self.ctx.expires_at = Some(expires_at);
        self.ctx.token_id = identity.token_id;
        self.handle.set_token_id(self.ctx.token_id.clone());
        self.token_deadline = self.deadline_of(Some(expires_at));
        self.ctx.publish = identity.publish;
        self.ctx.topics = identity.topics;
        let dropped: Vec<String> = self
            .node
            .hub
            .topics_of(&self.ctx.session_id)
            .into_iter()
            .filter(|topic| !self.ctx.topics.allows(topic))
            .collect();
        for topic in dropped {
            self.node.unsubscribe(self.record(), &topic).await;
            self.cursors.remove(&Some(topic.clone()));
            notices.push(encode_reply(
                &Reply::Dropped {
                    topic,
                    reason: "forbidden",
                },
                None,
            ));
        }
        self.node
            .metrics
            .token_refreshes
            .with_label_values(&["refreshed"])
            .inc();
        tracing::debug!(session = %self.ctx.session_id, expires_at, "token refreshed");
        Reply::Refreshed { expires_at }
    }

    /// `invalid_token`, counted; the session is left as it was.
    fn refused(&self, message: String) -> Reply {
        self.node
            .metrics
            .token_refreshes
            .with_label_values(&["refused"])
            .inc();
        tracing::debug!(session = %self.ctx.session_id, reason = %message, "token refresh refused");
        Reply::Error {
            code: "invalid_token",
            message,
        }
    }
}
