//! Session events in Redis: [`RedisEventLog`], a Redis Stream capped with `MAXLEN ~
//! events.max_len`, and per pod a hash of its sessions that are live in the log.
//!
//! Every write is one Lua script on the namespace's event slot (keys in [`crate::keys`]):
//!
//! - `connected`: `HSETNX` of the session in its pod's live hash; the event is added only
//!   when the field is new.
//! - `disconnected`: `HGET` + `HDEL` of the session; the event (with the user id the hash
//!   kept) is added only when the field was there. Removal, clean leave and reaping all
//!   go through it, so whoever removes a session first writes its one `disconnected`, and
//!   a reaper that stops midway leaves the remaining fields, and only those, to the next.
//! - `subscribed` / `unsubscribed`: added only while the session's field exists, so
//!   nothing of a session lands after its `disconnected`.
//!
//! Ids are `<epoch>-<n>`: the log's start in milliseconds, then the event's number in
//! the log (Redis 7's `XADD … <ms>-*` numbers them). So a read, one script too, knows
//! exactly whether a cursor lost events: it is of an older epoch (a log Redis lost), or
//! more than one before the oldest kept event; and whether it is ahead of the newest.
//! The page is one `XRANGE`, in the same atomic step. Redis 7.0 or later.
//!
//! Consumers' leases and cursors are keys on the same slot: a claim is `SET NX PX` or,
//! for the holder, `PEXPIRE`; storing a cursor checks the lease in the same script, so a
//! holder whose lease lapsed cannot move its successor's cursor.
//!
//! [`EventLog::wait`] does not poll: one task per pod blocks in `XREAD` on a connection of
//! its own (a blocking command would hold up the shared one) while anyone waits, and
//! publishes the newest id it saw to every waiter.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::watch;
use wsgate_core::backend::{BackendError, EventLog, ReadError, SessionRecord};
use wsgate_core::events::{Closed, Event, EventId, EventKind, TopicEvent};

use crate::script::{Script, lua_add};
use crate::{Keyspace, RedisOptions, unavailable};

/// KEYS = log, live hash, pods set; ARGV = maxlen, session, user, pod, at. Returns 1
/// when the session became live (and its `connected` was added), 0 when it was live
/// already.
const CONNECT: &str = concat!(
    lua_add!(),
    r#"
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('SADD', KEYS[3], ARGV[4])
add(KEYS[1], ARGV[1], {'t', 'connected', 's', ARGV[2], 'u', ARGV[3], 'p', ARGV[4], 'at', ARGV[5]})
return 1
"#
);

/// KEYS = log, live hash, pods set; ARGV = maxlen, pod, code, by, at, session ids….
/// Returns how many of the sessions were live (each got its `disconnected`). A pod left
/// without live sessions leaves the set.
const DISCONNECT: &str = concat!(
    lua_add!(),
    r#"
local n = 0
for i = 6, #ARGV do
  local user = redis.call('HGET', KEYS[2], ARGV[i])
  if user then
    redis.call('HDEL', KEYS[2], ARGV[i])
    add(KEYS[1], ARGV[1], {'t', 'disconnected', 's', ARGV[i], 'u', user, 'p', ARGV[2],
      'at', ARGV[5], 'code', ARGV[3], 'by', ARGV[4]})
    n = n + 1
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[2])
end
return n
"#
);

/// KEYS = log, live hash; ARGV = maxlen, pod, then per event: type, session, user, at,
/// topic. Returns, per event, 1 when it was added (its session is live), else 0.
const APPEND: &str = concat!(
    lua_add!(),
    r#"
local added = {}
for i = 3, #ARGV, 5 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i + 1]) == 1 then
    add(KEYS[1], ARGV[1], {'t', ARGV[i], 's', ARGV[i + 1], 'u', ARGV[i + 2], 'p', ARGV[2],
      'at', ARGV[i + 3], 'topic', ARGV[i + 4]})
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
return added
"#
);

/// KEYS = log; ARGV = after (`epoch-n`), limit. Returns `{'ok', entries}`,
/// `{'trimmed', oldest id}` or `{'ahead', newest id}`. A cursor is trimmed when it is of an
/// older epoch (a log that was lost) or more than one before the oldest kept event.
const READ: &str = r#"
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local log, after = KEYS[1], ARGV[1]
local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
if not newest then
  if after == '0-0' then
    return {'ok', {}}
  end
  return {'ahead', '0-0'}
