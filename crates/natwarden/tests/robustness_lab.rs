//! Reliability end to end (issue 11): every class of malformed datagram a LAN host can
//! send gets exactly the RFC's answer or silence from the live daemon, which keeps
//! serving after each; and a flooding LAN host meets its rate limit and quota while
//! another host is served and the daemon's memory stays bounded.
//!
//! The expected answers are written from the RFC text, byte by byte, not from the
//! wire crate: RFC 6886 section 3.5 (versions, opcodes, short packets), 3.3 and 3.4
//! (lifetimes, reserved field); RFC 6887 sections 7.1-7.4 (header, options, error
//! lifetimes), 8.2 (server processing of a request: lengths, R bit, address check),
//! 9 (versions), 11.1 and 11.3 (MAP, nonce), 12.1 and 13 (options).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// How long a datagram that deserves no answer is listened for.
const SILENCE: Duration = Duration::from_millis(300);
/// How long an answer may take before it counts as missing (generous: the daemon
/// commits firewall changes and fsyncs its journal before it replies).
const ANSWER: Duration = Duration::from_secs(2);
/// The lab daemon has just started, so no epoch it reports can be this large.
const EPOCH_BOUND: u32 = 3600;
/// 198.51.100.7, the lab gateway's external address.
const EXT: [u8; 4] = [198, 51, 100, 7];
/// ::ffff:192.168.1.10, the LAN host's address as PCP carries it (RFC 6887 section 5).
const LAN_MAPPED: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 10];
/// ::ffff:0.0.0.0, "no preference" for an IPv4 external address (RFC 6887 section 11.1).
const ANY4_MAPPED: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
/// RFC 6887 section 7.4: the errors this table provokes are long lifetime errors,
/// retried after 30 minutes (but for a nonce mismatch, section 11.3).
const LONG: u32 = 1800;

/// What the daemon must answer to one datagram.
#[derive(Debug, Clone)]
enum Expect {
    Silence,
    /// Exactly these bytes, except the four-byte epoch at `epoch_at` (when the reply
    /// has one), which only has to be below [`EPOCH_BOUND`].
    Reply {
        bytes: Vec<u8>,
        epoch_at: Option<usize>,
        /// A four-byte field that may lie in a range (a lifetime counting down):
        /// its offset and bounds.
        window: Option<(usize, u32, u32)>,
    },
}

struct Case {
    name: String,
    input: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, input: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
    }
}

fn hex(b: &[u8]) -> String {
    let shown: Vec<String> = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
    let more = if b.len() > 64 { " ..." } else { "" };
    format!("[{} bytes] {}{more}", b.len(), shown.join(" "))
}

// ---- NAT-PMP (RFC 6886) ----

/// A MAP request (section 3.3): opcode 1 (UDP) or 2 (TCP).
fn natpmp_map(op: u8, internal: u16, suggested: u16, lifetime: u32) -> Vec<u8> {
    let mut b = vec![0, op, 0, 0];
    b.extend_from_slice(&internal.to_be_bytes());
    b.extend_from_slice(&suggested.to_be_bytes());
    b.extend_from_slice(&lifetime.to_be_bytes());
    b
}

/// A MAP response (section 3.3): 16 bytes, opcode 128 + request opcode, epoch at 4.
fn natpmp_map_reply(op: u8, result: u16, internal: u16, external: u16, lifetime: u32) -> Expect {
    let mut b = vec![0, 128 + op];
    b.extend_from_slice(&result.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&internal.to_be_bytes());
    b.extend_from_slice(&external.to_be_bytes());
    b.extend_from_slice(&lifetime.to_be_bytes());
    Expect::Reply {
        bytes: b,
        epoch_at: Some(4),
        window: None,
    }
}

/// The external address response (section 3.2) the good request gets.
fn natpmp_external_address_reply() -> Expect {
    let mut b = vec![0, 128, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&EXT);
    Expect::Reply {
        bytes: b,
        epoch_at: Some(4),
        window: None,
    }
}

/// Section 3.5's "Unsupported Version" figure: Vers 0, OP 0, result 1, epoch.
fn natpmp_unsupported_version() -> Expect {
    Expect::Reply {
        bytes: vec![0, 0, 0, 1, 0, 0, 0, 0],
        epoch_at: Some(4),
        window: None,
    }
}

/// Section 3.5: "the entire request MUST be returned to the sender, with the top bit of
/// the opcode set ... and the result code set to 5". The result code sits at bytes 2..4;
/// a request too short to hold it is returned zero-padded to 4 bytes so that it can.
fn natpmp_unsupported_opcode(request: &[u8]) -> Expect {
    let mut b = request.to_vec();
    if b.len() < 4 {
        b.resize(4, 0);
    }
    b[1] |= 0x80;
    b[2..4].copy_from_slice(&5u16.to_be_bytes());
    Expect::Reply {
        bytes: b,
        epoch_at: None,
        window: None,
    }
}

