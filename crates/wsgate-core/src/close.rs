//! WebSocket close codes used by wsgate and what a client should do on each, and the
//! closes the server sends with a fixed reason.
//!
//! Ranges, as documented in `docs/protocol.md`: 1000–1015 are RFC 6455 codes; 3000–3999
//! are wsgate's own; 4000–4999 belong to `Disconnect` callers and pass through untouched.
//!
//! The codes are plain `u16` constants; the [`Close`] values pair a code with the reason
//! text the server sends with it, so that every close the server decides on is named once
//! here (the reasons are part of the client contract: `docs/protocol.md` quotes them).

/// Normal closure: the client or the server is done. Do not reconnect automatically.
pub const NORMAL: u16 = 1000;
/// Going away: the pod is shutting down or draining. Reconnect (with jitter).
pub const GOING_AWAY: u16 = 1001;
/// Protocol error detected by the WebSocket layer. Do not reconnect without a fix.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The payload of a frame is not what its type promises (a text frame that is not valid
/// UTF-8). Do not reconnect without a fix.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation. Do not reconnect without a fix.
pub const POLICY: u16 = 1008;
/// No status: the client's close frame carried no code. Never sent; reported in
/// `disconnected` events.
pub const NO_STATUS: u16 = 1005;
/// Abnormal closure: the connection ended without a close frame (or its pod died). Never
/// sent; reported in `disconnected` events.
pub const ABNORMAL: u16 = 1006;
/// An inbound message exceeded `session.max_message_bytes`. Do not resend it.
pub const TOO_BIG: u16 = 1009;
/// Unexpected server error. Reconnect with backoff.
pub const INTERNAL: u16 = 1011;
/// The client did not answer heartbeats in time. Reconnect.
pub const HEARTBEAT_TIMEOUT: u16 = 3001;
/// Disconnected by the control plane without a caller-chosen code. Do not reconnect.
pub const KICKED: u16 = 3003;
/// The session's token expired: get a fresh token, then reconnect.
pub const TOKEN_EXPIRED: u16 = 3005;
/// The session was revoked (by user, session or token id): do not reconnect with the same
/// credentials.
pub const REVOKED: u16 = 3006;
/// Slow consumer: the client did not read fast enough and its queue filled up. Reconnect.
pub const SLOW_CONSUMER: u16 = 3008;
/// The session can no longer vouch for the continuity of the user's stream (its epoch
/// changed, or a message was skipped): reconnect with `since` to recover from history.
pub const INSUFFICIENT_STATE: u16 = 3010;

/// A close the server sends: a code and the reason text that goes with it.
///
/// `Copy` and `'static`, so naming one costs nothing on the hot path; closes whose reason
/// is chosen at run time (a `Disconnect` caller's, a protocol error's text) carry their
/// own `String` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: u16,
    /// The close reason (at most 123 bytes, as RFC 6455 allows).
    pub reason: &'static str,
}

impl Close {
    /// A close with `code` and `reason`.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// The pod is shutting down or draining (1001): reconnect, with jitter.
pub const SHUTDOWN: Close = Close::new(GOING_AWAY, "server shutting down; reconnect");
/// The session was told to stop without being told why (1001, no reason): its close
/// signal fired with no reason recorded, or its outbound queue was closed.
pub const UNEXPLAINED: Close = Close::new(GOING_AWAY, "");
/// The outbound queue filled up: the client reads slower than it is sent to (3008).
pub const QUEUE_FULL: Close = Close::new(SLOW_CONSUMER, "slow consumer: outbound queue full");
/// A write to the socket did not finish within the heartbeat timeout: the client stopped
/// reading (3008).
pub const WRITE_STALLED: Close = Close::new(SLOW_CONSUMER, "slow consumer: write stalled");
/// Nothing came back within the heartbeat timeout after a ping (3001).
pub const NO_PONG: Close = Close::new(HEARTBEAT_TIMEOUT, "heartbeat timeout");
/// The token the session was opened with reached its `exp`, plus the leeway (3005).
pub const TOKEN_EXPIRY: Close =
    Close::new(TOKEN_EXPIRED, "token expired; reconnect with a new token");
/// A revocation names the session, its user or its token (3006).
pub const REVOCATION: Close = Close::new(REVOKED, "revoked");
/// An inbound message exceeded `session.max_message_bytes` (1009).
pub const MESSAGE_TOO_BIG: Close = Close::new(TOO_BIG, "message too big");
/// An inbound frame exceeded `session.max_frame_bytes` (1009).
pub const FRAME_TOO_BIG: Close = Close::new(TOO_BIG, "frame too big");
/// A text frame (or message) that is not valid UTF-8 (1007).
pub const BAD_UTF8: Close = Close::new(INVALID_PAYLOAD, "invalid UTF-8 in a text frame");

/// The user stream's continuity was lost on a live session (3010).
pub const STREAM_RESET: Close = Close::new(
    INSUFFICIENT_STATE,
    "insufficient state; reconnect with since to recover",
);

/// The user stream's history could not be read when the session started (1011): the
/// backend is away; reconnect with backoff.
pub const HISTORY_UNAVAILABLE: Close = Close::new(INTERNAL, "history unavailable; reconnect later");

/// Whether a client that follows the reconnect contract should reconnect after `code`.
pub fn should_reconnect(code: u16) -> bool {
    matches!(
        code,
        GOING_AWAY | INTERNAL | HEARTBEAT_TIMEOUT | SLOW_CONSUMER | INSUFFICIENT_STATE
    )
}

/// Whether `code` may be sent by a `Disconnect` caller: the application range 4000–4999,
/// plus 1000 (normal) and 3003 (kicked).
pub fn is_caller_code(code: u16) -> bool {
    (4000..=4999).contains(&code) || code == NORMAL || code == KICKED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_reasons_fit_in_a_close_frame() {
        for close in [
            SHUTDOWN,
            UNEXPLAINED,
            QUEUE_FULL,
            WRITE_STALLED,
            NO_PONG,
            TOKEN_EXPIRY,
            MESSAGE_TOO_BIG,
            FRAME_TOO_BIG,
            BAD_UTF8,
        ] {
            assert!(close.reason.len() <= 123, "{close:?}");
        }
    }
}
