//! Raw bytes through `httparse` (hyper's HTTP/1 parser) into `http` parts, then every
//! preflight check, as a handshake arrives at the listener.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(parts) = wsgate_fuzz::parse_httparse(data) {
        let knob = data.len() as u8;
        wsgate_fuzz::run_checks(&parts, knob);
    }
});
