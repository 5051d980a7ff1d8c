//! permessage-deflate (RFC 7692), shaped so that compression costs no per-connection
//! state: the server answers every offer it accepts with `server_no_context_takeover`
//! and `client_no_context_takeover`, so each message is deflated and inflated on its
//! own. A push is then deflated once and the same compressed bytes go to every session
//! that negotiated the extension ([`SharedDeflate`]), and an idle connection holds no
//! compressor, no inflater and no window.
//!
//! - this file: deflating and inflating one message (flate2 over miniz_oxide; a
//!   compressor and an inflater per thread, reset for each message);
//! - `extensions.rs`: the `Sec-WebSocket-Extensions` negotiation;
//! - `inbound.rs`: the frame adapter under tungstenite that turns compressed client
//!   messages into plain frames (tungstenite 0.30 has no extension hook);
//! - `stream.rs`: that adapter as an `AsyncRead`/`AsyncWrite` wrapper of the socket.

mod extensions;
mod inbound;
mod stream;

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub use extensions::{RESPONSE, negotiate};
pub use inbound::{Deframer, InflateError, encode_client_frame};
pub use stream::{InflateStream, io_error};

/// What RFC 7692 §7.2.1 has the sender strip from the end of a message's sync-flushed
/// DEFLATE data, and the receiver append before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The default of `session.compression_min_bytes`: payloads below it are sent
/// uncompressed (the RFC lets the sender choose per message). Under a couple of hundred bytes DEFLATE saves a few dozen bytes at best
/// (a JSON push's envelope alone is ~40 bytes of little repetition) for a full
/// compressor pass; at 256 bytes and more, JSON payloads typically shrink by a third
/// or more.
pub const MIN_COMPRESS_BYTES: usize = 256;

/// The compression level: miniz_oxide's default (6). Pushes are deflated once for all
/// their recipients, so a better ratio is worth the CPU; per-session replies are mostly
/// below [`MIN_COMPRESS_BYTES`].
const LEVEL: u32 = 6;

thread_local! {
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Deflates one message as RFC 7692 §7.2.1 says: raw DEFLATE, sync flush, the trailing
/// `00 00 ff ff` removed. No context is kept from one message to the next.
pub fn compress(payload: &[u8]) -> Bytes {
    DEFLATER.with(|cell| {
        let mut deflater = cell.borrow_mut();
        deflater.reset();
        // Room for the worst case (stored blocks: 5 bytes per 16 KiB, plus the flush
        // marker), so the compressor never stops for lack of output space: miniz_oxide
        // 0.9.1 loses data when a sync flush resumes into a fresh buffer (seen with
        // Autobahn's 12.2.9 data: 243 bytes short of 65,536; flate2's own writer too).
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 1024 * 5 + 64);
        // The input, then one sync flush, then calls without input until nothing more
        // comes out: the compressor may hold output back even when `out` has room (the
        // way flate2's own writer flushes).
        let mut consumed = 0usize;
        let mut flush = FlushCompress::None;
        let mut synced = false;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let (before_in, before_out) = (deflater.total_in(), deflater.total_out());
            let input = &payload[consumed..];
            // miniz_oxide reports no error for in-memory buffers; treat one as "stop".
            if deflater.compress_vec(input, &mut out, flush).is_err() {
                break;
            }
            consumed += (deflater.total_in() - before_in) as usize;
            let progressed = deflater.total_in() != before_in || deflater.total_out() != before_out;
            if consumed < payload.len() {
                if !progressed && out.len() < out.capacity() {
                    break;
                }
                continue;
            }
            if !synced {
                // All input is in: one sync flush next.
                synced = flush == FlushCompress::Sync;
                flush = if synced {
                    FlushCompress::None
                } else {
                    FlushCompress::Sync
                };
            } else if !progressed && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Bytes::from(out)
    })
}

