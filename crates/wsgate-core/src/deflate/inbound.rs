//! The frame adapter between the socket and tungstenite for compressed messages.
//!
//! tungstenite 0.30 has no extension hook and refuses any frame with RSV1 set, so the
//! adapter reads the peer's frames first (this hand-written frame parser exists only for
//! that reason). Every frame it does not own passes through byte for byte: control
//! frames, uncompressed messages, and anything malformed, which tungstenite then refuses
//! as it would without compression (an RSV1 bit on a continuation or control frame, an
//! unmasked client frame, a reserved opcode: 1002). A message whose first frame has RSV1
//! is collected (its fragments unmasked, at most `limit` compressed bytes), inflated (at
//! most `limit` bytes) and handed on as the equivalent uncompressed message: frames of
//! at most `frame_limit` bytes, masked with a zero key when the peer is a client (as
//! tungstenite requires from clients). Control frames between its fragments go on at
//! once, which RFC 6455 allows.
//!
//! Between frames the adapter holds nothing on the heap: the collected payload exists
//! only while a compressed message is incomplete.

/// Why the adapter failed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The message, compressed or inflated, is larger than the limit: 1009.
    #[error("message too big")]
    TooBig,
    /// The compressed data does not inflate: 1007.
    #[error("invalid compressed data")]
    BadData,
    /// A data frame began while a compressed message was incomplete: 1002.
    #[error("expected a continuation frame")]
    Protocol,
}

impl InflateError {
    /// The WebSocket close code that answers it.
    pub fn close_code(self) -> u16 {
        match self {
            InflateError::TooBig => 1009,
            InflateError::BadData => 1007,
            InflateError::Protocol => 1002,
        }
    }
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASK: u8 = 0x80;
/// The longest frame header: 2 bytes, a 64-bit length, a mask key.
const MAX_HEADER: usize = 14;

/// Where the adapter is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a frame header (`len` bytes of it so far).
    Header { len: u8 },
    /// Passing a frame's payload through: this many bytes left.
    Forward(u64),
    /// Collecting a compressed frame's payload.
    Collect {
        remaining: u64,
        key: [u8; 4],
        offset: u8,
        fin: bool,
    },
}

/// A compressed message being collected.
#[derive(Debug)]
struct Collecting {
    opcode: u8,
    data: Vec<u8>,
}

/// The adapter's state machine: bytes from the peer in, bytes for tungstenite out.
#[derive(Debug)]
pub struct Deframer {
    limit: usize,
    frame_limit: usize,
    /// Whether the peer's frames are masked (the peer is a client).
    masked: bool,
    header: [u8; MAX_HEADER],
    state: State,
    message: Option<Collecting>,
}

impl Deframer {
    /// The adapter for a server reading a client: messages of at most `limit` bytes
    /// (compressed and inflated), handed on in frames of at most `frame_limit` bytes.
    pub fn server(limit: usize, frame_limit: usize) -> Self {
        Self::new(limit, frame_limit, true)
    }

    /// The adapter for a client reading a server (tests and the load generator).
    pub fn client(limit: usize, frame_limit: usize) -> Self {
        Self::new(limit, frame_limit, false)
    }

    fn new(limit: usize, frame_limit: usize, masked: bool) -> Self {
        Self {
            limit,
            frame_limit: frame_limit.max(1),
            masked,
            header: [0; MAX_HEADER],
            state: State::Header { len: 0 },
            message: None,
        }
    }

