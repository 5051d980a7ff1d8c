//! The envelope on the wire: `wsgate.v1.Envelope` (protobuf), encoded once per send and
//! decoded once per receiving pod.
//!
//! A message published to a stream with history carries its position in three fields
//! (`stream_epoch` = 12, `stream_offset` = 13, `stream_published_at_ms` = 14) that the
//! publish script appends to the bytes this module encoded without them: protobuf reads
//! fields in any order, so appending is encoding (the `stream_fields` test helper is the
//! same framing in Rust). The kept history stores exactly what was published, so
//! [`decode_entry`] reads a kept message with the same decoder.

use bytes::Bytes;
use prost::Message;
use wsgate_core::backend::{Command, Envelope, StreamEntry, StreamPosition, Target};
use wsgate_core::ids::SessionId;
use wsgate_core::protocol::Payload;
use wsgate_proto::pb;

/// The wire format version this build writes and reads.
pub const VERSION: u32 = 1;

/// What arrived on a channel.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A message for local sessions.
    Envelope(Envelope),
    /// A pub/sub self-probe from `origin`.
    Probe {
        /// The probing pod.
        origin: String,
        /// The probe's id.
        id: String,
    },
}

/// Encodes an envelope for publishing, its position included when it has one.
pub fn encode(envelope: &Envelope) -> Bytes {
    let mut e = to_pb(envelope);
    if let Some(position) = &envelope.position {
        e.stream_epoch = position.epoch.clone();
        e.stream_offset = position.offset;
    }
    e.encode_to_vec().into()
}

/// Encodes an envelope for the stream publish script, which appends the position itself
/// (so a position the envelope may already have is left out).
pub(crate) fn encode_for_stream(envelope: &Envelope) -> Bytes {
    to_pb(envelope).encode_to_vec().into()
}

