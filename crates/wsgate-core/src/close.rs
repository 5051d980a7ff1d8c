//! WebSocket close codes used by wsgate and what a client should do on each.
//!
//! Ranges, as documented in `docs/protocol.md`: 1000–1015 are RFC 6455 codes; 3000–3999
//! are wsgate's own; 4000–4999 belong to `Disconnect` callers and pass through untouched.

/// Normal closure: the client or the server is done. Do not reconnect automatically.
pub const NORMAL: u16 = 1000;
/// Going away: the pod is shutting down or draining. Reconnect (with jitter).
pub const GOING_AWAY: u16 = 1001;
/// Protocol error detected by the WebSocket layer. Do not reconnect without a fix.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Policy violation. Do not reconnect without a fix.
pub const POLICY: u16 = 1008;
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
/// Slow consumer: the client did not read fast enough and its queue filled up. Reconnect.
pub const SLOW_CONSUMER: u16 = 3008;

/// Whether a client that follows the reconnect contract should reconnect after `code`.
pub fn should_reconnect(code: u16) -> bool {
    matches!(
        code,
        GOING_AWAY | INTERNAL | HEARTBEAT_TIMEOUT | SLOW_CONSUMER
    )
}

/// Whether `code` may be sent by a `Disconnect` caller: the application range 4000–4999,
/// plus 1000 (normal) and 3003 (kicked).
pub fn is_caller_code(code: u16) -> bool {
    (4000..=4999).contains(&code) || code == NORMAL || code == KICKED
}
