//! wsgate-core: the parts of the gateway that do not depend on a transport.
//!
//! It holds the identifiers ([`ids`]), the client protocol `wsgate.v1` and its close codes
//! ([`protocol`], [`close`]), the preflight checks as pure functions over request parts
//! ([`preflight`], [`auth`]), the local session [`hub`], the vocabulary of session
//! [`events`], and the [`backend`] traits (`Broker`, `Registry`, `EventLog`) with their
//! in-memory implementations. The HTTP and gRPC edges live in `wsgate-server`; the Redis
//! backends in `wsgate-redis`. A conformance suite that every backend must pass is
//! exported under the `test-util` feature.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod clock;
pub mod close;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod deflate;
pub mod events;
pub mod hosts;
pub mod hub;
pub mod ids;
pub use auth::jwks;
pub mod limiter;
pub mod outbox;
pub mod preflight;
pub mod protocol;
pub mod rejection;
pub mod revocation;
pub mod signal;
pub mod stream;
pub mod subscriptions;