end
if after ~= '0-0' then
  local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1][1]
  local oe, on = parse(oldest)
  local ae, an = parse(after)
  if ae < oe or (ae == oe and an + 1 < on) then
    return {'trimmed', oldest}
  end
  local ne, nn = parse(newest[1])
  if ae > ne or (ae == ne and an > nn) then
    return {'ahead', newest[1]}
  end
end
return {'ok', redis.call('XRANGE', log, '(' .. after, '+', 'COUNT', ARGV[2])}
"#;

/// KEYS = log. Returns the newest id (`0-0` without a log).
const NEWEST: &str = r#"
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if newest then
  return newest[1]
end
return '0-0'
"#;

/// KEYS = lease; ARGV = holder, ttl (ms). Returns 1 when `holder` now holds the lease
/// (taken or renewed), 0 when another holder has it.
const CLAIM: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS = lease; ARGV = holder. Deletes the lease if `holder` holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS = lease, cursor; ARGV = holder, id. Stores the cursor only while `holder` holds
/// the lease; returns 1 when it did.
const STORE_CURSOR: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"#;

/// How long the tail task blocks in one `XREAD`.
const TAIL_BLOCK: Duration = Duration::from_secs(1);

/// Sessions closed per script run when a whole pod's sessions are.
const CLOSE_BATCH: usize = 200;

/// The session event log in Redis.
pub struct RedisEventLog {
    client: Client,
    keys: Keyspace,
    max_len: String,
    connect: Script,
    disconnect: Script,
    append: Script,
    read: Script,
    newest: Script,
    claim: Script,
    release: Script,
    store_cursor: Script,
    /// The newest id the tail task saw; every waiter holds a receiver.
    tail: watch::Sender<EventId>,
    /// Whether the tail task runs.
    tailing: Mutex<bool>,
    /// This log, for the tail task to hold weakly.
    me: Weak<RedisEventLog>,
}

impl RedisEventLog {
    /// The log of `options.namespace`, keeping at least the newest `max_len` events.
    pub async fn load(
        client: Client,
        options: &RedisOptions,
        max_len: usize,
    ) -> Result<Arc<Self>, BackendError> {
        let connect = Script::load(&client, CONNECT).await?;
        let disconnect = Script::load(&client, DISCONNECT).await?;
        let append = Script::load(&client, APPEND).await?;
        let read = Script::load(&client, READ).await?;
        let newest = Script::load(&client, NEWEST).await?;
        let claim = Script::load(&client, CLAIM).await?;
        let release = Script::load(&client, RELEASE).await?;
        let store_cursor = Script::load(&client, STORE_CURSOR).await?;
        Ok(Arc::new_cyclic(|me| Self {
            keys: Keyspace::new(&options.namespace),
            max_len: max_len.max(1).to_string(),
            connect,
            disconnect,
            append,
            read,
            newest,
            claim,
            release,
            store_cursor,
            client,
            tail: watch::Sender::new(EventId::ZERO),
            tailing: Mutex::new(false),
            me: me.clone(),
        }))
    }

    /// The log's cap, as the scripts take it.
    pub(crate) fn max_len(&self) -> &str {
        &self.max_len
    }

    /// Marks a session live and adds its `connected`, unless it is live already.
    pub(crate) async fn connect(&self, record: &SessionRecord) -> Result<bool, BackendError> {
        let keys = vec![
            self.keys.event_log(),
            self.keys.event_live(&record.pod_id),
            self.keys.event_pods(),
        ];
        let args = vec![
            Value::from(self.max_len.as_str()),
            Value::from(record.session_id.as_str()),
            Value::from(record.user_id.as_str()),
            Value::from(record.pod_id.as_str()),
            Value::from(record.connected_at_ms.to_string()),
        ];
        let added = self.connect.run(&self.client, keys, args).await?;
        Ok(number(&added)? == 1)
    }

    /// Adds the `disconnected` of each of `sessions` (of `pod`) that is live, and forgets
    /// it; returns how many were.
    pub(crate) async fn disconnect(
        &self,
        pod: &str,
        sessions: &[String],
        closed: &Closed,
    ) -> Result<usize, BackendError> {
        let keys = vec![
            self.keys.event_log(),
            self.keys.event_live(pod),
            self.keys.event_pods(),
        ];
        let mut args = vec![
            Value::from(self.max_len.as_str()),
            Value::from(pod),
            Value::from(closed.code.to_string()),
            Value::from(closed.by.as_str()),
            Value::from(closed.at_ms.to_string()),
        ];
        args.extend(sessions.iter().map(|s| Value::from(s.as_str())));
        let closed = self.disconnect.run(&self.client, keys, args).await?;
        Ok(number(&closed)? as usize)
    }