/// The NAT-PMP table for a gateway serving both protocols (the example config).
fn natpmp_cases() -> Vec<Case> {
    let mut t = Vec::new();
    let map_tcp = natpmp_map(2, 8080, 8080, 3600);
    let map_udp = natpmp_map(1, 5353, 5353, 3600);

    // Section 3.5: short packets are ignored.
    t.push(case("empty datagram", vec![], Expect::Silence));
    t.push(case("1 byte, version 0", vec![0], Expect::Silence));
    for len in 2..map_tcp.len() {
        t.push(case(
            format!("MAP TCP truncated to {len} bytes"),
            map_tcp[..len].to_vec(),
            Expect::Silence,
        ));
        t.push(case(
            format!("MAP UDP truncated to {len} bytes"),
            map_udp[..len].to_vec(),
            Expect::Silence,
        ));
    }
    // Longer than the message: not a request natwarden can read (README: requests of
    // the wrong length are ignored rather than trimmed).
    for len in [13usize, 14, 16, 64, 1100, 1400, 3000] {
        let mut b = map_tcp.clone();
        b.resize(len, 0);
        t.push(case(
            format!("MAP TCP padded to {len} bytes"),
            b,
            Expect::Silence,
        ));
    }
    t.push(case(
        "external address request of 3 bytes",
        vec![0, 0, 0],
        Expect::Silence,
    ));
    t.push(case(
        "external address request of 12 bytes",
        vec![0; 12],
        Expect::Silence,
    ));

    // Section 3.5: an unsupported opcode below 128 is echoed with result 5.
    for op in 3u8..=127 {
        let mut b = map_tcp.clone();
        b[1] = op;
        let expect = natpmp_unsupported_opcode(&b);
        t.push(case(format!("unsupported opcode {op}"), b, expect));
    }
    for len in [2usize, 3, 4, 20] {
        let mut b = vec![0xa5; len];
        b[0] = 0;
        b[1] = 3;
        let expect = natpmp_unsupported_opcode(&b);
        t.push(case(
            format!("unsupported opcode 3, {len} bytes"),
            b,
            expect,
        ));
    }
    let mut big = vec![0x5a; 1100];
    big[..2].copy_from_slice(&[0, 99]);
    let expect = natpmp_unsupported_opcode(&big);
    t.push(case(
        "unsupported opcode 99, 1100 bytes",
        big.clone(),
        expect.clone(),
    ));
    // Longer still: natwarden's one deliberate cut (README): the echo stops at 1100
    // bytes, its largest reply, where the RFC says "the entire request".
    for len in [1400usize, 3000] {
        let mut b = big.clone();
        b.resize(len, 0x5b);
        t.push(case(
            format!("unsupported opcode 99, {len} bytes: echo cut at 1100"),
            b,
            expect.clone(),
        ));
    }
    // Section 3.5: opcodes of 128 or more are responses, silently ignored.
    for op in 128u8..=255 {
        let mut b = map_tcp.clone();
        b[1] = op;
        t.push(case(format!("response opcode {op}"), b, Expect::Silence));
    }
    for op in [128u8, 129, 130] {
        let b = [vec![0, op], vec![0; 14]].concat();
        t.push(case(
            format!("16-byte response, opcode {op}"),
            b,
            Expect::Silence,
        ));
    }

    // Versions. This gateway also speaks PCP, so RFC 6887 decides (section 9 and
    // Appendix A): version 2 is PCP, and a PCP request shorter than 24 octets is
    // dropped (section 8.2); other versions get PCP's UNSUPP_VERSION naming version
    // 2, unless shorter than 2 octets or with the R bit set (section 8.2).
    for v in [1u8, 2, 3, 255] {
        t.push(case(
            format!("1 byte, version {v}"),
            vec![v],
            Expect::Silence,
        ));
    }
    for v in [1u8, 255] {
        for request in [vec![v, 0], {
            let mut b = map_tcp.clone();
            b[0] = v;
            b
        }] {
            let expect = pcp_copy_error(&request, 1, LONG);
            t.push(case(
                format!("NAT-PMP-shaped version {v}, {} bytes", request.len()),
                request,
                expect,
            ));
        }
        t.push(case(
            format!("version {v}, opcode 128"),
            vec![v, 128],
            Expect::Silence,
        ));
    }
    t.push(case(
        "NAT-PMP-shaped version 2, 2 bytes",
        vec![2, 0],
        Expect::Silence,
    ));
    let mut v2 = map_tcp.clone();
    v2[0] = 2;
    t.push(case(
        "NAT-PMP-shaped version 2, 12 bytes",
        v2,
        Expect::Silence,
    ));

    // MAP semantics at the edges.
    t.push(case(
        "MAP TCP 8080, lifetime 3600",
        map_tcp.clone(),
        natpmp_map_reply(2, 0, 8080, 8080, 3600),
    ));
    // Section 3.3: "The Reserved field MUST be ... ignored on reception".
    let mut reserved = natpmp_map(2, 8081, 8081, 3600);
    reserved[2..4].copy_from_slice(&[0xff, 0xff]);
    t.push(case(
        "MAP with the reserved field set",
        reserved,
        natpmp_map_reply(2, 0, 8081, 8081, 3600),
    ));
    // Section 3.3: the gateway may shorten the lifetime (max_lifetime 86400) and
    // natwarden raises short ones to min_lifetime (README: deliberate choices).
    t.push(case(
        "MAP UDP, lifetime 2^32-1",
        natpmp_map(1, 8082, 8082, u32::MAX),
        natpmp_map_reply(1, 0, 8082, 8082, 86400),
    ));
    t.push(case(
        "MAP UDP, lifetime 1",
        natpmp_map(1, 8083, 8083, 1),
        natpmp_map_reply(1, 0, 8083, 8083, 120),
    ));
    // Section 3.4: lifetime 0 deletes; external port and lifetime 0 in the answer,
    // and deleting what does not exist succeeds the same.
    for name in ["delete MAP TCP 8080", "delete MAP TCP 8080 again"] {
        t.push(case(
            name,
            natpmp_map(2, 8080, 8080, 0),
            natpmp_map_reply(2, 0, 8080, 0, 0),
        ));
    }
    t.push(case(
        "delete all UDP mappings (internal port 0)",
        natpmp_map(1, 0, 0, 0),
        natpmp_map_reply(1, 0, 0, 0, 0),
    ));
    t
}

