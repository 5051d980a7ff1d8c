//! Arbitrary request line + headers (lenient line format, see `parse_lenient`) through
//! every preflight check, the fixed Host/Origin policies, `client_ip` and both
//! authenticators. Must never panic nor break the harness's invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(parts) = wsgate_fuzz::parse_lenient(data) {
        let knob = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        wsgate_fuzz::run_checks(&parts, knob);
    }
});
