//! `POST /api/v1/watch_events`: the long poll that stands in for the server-streaming
//! `WatchEvents` over plain HTTP.
//!
//! A request `{"since_id", "types", "wait_ms", "limit"}` answers `{"events": [...],
//! "next_id"}` as soon as there is at least one matching event after `since_id`, or
//! empty after `wait_ms`. The consumer sends `next_id` as the next `since_id`: it moves
//! past every event the read looked at (also those `types` filtered out), so a poll that
//! answered empty does not look at the same events again, and nothing is skipped.
//!
//! The events are the same JSON objects webhooks send (`type` a lowercase string, `at_ms`
//! a number), not the proto3 mapping of `wsgate.v1.Event`: one shape for every consumer
//! that reads events as JSON. The cursor rules and errors are `WatchEvents`' own (one
//! function maps them): a bad `since_id` 400 `invalid_argument`, a cursor no longer kept
//! or not of this log 400 `out_of_range`, events off 400 `failed_precondition`, Redis
//! away 503 `unavailable`.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use wsgate_core::events::{EventKind, Since};
use wsgate_core::rejection::Rejection;

use super::methods::{decode, encode, status_rejection};
use crate::events::{MAX_READ, MAX_WAIT};
use crate::grpc::ControlService;

/// Events per answer when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;

/// The long poll's request.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollRequest {
    /// Where to start, as `WatchEvents`' `since_id`.
    #[serde(alias = "sinceId")]
    pub since_id: String,
    /// Event types (`connected`, `disconnected`, `subscribed`, `unsubscribed`); none =
    /// every type.
    pub types: Vec<String>,
    /// How long to wait for a first matching event, in milliseconds (0: answer at once).
    #[serde(alias = "waitMs")]
    pub wait_ms: u64,
    /// Most events in the answer (default [`DEFAULT_LIMIT`]).
    pub limit: Option<u64>,
}

/// Reads one batch of events for `body`.
pub async fn watch_events(control: ControlService, body: Bytes) -> Result<Vec<u8>, Rejection> {
    let req: PollRequest = decode(&body)?;
    let since: Since = req.since_id.parse().map_err(|_| {
        invalid(
            "since_id must be empty (only new events), \"0-0\" (everything kept) or the id of \
             an event, such as \"1718000000000-3\"",
        )
    })?;
    let kinds = req
        .types
        .iter()
        .map(|t| {
            EventKind::from_str(t).map_err(|_| {
                invalid(format!(
                    "types: \"{}\" is not an event type (connected, disconnected, subscribed, \
                     unsubscribed)",
                    wsgate_core::rejection::quote(t.as_bytes())
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_wait = MAX_WAIT.as_millis();
    if u128::from(req.wait_ms) > max_wait {
        return Err(invalid(format!(
            "wait_ms must be at most {max_wait} (a longer poll is cut by proxies anyway)"
        )));
    }
    let limit = match req.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_READ as u64).contains(&n) => n as usize,
        Some(_) => return Err(invalid(format!("limit must be between 1 and {MAX_READ}"))),
    };
    let batch = control
        .poll_events(since, &kinds, limit, Duration::from_millis(req.wait_ms))
        .await
        .map_err(|status| status_rejection(&status))?;
    control
        .metrics()
        .events_consumed
        .with_label_values(&["poll"])
        .inc_by(batch.events.len() as u64);
    encode(&batch)
}

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_both_spellings_defaults_and_refuse_unknown_fields() {
        let r: PollRequest =
            decode(br#"{"sinceId":"0-0","types":["connected"],"waitMs":1500}"#).unwrap();
        assert_eq!(
            (r.since_id.as_str(), r.types.len(), r.wait_ms),
            ("0-0", 1, 1500)
        );
        let r: PollRequest = decode(b"").unwrap();
        assert_eq!((r.since_id.as_str(), r.wait_ms, r.limit), ("", 0, None));
        let e = decode::<PollRequest>(br#"{"since":"0-0"}"#).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_json"));
        let e = decode::<PollRequest>(br#"{"wait_ms":-1}"#).unwrap_err();
        assert_eq!(e.code, "bad_json");
    }
}