/// With `pcp = false`, RFC 6886 section 3.5 alone decides versions: anything but 0
/// gets "Unsupported Version" laid out as the section's figure, whatever follows it
/// (the version is checked before the opcode).
fn natpmp_only_cases() -> Vec<Case> {
    let mut t = Vec::new();
    let mut pcp_map = pcp_map_request([1; 12], 6, 8080, 8080, 3600);
    for v in [1u8, 2, 3, 255] {
        t.push(case(
            format!("version {v}, 2 bytes"),
            vec![v, 0],
            natpmp_unsupported_version(),
        ));
        t.push(case(
            format!("version {v}, 1 byte"),
            vec![v],
            natpmp_unsupported_version(),
        ));
        t.push(case(
            format!("version {v}, opcode 128"),
            vec![v, 128, 0, 0],
            natpmp_unsupported_version(),
        ));
        pcp_map[0] = v;
        t.push(case(
            format!("PCP MAP with version {v}"),
            pcp_map.clone(),
            natpmp_unsupported_version(),
        ));
    }
    t.push(case("empty datagram", vec![], Expect::Silence));
    t.push(case("1 byte, version 0", vec![0], Expect::Silence));
    t.push(case(
        "response opcode 130",
        vec![0, 130, 0, 0],
        Expect::Silence,
    ));
    t.push(case(
        "unsupported opcode 3",
        vec![0, 3, 1, 2, 3, 4],
        natpmp_unsupported_opcode(&[0, 3, 1, 2, 3, 4]),
    ));
    t
}

// ---- PCP (RFC 6887) ----

/// The common request header (section 7.1): version 2, opcode, reserved, lifetime,
/// client address.
fn pcp_header(op: u8, lifetime: u32, client: [u8; 16]) -> Vec<u8> {
    let mut b = vec![2, op, 0, 0];
    b.extend_from_slice(&lifetime.to_be_bytes());
    b.extend_from_slice(&client);
    b
}

/// A MAP request (section 11.1) from the LAN host for an IPv4 mapping, no options.
fn pcp_map_request(
    nonce: [u8; 12],
    protocol: u8,
    internal: u16,
    suggested: u16,
    lifetime: u32,
) -> Vec<u8> {
    let mut b = pcp_header(1, lifetime, LAN_MAPPED);
    b.extend_from_slice(&nonce);
    b.extend_from_slice(&[protocol, 0, 0, 0]);
    b.extend_from_slice(&internal.to_be_bytes());
    b.extend_from_slice(&suggested.to_be_bytes());
    b.extend_from_slice(&ANY4_MAPPED);
    b
}

/// An option (section 7.3): code, reserved, length, data padded to 4 octets.
fn option(code: u8, reserved: u8, length: u16, data: &[u8]) -> Vec<u8> {
    let mut b = vec![code, reserved];
    b.extend_from_slice(&length.to_be_bytes());
    b.extend_from_slice(data);
    while b.len() & 3 != 0 {
        b.push(0);
    }
    b
}

/// Writes a response header over `b` (section 7.2): R bit and the request's opcode,
/// reserved 0, result, lifetime; the epoch (8..12) is checked separately.
fn response_header(b: &mut [u8], result: u8, lifetime: u32) {
    b[0] = 2;
    b[1] |= 0x80;
    b[2] = 0;
    b[3] = result;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..12].fill(0);
}

/// The error response to a request that could not be parsed (sections 7.2, 8.2): the
/// request copied (cut at 1100 octets, zero-padded to a whole header and to a multiple
/// of 4), so its 96 "reserved" bits are the last 96 bits of the client address field,
/// under a version-2 response header.
fn pcp_copy_error(request: &[u8], result: u8, lifetime: u32) -> Expect {
    let mut b = request[..request.len().min(1100)].to_vec();
    let len = (b.len().max(24) + 3) & !3;
    b.resize(len, 0);
    response_header(&mut b, result, lifetime);
    Expect::Reply {
        bytes: b,
        epoch_at: Some(8),
        window: None,
    }
}

/// The error response to a request that parsed (sections 7.2, 7.3): its opcode data and
/// options copied, the 96 reserved bits zero.
fn pcp_parsed_error(request: &[u8], result: u8, lifetime: u32) -> Expect {
    let mut b = request.to_vec();
    response_header(&mut b, result, lifetime);
    b[12..24].fill(0);
    Expect::Reply {
        bytes: b,
        epoch_at: Some(8),
        window: None,
    }
}

/// A successful MAP response (section 11.1) to `request` (60 bytes of header and MAP
/// data): assigned external port and our external address, the MAP data's reserved
/// bytes zero, followed by the options the server processed.
fn pcp_map_success(request: &[u8], external: u16, lifetime: u32, options: &[u8]) -> Expect {
    let mut b = request[..60].to_vec();
    response_header(&mut b, 0, lifetime);
    b[12..24].fill(0);
    b[37..40].fill(0);
    b[42..44].copy_from_slice(&external.to_be_bytes());
    b[44..60].copy_from_slice(&ANY4_MAPPED);
    b[56..60].copy_from_slice(&EXT);
    b.extend_from_slice(options);
    Expect::Reply {
        bytes: b,
        epoch_at: Some(8),
        window: None,
    }
}