    /// Whether nothing is held: between frames, no compressed message incomplete.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { len: 0 }) && self.message.is_none()
    }

    /// Takes bytes read from the peer and appends what tungstenite should read to `out`.
    /// After an error the connection is to be failed; the adapter is not used again.
    pub fn process(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Header { len } => {
                    let have = usize::from(*len);
                    let need = header_len(&self.header[..have]);
                    let take = (need - have).min(input.len());
                    self.header[have..have + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    let have = have + take;
                    // `have` is at most MAX_HEADER.
                    *len = have as u8;
                    if have == header_len(&self.header[..have]) {
                        self.on_header(have, out)?;
                    }
                }
                State::Forward(remaining) => {
                    let n = input
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header { len: 0 };
                    }
                }
                State::Collect {
                    remaining,
                    key,
                    offset,
                    fin,
                } => {
                    let n = input
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    if let Some(message) = &mut self.message {
                        let start = usize::from(*offset);
                        message.data.extend(
                            input[..n]
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ key[(start + i) % 4]),
                        );
                    }
                    input = &input[n..];
                    *remaining -= n as u64;
                    *offset = ((usize::from(*offset) + n) % 4) as u8;
                    if *remaining == 0 {
                        let fin = *fin;
                        self.state = State::Header { len: 0 };
                        if fin {
                            self.finish(out)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header is in `self.header[..len]`: decides the frame's fate.
    fn on_header(&mut self, len: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let h = &self.header[..len];
        let (fin, rsv1, opcode) = (h[0] & FIN != 0, h[0] & RSV1 != 0, h[0] & 0x0f);
        let masked = h[1] & MASK != 0;
        let payload = payload_len(h);
        let mut key = [0; 4];
        if masked {
            key.copy_from_slice(&h[len - 4..len]);
        }
        let data_start = opcode == 1 || opcode == 2;
        if data_start && self.message.is_some() {
            return Err(InflateError::Protocol);
        }
        let ours = masked == self.masked
            && match &self.message {
                None => data_start && rsv1,
                Some(_) => opcode == 0 && !rsv1,
            };
        if !ours {
            out.extend_from_slice(h);
            self.state = State::Header { len: 0 };
            if payload > 0 {
                self.state = State::Forward(payload);
            }
            return Ok(());
        }
        let collected = self.message.as_ref().map_or(0, |m| m.data.len());
        let total = u64::try_from(collected)
            .unwrap_or(u64::MAX)
            .saturating_add(payload);
        if total > self.limit as u64 {
            return Err(InflateError::TooBig);
        }
        let message = self.message.get_or_insert_with(|| Collecting {
            opcode,
            data: Vec::new(),
        });
        // `total` is at most `limit`, a usize.
        message.data.reserve(payload as usize);
        self.state = State::Header { len: 0 };
        if payload > 0 {
            self.state = State::Collect {
                remaining: payload,
                key,
                offset: 0,
                fin,
            };
        } else if fin {
            self.finish(out)?;
        }
        Ok(())
    }

    /// The compressed message is complete: inflates it and writes it out uncompressed.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let Some(Collecting { opcode, data }) = self.message.take() else {
            return Ok(());
        };
        let plain = super::decompress(&data, self.limit)?;
        drop(data);
        if plain.is_empty() {
            write_frame(out, FIN | opcode, &[], self.masked);
            return Ok(());
        }
        let mut chunks = plain.chunks(self.frame_limit).peekable();
        let mut op = opcode;
        while let Some(chunk) = chunks.next() {
            let fin = if chunks.peek().is_none() { FIN } else { 0 };
            write_frame(out, fin | op, chunk, self.masked);
            op = 0;
        }
        Ok(())
    }
}

/// How long the header that starts with `h` is (2 until its second byte is known).
fn header_len(h: &[u8]) -> usize {
    let Some(&second) = h.get(1) else {
        return 2;
    };
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & MASK != 0 { 4 } else { 0 };
    2 + length + mask
}

/// The payload length a whole header gives.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

/// Writes one frame (`first` is its first byte: FIN and opcode), masked with a zero key
/// (the payload unchanged) when `masked`.
fn write_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], masked: bool) {
    write_frame_with(out, first, payload, masked.then_some([0; 4]));
}

/// A frame as a client sends it: `first` (FIN, RSV bits, opcode), then `payload` masked
/// with `key`. The gateway only reads such frames; tests, fuzz seeds and load generators
/// that speak frames directly write them with this.
pub fn encode_client_frame(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER);
    write_frame_with(&mut out, first, payload, Some(key));
    out
}

fn write_frame_with(out: &mut Vec<u8>, first: u8, payload: &[u8], key: Option<[u8; 4]>) {
    let mask = if key.is_some() { MASK } else { 0 };
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(mask | n as u8),
        n @ 126..=0xffff => {
            out.push(mask | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match key {
        // A zero key leaves the payload as it is.
        Some(key) if key != [0; 4] => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend_from_slice(payload);
        }
        None => out.extend_from_slice(payload),
    }
}

#[cfg(test)]
#[path = "inbound_tests.rs"]
#[allow(clippy::unwrap_used)]
mod tests;