/// Inflates one message's compressed payload (as received: without the tail), giving
/// at most `limit` bytes.
pub fn decompress(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut inflater = cell.borrow_mut();
        inflater.reset(false);
        let mut out = Vec::with_capacity(limit.min(compressed.len().saturating_mul(4) + 64));
        // The payload, the tail, then nothing until no more output comes.
        for input in [compressed, &TAIL[..], &[][..]] {
            let mut consumed = 0usize;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    // One byte past the limit tells an oversized message apart.
                    let room = out.capacity().max(1024).min(limit + 1 - out.len());
                    out.reserve_exact(room);
                }
                let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
                let status = inflater
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::BadData)?;
                consumed += (inflater.total_in() - before_in) as usize;
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block ends the message; anything after it is ignored.
                    return Ok(out);
                }
                let progressed =
                    inflater.total_in() != before_in || inflater.total_out() != before_out;
                if !progressed && out.len() < out.capacity() {
                    break;
                }
                if consumed == input.len() && input.is_empty() && !progressed {
                    break;
                }
            }
        }
        Ok(out)
    })
}

/// The compressed form of a push, computed by the first session that sends it
/// compressed and reused by all the others. Shared through the push's queue item.
#[derive(Debug, Default)]
pub struct SharedDeflate(OnceLock<Bytes>);

impl SharedDeflate {
    /// A cache with nothing computed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The compressed form of `payload` (which must be the payload this cache belongs
    /// to), and whether this call computed it.
    pub fn get_or_compress(&self, payload: &[u8]) -> (Bytes, bool) {
        let mut ran = false;
        let bytes = self.0.get_or_init(|| {
            ran = true;
            compress(payload)
        });
        (bytes.clone(), ran)
    }
}

impl PartialEq for SharedDeflate {
    /// Always equal: the cache is derived from the frame it sits beside, which is what
    /// comparisons of queue items are about.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc7692_hello_example() {
        // RFC 7692 §7.2.3.1: "Hello" is 0xf2 0x48 0xcd 0xc9 0xc9 0x07 0x00.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress(&hello, 100).unwrap(), b"Hello");
        assert_eq!(decompress(&compress(b"Hello"), 100).unwrap(), b"Hello");
        // §7.2.3.3: the same in a non-compressed block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(decompress(&stored, 100).unwrap(), b"Hello");
        // §7.2.3.4: a final block (BFINAL set) then nothing.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress(&bfinal, 100).unwrap(), b"Hello");
    }

    #[test]
    fn round_trips_and_strips_the_tail() {
        let json = br#"{"op":"push","topic":"news","data":{"id":1,"title":"x"}}"#.repeat(40);
        let packed = compress(&json);
        assert!(!packed.ends_with(&TAIL));
        assert!(
            packed.len() < json.len() / 4,
            "{} of {}",
            packed.len(),
            json.len()
        );
        assert_eq!(decompress(&packed, json.len()).unwrap(), json);
        // Each message stands alone: the second gives the same bytes as the first.
        assert_eq!(compress(&json), packed);
        assert_eq!(decompress(&compress(b""), 10).unwrap(), b"");
    }

    #[test]
    fn output_is_bounded() {
        let zeros = vec![0u8; 1 << 20];
        let packed = compress(&zeros);
        assert!(packed.len() < 2048);
        assert_eq!(
            decompress(&packed, (1 << 20) - 1),
            Err(InflateError::TooBig)
        );
        assert_eq!(decompress(&packed, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            decompress(&[0xff, 0xff, 0xff, 0xff], 100),
            Err(InflateError::BadData)
        );
    }

    #[test]
    fn poorly_compressible_messages_round_trip() {
        // Pseudo-random bytes with some repetition, in the sizes of Autobahn's 12.*
        // cases: the compressor's output must hold every byte.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..300_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 < 3 { b'a' } else { x as u8 }
            })
            .collect();
        for len in [16, 4096, 16384, 65536, 131072, 262144] {
            for start in [0, 1000, 33333] {
                let msg = &data[start..start + len];
                let back = decompress(&compress(msg), len).unwrap();
                assert!(back == msg, "{len} bytes from {start}");
            }
        }
    }

    #[test]
    fn shared_form_is_computed_once() {
        let shared = SharedDeflate::new();
        let payload = b"abc".repeat(200);
        let (a, ran_a) = shared.get_or_compress(&payload);
        let (b, ran_b) = shared.get_or_compress(&payload);
        assert!(ran_a && !ran_b);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
    }
}
