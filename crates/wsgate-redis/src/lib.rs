//! wsgate-redis: the cluster-mode backends over Redis, with fred.
//!
//! - [`RedisBroker`]: one subscriber connection per pod; per-user, per-topic and per-pod
//!   channels (sharded pub/sub — SSUBSCRIBE/SPUBLISH — in Redis Cluster mode, so fan-out
//!   spreads over shards), a broadcast channel, a versioned protobuf envelope encoded once
//!   per send and decoded once per pod, batched resubscription after a reconnect, and a
//!   pub/sub self-probe that catches a subscriber connection that is silently dead.
//!   Streams with history on user and topic channels are one Lua script per publish (next
//!   offset, kept message, publish: one atomic step) and one per read (`streams`).
//! - [`RedisRegistry`]: sessions, topic memberships and pods, with per-pod liveness keys
//!   (O(1) work per pod per interval), so a pod that dies without cleanup drops out of
//!   presence by itself and its leftovers are reaped by the live pods.
//! - [`RedisEventLog`]: session events in a capped Redis Stream; the registry made with
//!   it writes each session's `connected` and `disconnected` (also a reaped one's) in one
//!   script with the session's mark in the log, so each is written exactly once.
//!
//! The key and channel layout is in [`keys`]; both implementations pass the conformance
//! suite of `wsgate-core`.

mod broker;
mod envelope;
mod events;
pub mod keys;
mod presence;
mod registration;
mod registry;
mod script;
mod streams;
mod subscribing;

use std::time::Duration;

use fred::prelude::*;
use wsgate_core::backend::BackendError;

pub use broker::RedisBroker;
pub use envelope::{Decoded, decode, encode};
pub use events::RedisEventLog;
pub use keys::Keyspace;
pub use registry::RedisRegistry;

/// How the Redis deployment is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a primary behind a proxy).
    Standalone,
    /// Redis Cluster: nodes discovered from the URL; sharded pub/sub.
    Cluster,
    /// A primary found through Redis Sentinel; the URL names the sentinels.
    Sentinel {
        /// The primary's service name known to the sentinels.
        service: String,
    },
}

/// How to reach Redis and lay out the keys.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:pass@]host:port[/db]` (`rediss://` for TLS). In cluster mode any
    /// node of the cluster; in sentinel mode the sentinels (`?node=host:port` adds more).
    pub url: String,
    /// Prefix of every key and channel.
    pub namespace: String,
    /// The deployment kind.
    pub topology: Topology,
    /// Liveness TTL of a pod.
    pub pod_ttl: Duration,
    /// Longest a single Redis command may take before it fails (and a gRPC send answers
    /// UNAVAILABLE instead of hanging while Redis is away).
    pub command_timeout: Duration,
}

impl RedisOptions {
    /// Options with the default timeouts.
    pub fn new(url: impl Into<String>, namespace: impl Into<String>, topology: Topology) -> Self {
        Self {
            url: url.into(),
            namespace: namespace.into(),
            topology,
            pod_ttl: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
        }
    }

    /// Whether per-user, per-topic and per-pod channels use sharded pub/sub.
    pub fn sharded(&self) -> bool {
        self.topology == Topology::Cluster
    }

    /// The URL in the form fred reads: the scheme names the topology
    /// (`redis-cluster://`, `redis-sentinel://…?sentinelServiceName=`).
    fn fred_url(&self) -> Result<String, BackendError> {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(BackendError::Unavailable("redis.url has no scheme".into()));
        };
        if !matches!(scheme, "redis" | "rediss") {
            return Err(BackendError::Unavailable(format!(
                "redis.url: unsupported scheme {scheme:?}"
            )));
        }
        Ok(match &self.topology {
            Topology::Standalone => self.url.clone(),
            Topology::Cluster => format!("{scheme}-cluster://{rest}"),
            Topology::Sentinel { service } => {
                let sep = if rest.contains('?') { '&' } else { '?' };
                format!("{scheme}-sentinel://{rest}{sep}sentinelServiceName={service}")
            }
        })
    }

    fn builder(&self) -> Result<Builder, BackendError> {
        let url = self.fred_url()?;
        let config = Config::from_url(&url)
            .map_err(|e| BackendError::Unavailable(format!("redis.url: {e}")))?;
        let mut builder = Builder::from_config(config);
        let timeout = self.command_timeout;
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                // Pub/sub messages wait here between the connection and our receive task;
                // a burst larger than this is counted as lost (logged), so keep it roomy.
                p.broadcast_channel_capacity = 16 * 1024;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 2;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            // Reconnect forever, 100 ms to 2 s apart: Redis coming back must be noticed
            // within a few seconds.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        Ok(builder)
    }

    /// A connected command client (shared by the broker's publishes and the registry).
    pub async fn connect(&self) -> Result<Client, BackendError> {
        let client = self.builder()?.build().map_err(unavailable)?;
        tokio::time::timeout(self.command_timeout * 3, client.init())
            .await
            .map_err(|_| {
                BackendError::Unavailable(format!("cannot reach Redis at {}", redact(&self.url)))
            })?
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "cannot reach Redis at {}: {e}",
                    redact(&self.url)
                ))
            })?;
        Ok(client)
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://***@{host}")
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn unavailable(e: Error) -> BackendError {
    BackendError::Unavailable(format!("redis: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_picks_the_url_scheme() {
        let url = |t| RedisOptions::new("redis://h:1", "ns", t).fred_url().ok();
        assert_eq!(url(Topology::Standalone).as_deref(), Some("redis://h:1"));
        assert_eq!(
            url(Topology::Cluster).as_deref(),
            Some("redis-cluster://h:1")
        );
        assert_eq!(
            url(Topology::Sentinel {
                service: "mymaster".into()
            })
            .as_deref(),
            Some("redis-sentinel://h:1?sentinelServiceName=mymaster")
        );
        let tls = RedisOptions::new("rediss://h:1?node=g:2", "ns", Topology::Cluster);
        assert_eq!(
            tls.fred_url().ok().as_deref(),
            Some("rediss-cluster://h:1?node=g:2")
        );
        assert!(
            RedisOptions::new("http://h", "ns", Topology::Standalone)
                .fred_url()
                .is_err()
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:secret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
