//! The `publish` op: a client publishes to a topic through the same fan-out (and history)
//! as the control plane's `Publish`, when its token's `publish` claim allows the topic
//! (auth off: `session.client_publish`), at most `limits.client_publish_per_s` times a
//! second.

use futures_util::{Sink, Stream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wsgate_core::backend::{Command, Target};
use wsgate_core::protocol::{Payload, Reply};

use super::Session;

/// A token bucket of `publish` ops for one session: `rate` per second, holding at most
/// one second's worth.
///
/// Written by hand rather than with `governor`: the session task is its only user, so it
/// needs no atomics and no shared clock, only these two fields, allocated with the
/// session (the bucket starts full).
#[derive(Debug)]
pub(super) struct PublishBudget {
    tokens: f64,
    refilled: Instant,
}

impl PublishBudget {
    pub(super) fn new(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    /// Takes one publish from the bucket; false when it is empty. A rate of 0 is no
    /// limit.
    pub(super) fn take(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<S> Session<S>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    /// `publish`: checked against the session's publish policy and rate, then sent like
    /// the control plane's `Publish`; the answer carries the message's position when the
    /// topic keeps history.
    pub(super) async fn publish(&mut self, topic: String, data: Payload) -> Reply {
        let outcome = |outcome: &str| {
            self.node
                .metrics
                .client_publishes
                .with_label_values(&[outcome])
                .inc();
        };
        if !self.ctx.publish.allows(&topic) {
            outcome("forbidden");
            return Reply::Error {
                code: "forbidden_topic",
                message: format!("the token does not allow publishing to topic {topic:?}"),
            };
        }
        let rate = self.params.client_publish_per_s;
        if !self.publish_budget.take(rate, Instant::now()) {
            outcome("rate_limited");
            return Reply::Error {
                code: "rate_limited",
                message: format!("at most {rate} publishes per second; slow down"),
            };
        }
        match self
            .node
            .send(Target::Topic(topic.clone()), Command::Deliver(data), None)
            .await
        {
            Ok(sent) => {
                outcome("published");
                Reply::Published {
                    topic,
                    position: sent.position,
                }
            }
            Err(e) => {
                outcome("unavailable");
                tracing::warn!(session = %self.ctx.session_id, error = %e, "client publish failed");
                Reply::Error {
                    code: "unavailable",
                    message: "the message could not be published; try again".into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_holds_one_second_and_refills_at_the_rate() {
        let start = Instant::now();
        let mut budget = PublishBudget::new(4);
        budget.refilled = start;
        let taken = (0..10).filter(|_| budget.take(4, start)).count();
        assert_eq!(taken, 4, "a full bucket is one second's worth");
        assert!(!budget.take(4, start + Duration::from_millis(200)));
        assert!(
            budget.take(4, start + Duration::from_millis(260)),
            "one per 250 ms"
        );
        assert!(!budget.take(4, start + Duration::from_millis(270)));
        // A long pause refills no more than one second's worth.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| budget.take(4, later)).count(), 4);
        assert!(PublishBudget::new(0).take(0, later), "0 = no limit");
    }
}