fn pcp_cases() -> Vec<Case> {
    let mut t = Vec::new();
    let map = pcp_map_request([0x11; 12], 6, 9000, 9000, 3600);

    t.push(case("empty datagram", vec![], Expect::Silence));
    t.push(case("1 byte, version 2", vec![2], Expect::Silence));
    // Section 8.2: shorter than 24 octets with a supported version: dropped; too
    // short for the opcode, or not a multiple of 4: MALFORMED_REQUEST.
    for len in 2..map.len() {
        let b = map[..len].to_vec();
        let expect = if len < 24 {
            Expect::Silence
        } else {
            pcp_copy_error(&b, 3, LONG)
        };
        t.push(case(format!("MAP truncated to {len} bytes"), b, expect));
    }
    for extra in 1..=3 {
        let mut b = map.clone();
        b.resize(60 + extra, 0);
        let expect = pcp_copy_error(&b, 3, LONG);
        t.push(case(format!("MAP + {extra} bytes"), b, expect));
    }
    // Section 7: at most 1100 octets. Exactly 1100 (an optional option fills it) is
    // fine; one word more is MALFORMED_REQUEST, the answer cut at 1100.
    let fill = |total: usize| {
        let data = vec![0xee; total - 64];
        let mut b = pcp_map_request([0x12; 12], 6, 9001, 9001, 3600);
        b.extend_from_slice(&option(200, 0, data.len() as u16, &data));
        b
    };
    let full = fill(1100);
    let expect = pcp_map_success(&full, 9001, 3600, &[]);
    t.push(case("MAP of exactly 1100 bytes", full, expect));
    for total in [1104usize, 1400, 2100, 3000] {
        let b = fill(total);
        let expect = pcp_copy_error(&b, 3, LONG);
        t.push(case(format!("MAP of {total} bytes"), b, expect));
    }
    let mut odd = fill(1100);
    odd.push(0);
    let expect = pcp_copy_error(&odd, 3, LONG);
    t.push(case("MAP of 1101 bytes", odd, expect));

    // Section 7.1: opcodes other than ANNOUNCE (0), MAP (1), PEER (2): UNSUPP_OPCODE.
    for op in 3u8..=127 {
        let b = pcp_header(op, 3600, LAN_MAPPED);
        let expect = pcp_copy_error(&b, 4, LONG);
        t.push(case(format!("unsupported opcode {op}"), b, expect));
    }
    // Section 8.2: the R bit set: silently dropped.
    for op in [128u8, 129, 130, 131, 200, 255] {
        let mut b = map.clone();
        b[1] = op;
        t.push(case(format!("R bit set, opcode {op}"), b, Expect::Silence));
    }
    // Section 9: other versions get UNSUPP_VERSION with version 2 in the answer.
    for v in [1u8, 3, 255] {
        let mut b = map.clone();
        b[0] = v;
        let expect = pcp_copy_error(&b, 1, LONG);
        t.push(case(format!("MAP with version {v}"), b, expect));
    }

    // A good MAP, then the reserved bits (section 7.1, 11.1: "MUST be ignored on
    // reception"): the same answer.
    t.push(case(
        "MAP TCP 9000",
        map.clone(),
        pcp_map_success(&map, 9000, 3600, &[]),
    ));
    let mut reserved = map.clone();
    reserved[2..4].copy_from_slice(&[0xff, 0xff]);
    reserved[37..40].copy_from_slice(&[0xff, 0xff, 0xff]);
    t.push(case(
        "MAP with the header's and the MAP data's reserved bits set",
        reserved,
        pcp_map_success(&map, 9000, 3600, &[]),
    ));
    // Section 14.1.1: ANNOUNCE's requested lifetime is ignored; the answer has 0.
    let announce = pcp_header(0, 77, LAN_MAPPED);
    let mut reply = announce.clone();
    response_header(&mut reply, 0, 0);
    reply[12..24].fill(0);
    t.push(case(
        "ANNOUNCE with a requested lifetime",
        announce,
        Expect::Reply {
            bytes: reply,
            epoch_at: Some(8),
            window: None,
        },
    ));

    // Options (section 7.3).
    let mut b = map.clone();
    b.extend_from_slice(&option(99, 0, 0, &[]));
    let expect = pcp_copy_error(&b, 5, LONG);
    t.push(case("unknown mandatory option 99", b, expect));
    let mut b = map.clone();
    b.extend_from_slice(&option(0, 0, 0, &[]));
    let expect = pcp_copy_error(&b, 5, LONG);
    t.push(case("reserved option code 0", b, expect));
    let mut b = pcp_map_request([0x13; 12], 6, 9002, 9002, 3600);
    b.extend_from_slice(&option(200, 0, 5, &[1, 2, 3, 4, 5]));
    let expect = pcp_map_success(&b, 9002, 3600, &[]);
    t.push(case("unknown optional option 200: ignored", b, expect));
    let prefer = option(2, 0, 0, &[]);
    let mut b = pcp_map_request([0x14; 12], 6, 9003, 9003, 3600);
    b.extend_from_slice(&option(2, 0xff, 0, &[]));
    let expect = pcp_map_success(&b, 9003, 3600, &prefer);
    t.push(case("PREFER_FAILURE with its reserved byte set", b, expect));
    for (name, opts) in [
        ("PREFER_FAILURE of length 4", option(2, 0, 4, &[0; 4])),
        ("THIRD_PARTY of length 4", option(1, 0, 4, &[0; 4])),
        ("option running past the end", option(200, 0, 100, &[])),
        (
            "PREFER_FAILURE twice",
            [prefer.clone(), prefer.clone()].concat(),
        ),
    ] {
        let mut b = map.clone();
        b.extend_from_slice(&opts);
        let expect = pcp_copy_error(&b, 6, LONG);
        t.push(case(name, b, expect));
    }

    // Nonces (section 11.1: chosen by the client; 11.3: must match to renew).
    let zero = pcp_map_request([0; 12], 17, 9004, 9004, 3600);
    t.push(case(
        "MAP with an all-zero nonce",
        zero.clone(),
        pcp_map_success(&zero, 9004, 3600, &[]),
    ));
    let renew = pcp_map_request([0; 12], 17, 9004, 9004, 7200);
    t.push(case(
        "renewal reusing the all-zero nonce",
        renew.clone(),
        pcp_map_success(&renew, 9004, 7200, &[]),
    ));
    // Another nonce for an existing mapping (section 11.3): "rejected with a
    // NOT_AUTHORIZED error with the lifetime of the error indicating duration of that
    // existing mapping", here the 7200 s just granted, less the time since.
    for lifetime in [3600, 0] {
        let b = pcp_map_request([0x99; 12], 17, 9004, 9004, lifetime);
        let expect = match pcp_parsed_error(&b, 2, 7200) {
            Expect::Reply {
                bytes, epoch_at, ..
            } => Expect::Reply {
                bytes,
                epoch_at,
                window: Some((4, 7190, 7200)),
            },
            Expect::Silence => unreachable!("an error reply"),
        };
        t.push(case(
            format!("another nonce for the same mapping, lifetime {lifetime}"),
            b,
            expect,
        ));
    }
    // Lifetimes (section 11.3 and 15): 0 deletes, and the answer's lifetime is 0; the
    // largest is cut to max_lifetime.
    let del = pcp_map_request([0; 12], 17, 9004, 0, 0);
    let mut reply = del.clone();
    response_header(&mut reply, 0, 0);
    reply[12..24].fill(0);
    t.push(case(
        "delete with the right nonce",
        del,
        Expect::Reply {
            bytes: reply,
            epoch_at: Some(8),
            window: None,
        },
    ));
    let max = pcp_map_request([0x15; 12], 6, 9005, 9005, u32::MAX);
    t.push(case(
        "MAP with lifetime 2^32-1",
        max.clone(),
        pcp_map_success(&max, 9005, 86400, &[]),
    ));
    // Section 11.3: a protocol the device does not support: UNSUPP_PROTOCOL (long).
    let sctp = pcp_map_request([0x16; 12], 132, 9006, 9006, 3600);
    let expect = pcp_parsed_error(&sctp, 9, LONG);
    t.push(case("MAP for SCTP (132)", sctp, expect));

    // Section 8.2: the client address field must be the packet's source, IPv4 as
    // IPv4-mapped (section 5); anything else is ADDRESS_MISMATCH (long).
    let mut addresses: Vec<(&str, [u8; 16])> = Vec::new();
    let mut other = LAN_MAPPED;
    other[15] = 11;
    addresses.push(("another LAN host ::ffff:192.168.1.11", other));
    addresses.push(("the gateway ::ffff:192.168.1.1", {
        let mut a = LAN_MAPPED;
        a[15] = 1;
        a
    }));
    addresses.push(("all zeros ::", [0; 16]));
    addresses.push(("IPv4-mapped zero ::ffff:0.0.0.0", ANY4_MAPPED));
    addresses.push(("IPv4-compatible ::192.168.1.10", {
        let mut a = [0; 16];
        a[12..].copy_from_slice(&[192, 168, 1, 10]);
        a
    }));
    addresses.push(("IPv4 link-local ::ffff:169.254.1.10", {
        let mut a = LAN_MAPPED;
        a[12..].copy_from_slice(&[169, 254, 1, 10]);
        a
    }));
    addresses.push(("IPv6 link-local fe80::10", {
        let mut a = [0; 16];
        a[..2].copy_from_slice(&[0xfe, 0x80]);
        a[15] = 0x10;
        a
    }));
    addresses.push(("the host's own IPv6 2001:db8:1::10", {
        let mut a = [0; 16];
        a[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1]);
        a[15] = 0x10;
        a
    }));
    for (name, address) in addresses {
        let mut b = pcp_map_request([0x17; 12], 6, 9007, 9007, 3600);
        b[8..24].copy_from_slice(&address);
        let expect = pcp_parsed_error(&b, 12, LONG);
        t.push(case(format!("client address {name}"), b, expect));
    }
    // Section 12.1: PREFER_FAILURE with PEER is MALFORMED_REQUEST.
    let mut peer = pcp_header(2, 3600, LAN_MAPPED);
    peer.extend_from_slice(&[0x18; 12]);
    peer.extend_from_slice(&[6, 0, 0, 0]);
    peer.extend_from_slice(&9008u16.to_be_bytes());
    peer.extend_from_slice(&9008u16.to_be_bytes());
    peer.extend_from_slice(&ANY4_MAPPED);
    peer.extend_from_slice(&443u16.to_be_bytes());
    peer.extend_from_slice(&[0, 0]);
    peer.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 5]);
    peer.extend_from_slice(&prefer);
    let expect = pcp_copy_error(&peer, 3, LONG);
    t.push(case("PEER with PREFER_FAILURE", peer, expect));
    t
}

