//! `RedisRegistry`: sessions, topic memberships and pods in Redis (layout in
//! [`crate::keys`]).
//!
//! Every write is idempotent (hash fields and set members, no counters), so a pod can
//! register its sessions again at any time — after Redis restarted empty, for one — and
//! reaping a dead pod twice does no harm. Reads that answer "who is live" check the pods'
//! liveness keys, so a pod that died without cleanup drops out of presence as soon as its
//! liveness key expires, before any reaping.
//!
//! On one server (standalone, or a Sentinel's primary) a registration — the per-user
//! limit, the records and the `connected` — is one script ([`crate::registration`]); in
//! Redis Cluster, whose slots one script cannot span, it is the admission script on the
//! user's slot, then the records and the event side by side.
//!
//! Made [`with_events`](RedisRegistry::with_events), it writes sessions' `connected` and
//! `disconnected` through [`RedisEventLog`], in the same round trip as the registration
//! or removal; a reaper writes a dead pod's `disconnected`s before it forgets the pod, so
//! one that stops midway leaves the pod, with the sessions still to close, to the next.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fred::prelude::*;
use wsgate_core::backend::{BackendError, Liveness, PodRecord, Reaped, Registry, SessionRecord};
use wsgate_core::events::{Closed, ClosedBy};
use wsgate_core::ids::SessionId;
use wsgate_core::revocation::{Revocation, Revoked};

use crate::presence::Presence;
use crate::registration::Registration;
use crate::{Keyspace, RedisEventLog, RedisOptions, unavailable};

/// Adds a session to its user's hash unless the user is at the limit. One key, one
/// script: check and insert are atomic, even in Redis Cluster.
const ADD_USER_SESSION: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
local max = tonumber(ARGV[3])
if max > 0 and redis.call('HLEN', KEYS[1]) >= max then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Longest a readiness check waits for Redis.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a live pod holds the lock while it reaps a dead one.
const REAPER_LOCK: Duration = Duration::from_secs(30);

/// The shared registry in Redis.
pub struct RedisRegistry {
    client: Client,
    keys: Keyspace,
    pod_ttl: Duration,
    events: Option<Arc<RedisEventLog>>,
    /// Whether every key is on one server (not Redis Cluster): then a registration is
    /// one script, one round trip, and so is a removal.
    one_server: bool,
    registration: Registration,
    presence: Presence,
}

impl RedisRegistry {
    /// A registry over a connected client, without session events.
    pub fn new(client: Client, options: &RedisOptions) -> Self {
        Self {
            client,
            keys: Keyspace::new(&options.namespace),
            pod_ttl: options.pod_ttl,
            events: None,
            one_server: !options.sharded(),
            registration: Registration::default(),
            presence: Presence::default(),
        }
    }

    /// A registry that writes sessions' `connected` and `disconnected` to `events`.
    pub fn with_events(client: Client, options: &RedisOptions, events: Arc<RedisEventLog>) -> Self {
        Self {
            events: Some(events),
            ..Self::new(client, options)
        }
    }

    /// Writes the `disconnected` of every session of `pod` still live in the event log.
    async fn close_pod_events(&self, pod: &str, closed: &Closed) -> Result<usize, BackendError> {
        match &self.events {
            Some(events) => events.close_pod(pod, closed).await,
            None => Ok(0),
        }
    }

    /// Which of `pods` have a live liveness key.
    async fn live_pods(
        &self,
        pods: impl IntoIterator<Item = String>,
    ) -> Result<BTreeSet<String>, BackendError> {
        let pods: Vec<String> = pods
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if pods.is_empty() {
            return Ok(BTreeSet::new());
        }
        let pipeline = self.client.pipeline();
        for pod in &pods {
            let () = pipeline
                .exists(self.keys.pod_alive(pod))
                .await
                .map_err(unavailable)?;
        }
        let alive: Vec<i64> = pipeline.all().await.map_err(unavailable)?;
        Ok(pods
            .into_iter()
            .zip(alive)
            .filter(|(_, a)| *a > 0)
            .map(|(p, _)| p)
            .collect())
    }

    async fn read_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, BackendError> {
        let fields: HashMap<String, String> = self
            .client
            .hgetall(self.keys.session(id))
            .await
            .map_err(unavailable)?;
        Ok(record_from(id, &fields))
    }

