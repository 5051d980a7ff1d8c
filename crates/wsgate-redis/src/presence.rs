//! A user's live sessions counted in one round trip, on a Redis that is one server: the
//! user hash names each session's pod, and the script checks each pod's liveness key
//! itself. (In Redis Cluster those keys live in other slots, so the registry reads the
//! hash and then the liveness keys: two round trips.)
//!
//! This is the count a `SendToUser` answers with (`targets`), so it sits on the path of
//! every push to a user: a push to a user's channel without history runs it together
//! with the `PUBLISH`, one script and one round trip for the whole send.

use fred::prelude::*;
use tokio::sync::OnceCell;
use wsgate_core::backend::BackendError;

use crate::Keyspace;
use crate::script::{Script, integer};

/// The count as Lua: KEYS[1] = the user hash; ARGV[1], ARGV[2] = what a pod's liveness
/// key starts and ends with (the pod id goes between). Leaves in `n` how many of the
/// user's sessions are on a live pod. Each pod is checked once, however many of the user's
/// sessions it holds. A macro, so both scripts below are one literal each.
macro_rules! count_live_lua {
    () => {
        r#"
local entries = redis.call('HGETALL', KEYS[1])
local alive = {}
local n = 0
for i = 2, #entries, 2 do
  local pod = entries[i]
  local live = alive[pod]
  if live == nil then
    live = redis.call('EXISTS', ARGV[1] .. pod .. ARGV[2]) == 1
    alive[pod] = live
  end
  if live then
    n = n + 1
  end
end
"#
    };
}

/// Returns how many of the user's sessions are on a live pod.
const COUNT_LIVE: &str = concat!(count_live_lua!(), "return n\n");

/// The same count, and the push published on the user's channel (ARGV[3]) with its
/// payload (ARGV[4]) in the same step: the answer of a `SendToUser` in one round trip.
const COUNT_LIVE_AND_PUBLISH: &str = concat!(
    count_live_lua!(),
    "redis.call('PUBLISH', ARGV[3], ARGV[4])\nreturn n\n"
);

/// The counting script, loaded on first use.
#[derive(Default)]
pub(crate) struct Presence {
    count_live: OnceCell<Script>,
    count_live_and_publish: OnceCell<Script>,
}

impl Presence {
    /// How many of `user`'s sessions are on a live pod.
    pub(crate) async fn count_live(
        &self,
        client: &Client,
        keys: &Keyspace,
        user: &str,
    ) -> Result<usize, BackendError> {
        self.run(&self.count_live, COUNT_LIVE, client, keys, user, vec![])
            .await
    }

    /// How many of `user`'s sessions are on a live pod, with `payload` published on the
    /// user's channel in the same script.
    pub(crate) async fn count_live_and_publish(
        &self,
        client: &Client,
        keys: &Keyspace,
        user: &str,
        payload: bytes::Bytes,
    ) -> Result<usize, BackendError> {
        let publish = vec![Value::from(keys.user_channel(user)), Value::Bytes(payload)];
        let script = &self.count_live_and_publish;
        self.run(script, COUNT_LIVE_AND_PUBLISH, client, keys, user, publish)
            .await
    }

    /// Runs one of the counting scripts (loaded into `cell` on first use) for `user`,
    /// with `more` after the liveness key's affixes in ARGV.
    async fn run(
        &self,
        cell: &OnceCell<Script>,
        lua: &'static str,
        client: &Client,
        keys: &Keyspace,
        user: &str,
        more: Vec<Value>,
    ) -> Result<usize, BackendError> {
        let script = cell.get_or_try_init(|| Script::load(client, lua)).await?;
        let (start, end) = keys.pod_alive_affixes();
        let mut args = vec![Value::from(start), Value::from(end)];
        args.extend(more);
        let live = script.run(client, vec![keys.user(user)], args).await?;
        Ok(integer(live, "presence")?.max(0) as usize)
    }
}
