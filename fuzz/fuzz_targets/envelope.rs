//! Arbitrary bytes through `wsgate_redis::decode`, the decoder of what arrives on a Redis
//! channel (any process with access to Redis can publish there). Must never panic; a
//! decoded envelope re-encoded decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_redis::{Decoded, decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Envelope(env)) = decode(data) {
        let bytes = encode(&env);
        match decode(&bytes) {
            Ok(Decoded::Envelope(back)) => assert_eq!(back, env, "envelope round trip"),
            other => panic!("re-encoded envelope does not decode: {other:?}"),
        }
    }
});