    /// Removes a session's records; `user` and `pod` come from its hash when known.
    async fn forget_session(
        &self,
        id: &SessionId,
        user: Option<&str>,
        pod: Option<&str>,
    ) -> Result<(), BackendError> {
        let topics: Vec<String> = self
            .client
            .smembers(self.keys.session_topics(id))
            .await
            .map_err(unavailable)?;
        let pipeline = self.client.pipeline();
        let q = |r: Result<(), Error>| r.map_err(unavailable);
        for topic in &topics {
            q(pipeline.hdel(self.keys.topic(topic), id.as_str()).await)?;
        }
        if let Some(user) = user {
            q(pipeline.hdel(self.keys.user(user), id.as_str()).await)?;
        }
        if let Some(pod) = pod {
            q(pipeline
                .srem(self.keys.pod_sessions(pod), id.as_str())
                .await)?;
        }
        q(pipeline.del(self.keys.session(id)).await)?;
        q(pipeline.del(self.keys.session_topics(id)).await)?;
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn forget_pod(&self, pod_id: &str) -> Result<(), BackendError> {
        let sessions: Vec<String> = self
            .client
            .smembers(self.keys.pod_sessions(pod_id))
            .await
            .map_err(unavailable)?;
        for id in sessions {
            let id = SessionId::from_string(id);
            let record = self.read_session(&id).await?;
            self.forget_session(
                &id,
                record.as_ref().map(|r| r.user_id.as_str()),
                Some(pod_id),
            )
            .await?;
        }
        let pipeline = self.client.pipeline();
        let q = |r: Result<(), Error>| r.map_err(unavailable);
        q(pipeline.del(self.keys.pod_sessions(pod_id)).await)?;
        q(pipeline.del(self.keys.pod_alive(pod_id)).await)?;
        q(pipeline.srem(self.keys.pods(), pod_id).await)?;
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    /// Live sessions among `ids`, in presence order.
    async fn live_sessions(
        &self,
        ids: impl IntoIterator<Item = SessionId>,
    ) -> Result<Vec<SessionRecord>, BackendError> {
        let mut records = Vec::new();
        for id in ids {
            if let Some(r) = self.read_session(&id).await? {
                records.push(r);
            }
        }
        let live = self
            .live_pods(records.iter().map(|r| r.pod_id.clone()))
            .await?;
        records.retain(|r| live.contains(&r.pod_id));
        records.sort_by(|a, b| {
            (a.connected_at_ms, &a.session_id).cmp(&(b.connected_at_ms, &b.session_id))
        });
        Ok(records)
    }
}

fn record_from(id: &SessionId, fields: &HashMap<String, String>) -> Option<SessionRecord> {
    Some(SessionRecord {
        session_id: id.clone(),
        user_id: fields.get("user")?.clone(),
        pod_id: fields.get("pod")?.clone(),
        connected_at_ms: fields.get("at").and_then(|v| v.parse().ok()).unwrap_or(0),
        remote_addr: fields.get("addr").cloned().unwrap_or_default(),
    })
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn heartbeat_pod(&self, pod_id: &str) -> Result<Liveness, BackendError> {
        let ttl_ms = i64::try_from(self.pod_ttl.as_millis()).unwrap_or(i64::MAX);
        // SET … GET: the old value tells whether our record survived since last time.
        let previous: Option<String> = self
            .client
            .set(
                self.keys.pod_alive(pod_id),
                "1",
                Some(Expiration::PX(ttl_ms)),
                None,
                true,
            )
            .await
            .map_err(unavailable)?;
        let () = self
            .client
            .sadd(self.keys.pods(), pod_id)
            .await
            .map_err(unavailable)?;
        Ok(match previous {
            Some(_) => Liveness::Refreshed,
            None => Liveness::Restored,
        })
    }

    async fn reap_dead_pods(&self) -> Result<Reaped, BackendError> {
        let mut pods: Vec<String> = self
            .client
            .smembers(self.keys.pods())
            .await
            .map_err(unavailable)?;
        if let Some(events) = &self.events {
            pods.extend(events.pods().await?);
            pods.sort_unstable();
            pods.dedup();
        }
        let live = self.live_pods(pods.iter().cloned()).await?;
        let mut reaped = Reaped::default();
        for pod in pods.into_iter().filter(|p| !live.contains(p)) {
            // One reaper per dead pod; a reaper that dies lets the lock expire.
            let locked: Option<String> = self
                .client
                .set(
                    self.keys.pod_reaper(&pod),
                    "1",
                    Some(Expiration::PX(REAPER_LOCK.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(unavailable)?;
            if locked.is_none() {
                continue;
            }
            tracing::info!(pod = %pod, "reaping the sessions of a dead pod");
            // Events first: the pod stays listed until it is forgotten, so a reaper that
            // stops midway leaves what is left to the next.
            let sessions = self
                .close_pod_events(&pod, &Closed::pod_lost(now_ms()))
                .await?;
            self.forget_pod(&pod).await?;
            let () = self
                .client
                .del(self.keys.pod_reaper(&pod))
                .await
                .map_err(unavailable)?;
            tracing::info!(pod = %pod, sessions, "reaped a dead pod");
            reaped.pods += 1;
            reaped.sessions += sessions;
        }
        Ok(reaped)
    }

    async fn remove_pod(&self, pod_id: &str) -> Result<(), BackendError> {
        let closed = Closed {
            code: wsgate_core::close::GOING_AWAY,
            by: ClosedBy::Server,
            at_ms: now_ms(),
        };
        self.close_pod_events(pod_id, &closed).await?;
        self.forget_pod(pod_id).await
    }

    async fn add_session(
        &self,
        record: &SessionRecord,
        max_user_sessions: usize,
    ) -> Result<bool, BackendError> {
        if self.one_server {
            let events_max_len = self.events.as_ref().map(|events| events.max_len());
            return self
                .registration
                .register(
                    &self.client,
                    &self.keys,
                    record,
                    max_user_sessions,
                    events_max_len,
                )
                .await;
        }
        // Redis Cluster: the user's slot admits, then the records and the event.
        let admitted: i64 = self
            .client
            .eval(
                ADD_USER_SESSION,
                vec![self.keys.user(&record.user_id)],
                vec![
                    record.session_id.to_string(),
                    record.pod_id.clone(),
                    max_user_sessions.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        if admitted == 0 {
            return Ok(false);
        }
        let pipeline = self.client.pipeline();
        let q = |r: Result<(), Error>| r.map_err(unavailable);
        q(pipeline
            .hset(
                self.keys.session(&record.session_id),
                [
                    ("user", record.user_id.clone()),
                    ("pod", record.pod_id.clone()),
                    ("at", record.connected_at_ms.to_string()),
                    ("addr", record.remote_addr.clone()),
                ],
            )
            .await)?;
        q(pipeline
            .sadd(
                self.keys.pod_sessions(&record.pod_id),
                record.session_id.as_str(),
            )
            .await)?;
        let recorded = async { pipeline.all::<Vec<Value>>().await.map_err(unavailable) };
        // The `connected` goes out with the records, in the same round trip.
        match &self.events {
            Some(events) => {
                let (recorded, connected) = tokio::join!(recorded, events.connect(record));
                recorded?;
                connected?;
            }
            None => {
                recorded.await?;
            }
        }
        Ok(true)
    }

    async fn remove_session(
        &self,
        record: &SessionRecord,
        closed: &Closed,
    ) -> Result<bool, BackendError> {
        if self.one_server {
            let events_max_len = self.events.as_ref().map(|events| events.max_len());
            return self
                .registration
                .unregister(&self.client, &self.keys, record, closed, events_max_len)
                .await;
        }
        // Redis Cluster: the records (after reading the session's topics) and the event
        // side by side.
        let forgotten = self.forget_session(
            &record.session_id,
            Some(&record.user_id),
            Some(&record.pod_id),
        );
        let Some(events) = &self.events else {
            forgotten.await?;
            return Ok(false);
        };
        let ids = [record.session_id.to_string()];
        let (forgotten, disconnected) =
            tokio::join!(forgotten, events.disconnect(&record.pod_id, &ids, closed));
        forgotten?;
        Ok(disconnected? == 1)
    }

    async fn add_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError> {
        let pipeline = self.client.pipeline();
        let q = |r: Result<(), Error>| r.map_err(unavailable);
        q(pipeline
            .sadd(self.keys.session_topics(&record.session_id), topic)
            .await)?;
        q(pipeline
            .hset(
                self.keys.topic(topic),
                [(record.session_id.as_str(), record.pod_id.as_str())],
            )
            .await)?;
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn remove_subscription(
        &self,
        record: &SessionRecord,
        topic: &str,
    ) -> Result<(), BackendError> {
        let pipeline = self.client.pipeline();
        let q = |r: Result<(), Error>| r.map_err(unavailable);
        q(pipeline
            .srem(self.keys.session_topics(&record.session_id), topic)
            .await)?;
        q(pipeline
            .hdel(self.keys.topic(topic), record.session_id.as_str())
            .await)?;
        let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
        Ok(())
    }

    async fn session(&self, session_id: &SessionId) -> Result<Option<SessionRecord>, BackendError> {
        Ok(self.live_sessions([session_id.clone()]).await?.pop())
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        let ids: Vec<String> = self
            .client
            .hkeys(self.keys.user(user_id))
            .await
            .map_err(unavailable)?;
        self.live_sessions(ids.into_iter().map(SessionId::from_string))
            .await
    }

    async fn count_user_sessions(&self, user_id: &str) -> Result<usize, BackendError> {
        // Live sessions only, like presence. (The admission script counts a dead pod's
        // sessions until they are reaped: strict for a TTL or two.) On one server, one
        // script: this count is on the path of every push to a user.
        if self.one_server {
            return self
                .presence
                .count_live(&self.client, &self.keys, user_id)
                .await;
        }
        // Redis Cluster: the user hash names each session's pod, so this is two round
        // trips whatever the number of sessions.
        let pods_by_session: HashMap<String, String> = self
            .client
            .hgetall(self.keys.user(user_id))
            .await
            .map_err(unavailable)?;
        let live = self.live_pods(pods_by_session.values().cloned()).await?;
        Ok(pods_by_session
            .values()
            .filter(|pod| live.contains(*pod))
            .count())
    }

    async fn count_topic_subscribers(&self, topic: &str) -> Result<usize, BackendError> {
        let n: i64 = self
            .client
            .hlen(self.keys.topic(topic))
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as usize)
    }

    async fn count_sessions(&self) -> Result<usize, BackendError> {
        Ok(self
            .pods()
            .await?
            .iter()
            .filter(|p| p.alive)
            .map(|p| p.connections as usize)
            .sum())
    }

    async fn pods(&self) -> Result<Vec<PodRecord>, BackendError> {
        let pods: Vec<String> = self
            .client
            .smembers(self.keys.pods())
            .await
            .map_err(unavailable)?;
        let pods: Vec<String> = pods
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let live = self.live_pods(pods.iter().cloned()).await?;
        let pipeline = self.client.pipeline();
        for pod in &pods {
            let () = pipeline
                .scard(self.keys.pod_sessions(pod))
                .await
                .map_err(unavailable)?;
        }
        let counts: Vec<i64> = if pods.is_empty() {
            Vec::new()
        } else {
            pipeline.all().await.map_err(unavailable)?
        };
        Ok(pods
            .into_iter()
            .zip(counts)
            .map(|(pod_id, n)| PodRecord {
                alive: live.contains(&pod_id),
                pod_id,
                connections: n.max(0) as u64,
            })
            .collect())
    }

    async fn healthy(&self) -> Result<(), BackendError> {
        // Answer at once while the client knows it is disconnected, and never take longer
        // than a probe's usual timeout.
        if !self.client.is_connected() {
            return Err(BackendError::Unavailable("not connected to Redis".into()));
        }
        let _: String = tokio::time::timeout(HEALTH_TIMEOUT, self.client.ping(None))
            .await
            .map_err(|_| BackendError::Unavailable("Redis did not answer PING in time".into()))?
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<u64, BackendError> {
        let until: i64 = self
            .client
            .eval(
                REVOKE,
                vec![self.keys.revocations(), self.keys.revocations_version()],
                vec![revocation.what.key(), revocation.until_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(until.max(0) as u64)
    }

    async fn revocations(
        &self,
        known: u64,
        now_ms: u64,
    ) -> Result<Option<(u64, Vec<Revocation>)>, BackendError> {
        let version: Option<u64> = self
            .client
            .get(self.keys.revocations_version())
            .await
            .map_err(unavailable)?;
        let version = version.unwrap_or(0);
        if version == known {
            return Ok(None);
        }
        // Read and prune in one step: a revoke between the two cannot be pruned away.
        let reply: Vec<Value> = self
            .client
            .eval(
                READ_REVOCATIONS,
                vec![self.keys.revocations(), self.keys.revocations_version()],
                vec![now_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut reply = reply.into_iter();
        let version = reply
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| BackendError::Unavailable("a malformed revocation set".into()))?;
        let mut in_force = Vec::new();
        while let (Some(key), Some(until)) = (reply.next(), reply.next()) {
            let what = key.as_string().as_deref().and_then(Revoked::from_key);
            let until_ms = until.as_string().and_then(|u| u.parse::<u64>().ok());
            if let (Some(what), Some(until_ms)) = (what, until_ms) {
                in_force.push(Revocation { what, until_ms });
            }
        }
        Ok(Some((version, in_force)))
    }
}

/// Adds a revocation, keeping the later time; moves the set's version on. KEYS = set,
/// version; ARGV = what (`u:…`, `s:…`, `t:…`), until (ms). Returns the time in force.
/// (Times in ms fit a Lua double exactly.)
const REVOKE: &str = r#"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
local new = tonumber(ARGV[2])
if new > old then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  new = old
end
redis.call('INCR', KEYS[2])
return new
"#;

/// The revocation set's version, then each revocation in force at ARGV[1] (ms) as a
/// field and its time; deletes those no longer in force. KEYS = set, version.
const READ_REVOCATIONS: &str = r#"
local version = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {version}
for i = 1, #all, 2 do
  local until_ms = tonumber(all[i + 1])
  if until_ms == nil or until_ms <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
"#;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
