//! A session's registration in one round trip, on a Redis that is one server (standalone
//! or a Sentinel's primary): the per-user limit, the user's hash, the session's hash, the
//! pod's session set and, with session events, the `connected` — one script.
//!
//! In Redis Cluster these keys live in different slots (the user's, the session's, the
//! pod's and the namespace's), which one script may not touch, so the registry keeps its
//! cluster path there: the admission script on the user's slot, then the records and the
//! event side by side.

use fred::prelude::*;
use tokio::sync::OnceCell;
use wsgate_core::backend::{BackendError, SessionRecord};

use crate::Keyspace;
use crate::script::{Script, lua_add};

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

/// The registration script, loaded on first use.
#[derive(Default)]
pub(crate) struct Registration {
    script: OnceCell<Script>,
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
        match admitted {
            Value::Integer(n) => Ok(n == 1),
            other => Err(BackendError::Unavailable(format!(
                "the registration script answered {other:?}"
            ))),
        }
    }
}