/// The envelope's fields, without a stream position.
fn to_pb(envelope: &Envelope) -> pb::Envelope {
    use pb::envelope::{Command as C, Target as T};
    let target = match &envelope.target {
        Target::User(u) => T::User(u.clone()),
        Target::Session(s) => T::Session(s.to_string()),
        Target::Topic(t) => T::Topic(t.clone()),
        Target::Broadcast => T::Broadcast(true),
    };
    let command = match &envelope.command {
        Command::Deliver(p) => C::Deliver(pb::Payload {
            body: Some(match p {
                Payload::Text(t) => pb::payload::Body::Text(t.clone()),
                Payload::Json(j) => pb::payload::Body::Json(j.get().to_owned()),
                Payload::Binary(b) => pb::payload::Body::Binary(b.clone()),
            }),
        }),
        Command::Disconnect { code, reason } => C::Disconnect(pb::CloseCommand {
            code: u32::from(*code),
            reason: reason.clone(),
        }),
    };
    pb::Envelope {
        version: VERSION,
        id: envelope.id.clone(),
        origin: envelope.origin.clone(),
        target: Some(target),
        command: Some(command),
        trace_context: envelope.trace_context.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Encodes a self-probe from `origin`.
pub fn encode_probe(origin: &str, id: &str) -> Bytes {
    pb::Envelope {
        version: VERSION,
        id: id.to_owned(),
        origin: origin.to_owned(),
        target: None,
        command: Some(pb::envelope::Command::Probe(pb::Probe {})),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Decodes what arrived on a channel. Anything malformed or of another version is an
/// error naming why; the caller logs and drops it.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let e = pb::Envelope::decode(bytes).map_err(|e| format!("not an envelope: {e}"))?;
    from_pb(e)
}

/// Decodes a message a stream keeps (what the publish script stored: the published bytes,
/// position and publish time included).
pub fn decode_entry(bytes: &[u8]) -> Result<StreamEntry, String> {
    let e = pb::Envelope::decode(bytes).map_err(|e| format!("not an envelope: {e}"))?;
    let published_at_ms = e.stream_published_at_ms;
    match from_pb(e)? {
        Decoded::Envelope(envelope) => match &envelope.position {
            Some(position) => Ok(StreamEntry {
                offset: position.offset,
                published_at_ms,
                envelope,
            }),
            None => Err("a kept stream message without a position".into()),
        },
        Decoded::Probe { .. } => Err("a probe among a stream's messages".into()),
    }
}

fn from_pb(e: pb::Envelope) -> Result<Decoded, String> {
    use pb::envelope::{Command as C, Target as T};
    if e.version != VERSION {
        return Err(format!("envelope version {} is not {VERSION}", e.version));
    }
    let command = match e.command {
        Some(C::Probe(_)) => {
            return Ok(Decoded::Probe {
                origin: e.origin,
                id: e.id,
            });
        }
        Some(C::Deliver(p)) => Command::Deliver(match p.body {
            Some(pb::payload::Body::Text(t)) => Payload::Text(t),
            Some(pb::payload::Body::Binary(b)) => Payload::Binary(b),
            Some(pb::payload::Body::Json(j)) => Payload::json(&j)?,
            None => return Err("envelope payload has no body".into()),
        }),
        Some(C::Disconnect(c)) => Command::Disconnect {
            code: u16::try_from(c.code)
                .map_err(|_| format!("close code {} out of range", c.code))?,
            reason: c.reason,
        },
        None => return Err("envelope has no command".into()),
    };
    let target = match e.target {
        Some(T::User(u)) => Target::User(u),
        Some(T::Session(s)) => Target::Session(SessionId::from_string(s)),
        Some(T::Topic(t)) => Target::Topic(t),
        Some(T::Broadcast(_)) => Target::Broadcast,
        None => return Err("envelope has no target".into()),
    };
    // Offsets start at 1, so an epoch without an offset (or the reverse) is malformed.
    let position = match (e.stream_epoch.is_empty(), e.stream_offset) {
        (true, 0) => None,
        (false, offset) if offset > 0 => Some(StreamPosition {
            epoch: e.stream_epoch,
            offset,
        }),
        _ => return Err("a stream position needs both an epoch and an offset".into()),
    };
    Ok(Decoded::Envelope(Envelope {
        id: e.id,
        origin: e.origin,
        target,
        command,
        trace_context: (!e.trace_context.is_empty()).then_some(e.trace_context),
        position,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let env = Envelope::new(
            "pod-a",
            Target::Topic("news".into()),
            Command::Deliver(Payload::json(r#"{"a":1}"#).unwrap()),
        );
        assert_eq!(decode(&encode(&env)).unwrap(), Decoded::Envelope(env));
        assert_eq!(
            decode(&encode_probe("p", "1")).unwrap(),
            Decoded::Probe {
                origin: "p".into(),
                id: "1".into()
            }
        );
        assert!(decode(b"\xff\xff garbage").is_err());
        let mut future = pb::Envelope::decode(&encode_probe("p", "1")[..]).unwrap();
        future.version = 2;
        assert!(decode(&future.encode_to_vec()).is_err());
    }

    /// What the publish script appends (see `PUBLISH_STREAM` in `streams.rs`): the
    /// stream fields as protobuf, a tag byte then a length and the string, or a varint.
    fn stream_fields(epoch: &str, offset: u64, published_at_ms: u64) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut n: u64) {
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        let mut out = vec![(12 << 3) | 2];
        varint(&mut out, epoch.len() as u64);
        out.extend_from_slice(epoch.as_bytes());
        out.push(13 << 3);
        varint(&mut out, offset);
        out.push(14 << 3);
        varint(&mut out, published_at_ms);
        out
    }

    fn binary_envelope() -> Envelope {
        Envelope::new(
            "pod-a",
            Target::User("alice".into()),
            Command::Deliver(Payload::Binary(Bytes::from_static(&[0, 255, 0x62, 13, 10]))),
        )
    }

    #[test]
    fn appended_stream_fields_position_the_envelope() {
        let env = binary_envelope();
        let mut framed = encode_for_stream(&env).to_vec();
        framed.extend(stream_fields("0123456789", 300, 1_767_225_600_123));
        let position = StreamPosition {
            epoch: "0123456789".into(),
            offset: 300,
        };
        let mut positioned = env.clone();
        positioned.position = Some(position.clone());

        // Appending is encoding: the same bytes as protobuf writing every field.
        let mut whole = pb::Envelope::decode(&framed[..]).unwrap();
        assert_eq!(whole.stream_published_at_ms, 1_767_225_600_123);
        assert_eq!(whole.encode_to_vec(), framed);
        whole.stream_published_at_ms = 0;
        assert_eq!(whole.encode_to_vec(), encode(&positioned).to_vec());

        // A receiving pod sets the position; the payload is byte-exact.
        assert_eq!(
            decode(&framed).unwrap(),
            Decoded::Envelope(positioned.clone())
        );
        assert_eq!(
            decode(&encode(&positioned)).unwrap(),
            Decoded::Envelope(positioned.clone())
        );
        let entry = decode_entry(&framed).unwrap();
        assert_eq!(entry.offset, 300);
        assert_eq!(entry.published_at_ms, 1_767_225_600_123);
        assert_eq!(entry.envelope, positioned);

        // A position the envelope already had is not encoded for the script.
        assert_eq!(encode_for_stream(&positioned), encode_for_stream(&env));
    }

    #[test]
    fn malformed_stream_fields_are_errors() {
        let base = encode_for_stream(&binary_envelope()).to_vec();
        let with = |tail: &[u8]| {
            let mut bytes = base.clone();
            bytes.extend_from_slice(tail);
            bytes
        };
        let full = stream_fields("0123456789", 7, 1);
        // Cut inside the appended fields (`full` is 16 bytes: epoch field 0..12, offset
        // field 12..14, time field 14..16): a tag without its value, a string cut short, an
        // epoch without its offset.
        for cut in [1, 2, 5, 12, 13, 15] {
            let bytes = with(&full[..cut]);
            assert!(decode(&bytes).is_err(), "cut at {cut} decoded");
            assert!(
                decode_entry(&bytes).is_err(),
                "cut at {cut} decoded as an entry"
            );
        }
        // An epoch without an offset, an offset without an epoch.
        assert!(decode(&with(&[(12 << 3) | 2, 1, b'e'])).is_err());
        assert!(decode(&with(&[13 << 3, 5])).is_err());
        // A length past the end; a varint that never ends.
        assert!(decode(&with(&[(12 << 3) | 2, 0x7f, b'e'])).is_err());
        assert!(decode(&with(&[13 << 3, 0xff, 0xff, 0xff])).is_err());
        // A kept message needs its position; a probe is no message.
        assert!(decode_entry(&base).is_err());
        assert!(decode_entry(&encode_probe("p", "1")).is_err());
    }
}
