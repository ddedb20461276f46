//! Fuzzes the PCP parsers: no input may panic, and whatever parses must re-emit to bytes that
//! parse back to the same value, never longer than the input (ignored options are dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natwarden_wire::pcp::{emit_error_reply, Request, Response, ResultCode, MAX_LEN, MIN_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        let mut buf = [0u8; MAX_LEN];
        let len = request.emit(&mut buf);
        assert_eq!(len, request.buffer_len());
        assert!(len <= data.len());
        assert_eq!(Request::parse(&buf[..len]), Ok(request));
    }
    if let Ok(response) = Response::parse(data) {
        let mut buf = [0u8; MAX_LEN];
        let len = response.emit(&mut buf);
        assert_eq!(len, response.buffer_len());
        assert!(len <= data.len());
        assert_eq!(Response::parse(&buf[..len]), Ok(response));
    }
    // The error reply must not panic whatever the request and buffer sizes.
    let mut reply = [0u8; MAX_LEN + 8];
    let cap = data
        .first()
        .map_or(0, |&b| usize::from(b) * 5)
        .min(reply.len());
    let len = emit_error_reply(
        data,
        ResultCode::MALFORMED_REQUEST,
        1800,
        1,
        &mut reply[..cap],
    );
    let full = (data.len().clamp(MIN_LEN, MAX_LEN) + 3) & !3;
    assert_eq!(len, full.min(cap));
});