// ---- the prober ----

fn recv_within(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).expect("read timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == gateway() => return Some(buf[..n].to_vec()),
            // Anything from elsewhere is not the daemon's answer.
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn gateway() -> SocketAddr {
    format!("{GW_LAN}:5351").parse().expect("gateway address")
}

fn mismatch(expect: &Expect, got: &Option<Vec<u8>>) -> Option<String> {
    match (expect, got) {
        (Expect::Silence, None) => None,
        (Expect::Silence, Some(g)) => Some(format!("expected silence, got {}", hex(g))),
        (Expect::Reply { bytes, .. }, None) => {
            Some(format!("expected {}, got silence", hex(bytes)))
        }
        (
            Expect::Reply {
                bytes,
                epoch_at,
                window,
            },
            Some(g),
        ) => {
            let mut masked = g.clone();
            if let Some((at, lo, hi)) = *window {
                let Some(field) = g.get(at..at + 4) else {
                    return Some(format!("expected {}, got {}", hex(bytes), hex(g)));
                };
                let v = u32::from_be_bytes(field.try_into().expect("4 bytes"));
                if !(lo..=hi).contains(&v) {
                    return Some(format!(
                        "field at {at} is {v}, expected {lo}..={hi}, in {}",
                        hex(g)
                    ));
                }
                masked[at..at + 4].copy_from_slice(&bytes[at..at + 4]);
            }
            if let Some(at) = *epoch_at {
                let Some(epoch) = g.get(at..at + 4) else {
                    return Some(format!("expected {}, got {}", hex(bytes), hex(g)));
                };
                let epoch = u32::from_be_bytes(epoch.try_into().expect("4 bytes"));
                if epoch >= EPOCH_BOUND {
                    return Some(format!("epoch {epoch} out of range in {}", hex(g)));
                }
                masked[at..at + 4].fill(0);
            }
            (masked != *bytes).then(|| {
                let first = masked
                    .iter()
                    .zip(bytes.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(masked.len().min(bytes.len()));
                format!(
                    "expected {}\n      got {} (epoch masked; first difference at byte {first})",
                    hex(bytes),
                    hex(&masked)
                )
            })
        }
    }
}

/// Sends every case from the LAN host, each followed by a NAT-PMP external address
/// request that must be answered; returns one line per deviation.
fn probe(lab: &Lab, cases: Vec<Case>) -> (usize, Vec<String>) {
    let n = cases.len();
    let failures = lab
        .spawn_in(Host::Lan, move || {
            let sock = UdpSocket::bind(format!("{LAN_HOST}:0")).expect("binding in the LAN");
            let good = natpmp_external_address_reply();
            let mut failures = Vec::new();
            for c in cases {
                sock.send_to(&c.input, gateway()).expect("sending a case");
                let wait = match c.expect {
                    Expect::Silence => SILENCE,
                    Expect::Reply { .. } => ANSWER,
                };
                let got = recv_within(&sock, wait);
                if let Some(m) = mismatch(&c.expect, &got) {
                    failures.push(format!("{} ({}): {m}", c.name, hex(&c.input)));
                }
                // The daemon keeps serving: the next request is answered at once.
                sock.send_to(&[0, 0], gateway())
                    .expect("sending the good request");
                let got = recv_within(&sock, ANSWER);
                if let Some(m) = mismatch(&good, &got) {
                    failures.push(format!("good request after `{}`: {m}", c.name));
                }
            }
            failures
        })
        .join()
        .expect("the prober panicked");
    (n, failures)
}

fn report(what: &str, n: usize, failures: &[String]) {
    println!("{what}: {n} datagrams, {} deviations", failures.len());
    assert!(
        failures.is_empty(),
        "{what}: {} of {n} cases got another answer than the RFC's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The example config with the rate limit off, so that the table's hundreds of
/// datagrams are all processed (the flood test covers the limit).
fn table_config(lab: &Lab, pcp: bool) -> std::path::PathBuf {
    let mut edits = vec![(
        "requests_per_second_per_client = 20",
        "requests_per_second_per_client = 0",
    )];
    if !pcp {
        edits.push(("pcp = true ", "pcp = false "));
    }
    lab.config("gw.toml", &edits)
}

#[test]
fn natpmp_malformed_input_table_gets_the_rfc_answer_or_silence_and_the_daemon_keeps_serving() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&table_config(&lab, true));
    let (n, failures) = probe(&lab, natpmp_cases());
    // Nothing malformed created a mapping: only the table's four grants, less the
    // deletions, are in the kernel (UDP 8082, UDP 8083 deleted by "delete all UDP",
    // TCP 8080 deleted, TCP 8081 left).
    let fwd = lab.elements("fwd4");
    assert_eq!(fwd.len(), 1, "{fwd:?}\n{}", d.log_text());
    assert!(fwd[0].contains("8081"), "{fwd:?}");
    report("NAT-PMP table", n, &failures);
    assert!(d.pid().is_some());
}

#[test]
fn natpmp_only_gateway_answers_every_other_version_as_rfc_6886_section_3_5_lays_out() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let _d = lab.start(&table_config(&lab, false));
    let (n, failures) = probe(&lab, natpmp_only_cases());
    report("NAT-PMP-only table", n, &failures);
}

#[test]
fn pcp_malformed_input_table_gets_the_rfc_answer_or_silence_and_the_daemon_keeps_serving() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    let d = lab.start(&table_config(&lab, true));
    let (n, failures) = probe(&lab, pcp_cases());
    // Granted: TCP 9000, 9001, 9002, 9003, 9005 (UDP 9004 was deleted); nothing else.
    let mut ports: Vec<String> = lab.elements("fwd4");
    ports.sort();
    assert_eq!(ports.len(), 5, "{ports:?}\n{}", d.log_text());
    for p in ["9000", "9001", "9002", "9003", "9005"] {
        assert!(ports.iter().any(|e| e.contains(p)), "{p} in {ports:?}");
    }
    report("PCP table", n, &failures);
}