    /// Closes every session of `pod` that is live in the log, as `closed` says, a batch
    /// per script run; returns how many. Racing callers split the work: each session is
    /// closed by exactly one of them. Sessions that appear meanwhile (a pod taken for dead
    /// that still registers) are closed too, for a few passes; the next call does the rest.
    pub async fn close_pod(&self, pod: &str, closed: &Closed) -> Result<usize, BackendError> {
        const PASSES: usize = 4;
        let mut total = 0;
        for _ in 0..PASSES {
            let live: Vec<String> = self
                .client
                .hkeys(self.keys.event_live(pod))
                .await
                .map_err(unavailable)?;
            if live.is_empty() {
                break;
            }
            for batch in live.chunks(CLOSE_BATCH) {
                total += self.disconnect(pod, batch, closed).await?;
            }
        }
        Ok(total)
    }

    /// The pods that have sessions live in the log: a reaper must close those of a dead
    /// one even when the registry no longer lists it (forgotten by a version of wsgate
    /// that did not write events).
    pub(crate) async fn pods(&self) -> Result<Vec<String>, BackendError> {
        self.client
            .smembers(self.keys.event_pods())
            .await
            .map_err(unavailable)
    }

    /// Starts the tail task unless it runs.
    fn ensure_tailing(&self) {
        let mut tailing = self.tailing.lock();
        if !*tailing {
            *tailing = true;
            tokio::spawn(tail(self.me.clone(), self.client.clone_new()));
        }
    }
}

