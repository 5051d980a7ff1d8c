//! Arbitrary client bytes through the permessage-deflate inbound adapter
//! (`wsgate_core::deflate::Deframer`, which parses frames under tungstenite and inflates
//! compressed messages), with small limits. Must never panic; the output must not depend
//! on how the input is split across reads; an inflated message is never larger than the
//! limit; deflate round-trips. The first byte picks the split point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_core::deflate::{Deframer, compress, decompress};

const LIMIT: usize = 4096;
const FRAME_LIMIT: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    let one = Deframer::server(LIMIT, FRAME_LIMIT).process(input, &mut whole);

    let cut = usize::from(first).min(input.len());
    let mut split = Deframer::server(LIMIT, FRAME_LIMIT);
    let mut parts = Vec::new();
    let two = split
        .process(&input[..cut], &mut parts)
        .and_then(|()| split.process(&input[cut..], &mut parts));
    assert_eq!(one, two, "the outcome depends on the split");
    if one.is_ok() {
        assert_eq!(whole, parts, "the output depends on the split");
    }

    // The payload as one compressed message, inflated within the limit.
    match decompress(input, LIMIT) {
        Ok(plain) => assert!(plain.len() <= LIMIT),
        Err(_) => {}
    }
    // Deflate round trip.
    let packed = compress(input);
    assert_eq!(decompress(&packed, input.len()).as_deref(), Ok(input));
});
