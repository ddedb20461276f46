//! Fuzzes the NAT-PMP parsers: no input may panic, and whatever parses must re-emit to bytes
//! that parse back to the same value, with the same length (the parsers are length-strict).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natwarden_wire::natpmp::{emit_unsupported_opcode, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        let mut buf = [0u8; Request::MAX_LEN];
        let len = request.emit(&mut buf);
        assert_eq!(len, data.len());
        assert_eq!(Request::parse(&buf[..len]), Ok(request));
    }
    if let Ok(response) = Response::parse(data) {
        let mut buf = [0u8; Response::MAX_LEN];
        let len = response.emit(&mut buf);
        assert_eq!(len, data.len());
        assert_eq!(Response::parse(&buf[..len]), Ok(response));
    }
    // The echo must not panic whatever the request and buffer sizes.
    let mut echo = [0u8; 256 * 6];
    let cap = data.first().map_or(0, |&b| usize::from(b) * 6);
    let len = emit_unsupported_opcode(data, &mut echo[..cap]);
    assert_eq!(len, data.len().max(4).min(cap));
});
