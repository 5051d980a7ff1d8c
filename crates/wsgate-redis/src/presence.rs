//! A user's live sessions counted in one round trip, on a Redis that is one server: the
//! user hash names each session's pod, and the script checks each pod's liveness key
//! itself. (In Redis Cluster those keys live in other slots, so the registry reads the
//! hash and then the liveness keys: two round trips.)
//!
//! This is the count a `SendToUser` answers with (`targets`), so it sits on the path of
//! every push to a user.

use fred::prelude::*;
use tokio::sync::OnceCell;
use wsgate_core::backend::BackendError;

use crate::Keyspace;
use crate::script::{Script, integer};

/// KEYS = the user hash; ARGV = what a pod's liveness key starts and ends with (the pod
/// id goes between). Returns how many of the user's sessions are on a live pod. Each pod
/// is checked once, however many of the user's sessions it holds.
const COUNT_LIVE: &str = r#"
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
return n
"#;

/// The counting script, loaded on first use.
#[derive(Default)]
pub(crate) struct Presence {
    count_live: OnceCell<Script>,
}

impl Presence {
    /// How many of `user`'s sessions are on a live pod.
    pub(crate) async fn count_live(
        &self,
        client: &Client,
        keys: &Keyspace,
        user: &str,
    ) -> Result<usize, BackendError> {
        let script = self
            .count_live
            .get_or_try_init(|| Script::load(client, COUNT_LIVE))
            .await?;
        let (start, end) = keys.pod_alive_affixes();
        let args = vec![Value::from(start), Value::from(end)];
        let live = script.run(client, vec![keys.user(user)], args).await?;
        Ok(integer(live, "presence")?.max(0) as usize)
    }
}
