//! The envelope on the wire: `wsgate.v1.Envelope` (protobuf), encoded once per send and
//! decoded once per receiving pod.

use bytes::Bytes;
use prost::Message;
use wsgate_core::backend::{Command, Envelope, Target};
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

/// Encodes an envelope for publishing.
pub fn encode(envelope: &Envelope) -> Bytes {
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
    }
    .encode_to_vec()
    .into()
}

/// Encodes a self-probe from `origin`.
pub fn encode_probe(origin: &str, id: &str) -> Bytes {
    pb::Envelope {
        version: VERSION,
        id: id.to_owned(),
        origin: origin.to_owned(),
        target: None,
        command: Some(pb::envelope::Command::Probe(pb::Probe {})),
        trace_context: String::new(),
    }
    .encode_to_vec()
    .into()
}

/// Decodes what arrived on a channel. Anything malformed or of another version is an
/// error naming why; the caller logs and drops it.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    use pb::envelope::{Command as C, Target as T};
    let e = pb::Envelope::decode(bytes).map_err(|e| format!("not an envelope: {e}"))?;
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
    Ok(Decoded::Envelope(Envelope {
        id: e.id,
        origin: e.origin,
        target,
        command,
        trace_context: (!e.trace_context.is_empty()).then_some(e.trace_context),
        position: None,
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
}