// ---- flood ----

const FLOOD_FOR: Duration = Duration::from_secs(10);
const FLOOD_MAX_DATAGRAMS: u64 = 5_000_000;
const RATE: u64 = 20;
const MAX_PER_CLIENT: usize = 16;
const POLITE_HOST: &str = "192.168.1.11";
const POLITE_PORTS: std::ops::RangeInclusive<u16> = 20001..=20010;
/// Generous: natwarden's RSS is a few MB; a leak per datagram would pass this
/// within the flood's millions of datagrams.
const RSS_BOUND_KB: u64 = 32 * 1024;

/// VmRSS and VmHWM (kB) of `pid`.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Default, Debug)]
struct FloodCount {
    sent: u64,
    send_errors: u64,
    answered: u64,
    /// Answers by NAT-PMP result code (0..=5; anything else in 6).
    results: [u64; 7],
    ports: std::collections::BTreeSet<u16>,
    malformed_answers: u64,
}

/// One request at a time with RFC 6886 section 3.1's retransmissions (250 ms,
/// doubling), four tries: the answer and the try it came on.
fn map_politely(sock: &UdpSocket, port: u16) -> Option<(Vec<u8>, u32)> {
    let req = natpmp_map(2, port, port, 3600);
    let mut wait = Duration::from_millis(250);
    for attempt in 1..=4 {
        sock.send_to(&req, gateway())
            .expect("sending a polite request");
        let end = Instant::now() + wait;
        while let Some(got) = recv_within(sock, end.saturating_duration_since(Instant::now())) {
            if got.len() == 16 && got[1] == 130 && got[8..10] == port.to_be_bytes() {
                return Some((got, attempt));
            }
        }
        wait *= 2;
    }
    None
}

