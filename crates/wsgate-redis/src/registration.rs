//! A session's registration and its removal in one round trip each, on a Redis that is
//! one server (standalone or a Sentinel's primary): the per-user limit, the user's hash,
//! the session's hash, the pod's session set and, with session events, the `connected` —
//! one script; the same records, the session's topics and the `disconnected` — another.
//!
//! In Redis Cluster these keys live in different slots (the user's, the session's, the
//! pod's and the namespace's), which one script may not touch, so the registry keeps its
//! cluster path there: the admission script on the user's slot, then the records and the
//! event side by side.

use fred::prelude::*;
use tokio::sync::OnceCell;
use wsgate_core::backend::{BackendError, SessionRecord};
use wsgate_core::events::Closed;

use crate::Keyspace;
use crate::script::{Script, integer, lua_add};

/// KEYS = user hash, session hash, pod's session set, then (with events) the log, the
/// pod's live hash and the set of pods with live sessions. ARGV = session, pod, limit,
/// user, connected at, address, then (with events) the log's maxlen. Returns 1 when the
/// session was admitted and recorded, 0 when its user is at the limit (nothing written).
/// A session already in its user's hash (registered again, after Redis lost its keys or
/// on a retry) is admitted whatever the limit, like the admission script of the cluster
/// path; its `connected` is written only once.
const REGISTER: &str = concat!(
    lua_add!(),
    r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local max = tonumber(ARGV[3])
  if max > 0 and redis.call('HLEN', KEYS[1]) >= max then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'user', ARGV[4], 'pod', ARGV[2], 'at', ARGV[5], 'addr', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[1])
if #KEYS == 6 and redis.call('HSETNX', KEYS[5], ARGV[1], ARGV[4]) == 1 then
  redis.call('SADD', KEYS[6], ARGV[2])
  add(KEYS[4], ARGV[7], {'t', 'connected', 's', ARGV[1], 'u', ARGV[4], 'p', ARGV[2],
    'at', ARGV[5]})
end
return 1
"#
);

/// KEYS = user hash, session hash, pod's session set, session's topic set, then (with
/// events) the log, the pod's live hash and the set of pods with live sessions. ARGV =
/// session, the prefix of topic keys, then (with events) the log's maxlen, pod, close
/// code, by whom, at. Returns 1 when the session was live in the event log (and got its
/// `disconnected`), else 0.
///
/// The topics' keys are made here from the session's topic set, not passed in: on one
/// server a script may touch keys it did not declare, and reading the set in the script
/// saves the round trip that would read it first.
const UNREGISTER: &str = concat!(
    lua_add!(),
    r#"
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('HDEL', ARGV[2] .. '{' .. topic .. '}', ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[4])
if #KEYS < 7 then
  return 0
end
local user = redis.call('HGET', KEYS[6], ARGV[1])
local live = 0
if user then
  redis.call('HDEL', KEYS[6], ARGV[1])
  add(KEYS[5], ARGV[3], {'t', 'disconnected', 's', ARGV[1], 'u', user, 'p', ARGV[4],
    'at', ARGV[7], 'code', ARGV[5], 'by', ARGV[6]})
  live = 1
end
if redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SREM', KEYS[7], ARGV[4])
end
return live
"#
);

/// The registration and removal scripts, each loaded on first use.
#[derive(Default)]
pub(crate) struct Registration {
    script: OnceCell<Script>,
    unregister: OnceCell<Script>,
}

impl Registration {
    /// Registers `record` unless its user holds `max_user_sessions` already (0 = no
    /// limit); with `events_max_len`, also writes its `connected` to the event log.
    /// Answers whether the session was admitted.
    pub(crate) async fn register(
        &self,
        client: &Client,
        keys: &Keyspace,
        record: &SessionRecord,
        max_user_sessions: usize,
        events_max_len: Option<&str>,
    ) -> Result<bool, BackendError> {
        let script = self
            .script
            .get_or_try_init(|| Script::load(client, REGISTER))
            .await?;
        let mut script_keys = vec![
            keys.user(&record.user_id),
            keys.session(&record.session_id),
            keys.pod_sessions(&record.pod_id),
        ];
        let mut args = vec![
            Value::from(record.session_id.as_str()),
            Value::from(record.pod_id.as_str()),
            Value::from(max_user_sessions.to_string()),
            Value::from(record.user_id.as_str()),
            Value::from(record.connected_at_ms.to_string()),
            Value::from(record.remote_addr.as_str()),
        ];
        if let Some(max_len) = events_max_len {
            script_keys.extend([
                keys.event_log(),
                keys.event_live(&record.pod_id),
                keys.event_pods(),
            ]);
            args.push(Value::from(max_len));
        }
        let admitted = script.run(client, script_keys, args).await?;
        Ok(integer(admitted, "registration")? == 1)
    }

    /// Removes `record`'s records and its topic memberships; with `events_max_len`, also
    /// writes its `disconnected` (as `closed` says) if it was live in the event log.
    /// Answers whether it was.
    pub(crate) async fn unregister(
        &self,
        client: &Client,
        keys: &Keyspace,
        record: &SessionRecord,
        closed: &Closed,
        events_max_len: Option<&str>,
    ) -> Result<bool, BackendError> {
        let script = self
            .unregister
            .get_or_try_init(|| Script::load(client, UNREGISTER))
            .await?;
        let id = &record.session_id;
        let mut script_keys = vec![
            keys.user(&record.user_id),
            keys.session(id),
            keys.pod_sessions(&record.pod_id),
            keys.session_topics(id),
        ];
        let mut args = vec![Value::from(id.as_str()), Value::from(keys.topic_prefix())];
        if let Some(max_len) = events_max_len {
            script_keys.extend([
                keys.event_log(),
                keys.event_live(&record.pod_id),
                keys.event_pods(),
            ]);
            args.extend([
                Value::from(max_len),
                Value::from(record.pod_id.as_str()),
                Value::from(closed.code.to_string()),
                Value::from(closed.by.as_str()),
                Value::from(closed.at_ms.to_string()),
            ]);
        }
        let live = script.run(client, script_keys, args).await?;
        Ok(integer(live, "removal")? == 1)
    }
}
