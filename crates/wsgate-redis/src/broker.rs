//! `RedisBroker`: pub/sub routing between pods.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsgate_core::backend::{
    Appended, BackendError, Broker, Channel, Envelope, HistoryPage, HistoryPolicy, Idempotency,
    Inbox,
};

use crate::envelope::{self, Decoded};
use crate::presence::Presence;
use crate::streams::Streams;
use crate::subscribing::Batcher;
use crate::{Keyspace, RedisOptions, unavailable};

/// Channels per SUBSCRIBE command when resubscribing after a reconnect: large enough to
/// be quick, small enough not to stall the connection with one huge command.
const RESUBSCRIBE_BATCH: usize = 500;
/// How often a pod probes its own pub/sub path.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe not heard back for this long means the subscriber is dead.
const PROBE_BOUND: Duration = Duration::from_secs(4);

/// Routes envelopes through Redis pub/sub. One subscriber connection per pod (one per
/// shard in cluster mode), never one per socket.
pub struct RedisBroker {
    publisher: Client,
    subscriber: SubscriberClient,
    keys: Keyspace,
    sharded: bool,
    /// Streams with history: their scripts run on the publisher connection.
    streams: Streams,
    /// A push to a user counted and published in one script (one-server Redis).
    presence: Presence,
    pod_id: String,
    /// Serializes (un)subscribe commands, resubscription included. fred matches
    /// subscription replies to commands in order; two in flight at once can resolve one
    /// caller's `subscribe` before its channel is active, and a message published in that
    /// window would be lost. (A plain SUBSCRIBE is confirmed by a PING after the lock.)
    sub_lock: Arc<tokio::sync::Mutex<()>>,
    /// Plain (unsharded) subscriptions, batched.
    batcher: Batcher,
    /// When this pod last heard its own probe.
    probe_heard: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisBroker {
    /// Connects the subscriber, starts receiving for `inbox`, and proves the pub/sub path
    /// works with a first self-probe.
    pub async fn connect(
        options: &RedisOptions,
        publisher: Client,
        pod_id: &str,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Self, BackendError> {
        let subscriber = options
            .builder()?
            .build_subscriber_client()
            .map_err(unavailable)?;
        tokio::time::timeout(options.command_timeout * 3, subscriber.init())
            .await
            .map_err(|_| BackendError::Unavailable("Redis subscriber: connect timed out".into()))?
            .map_err(unavailable)?;
        let probe_heard = Arc::new(Mutex::new(None));
        let keys = Keyspace::new(&options.namespace);
        let streams = Streams::load(publisher.clone(), keys.clone(), options.sharded()).await?;
        let sub_lock = Arc::new(tokio::sync::Mutex::new(()));
        let (batcher, batching) = Batcher::start(subscriber.clone(), sub_lock.clone());
        let mut broker = Self {
            publisher,
            subscriber: subscriber.clone(),
            keys,
            sharded: options.sharded(),
            streams,
            presence: Presence::default(),
            pod_id: pod_id.to_owned(),
            sub_lock,
            batcher,
            probe_heard: probe_heard.clone(),
            tasks: vec![batching],
        };
        // The receivers exist before anything is subscribed, so nothing that arrives
        // (the first probe included) can slip past a task that has not started yet.
        let messages = subscriber.message_rx();
        broker.tasks.push(tokio::spawn(receive(
            messages,
            pod_id.to_owned(),
            inbox.clone(),
            probe_heard,
        )));
        broker.tasks.push(tokio::spawn(resubscribe_on_reconnect(
            subscriber,
            broker.sub_lock.clone(),
            Arc::downgrade(&inbox),
        )));

        // The pod channel carries session sends and this pod's probes.
        broker.subscribe(&Channel::Pod(pod_id.to_owned())).await?;
        // Probe until heard: one probe published while the connection settles may be lost.
        let deadline = Instant::now() + PROBE_BOUND;
        let mut next_probe = Instant::now();
        while broker.probe_age().is_none() {
            let now = Instant::now();
            if now > deadline {
                return Err(BackendError::Unavailable(
                    "the Redis pub/sub self-probe was not heard back".into(),
                ));
            }
            if now >= next_probe {
                broker.probe().await?;
                next_probe = now + Duration::from_millis(250);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let prober = ProbeLoop {
            inbox: Arc::downgrade(&inbox),
            publisher: broker.publisher.clone(),
            subscriber: broker.subscriber.clone(),
            sub_lock: broker.sub_lock.clone(),
            probe_heard: broker.probe_heard.clone(),
            channel: broker.keys.channel(&Channel::Pod(pod_id.to_owned())),
            sharded: broker.sharded,
            pod_id: pod_id.to_owned(),
        };
        broker.tasks.push(tokio::spawn(prober.run()));
        Ok(broker)
    }

    fn probe_age(&self) -> Option<Duration> {
        self.probe_heard.lock().map(|at| at.elapsed())
    }

    async fn probe(&self) -> Result<(), BackendError> {
        let channel = self.keys.channel(&Channel::Pod(self.pod_id.clone()));
        let bytes = envelope::encode_probe(&self.pod_id, &wsgate_core::ids::message_id());
        publish_bytes(&self.publisher, self.sharded, &channel, bytes).await
    }

    fn is_sharded(&self, channel: &Channel) -> bool {
        self.sharded && !matches!(channel, Channel::Broadcast)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn publish_bytes(
    publisher: &Client,
    sharded: bool,
    channel: &str,
    bytes: bytes::Bytes,
) -> Result<(), BackendError> {
    if sharded {
        publisher
            .spublish::<i64, _, _>(channel, bytes)
            .await
            .map_err(unavailable)?;
    } else {
        publisher
            .publish::<i64, _, _>(channel, bytes)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Decodes each message once and hands it to the inbox; probes only mark the path live.
async fn receive(
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    pod_id: String,
    inbox: Arc<dyn Inbox>,
    probe_heard: Arc<Mutex<Option<Instant>>>,
) {
    loop {
        match messages.recv().await {
            Ok(message) => {
                let Some(bytes) = message.value.as_bytes() else {
                    tracing::warn!(channel = %message.channel, "non-binary pub/sub message dropped");
                    continue;
                };
                match envelope::decode(bytes) {
                    Ok(Decoded::Envelope(envelope)) => inbox.deliver(Arc::new(envelope)),
                    Ok(Decoded::Probe { origin, .. }) => {
                        if origin == pod_id {
                            *probe_heard.lock() = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %message.channel, error = %e, "undecodable envelope dropped")
                    }
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::error!(missed, "pub/sub receiver lagged: messages were lost");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// After every reconnect, subscribes everything again, in batches (sharded channels in
/// batches per hash slot, as SSUBSCRIBE requires).
async fn resubscribe_on_reconnect(
    subscriber: SubscriberClient,
    sub_lock: Arc<tokio::sync::Mutex<()>>,
    inbox: std::sync::Weak<dyn Inbox>,
) {
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                let _serial = sub_lock.lock().await;
                if let Err(e) = resubscribe(&subscriber).await {
                    tracing::warn!(%server, error = %e, "resubscribe after reconnect failed");
                } else {
                    tracing::info!(%server, "resubscribed after reconnect");
                    // What was published while the connection was down never arrived.
                    if let Some(inbox) = inbox.upgrade() {
                        inbox.resubscribed();
                    }
                }
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn resubscribe(subscriber: &SubscriberClient) -> Result<(), Error> {
    let channels: Vec<String> = subscriber
        .tracked_channels()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    for batch in channels.chunks(RESUBSCRIBE_BATCH) {
        subscriber.subscribe(batch.to_vec()).await?;
    }
    let sharded = subscriber.tracked_shard_channels();
    for (_, keys) in fred::util::group_by_hash_slot(sharded.into_iter().map(|c| c.to_string()))? {
        let keys: Vec<Key> = keys.into_iter().collect();
        for batch in keys.chunks(RESUBSCRIBE_BATCH) {
            subscriber.ssubscribe(batch.to_vec()).await?;
        }
    }
    Ok(())
}

/// Publishes a probe every second, and heals what it finds: when probes go unheard for
/// the bound while publishing works, the subscriptions themselves are gone (a resubscribe
/// that failed, a server that dropped them), so everything is subscribed again.
struct ProbeLoop {
    inbox: std::sync::Weak<dyn Inbox>,
    publisher: Client,
    subscriber: SubscriberClient,
    sub_lock: Arc<tokio::sync::Mutex<()>>,
    probe_heard: Arc<Mutex<Option<Instant>>>,
    channel: String,
    sharded: bool,
    pod_id: String,
}

impl ProbeLoop {
    async fn run(self) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_repair = Instant::now();
        loop {
            tick.tick().await;
            let bytes = envelope::encode_probe(&self.pod_id, &wsgate_core::ids::message_id());
            let published =
                publish_bytes(&self.publisher, self.sharded, &self.channel, bytes).await;
            if let Err(e) = &published {
                tracing::debug!(error = %e, "pub/sub probe publish failed");
            }
            let stale = self
                .probe_heard
                .lock()
                .is_none_or(|at| at.elapsed() > PROBE_BOUND);
            if published.is_ok() && stale && last_repair.elapsed() > PROBE_BOUND {
                last_repair = Instant::now();
                tracing::warn!("pub/sub self-probe not heard: subscribing every channel again");
                let _serial = self.sub_lock.lock().await;
                match resubscribe(&self.subscriber).await {
                    Err(e) => tracing::warn!(error = %e, "resubscribe for the self-probe failed"),
                    Ok(()) => {
                        if let Some(inbox) = self.inbox.upgrade() {
                            inbox.resubscribed();
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &Channel) -> Result<(), BackendError> {
        let name = self.keys.channel(channel);
        if self.is_sharded(channel) {
            let _serial = self.sub_lock.lock().await;
            // fred answers SSUBSCRIBE with Redis's confirmation.
            return self.subscriber.ssubscribe(name).await.map_err(unavailable);
        }
        // Batched with the other handshakes' subscriptions; confirmed by a PING.
        self.batcher.subscribe(name).await
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BackendError> {
        let name = self.keys.channel(channel);
        if self.is_sharded(channel) {
            let _serial = self.sub_lock.lock().await;
            return self
                .subscriber
                .sunsubscribe(name)
                .await
                .map_err(unavailable);
        }
        self.batcher.unsubscribe(name).await
    }

    async fn publish(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
    ) -> Result<(), BackendError> {
        let bytes = envelope::encode(&envelope);
        publish_bytes(
            &self.publisher,
            self.is_sharded(channel),
            &self.keys.channel(channel),
            bytes,
        )
        .await
    }

    fn counts_user_sends(&self) -> bool {
        !self.sharded
    }

    async fn publish_to_user_counted(
        &self,
        user: &str,
        envelope: Arc<Envelope>,
    ) -> Result<Option<usize>, BackendError> {
        // In Redis Cluster the pods' liveness keys live in other slots than the user's
        // hash: the registry counts, then the channel is published to.
        if self.sharded {
            return Ok(None);
        }
        let live = self
            .presence
            .count_live_and_publish(
                &self.publisher,
                &self.keys,
                user,
                envelope::encode(&envelope),
            )
            .await?;
        Ok(Some(live))
    }

    async fn publish_stream(
        &self,
        channel: &Channel,
        envelope: Arc<Envelope>,
        policy: &HistoryPolicy,
        idempotency: Option<&Idempotency>,
    ) -> Result<Appended, BackendError> {
        self.streams
            .publish(channel, envelope, policy, idempotency)
            .await
    }

    async fn read_stream(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryPage, BackendError> {
        self.streams.read(channel, after, limit, policy).await
    }

    async fn healthy(&self) -> Result<(), BackendError> {
        if !self.subscriber.is_connected() {
            return Err(BackendError::Unavailable(
                "the Redis subscriber connection is down".into(),
            ));
        }
        match self.probe_age() {
            Some(age) if age <= PROBE_BOUND => Ok(()),
            Some(age) => Err(BackendError::Unavailable(format!(
                "pub/sub self-probe not heard for {} s: the subscriber connection is not receiving",
                age.as_secs()
            ))),
            None => Err(BackendError::Unavailable(
                "pub/sub self-probe never heard".into(),
            )),
        }
    }
}