#[test]
fn a_flooding_lan_host_meets_its_rate_limit_and_quota_while_another_is_served_in_bounded_memory() {
    if !require_root() {
        return;
    }
    let lab = Lab::up();
    // The second LAN host: another address on the LAN namespace's link, gone with it.
    let o = lab.run(
        Host::Lan,
        5,
        &[
            "ip",
            "addr",
            "add",
            &format!("{POLITE_HOST}/24"),
            "dev",
            "eth0",
        ],
    );
    assert!(o.status.success(), "{}", all_output(&o));
    let config = lab.config(
        "gw.toml",
        &[
            (
                "max_per_client = 128",
                &format!("max_per_client = {MAX_PER_CLIENT}"),
            ),
            ("max_total = 16384", "max_total = 64"),
            (
                "requests_per_second_per_client = 20",
                &format!("requests_per_second_per_client = {RATE}"),
            ),
        ],
    );
    let d = lab.start(&config);
    let pid = d.pid().expect("daemon pid");
    // `ip netns exec` execs the daemon in place: this pid is natwarden's own.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "natwarden");
    let (rss_before, hwm_before) = memory(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        lab.spawn_in(Host::Lan, move || {
            let sock = UdpSocket::bind(format!("{LAN_HOST}:0")).expect("flooder socket");
            let rx = sock.try_clone().expect("clone");
            let stopped = stop.clone();
            let counter = std::thread::spawn(move || {
                let mut c = FloodCount::default();
                let mut buf = [0u8; 64];
                rx.set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("read timeout");
                let mut quiet_since: Option<Instant> = None;
                loop {
                    match rx.recv(&mut buf) {
                        Ok(16) if buf[0] == 0 && buf[1] == 129 => {
                            quiet_since = None;
                            c.answered += 1;
                            let code = u16::from_be_bytes([buf[2], buf[3]]);
                            c.results[usize::from(code.min(6))] += 1;
                            if code == 0 {
                                c.ports.insert(u16::from_be_bytes([buf[10], buf[11]]));
                            }
                        }
                        Ok(_) => c.malformed_answers += 1,
                        Err(_) => {
                            // Done once the sender stopped and a second passed quietly.
                            if stopped.load(Ordering::SeqCst) {
                                let t = *quiet_since.get_or_insert_with(Instant::now);
                                if t.elapsed() > Duration::from_secs(1) {
                                    return c;
                                }
                            }
                        }
                    }
                }
            });
            let started = Instant::now();
            let mut errors = 0u64;
            let mut i = 0u64;
            let mut req = natpmp_map(1, 0, 0, 3600);
            while started.elapsed() < FLOOD_FOR && i < FLOOD_MAX_DATAGRAMS {
                // Many ports: 30000..50000, each suggested as its own external port.
                let port = 30000 + (i % 20000) as u16;
                req[4..6].copy_from_slice(&port.to_be_bytes());
                req[6..8].copy_from_slice(&port.to_be_bytes());
                if sock.send_to(&req, gateway()).is_err() {
                    errors += 1;
                }
                i += 1;
                if i & 1023 == 0 {
                    sent.store(i, Ordering::Relaxed);
                }
            }
            let elapsed = started.elapsed();
            sent.store(i, Ordering::Relaxed);
            stop.store(true, Ordering::SeqCst);
            let mut c = counter.join().expect("counter thread");
            c.sent = i;
            c.send_errors = errors;
            (c, elapsed)
        })
    };

    // The polite host starts once the flood is under way, one request every 500 ms.
    std::thread::sleep(Duration::from_millis(500));
    let polite = lab.spawn_in(Host::Lan, move || {
        let sock = UdpSocket::bind(format!("{POLITE_HOST}:0")).expect("polite socket");
        let mut out = Vec::new();
        for port in POLITE_PORTS {
            out.push((port, map_politely(&sock, port)));
            std::thread::sleep(Duration::from_millis(500));
        }
        out
    });
    let mut rss_peak = rss_before;
    while !stop.load(Ordering::SeqCst) {
        rss_peak = rss_peak.max(memory(pid).0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let polite = polite.join().expect("polite host panicked");
    let (flood, elapsed) = flooder.join().expect("flooder panicked");
    let (rss_after, hwm_after) = memory(pid);
    rss_peak = rss_peak.max(rss_after);
    let status = lab.status();
    let drops = &status["counters"]["drops"];

    println!(
        "flood: {} datagrams sent in {:.1} s ({} send errors), {} answered, by result code \
         0..=5 and other: {:?}, {} answers not MAP responses, {} distinct ports granted; \
         daemon counted {} rate-limited drops",
        flood.sent,
        elapsed.as_secs_f64(),
        flood.send_errors,
        flood.answered,
        flood.results,
        flood.malformed_answers,
        flood.ports.len(),
        drops["rate-limited"],
    );
    println!(
        "daemon memory: VmRSS {rss_before} kB before, {rss_after} kB after, peak sampled \
         {rss_peak} kB; VmHWM {hwm_before} kB before, {hwm_after} kB after"
    );
    for (port, got) in &polite {
        println!(
            "polite host, TCP {port}: {}",
            match got {
                Some((_, attempt)) => format!("answered on try {attempt}"),
                None => "no answer".into(),
            }
        );
    }

    // Every request of the other host is answered, with success and its own port.
    for (port, got) in &polite {
        let Some((reply, _)) = got else {
            panic!("the polite host's request for {port} was never answered\n{polite:?}");
        };
        let expect = natpmp_map_reply(2, 0, *port, *port, 3600);
        if let Some(m) = mismatch(&expect, &Some(reply.clone())) {
            panic!("polite host, port {port}: {m}");
        }
    }
    // It was a flood, and the daemon kept up with it enough to count it.
    assert!(flood.sent >= 10_000, "only {} datagrams sent", flood.sent);
    let rate_limited = drops["rate-limited"]
        .as_u64()
        .expect("rate-limited counter");
    assert!(
        rate_limited >= flood.sent / 10,
        "{rate_limited} rate-limited of {} sent",
        flood.sent
    );
    // The rate limit: a one-second burst, then RATE per second, so about
    // RATE * (seconds + 1) answers: bounded above (the limit holds) and below (the
    // flooder is still served at its rate, not starved), each with a second's slack.
    let secs = elapsed.as_secs_f64();
    let most = (RATE as f64 * (secs + 2.0)) as u64;
    let least = (RATE as f64 * secs) as u64;
    assert!(
        (least..=most).contains(&flood.answered),
        "{} answers in {secs:.1} s with a limit of {RATE}/s: expected {least}..={most}",
        flood.answered
    );
    assert_eq!(flood.malformed_answers, 0);
    // The quota: exactly max_per_client ports granted, the rest "out of resources" (4),
    // nothing else (RFC 6886 section 3.5).
    assert_eq!(flood.ports.len(), MAX_PER_CLIENT, "{:?}", flood.ports);
    assert!(flood.results[4] > 0, "{:?}", flood.results);
    assert_eq!(
        flood.results[0] + flood.results[4],
        flood.answered,
        "{:?}",
        flood.results
    );
    // The kernel holds exactly the two hosts' mappings.
    let fwd = lab.elements("fwd4");
    assert_eq!(fwd.len(), MAX_PER_CLIENT + polite.len(), "{fwd:?}");
    assert_eq!(
        fwd.iter().filter(|e| e.contains(POLITE_HOST)).count(),
        polite.len()
    );
    // Memory stayed bounded, and the daemon still answers.
    assert!(
        hwm_after < RSS_BOUND_KB && rss_peak < RSS_BOUND_KB,
        "VmHWM {hwm_after} kB, sampled peak {rss_peak} kB, bound {RSS_BOUND_KB} kB"
    );
    let still = lab.spawn_in(Host::Lan, || {
        let sock = UdpSocket::bind(format!("{LAN_HOST}:0")).expect("socket");
        // The flooder's bucket has refilled by now.
        std::thread::sleep(Duration::from_millis(1100));
        sock.send_to(&[0, 0], gateway()).expect("send");
        recv_within(&sock, ANSWER)
    });
    let got = still.join().expect("still answering");
    assert!(
        mismatch(&natpmp_external_address_reply(), &got).is_none(),
        "{got:?}"
    );
    drop(d);
}
