//! Plain (unsharded) SUBSCRIBE and UNSUBSCRIBE, batched: whatever is asked for while the
//! previous batch is on the wire goes out as one command, and a batch of subscriptions is
//! confirmed by one PING. A burst of handshakes of new users therefore costs a few
//! commands on the subscriber connection, not two per user; one handshake alone still
//! costs one SUBSCRIBE and one PING.
//!
//! One task writes every batch, in the order asked, so a channel's unsubscribe never
//! overtakes its subscribe (the per-channel lock of `Subscriptions` orders them already;
//! this keeps that order on the wire). Resubscribing after a reconnect takes the same
//! lock as the batches, so fred sees one subscription command at a time.

use std::sync::Arc;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wsgate_core::backend::BackendError;

/// Most channels in one SUBSCRIBE or UNSUBSCRIBE: a handshake burst fits, and a command
/// stays small enough not to hold the connection up.
const BATCH: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subscribe,
    Unsubscribe,
}

struct Request {
    kind: Kind,
    channel: String,
    /// The batch's outcome (an error as text: every caller of the batch gets a copy).
    done: oneshot::Sender<Result<(), String>>,
}

/// Hands (un)subscriptions to the task that batches them.
pub(crate) struct Batcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// Starts the batching task on `subscriber`; `lock` serializes its commands with the
    /// other subscription commands on that connection (resubscription).
    pub(crate) fn start(
        subscriber: SubscriberClient,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> (Self, JoinHandle<()>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, subscriber, lock));
        (Self { requests }, task)
    }

    /// Subscribes `channel`; returns once Redis applied it, so a message published
    /// afterwards reaches this pod.
    pub(crate) async fn subscribe(&self, channel: String) -> Result<(), BackendError> {
        self.ask(Kind::Subscribe, channel).await
    }

    /// Unsubscribes `channel`; returns once the command is written.
    pub(crate) async fn unsubscribe(&self, channel: String) -> Result<(), BackendError> {
        self.ask(Kind::Unsubscribe, channel).await
    }

    async fn ask(&self, kind: Kind, channel: String) -> Result<(), BackendError> {
        let (done, outcome) = oneshot::channel();
        let stopped = || BackendError::Unavailable("the Redis subscriber has stopped".into());
        self.requests
            .send(Request {
                kind,
                channel,
                done,
            })
            .map_err(|_| stopped())?;
        outcome
            .await
            .map_err(|_| stopped())?
            .map_err(BackendError::Unavailable)
    }
}

/// Takes what has been asked (up to [`BATCH`]), writes each run of one kind as one
/// command, and answers its callers.
async fn run(
    mut requests: mpsc::UnboundedReceiver<Request>,
    subscriber: SubscriberClient,
    lock: Arc<tokio::sync::Mutex<()>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while requests.recv_many(&mut batch, BATCH).await > 0 {
        let mut asked = batch.drain(..).peekable();
        while let Some(first) = asked.next() {
            let kind = first.kind;
            let mut same = vec![first];
            while let Some(next) = asked.next_if(|r| r.kind == kind) {
                same.push(next);
            }
            let (channels, callers): (Vec<_>, Vec<_>) =
                same.into_iter().map(|r| (r.channel, r.done)).unzip();
            let outcome = apply(&subscriber, &lock, kind, channels)
                .await
                .map_err(|e| e.to_string());
            for done in callers {
                // A caller that gave up (its handshake timed out) no longer listens.
                let _ = done.send(outcome.clone());
            }
        }
    }
}

async fn apply(
    subscriber: &SubscriberClient,
    lock: &tokio::sync::Mutex<()>,
    kind: Kind,
    channels: Vec<String>,
) -> Result<(), Error> {
    {
        // fred resolves these once written: the lock orders the writes only.
        let _serial = lock.lock().await;
        match kind {
            Kind::Subscribe => subscriber.subscribe(channels).await?,
            Kind::Unsubscribe => subscriber.unsubscribe(channels).await?,
        }
    }
    if kind == Kind::Subscribe {
        subscription_applied(subscriber).await?;
    }
    Ok(())
}

/// Returns once Redis has applied every SUBSCRIBE sent before on the subscriber connection.
/// fred resolves SUBSCRIBE as soon as it is written and drops Redis's confirmation, so
/// without this a message published right after `subscribe` returned could reach Redis
/// first and be missed. Redis answers a connection's commands in order, so the PING's
/// answer comes after the SUBSCRIBE took effect. In cluster mode fred sends SUBSCRIBE to
/// the node owning the slot of the client's id; the PING goes to the same node.
async fn subscription_applied(subscriber: &SubscriberClient) -> Result<(), Error> {
    let slot = fred::util::redis_keyslot(subscriber.id().as_bytes());
    let ping = CustomCommand::new_static("PING", ClusterHash::Custom(slot), false);
    let _: Value = subscriber.custom(ping, Vec::<Value>::new()).await?;
    Ok(())
}
