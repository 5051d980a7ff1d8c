//! Lua scripts run with EVALSHA, one round trip each.

use fred::prelude::*;
use wsgate_core::backend::BackendError;

use crate::unavailable;

/// A Lua script run with EVALSHA, falling back to EVAL (which caches it again) on a node
/// that does not have it: one round trip, two after a node lost its script cache
/// (restart, failover, a node that never saw SCRIPT LOAD).
pub(crate) struct Script {
    lua: &'static str,
    sha: String,
}

impl Script {
    /// Loads `lua` on the server the client reaches for keyless commands, to learn its
    /// SHA-1 (the same on every node).
    pub(crate) async fn load(client: &Client, lua: &'static str) -> Result<Self, BackendError> {
        let sha: String = client.script_load(lua).await.map_err(unavailable)?;
        Ok(Self { lua, sha })
    }

    pub(crate) async fn run(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, BackendError> {
        match client
            .evalsha::<Value, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.lua, keys, args).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }
}

/// A script's integer reply; anything else is a protocol error naming the `script`.
pub(crate) fn integer(reply: Value, script: &str) -> Result<i64, BackendError> {
    match reply {
        Value::Integer(n) => Ok(n),
        other => Err(BackendError::Protocol(format!(
            "the {script} script answered {:?}",
            other.kind()
        ))),
    }
}

/// Adds an event to the log, capped at `maxlen` (approximately: whole stream nodes are
/// trimmed). Ids are `<epoch>-<n>`: the epoch is the log's start in ms (Redis's clock),
/// `n` counts its events (`<ms>-*` makes Redis take the next `n`), so the id right before
/// the oldest kept one is known, and a log made anew has a later epoch than any lost one.
macro_rules! lua_add {
    () => {
        r#"
local function add(log, maxlen, fields)
  local newest = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
  local epoch
  if newest then
    epoch = string.sub(newest[1], 1, string.find(newest[1], '-', 1, true) - 1)
  else
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  end
  return redis.call('XADD', log, 'MAXLEN', '~', maxlen, epoch .. '-*', unpack(fields))
end
"#
    };
}

pub(crate) use lua_add;