/// Follows the log's newest id while anyone waits: blocks in `XREAD` on a connection of
/// its own, and after each return publishes the newest id. Stops (closing its connection)
/// once no waiter is left.
async fn tail(log: Weak<RedisEventLog>, blocking: Client) {
    if let Err(e) = blocking.init().await {
        // The next wait starts another task.
        tracing::debug!(error = %e, "event log tail cannot connect");
        if let Some(this) = log.upgrade() {
            *this.tailing.lock() = false;
        }
        return;
    }
    // Nothing to wait for before the first look at the newest id.
    let mut last = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(this) = log.upgrade() else { break };
        {
            let mut tailing = this.tailing.lock();
            if this.tail.receiver_count() == 0 {
                *tailing = false;
                break;
            }
        }
        let step = async {
            if let Some(last) = last {
                let _: Value = blocking
                    .xread(
                        Some(1),
                        Some(TAIL_BLOCK.as_millis() as u64),
                        this.keys.event_log(),
                        EventId::to_string(&last),
                    )
                    .await
                    .map_err(unavailable)?;
            }
            this.newest().await
        };
        match step.await {
            Ok(newest) => {
                last = Some(newest);
                this.tail.send_replace(newest);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::debug!(error = %e, "event log tail failed; retrying");
                drop(this);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let _ = blocking.quit().await;
}

#[async_trait]
impl EventLog for RedisEventLog {
    async fn append(&self, events: &[TopicEvent]) -> Result<Vec<bool>, BackendError> {
        let mut written = Vec::with_capacity(events.len());
        // One script run per pod's run of events (a pod appends only its own).
        for run in events.chunk_by(|a, b| a.pod_id == b.pod_id) {
            let pod = &run[0].pod_id;
            let keys = vec![self.keys.event_log(), self.keys.event_live(pod)];
            let mut args = vec![
                Value::from(self.max_len.as_str()),
                Value::from(pod.as_str()),
            ];
            for e in run {
                args.extend([
                    Value::from(e.kind().as_str()),
                    Value::from(e.session_id.as_str()),
                    Value::from(e.user_id.as_str()),
                    Value::from(e.at_ms.to_string()),
                    Value::from(e.topic.as_str()),
                ]);
            }
            match self.append.run(&self.client, keys, args).await? {
                Value::Array(added) if added.len() == run.len() => {
                    for flag in &added {
                        written.push(number(flag)? == 1);
                    }
                }
                other => return Err(malformed(&other)),
            }
        }
        Ok(written)
    }

    async fn newest(&self) -> Result<EventId, BackendError> {
        let reply = self
            .newest
            .run(&self.client, vec![self.keys.event_log()], Vec::new())
            .await?;
        event_id(&reply)
    }

    async fn read(&self, after: EventId, limit: usize) -> Result<Vec<Event>, ReadError> {
        let args = vec![
            Value::from(after.to_string()),
            Value::from(limit.max(1).to_string()),
        ];
        let reply = self
            .read
            .run(&self.client, vec![self.keys.event_log()], args)
            .await?;
        let Value::Array(mut parts) = reply else {
            return Err(malformed(&reply).into());
        };
        let detail = parts.pop().unwrap_or(Value::Null);
        match parts.first().and_then(Value::as_str).as_deref() {
            Some("ok") => match detail {
                Value::Array(entries) => entries
                    .iter()
                    .map(entry)
                    .collect::<Result<_, _>>()
                    .map_err(Into::into),
                other => Err(malformed(&other).into()),
            },
            Some("trimmed") => Err(ReadError::Trimmed {
                oldest: match detail {
                    Value::Null => None,
                    id => Some(event_id(&id)?),
                },
            }),
            Some("ahead") => Err(ReadError::Ahead {
                newest: event_id(&detail)?,
            }),
            _ => Err(malformed(&detail).into()),
        }
    }

    async fn wait(&self, after: EventId, timeout: Duration) {
        // Subscribed before the task may start: it stops only when no receiver is left.
        let mut newest = self.tail.subscribe();
        self.ensure_tailing();
        let _ = tokio::time::timeout(timeout, newest.wait_for(|id| *id > after)).await;
    }

    async fn claim(
        &self,
        consumer: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let keys = vec![self.keys.consumer_lease(consumer)];
        let args = vec![
            Value::from(holder),
            Value::from(ttl.as_millis().max(1).to_string()),
        ];
        let held = self.claim.run(&self.client, keys, args).await?;
        Ok(number(&held)? == 1)
    }

    async fn release(&self, consumer: &str, holder: &str) -> Result<(), BackendError> {
        let keys = vec![self.keys.consumer_lease(consumer)];
        self.release
            .run(&self.client, keys, vec![Value::from(holder)])
            .await?;
        Ok(())
    }

    async fn cursor(&self, consumer: &str) -> Result<Option<EventId>, BackendError> {
        let stored: Value = self
            .client
            .get(self.keys.consumer_cursor(consumer))
            .await
            .map_err(unavailable)?;
        match stored {
            Value::Null => Ok(None),
            id => event_id(&id).map(Some),
        }
    }

    async fn store_cursor(
        &self,
        consumer: &str,
        holder: &str,
        id: EventId,
    ) -> Result<bool, BackendError> {
        let keys = vec![
            self.keys.consumer_lease(consumer),
            self.keys.consumer_cursor(consumer),
        ];
        let args = vec![Value::from(holder), Value::from(id.to_string())];
        let stored = self.store_cursor.run(&self.client, keys, args).await?;
        Ok(number(&stored)? == 1)
    }
}

/// One stream entry as an event.
fn entry(value: &Value) -> Result<Event, BackendError> {
    let Value::Array(parts) = value else {
        return Err(malformed(value));
    };
    let [id, Value::Array(flat)] = parts.as_slice() else {
        return Err(malformed(value));
    };
    let mut fields: HashMap<String, String> = HashMap::with_capacity(flat.len() / 2);
    for pair in flat.chunks(2) {
        if let [k, v] = pair {
            fields.insert(text(k)?, text(v)?);
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::Protocol(format!("an event without its {name:?} field")))
    };
    let kind: EventKind = field("t")?.parse().map_err(|_| {
        BackendError::Protocol(format!("an event of unknown type {:?}", fields.get("t")))
    })?;
    let parse_opt = |name: &str| fields.get(name).cloned();
    Ok(Event {
        id: event_id(id)?,
        kind,
        at_ms: field("at")?.parse().unwrap_or(0),
        session_id: field("s")?,
        user_id: field("u")?,
        pod_id: field("p")?,
        topic: parse_opt("topic"),
        code: parse_opt("code").and_then(|c| c.parse().ok()),
        by: parse_opt("by").and_then(|b| b.parse().ok()),
    })
}

fn event_id(value: &Value) -> Result<EventId, BackendError> {
    text(value)?.parse().map_err(|_| malformed(value))
}

fn text(value: &Value) -> Result<String, BackendError> {
    value
        .as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_owned)
        .ok_or_else(|| malformed(value))
}

fn number(value: &Value) -> Result<u64, BackendError> {
    value.as_u64().ok_or_else(|| malformed(value))
}

fn malformed(value: &Value) -> BackendError {
    BackendError::Protocol(format!("unexpected event script reply: {:?}", value.kind()))
}
