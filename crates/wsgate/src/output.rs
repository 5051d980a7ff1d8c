//! What the commands print: a few lines for people (`--output text`, times in RFC 3339)
//! or one JSON object for scripts (`--output json`). A gateway's answer in JSON is the
//! object the HTTP API answers for the same method (the proto3 JSON mapping: field names
//! as in the proto, 64-bit numbers as strings, times in raw milliseconds), plus an RFC
//! 3339 copy of each time beside its milliseconds (`connected_at`, `published_at`,
//! `until`).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use wsgate_proto::pb;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Lines for people.
    Text,
    /// One JSON object on stdout.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OutputArgs {
    /// How to print the result: `text` for people, `json` (one object on stdout) for
    /// scripts. Errors go to stderr as text either way.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
}

/// Something a command prints, in either format.
pub(crate) trait Render {
    /// The human form, one or more lines (no trailing newline).
    fn text(&self) -> String;
    /// The machine form: one JSON object.
    fn json(&self) -> Value;
}

/// Prints `r` on stdout in `format`.
pub(crate) fn print(format: Format, r: &impl Render) {
    match format {
        Format::Text => println!("{}", r.text()),
        Format::Json => println!("{}", r.json()),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-03T07:08:38.123Z`); `None` past year 9999, which RFC 3339 cannot write.
pub(crate) fn rfc3339(ms: u64) -> Option<String> {
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    let mut out = String::new();
    write!(out, "{}", humantime::format_rfc3339_millis(at)).ok()?;
    Some(out)
}

/// [`rfc3339`] for a line of text: the raw milliseconds when there is no such date.
fn time_text(ms: u64) -> String {
    rfc3339(ms).unwrap_or_else(|| format!("{ms}ms"))
}

/// The proto3 JSON of a gateway's answer, as the HTTP API writes it.
fn proto_json(message: &impl serde::Serialize) -> Value {
    serde_json::to_value(message).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// Adds `key` (an RFC 3339 time, or null) beside the milliseconds in `object`.
fn add_time(object: &mut Value, key: &str, ms: u64) {
    if let Some(map) = object.as_object_mut() {
        map.insert(
            key.to_owned(),
            rfc3339(ms).map_or(Value::Null, Value::String),
        );
    }
}

/// The answer to `send` (a user's sessions) or `publish` (a topic's subscribers).
pub(crate) struct Sent<'a> {
    pub(crate) response: &'a pb::SendResponse,
    /// `true` for `publish`.
    pub(crate) to_topic: bool,
}

impl Render for Sent<'_> {
    fn text(&self) -> String {
        let r = self.response;
        let mut out = if self.to_topic {
            format!(
                "published to {} subscriber(s), message {}",
                r.targets, r.message_id
            )
        } else {
            format!("sent to {} session(s), message {}", r.targets, r.message_id)
        };
        // The stream position, when the target keeps history.
        if !r.epoch.is_empty() {
            let _ = write!(out, "\noffset={}  epoch={}", r.offset, r.epoch);
        }
        out
    }

    fn json(&self) -> Value {
        proto_json(self.response)
    }
}

impl Render for pb::GetPresenceResponse {
    fn text(&self) -> String {
        if self.sessions.is_empty() {
            return format!("{} is offline", self.user_id);
        }
        let lines: Vec<String> = self
            .sessions
            .iter()
            .map(|s| {
                format!(
                    "{}  pod={}  connected_at={}  remote={}",
                    s.session_id,
                    s.pod_id,
                    time_text(s.connected_at_ms),
                    s.remote_addr
                )
            })
            .collect();
        lines.join("\n")
    }

    fn json(&self) -> Value {
        let mut out = proto_json(self);
        if let Some(sessions) = out.get_mut("sessions").and_then(Value::as_array_mut) {
            for (json, s) in sessions.iter_mut().zip(&self.sessions) {
                add_time(json, "connected_at", s.connected_at_ms);
            }
        }
        out
    }
}

impl Render for pb::HistoryResponse {
    fn text(&self) -> String {
        let mut out = format!("epoch={}  offset={}", self.epoch, self.offset);
        if self.messages.is_empty() {
            out.push_str("\nno messages");
        }
        for m in &self.messages {
            let _ = write!(
                out,
                "\n{}  {}  {}",
                m.offset,
                time_text(m.published_at_ms),
                payload_line(m.payload.as_ref())
            );
        }
        out
    }

    fn json(&self) -> Value {
        let mut out = proto_json(self);
        if let Some(messages) = out.get_mut("messages").and_then(Value::as_array_mut) {
            for (json, m) in messages.iter_mut().zip(&self.messages) {
                add_time(json, "published_at", m.published_at_ms);
            }
        }
        out
    }
}

impl Render for pb::RevokeResponse {
    fn text(&self) -> String {
        format!(
            "revoked until {} (until_ms={})",
            time_text(self.until_ms),
            self.until_ms
        )
    }

    fn json(&self) -> Value {
        let mut out = proto_json(self);
        add_time(&mut out, "until", self.until_ms);
        out
    }
}

/// A payload on one line: text as a JSON string, JSON as sent (line breaks, which valid
/// JSON has only between tokens, as spaces), binary as its size.
fn payload_line(payload: Option<&pb::Payload>) -> String {
    use pb::payload::Body;
    match payload.and_then(|p| p.body.as_ref()) {
        Some(Body::Text(t)) => Value::from(t.as_str()).to_string(),
        Some(Body::Json(j)) => j.replace(['\n', '\r'], " "),
        Some(Body::Binary(b)) => format!("<{} bytes>", b.len()),
        None => "<empty>".to_owned(),
    }
}

/// `check-config`: every problem, or none.
pub(crate) struct ConfigCheck<'a> {
    pub(crate) problems: &'a [wsgate_server::settings::Problem],
}

impl Render for ConfigCheck<'_> {
    fn text(&self) -> String {
        if self.problems.is_empty() {
            return "configuration OK".to_owned();
        }
        let lines: Vec<String> = self.problems.iter().map(|p| p.to_string()).collect();
        format!("the configuration has problems:\n{}", lines.join("\n"))
    }

    fn json(&self) -> Value {
        let problems: Vec<Value> = self
            .problems
            .iter()
            .map(|p| json!({ "key": p.key, "message": p.message }))
            .collect();
        json!({ "ok": self.problems.is_empty(), "problems": problems })
    }
}

/// `version`.
pub(crate) struct Version;

impl Render for Version {
    fn text(&self) -> String {
        format!("wsgate {}", crate::version::LONG)
    }

    fn json(&self) -> Value {
        json!({
            "name": "wsgate",
            "version": crate::version::VERSION,
            "git_revision": crate::version::GIT_REVISION,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds() {
        assert_eq!(
            rfc3339(1_796_162_261_819).as_deref(),
            Some("2026-12-01T21:57:41.819Z")
        );
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        // Past year 9999 there is no RFC 3339 form: the raw value, never a panic.
        assert_eq!(rfc3339(u64::MAX), None);
        assert_eq!(rfc3339(253_402_300_800_000), None);
        assert_eq!(time_text(u64::MAX), format!("{}ms", u64::MAX));
    }

    #[test]
    fn presence_prints_times_and_keeps_the_milliseconds_in_json() {
        let r = pb::GetPresenceResponse {
            user_id: "alice".into(),
            online: true,
            sessions: vec![pb::Session {
                session_id: "s1".into(),
                user_id: "alice".into(),
                pod_id: "pod-a".into(),
                connected_at_ms: 1_796_162_261_819,
                remote_addr: "127.0.0.1:5000".into(),
            }],
        };
        assert_eq!(
            r.text(),
            "s1  pod=pod-a  connected_at=2026-12-01T21:57:41.819Z  remote=127.0.0.1:5000"
        );
        let j = r.json();
        assert_eq!(j["online"], true);
        assert_eq!(j["sessions"][0]["connected_at_ms"], "1796162261819");
        assert_eq!(j["sessions"][0]["connected_at"], "2026-12-01T21:57:41.819Z");
        assert_eq!(j["sessions"][0]["session_id"], "s1");
    }
}
