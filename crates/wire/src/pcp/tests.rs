use super::*;
use proptest::prelude::*;

// ---- fixtures, 32-bit rows as in the RFC 6887 figures ----

const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// ::ffff:192.0.2.10, an IPv4 client as PCP carries it (section 5).
const V4_CLIENT: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10];

/// ::ffff:0.0.0.0, the IPv4 all-zeros address: "no preference".
const V4_ZEROS: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

/// 2001:db8::10
const V6_CLIENT: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv6Addr {
    ipv4_mapped(Ipv4Addr::new(a, b, c, d))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A 60-byte MAP request for UDP 8080, IPv4, lifetime 7200, no options.
fn map_request_bytes() -> Vec<u8> {
    cat(&[
        &[2, 1, 0, 0],             // Version = 2 | R = 0, Opcode = 1 (MAP) | Reserved
        &[0, 0, 0x1c, 0x20],       // Requested Lifetime 7200
        &V4_CLIENT,                // PCP Client's IP Address ::ffff:192.0.2.10
        &NONCE,                    // Mapping Nonce
        &[17, 0, 0, 0],            // Protocol 17 (UDP) | Reserved
        &[0x1f, 0x90, 0x1f, 0x90], // Internal Port 8080 | Suggested External Port 8080
        &V4_ZEROS,                 // Suggested External IP Address ::ffff:0.0.0.0
    ])
}

fn map_data() -> MapData {
    MapData {
        nonce: Nonce(NONCE),
        protocol: 17,
        internal_port: 8080,
        external_port: 8080,
        external_address: v4(0, 0, 0, 0),
    }
}

fn map_request() -> Request {
    Request {
        lifetime: 7200,
        client_address: v4(192, 0, 2, 10),
        op: OpData::Map(map_data()),
        options: Options::NONE,
    }
}

/// An 80-byte PEER request for TCP from [2001:db8::10]:50000 to [2001:db8::443]:443.
fn peer_request_bytes() -> Vec<u8> {
    cat(&[
        &[2, 2, 0, 0],             // Version = 2 | R = 0, Opcode = 2 (PEER) | Reserved
        &[0, 0, 0x02, 0x58],       // Requested Lifetime 600
        &V6_CLIENT,                // PCP Client's IP Address 2001:db8::10
        &NONCE,                    // Mapping Nonce
        &[6, 0, 0, 0],             // Protocol 6 (TCP) | Reserved
        &[0xc3, 0x50, 0, 0],       // Internal Port 50000 | Suggested External Port 0
        &[0; 16],                  // Suggested External IP Address ::
        &[0x01, 0xbb, 0, 0],       // Remote Peer Port 443 | Reserved
        &[0x20, 0x01, 0x0d, 0xb8], // Remote Peer IP Address 2001:db8::443
        &[0, 0, 0, 0],
        &[0, 0, 0, 0],
        &[0, 0, 0x04, 0x43],
    ])
}

fn peer_data() -> PeerData {
    PeerData {
        nonce: Nonce(NONCE),
        protocol: 6,
        internal_port: 50000,
        external_port: 0,
        external_address: Ipv6Addr::UNSPECIFIED,
        remote_peer_port: 443,
        remote_peer_address: "2001:db8::443".parse().unwrap(),
    }
}

fn peer_request() -> Request {
    Request {
        lifetime: 600,
        client_address: Ipv6Addr::from(V6_CLIENT),
        op: OpData::Peer(peer_data()),
        options: Options::NONE,
    }
}

const THIRD_PARTY_BYTES: [u8; 20] = [
    1, 0, 0, 16, // Option Code = 1 (THIRD_PARTY) | Reserved | Option Length = 16
    0, 0, 0, 0, // Internal IP Address ::ffff:192.0.2.99
    0, 0, 0, 0, //
    0, 0, 0xff, 0xff, //
    192, 0, 2, 99,
];

const PREFER_FAILURE_BYTES: [u8; 4] = [
    2, 0, 0, 0, // Option Code = 2 (PREFER_FAILURE) | Reserved | Option Length = 0
];

const FILTER_BYTES: [u8; 24] = [
    3, 0, 0, 20, // Option Code = 3 (FILTER) | Reserved | Option Length = 20
    0, 120, 0x01, 0xbb, // Reserved | Prefix Length 120 (an IPv4 /24) | Remote Peer Port 443
    0, 0, 0, 0, // Remote Peer IP Address ::ffff:203.0.113.0
    0, 0, 0, 0, //
    0, 0, 0xff, 0xff, //
    203, 0, 113, 0,
];

fn filter() -> Filter {
    Filter {
        prefix_len: 120,
        remote_peer_port: 443,
        remote_peer_address: v4(203, 0, 113, 0),
    }
}

fn assert_request_bytes(request: &Request, bytes: &[u8]) {
    let mut buf = [0xff; MAX_LEN + 64];
    let len = request.emit(&mut buf);
    assert_eq!(len, request.buffer_len());
    assert_eq!(&buf[..len], bytes);
    assert_eq!(Request::parse(bytes), Ok(*request));
}

fn assert_response_bytes(response: &Response, bytes: &[u8]) {
    let mut buf = [0xff; MAX_LEN + 64];
    let len = response.emit(&mut buf);
    assert_eq!(len, response.buffer_len());
    assert_eq!(&buf[..len], bytes);
    assert_eq!(Response::parse(bytes), Ok(*response));
}

/// `bytes` with `byte` set at `at`.
fn with(mut bytes: Vec<u8>, at: usize, byte: u8) -> Vec<u8> {
    bytes[at] = byte;
    bytes
}

// ---- byte-exact layouts ----

#[test]
fn map_request_ipv4_layout() {
    let bytes = map_request_bytes();
    assert_eq!(bytes.len(), 60);
    assert_request_bytes(&map_request(), &bytes);
    assert_eq!(map_request().opcode(), Opcode::Map);
    assert_eq!(map_data().transport(), Some(Protocol::Udp));
}

#[test]
fn map_response_ipv4_layout() {
    let bytes = cat(&[
        &[2, 0x81, 0, 0],          // Version = 2 | R = 1, Opcode = 1 | Reserved | SUCCESS
        &[0, 0, 0x0e, 0x10],       // Lifetime 3600
        &[0x01, 0x02, 0x03, 0x04], // Epoch Time
        &[0; 12],                  // Reserved (96 bits)
        &NONCE,                    // Mapping Nonce, copied
        &[17, 0, 0, 0],            // Protocol, copied | Reserved
        &[0x1f, 0x90, 0xc3, 0x50], // Internal Port 8080 | Assigned External Port 50000
        &[0, 0, 0, 0],             // Assigned External IP Address ::ffff:198.51.100.7
        &[0, 0, 0, 0],
        &[0, 0, 0xff, 0xff],
        &[198, 51, 100, 7],
    ]);
    let response = Response {
        result: ResultCode::SUCCESS,
        lifetime: 3600,
        epoch: 0x0102_0304,
        op: OpData::Map(MapData {
            external_port: 50000,
            external_address: v4(198, 51, 100, 7),
            ..map_data()
        }),
        options: Options::NONE,
    };
    assert_response_bytes(&response, &bytes);
    assert_eq!(response.opcode(), Opcode::Map);
}

#[test]
fn peer_request_ipv6_layout() {
    let bytes = peer_request_bytes();
    assert_eq!(bytes.len(), 80);
    assert_request_bytes(&peer_request(), &bytes);
    assert_eq!(peer_data().transport(), Some(Protocol::Tcp));
    assert_eq!(peer_request().op.nonce(), Some(Nonce(NONCE)));
}

#[test]
fn peer_response_layout() {
    let mut bytes = peer_request_bytes();
    bytes[..24].copy_from_slice(&cat(&[
        &[2, 0x82, 0, 0],    // Version = 2 | R = 1, Opcode = 2 | Reserved | SUCCESS
        &[0, 0, 0x02, 0x58], // Lifetime 600
        &[0, 0, 0, 9],       // Epoch Time 9
        &[0; 12],            // Reserved (96 bits)
    ]));
    bytes[42..44].copy_from_slice(&[0xc3, 0x51]); // Assigned External Port 50001
    bytes[44..60].copy_from_slice(&V4_CLIENT); // Assigned External IP Address
    let response = Response {
        result: ResultCode::SUCCESS,
        lifetime: 600,
        epoch: 9,
        op: OpData::Peer(PeerData {
            external_port: 50001,
            external_address: v4(192, 0, 2, 10),
            ..peer_data()
        }),
        options: Options::NONE,
    };
    assert_response_bytes(&response, &bytes);
}

#[test]
fn announce_request_layout() {
    let bytes = cat(&[
        &[2, 0, 0, 0], // Version = 2 | R = 0, Opcode = 0 (ANNOUNCE) | Reserved
        &[0, 0, 0, 0], // Requested Lifetime 0
        &V6_CLIENT,    // PCP Client's IP Address
    ]);
    let request = Request {
        lifetime: 0,
        client_address: Ipv6Addr::from(V6_CLIENT),
        op: OpData::Announce,
        options: Options::NONE,
    };
    assert_request_bytes(&request, &bytes);
    assert_eq!(request.op.nonce(), None);
}

#[test]
fn announce_request_lifetime_is_zeroed_and_ignored() {
    // "set to 0 on transmission and ignored on reception" (section 14.1.1).
    let sloppy = cat(&[&[2, 0, 0xab, 0xcd], &[0, 0, 0x1c, 0x20], &V6_CLIENT]);
    let request = Request::parse(&sloppy).unwrap();
    assert_eq!(request.lifetime, 0);
    let mut buf = [0xff; 24];
    Request {
        lifetime: 7200,
        ..request
    }
    .emit(&mut buf);
    assert_eq!(&buf[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn announce_response_layout() {
    let bytes = cat(&[
        &[2, 0x80, 0, 0],          // Version = 2 | R = 1, Opcode = 0 | Reserved | SUCCESS
        &[0, 0, 0, 0],             // Lifetime 0
        &[0x00, 0x01, 0x51, 0x80], // Epoch Time 86400
        &[0; 12],                  // Reserved (96 bits)
    ]);
    assert_response_bytes(&Response::announce(86400), &bytes);
    // A sender's lifetime is ignored on a successful ANNOUNCE...
    let sloppy = with(bytes.clone(), 7, 5);
    assert_eq!(Response::parse(&sloppy), Ok(Response::announce(86400)));
    // ... but not on an error one, where it says how long the error lasts (section 7.2).
    let error = with(with(bytes, 3, 2), 6, 7);
    assert_eq!(Response::parse(&error).unwrap().lifetime, 0x0700);
}

#[test]
fn reserved_fields_are_ignored_on_reception() {
    let mut bytes = map_request_bytes();
    bytes[2..4].copy_from_slice(&[0xab, 0xcd]); // request header Reserved
    bytes[37..40].copy_from_slice(&[1, 2, 3]); // MAP Reserved
    assert_eq!(Request::parse(&bytes), Ok(map_request()));

    let mut bytes = peer_request_bytes();
    bytes[62..64].copy_from_slice(&[0xff, 0xff]); // PEER Reserved (16 bits)
    assert_eq!(Request::parse(&bytes), Ok(peer_request()));

    let mut bytes = cat(&[&[2, 0x80, 0x55, 0], &[0; 4], &[0, 0, 0, 1], &[0xee; 12]]);
    assert_eq!(Response::parse(&bytes), Ok(Response::announce(1)));
    bytes[2] = 0;
    assert_eq!(Response::parse(&bytes), Ok(Response::announce(1)));
}

#[test]
fn all_protocols_map_zeroes_internal_port() {
    // Protocol 0: internal port "MUST be zero on transmission and MUST be ignored on
    // reception" (section 11.1).
    let sloppy = with(with(map_request_bytes(), 36, 0), 41, 0x91);
    let request = Request::parse(&sloppy).unwrap();
    let OpData::Map(map) = request.op else {
        panic!("not a MAP request");
    };
    assert_eq!((map.protocol, map.internal_port), (0, 0));
    assert_eq!(map.transport(), None);
    let mut buf = [0xff; 60];
    let all = MapData {
        protocol: 0,
        ..map_data()
    };
    Request {
        op: OpData::Map(all),
        ..map_request()
    }
    .emit(&mut buf);
    assert_eq!(buf[36], 0); // Protocol 0 (all)
    assert_eq!(&buf[40..42], &[0, 0]); // Internal Port: zero on transmission
}

// ---- options ----

#[test]
fn third_party_option_layout() {
    let bytes = cat(&[&map_request_bytes(), &THIRD_PARTY_BYTES]);
    let request = Request {
        options: Options {
            third_party: Some(v4(192, 0, 2, 99)),
            ..Options::NONE
        },
        ..map_request()
    };
    assert_request_bytes(&request, &bytes);
    // THIRD_PARTY is valid for PEER too (section 13.1).
    let bytes = cat(&[&peer_request_bytes(), &THIRD_PARTY_BYTES]);
    let request = Request {
        options: request.options,
        ..peer_request()
    };
    assert_request_bytes(&request, &bytes);
}

#[test]
fn prefer_failure_option_layout() {
    let bytes = cat(&[&map_request_bytes(), &PREFER_FAILURE_BYTES]);
    let request = Request {
        options: Options {
            prefer_failure: true,
            ..Options::NONE
        },
        ..map_request()
    };
    assert_request_bytes(&request, &bytes);
}

#[test]
fn filter_option_layout() {
    let bytes = cat(&[&map_request_bytes(), &FILTER_BYTES]);
    let request = Request {
        options: Options {
            filters: Filters::from_slice(&[filter()]).unwrap(),
            ..Options::NONE
        },
        ..map_request()
    };
    assert_request_bytes(&request, &bytes);
}

#[test]
fn all_options_emit_in_canonical_order_and_parse_in_any() {
    let second = Filter {
        prefix_len: 0,
        remote_peer_port: 0,
        remote_peer_address: Ipv6Addr::UNSPECIFIED,
    };
    let request = Request {
        options: Options {
            third_party: Some(v4(192, 0, 2, 99)),
            prefer_failure: true,
            filters: Filters::from_slice(&[filter(), second]).unwrap(),
        },
        ..map_request()
    };
    let second_bytes = cat(&[&[3, 0, 0, 20], &[0; 20]]);
    let canonical = cat(&[
        &map_request_bytes(),
        &THIRD_PARTY_BYTES,
        &PREFER_FAILURE_BYTES,
        &FILTER_BYTES,
        &second_bytes,
    ]);
    assert_request_bytes(&request, &canonical);
    // Other orders parse to the same request; the FILTERs keep their relative order.
    let shuffled = cat(&[
        &map_request_bytes(),
        &FILTER_BYTES,
        &PREFER_FAILURE_BYTES,
        &second_bytes,
        &THIRD_PARTY_BYTES,
    ]);
    assert_eq!(Request::parse(&shuffled), Ok(request));
    let swapped = cat(&[&map_request_bytes(), &second_bytes, &FILTER_BYTES]);
    let filters = Request::parse(&swapped).unwrap().options.filters;
    assert_eq!(filters.as_slice(), &[second, filter()]);
}

#[test]
fn options_echo_in_success_response() {
    let options = Options {
        third_party: Some(v4(192, 0, 2, 99)),
        prefer_failure: true,
        filters: Filters::from_slice(&[filter()]).unwrap(),
    };
    let response = Response {
        result: ResultCode::SUCCESS,
        lifetime: 7200,
        epoch: 5,
        op: OpData::Map(map_data()),
        options,
    };
    let mut buf = [0; 128];
    let len = response.emit(&mut buf);
    assert_eq!(len, 60 + 20 + 4 + 24);
    assert_eq!(
        &buf[60..len],
        &cat(&[&THIRD_PARTY_BYTES, &PREFER_FAILURE_BYTES, &FILTER_BYTES])
    );
    assert_eq!(Response::parse(&buf[..len]), Ok(response));
}

#[test]
fn unknown_optional_options_are_ignored() {
    let bytes = cat(&[
        &map_request_bytes(),
        &[0x80, 0xaa, 0, 5], // Option Code = 128 | Reserved (not zero) | Option Length = 5
        &[1, 2, 3, 4],       // data...
        &[5, 9, 9, 9],       // ... and three padding octets, not zero either
        &[0xff, 0, 0, 0],    // Option Code = 255 | Reserved | Option Length = 0
        &PREFER_FAILURE_BYTES,
    ]);
    let request = Request::parse(&bytes).unwrap();
    assert_eq!(
        request,
        Request {
            options: Options {
                prefer_failure: true,
                ..Options::NONE
            },
            ..map_request()
        }
    );
    // They are dropped: the request re-emits shorter.
    assert_eq!(request.buffer_len(), 64);
    // Optional options are ignored whatever the opcode, ANNOUNCE included.
    let announce = cat(&[&[2, 0, 0, 0], &[0; 4], &V6_CLIENT, &[0x81, 0, 0, 0]]);
    assert_eq!(Request::parse(&announce).unwrap().op, OpData::Announce);
}

#[test]
fn unknown_mandatory_options_are_rejected() {
    for code in [0u8, 4, 13, 127] {
        let bytes = cat(&[&map_request_bytes(), &[code, 0, 0, 4], &[0; 4]]);
        let error = Request::parse(&bytes).unwrap_err();
        assert_eq!(error, ParseError::UnsupportedOption { code });
        assert_eq!(error.result_code(), Some(ResultCode::UNSUPP_OPTION));
    }
    // Options are processed in order: a malformed one before the unknown one wins.
    let bytes = cat(&[
        &map_request_bytes(),
        &PREFER_FAILURE_BYTES,
        &PREFER_FAILURE_BYTES,
        &[4, 0, 0, 0],
    ]);
    assert_eq!(
        Request::parse(&bytes),
        Err(ParseError::DuplicateOption { code: 2 })
    );
}

#[test]
fn responses_ignore_unknown_options_of_both_ranges() {
    // "PCP clients MUST ignore Options that they do not understand that appear in
    // responses, including Options in the mandatory-to-process range" (section 7.3).
    let header = cat(&[&[2, 0x80, 0, 0], &[0; 4], &[0, 0, 0, 3], &[0; 12]]);
    let bytes = cat(&[&header, &[4, 0, 0, 2], &[7, 7, 0, 0], &[0x80, 0, 0, 0]]);
    assert_eq!(Response::parse(&bytes), Ok(Response::announce(3)));
}

#[test]
fn error_responses_skip_the_echoed_options() {
    // An UNSUPP_OPTION answer echoes the option it refused; a MALFORMED_OPTION one the
    // malformed option (section 7.3). Neither stops a client from reading the response.
    let mut request = cat(&[&map_request_bytes(), &[0x05, 0, 0, 0], &[3, 0, 0, 1]]);
    request[..12].copy_from_slice(&[2, 0x81, 0, 5, 0, 0, 0x07, 0x08, 0, 0, 0, 1]);
    let response = Response::parse(&request).unwrap();
    assert_eq!(response.result, ResultCode::UNSUPP_OPTION);
    assert_eq!(response.lifetime, LONG_ERROR_LIFETIME);
    assert_eq!(response.options, Options::NONE);
    assert_eq!(response.op, OpData::Map(map_data()));
    // emit writes the options of an error response (the server's echo); parse skips them.
    let echo = Response {
        result: ResultCode::NO_RESOURCES,
        options: Options {
            prefer_failure: true,
            ..Options::NONE
        },
        ..response
    };
    let mut buf = [0; 64];
    assert_eq!(echo.emit(&mut buf), 64);
    assert_eq!(&buf[60..], &PREFER_FAILURE_BYTES);
    assert_eq!(
        Response::parse(&buf),
        Ok(Response {
            options: Options::NONE,
            ..echo
        })
    );
}

#[test]
fn filter_prefix_lengths() {
    let filter_with = |prefix_len: u8, address: [u8; 16]| {
        cat(&[
            &map_request_bytes(),
            &[3, 0, 0, 20],
            &[0, prefix_len, 0, 0],
            &address,
        ])
    };
    let v6 = V6_CLIENT;
    for (prefix_len, address, valid) in [
        (0, v6, true),
        (1, v6, true),
        (64, v6, true),
        (128, v6, true),
        (129, v6, false),
        (255, v6, false),
        (0, V4_CLIENT, true), // "no filter", whatever the address
        (1, V4_CLIENT, false),
        (95, V4_CLIENT, false),
        (96, V4_CLIENT, true), // an IPv4 /0
        (128, V4_CLIENT, true),
        (129, V4_CLIENT, false),
    ] {
        let parsed = Request::parse(&filter_with(prefix_len, address));
        if valid {
            let filters = parsed.unwrap().options.filters;
            assert_eq!(filters[0].prefix_len, prefix_len);
        } else {
            assert_eq!(parsed, Err(ParseError::FilterPrefixLength { prefix_len }));
        }
    }
}

#[test]
fn filters_hold_every_filter_a_message_can_carry() {
    assert_eq!(MAX_FILTERS, 43);
    let many = [filter(); MAX_FILTERS];
    let filters = Filters::from_slice(&many).unwrap();
    assert_eq!(filters.len(), MAX_FILTERS);
    assert_eq!(Filters::from_slice(&[filter(); MAX_FILTERS + 1]), None);
    let mut full = filters;
    assert_eq!(full.push(filter()), Err(filter()));

    let request = Request {
        options: Options {
            filters,
            ..Options::NONE
        },
        ..map_request()
    };
    let mut bytes = map_request_bytes();
    for _ in 0..MAX_FILTERS {
        bytes.extend_from_slice(&FILTER_BYTES);
    }
    assert_eq!(bytes.len(), 1092);
    assert_request_bytes(&request, &bytes);
}

#[test]
fn filters_basics() {
    let mut filters = Filters::default();
    assert!(filters.is_empty());
    assert_eq!(format!("{filters:?}"), "[]");
    filters.push(filter()).unwrap();
    assert_eq!(filters.as_slice(), &[filter()]);
    assert!(format!("{filters:?}").starts_with("[Filter { prefix_len: 120"));
    assert_eq!(Filters::new(), Options::NONE.filters);
}

// ---- every parse error ----

#[test]
fn request_length_and_header_errors() {
    use ParseError::*;
    assert_eq!(Request::parse(&[]), Err(TooShort { got: 0 }));
    assert_eq!(Request::parse(&[2]), Err(TooShort { got: 1 }));
    // The R bit is checked before the version (section 8.2).
    assert_eq!(Request::parse(&[2, 0x81]), Err(NotARequest { opcode: 1 }));
    assert_eq!(
        Request::parse(&[0, 0x80, 0, 0]),
        Err(NotARequest { opcode: 0 })
    );
    assert_eq!(
        Request::parse(&[0, 0]),
        Err(UnsupportedVersion { version: 0 })
    );
    assert_eq!(
        Request::parse(&[1, 1, 0, 0]),
        Err(UnsupportedVersion { version: 1 })
    );
    let mut v3 = map_request_bytes();
    v3[0] = 3;
    assert_eq!(Request::parse(&v3), Err(UnsupportedVersion { version: 3 }));
    assert_eq!(Request::parse(&[2, 1]), Err(TooShort { got: 2 }));
    assert_eq!(Request::parse(&[2, 0, 0, 0]), Err(TooShort { got: 4 }));
    assert_eq!(
        Request::parse(&map_request_bytes()[..23]),
        Err(TooShort { got: 23 })
    );
    let mut long = map_request_bytes();
    long.resize(1101, 0);
    assert_eq!(Request::parse(&long), Err(TooLong { got: 1101 }));
    long.resize(1104, 0);
    assert_eq!(Request::parse(&long), Err(TooLong { got: 1104 }));
    assert_eq!(
        Request::parse(&map_request_bytes()[..25]),
        Err(NotMultipleOf4 { got: 25 })
    );
    let mut odd = map_request_bytes();
    odd.push(0);
    assert_eq!(Request::parse(&odd), Err(NotMultipleOf4 { got: 61 }));
    // Opcodes: checked before their data.
    for opcode in [3u8, 63, 127] {
        let bytes = with(map_request_bytes()[..24].to_vec(), 1, opcode);
        assert_eq!(Request::parse(&bytes), Err(UnsupportedOpcode { opcode }));
    }
}

#[test]
fn request_opcode_data_errors() {
    use ParseError::*;
    assert_eq!(
        Request::parse(&map_request_bytes()[..56]),
        Err(OpcodeDataTooShort {
            opcode: Opcode::Map,
            need: 36,
            got: 32
        })
    );
    assert_eq!(
        Request::parse(&map_request_bytes()[..24]),
        Err(OpcodeDataTooShort {
            opcode: Opcode::Map,
            need: 36,
            got: 0
        })
    );
    assert_eq!(
        Request::parse(&peer_request_bytes()[..60]),
        Err(OpcodeDataTooShort {
            opcode: Opcode::Peer,
            need: 56,
            got: 36
        })
    );
    for (at, value, reason) in [
        (36, 0, "PEER protocol is zero"),
        (40, 0, "PEER internal port is zero"),
        (60, 0, "PEER remote peer port is zero"),
    ] {
        let mut bytes = peer_request_bytes();
        bytes[at] = value;
        bytes[at + 1] = 0;
        assert_eq!(
            Request::parse(&bytes),
            Err(MalformedOpcodeData {
                opcode: Opcode::Peer,
                reason
            })
        );
    }
}

#[test]
fn request_option_errors() {
    use ParseError::*;
    let map = map_request_bytes();
    let parse = |options: &[&[u8]]| Request::parse(&cat(&[&map, &options.concat()]));
    // Header or padded data past the end (section 7.3: MALFORMED_OPTION).
    assert_eq!(
        parse(&[&[1, 0, 0, 16], &[0; 4]]),
        Err(OptionOverrun {
            code: 1,
            length: 16,
            available: 4
        })
    );
    assert_eq!(
        parse(&[&[0x80, 0, 0, 1]]),
        Err(OptionOverrun {
            code: 0x80,
            length: 1,
            available: 0
        })
    );
    assert_eq!(
        parse(&[&[3, 0, 0xff, 0xff], &[0; 20]]),
        Err(OptionOverrun {
            code: 3,
            length: 65535,
            available: 20
        })
    );
    // Wrong lengths for the known options.
    assert_eq!(
        parse(&[&[1, 0, 0, 12], &[0; 12]]),
        Err(OptionLength {
            code: 1,
            length: 12
        })
    );
    assert_eq!(
        parse(&[&[2, 0, 0, 4], &[0; 4]]),
        Err(OptionLength { code: 2, length: 4 })
    );
    assert_eq!(
        parse(&[&[3, 0, 0, 16], &[0; 16]]),
        Err(OptionLength {
            code: 3,
            length: 16
        })
    );
    // "Maximum occurrences: 1" for THIRD_PARTY and PREFER_FAILURE.
    assert_eq!(
        parse(&[&THIRD_PARTY_BYTES, &THIRD_PARTY_BYTES]),
        Err(DuplicateOption { code: 1 })
    );
    assert_eq!(
        parse(&[&PREFER_FAILURE_BYTES, &FILTER_BYTES, &PREFER_FAILURE_BYTES]),
        Err(DuplicateOption { code: 2 })
    );
    assert!(parse(&[&FILTER_BYTES, &FILTER_BYTES]).is_ok());
}

#[test]
fn options_not_valid_for_the_opcode() {
    use ParseError::OptionNotValidForOpcode;
    let peer = peer_request_bytes();
    let announce = map_request_bytes()[..24].to_vec();
    let announce = with(announce, 1, 0);
    for (message, option, opcode, result) in [
        // Section 12.1: PREFER_FAILURE in PEER "MUST return a MALFORMED_REQUEST".
        (
            &peer,
            &PREFER_FAILURE_BYTES[..],
            Opcode::Peer,
            ResultCode::MALFORMED_REQUEST,
        ),
        (
            &peer,
            &FILTER_BYTES[..],
            Opcode::Peer,
            ResultCode::MALFORMED_OPTION,
        ),
        (
            &announce,
            &THIRD_PARTY_BYTES[..],
            Opcode::Announce,
            ResultCode::MALFORMED_OPTION,
        ),
        (
            &announce,
            &PREFER_FAILURE_BYTES[..],
            Opcode::Announce,
            ResultCode::MALFORMED_OPTION,
        ),
        (
            &announce,
            &FILTER_BYTES[..],
            Opcode::Announce,
            ResultCode::MALFORMED_OPTION,
        ),
    ] {
        let error = Request::parse(&cat(&[message, option])).unwrap_err();
        let code = option[0];
        assert_eq!(error, OptionNotValidForOpcode { code, opcode });
        assert_eq!(error.result_code(), Some(result));
    }
    assert!(Opcode::Map.allows_option(option::FILTER));
    assert!(Opcode::Peer.allows_option(option::THIRD_PARTY));
    assert!(!Opcode::Map.allows_option(4));
}

#[test]
fn response_errors() {
    use ParseError::*;
    let announce = cat(&[&[2, 0x80, 0, 0], &[0; 20]]);
    assert_eq!(Response::parse(&[]), Err(TooShort { got: 0 }));
    assert_eq!(Response::parse(&[2]), Err(TooShort { got: 1 }));
    assert_eq!(Response::parse(&[2, 0x80]), Err(TooShort { got: 2 }));
    assert_eq!(Response::parse(&announce[..20]), Err(TooShort { got: 20 }));
    // A NAT-PMP answer (version 0) is the natpmp parser's business.
    assert_eq!(
        Response::parse(&[0, 0x80, 0, 1, 0, 0, 0, 9]),
        Err(UnsupportedVersion { version: 0 })
    );
    assert_eq!(
        Response::parse(&map_request_bytes()),
        Err(NotAResponse { opcode: 1 })
    );
    let mut long = announce.clone();
    long.resize(1104, 0);
    assert_eq!(Response::parse(&long), Err(TooLong { got: 1104 }));
    assert_eq!(Response::parse(&announce[..22]), Err(TooShort { got: 22 }));
    let mut odd = announce.clone();
    odd.push(0);
    assert_eq!(Response::parse(&odd), Err(NotMultipleOf4 { got: 25 }));
    assert_eq!(
        Response::parse(&with(announce.clone(), 1, 0x83)),
        Err(UnsupportedOpcode { opcode: 3 })
    );
    assert_eq!(
        Response::parse(&with(announce.clone(), 1, 0x81)),
        Err(OpcodeDataTooShort {
            opcode: Opcode::Map,
            need: 36,
            got: 0
        })
    );
    // A success response's known options are checked as a request's.
    assert_eq!(
        Response::parse(&cat(&[&announce, &THIRD_PARTY_BYTES])),
        Err(OptionNotValidForOpcode {
            code: 1,
            opcode: Opcode::Announce
        })
    );
    assert_eq!(
        Response::parse(&cat(&[&announce, &[0x80, 0, 0, 8]])),
        Err(OptionOverrun {
            code: 0x80,
            length: 8,
            available: 0
        })
    );
}

#[test]
fn parse_errors_result_codes() {
    use ParseError::*;
    let cases = [
        (TooShort { got: 1 }, None),
        (TooShort { got: 20 }, None),
        (NotARequest { opcode: 1 }, None),
        (NotAResponse { opcode: 1 }, None),
        (
            UnsupportedVersion { version: 1 },
            Some(ResultCode::UNSUPP_VERSION),
        ),
        (TooLong { got: 1104 }, Some(ResultCode::MALFORMED_REQUEST)),
        (
            NotMultipleOf4 { got: 25 },
            Some(ResultCode::MALFORMED_REQUEST),
        ),
        (
            UnsupportedOpcode { opcode: 3 },
            Some(ResultCode::UNSUPP_OPCODE),
        ),
        (
            OpcodeDataTooShort {
                opcode: Opcode::Map,
                need: 36,
                got: 0,
            },
            Some(ResultCode::MALFORMED_REQUEST),
        ),
        (
            MalformedOpcodeData {
                opcode: Opcode::Peer,
                reason: "x",
            },
            Some(ResultCode::MALFORMED_REQUEST),
        ),
        (
            OptionOverrun {
                code: 1,
                length: 16,
                available: 0,
            },
            Some(ResultCode::MALFORMED_OPTION),
        ),
        (
            OptionLength { code: 1, length: 0 },
            Some(ResultCode::MALFORMED_OPTION),
        ),
        (
            DuplicateOption { code: 1 },
            Some(ResultCode::MALFORMED_OPTION),
        ),
        (
            FilterPrefixLength { prefix_len: 200 },
            Some(ResultCode::MALFORMED_OPTION),
        ),
        (
            UnsupportedOption { code: 4 },
            Some(ResultCode::UNSUPP_OPTION),
        ),
    ];
    for (error, result) in cases {
        assert_eq!(error.result_code(), result, "{error}");
    }
}

#[test]
fn parse_errors_display() {
    assert_eq!(
        ParseError::TooShort { got: 3 }.to_string(),
        "PCP message too short: 3 bytes, the header alone is 24"
    );
    assert_eq!(
        ParseError::OpcodeDataTooShort {
            opcode: Opcode::Peer,
            need: 56,
            got: 36
        }
        .to_string(),
        "PCP PEER data truncated: need 56 bytes after the header, got 36"
    );
    assert_eq!(
        ParseError::OptionNotValidForOpcode {
            code: 2,
            opcode: Opcode::Peer
        }
        .to_string(),
        "PCP option 2 is not valid with opcode PEER"
    );
}

// ---- error replies ----

#[test]
fn error_reply_to_unparsed_request_copies_it() {
    // A MAP request with an unknown mandatory option: UNSUPP_OPTION.
    let request = cat(&[&map_request_bytes(), &[0x04, 0, 0, 0]]);
    let error = Request::parse(&request).unwrap_err();
    let result = error.result_code().unwrap();
    let mut buf = [0xff; MAX_LEN];
    let len = emit_error_reply(&request, result, 1800, 77, &mut buf);
    assert_eq!(len, 64);
    let expected = cat(&[
        &[2, 0x81, 0, 5],    // Version = 2 | R = 1, Opcode copied | Reserved | UNSUPP_OPTION
        &[0, 0, 0x07, 0x08], // Lifetime 1800
        &[0, 0, 0, 77],      // Epoch Time
        &V4_CLIENT[4..],     // last 96 bits of the PCP Client's IP Address (section 7.2)
        &request[24..],      // opcode data and options, copied (section 7.3)
    ]);
    assert_eq!(&buf[..len], &expected);
    // A client reads it, skipping the echoed option.
    let response = Response::parse(&buf[..len]).unwrap();
    assert_eq!(response.result, ResultCode::UNSUPP_OPTION);
    assert_eq!(response.op, OpData::Map(map_data()));
}

#[test]
fn error_reply_lengths() {
    let mut buf = [0xff; MAX_LEN + 8];
    // Too long: truncated to 1100 octets (section 8.2).
    let mut long = map_request_bytes();
    long.resize(1200, 0xaa);
    assert_eq!(
        emit_error_reply(&long, ResultCode::MALFORMED_REQUEST, 1, 2, &mut buf),
        1100
    );
    assert_eq!(buf[1100], 0xff);
    // Not a multiple of 4: zero-padded to one.
    let odd = cat(&[&map_request_bytes(), &[0xaa]]);
    assert_eq!(
        emit_error_reply(&odd, ResultCode::MALFORMED_REQUEST, 1, 2, &mut buf),
        64
    );
    assert_eq!(&buf[60..64], &[0xaa, 0, 0, 0]);
    // A short request of another version: padded to the 24-byte header.
    let mut buf = [0xff; 32];
    assert_eq!(
        emit_error_reply(&[3, 1], ResultCode::UNSUPP_VERSION, 1800, 9, &mut buf),
        24
    );
    let expected = cat(&[
        &[2, 0x81, 0, 1],
        &[0, 0, 0x07, 0x08],
        &[0, 0, 0, 9],
        &[0; 12],
    ]);
    assert_eq!(&buf[..24], &expected);
    assert_eq!(&buf[24..], &[0xff; 8]);
    // Empty request (nothing to copy, opcode 0).
    assert_eq!(
        emit_error_reply(&[], ResultCode::MALFORMED_REQUEST, 0, 0, &mut buf),
        24
    );
    assert_eq!(&buf[..4], &[2, 0x80, 0, 3]);
}

#[test]
fn error_reply_is_capped_by_buffer() {
    let request = map_request_bytes();
    let mut small = [0xff; 10];
    assert_eq!(
        emit_error_reply(&request, ResultCode::NO_RESOURCES, 30, 1, &mut small),
        10
    );
    assert_eq!(small, [2, 0x81, 0, 8, 0, 0, 0, 30, 0, 0]);
    let mut tiny = [0xff; 1];
    assert_eq!(
        emit_error_reply(&request, ResultCode::NO_RESOURCES, 30, 1, &mut tiny),
        1
    );
    assert_eq!(tiny, [2]);
    assert_eq!(
        emit_error_reply(&request, ResultCode::NO_RESOURCES, 30, 1, &mut []),
        0
    );
}

#[test]
fn error_response_to_parsed_request() {
    // Parsed fine, but from behind another NAT: ADDRESS_MISMATCH (section 8.2).
    let request = Request::parse(&cat(&[&map_request_bytes(), &PREFER_FAILURE_BYTES])).unwrap();
    let response = request.error_response(ResultCode::ADDRESS_MISMATCH, LONG_ERROR_LIFETIME, 42);
    let mut buf = [0xff; 128];
    let len = response.emit(&mut buf);
    let expected = cat(&[
        &[2, 0x81, 0, 12],          // R = 1, Opcode = MAP | ADDRESS_MISMATCH
        &[0, 0, 0x07, 0x08],        // Lifetime 1800
        &[0, 0, 0, 42],             // Epoch Time
        &[0; 12],                   // Reserved: zero, the request parsed (section 7.2)
        &map_request_bytes()[24..], // MAP data: suggested port and address as assigned
        &PREFER_FAILURE_BYTES,      // options, copied (section 7.3)
    ]);
    assert_eq!(&buf[..len], &expected);
}

// ---- result codes, opcodes, addresses ----

#[test]
fn result_codes() {
    let all = [
        ("SUCCESS", None),
        ("UNSUPP_VERSION", Some(LONG_ERROR_LIFETIME)),
        ("NOT_AUTHORIZED", Some(LONG_ERROR_LIFETIME)),
        ("MALFORMED_REQUEST", Some(LONG_ERROR_LIFETIME)),
        ("UNSUPP_OPCODE", Some(LONG_ERROR_LIFETIME)),
        ("UNSUPP_OPTION", Some(LONG_ERROR_LIFETIME)),
        ("MALFORMED_OPTION", Some(LONG_ERROR_LIFETIME)),
        ("NETWORK_FAILURE", Some(SHORT_ERROR_LIFETIME)),
        ("NO_RESOURCES", Some(SHORT_ERROR_LIFETIME)),
        ("UNSUPP_PROTOCOL", Some(LONG_ERROR_LIFETIME)),
        ("USER_EX_QUOTA", Some(SHORT_ERROR_LIFETIME)),
        ("CANNOT_PROVIDE_EXTERNAL", None),
        ("ADDRESS_MISMATCH", Some(LONG_ERROR_LIFETIME)),
        ("EXCESSIVE_REMOTE_PEERS", Some(LONG_ERROR_LIFETIME)),
    ];
    for (code, (name, lifetime)) in all.iter().enumerate() {
        let code = ResultCode(code as u8);
        assert_eq!(code.name(), *name);
        assert_eq!(code.recommended_lifetime(), *lifetime);
        assert_eq!(code.is_success(), code.0 == 0);
        assert_ne!(code.description(), "unknown result code");
    }
    assert_eq!(ResultCode::EXCESSIVE_REMOTE_PEERS, ResultCode(13));
    assert_eq!(ResultCode::UNSUPP_OPTION.to_string(), "5 (UNSUPP_OPTION)");
    assert_eq!(ResultCode(14).to_string(), "14 (unknown result code)");
    assert_eq!(ResultCode(255).description(), "unknown result code");
    assert_eq!(ResultCode(200).recommended_lifetime(), None);
    assert!(!ResultCode(200).is_success());
}

#[test]
fn opcodes() {
    for opcode in [Opcode::Announce, Opcode::Map, Opcode::Peer] {
        assert_eq!(Opcode::from_code(opcode.code()), Some(opcode));
    }
    assert_eq!(Opcode::from_code(3), None);
    assert_eq!(Opcode::Peer.to_string(), "PEER");
    assert!(option::is_mandatory(option::FILTER));
    assert!(!option::is_mandatory(128));
}

#[test]
fn ipv4_mapped_addresses() {
    let a = Ipv4Addr::new(198, 51, 100, 7);
    let mapped = ipv4_mapped(a);
    assert_eq!(
        mapped.octets(),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]
    );
    assert_eq!(as_ipv4(&mapped), Some(a));
    // Only ::ffff:0:0/96: not IPv4-compatible ::a.b.c.d, not ::1.
    assert_eq!(as_ipv4(&"::198.51.100.7".parse().unwrap()), None);
    assert_eq!(as_ipv4(&Ipv6Addr::LOCALHOST), None);
    assert_eq!(to_wire_address(IpAddr::V4(a)), mapped);
    assert_eq!(from_wire_address(&mapped), IpAddr::V4(a));
    let v6 = Ipv6Addr::from(V6_CLIENT);
    assert_eq!(to_wire_address(IpAddr::V6(v6)), v6);
    assert_eq!(from_wire_address(&v6), IpAddr::V6(v6));
    assert!(is_all_zeros(&Ipv6Addr::UNSPECIFIED));
    assert!(is_all_zeros(&Ipv6Addr::from(V4_ZEROS)));
    assert!(!is_all_zeros(&mapped));
    assert!(!is_all_zeros(&"::ffff:0:1".parse().unwrap()));
}

#[test]
fn constants() {
    assert_eq!((VERSION, MIN_LEN, MAX_LEN), (2, 24, 1100));
    assert_eq!((SERVER_PORT, CLIENT_PORT), (5351, 5350));
    assert_eq!(ANNOUNCE_ADDR_V4, Ipv4Addr::new(224, 0, 0, 1));
    assert_eq!(ANNOUNCE_ADDR_V6, "ff02::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!((SHORT_ERROR_LIFETIME, LONG_ERROR_LIFETIME), (30, 1800));
    assert_eq!(crate::version_of(&map_request_bytes()), Some(VERSION));
}

#[test]
#[should_panic]
fn emit_panics_on_short_buffer() {
    map_request().emit(&mut [0; 59]);
}

// ---- properties ----

fn address() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|o| ipv4_mapped(Ipv4Addr::from(o))),
        Just(Ipv6Addr::from(V4_ZEROS)),
    ]
}

fn filter_strategy() -> impl Strategy<Value = Filter> {
    let v6 =
        (0u8..=128, any::<u16>(), any::<[u8; 16]>()).prop_map(|(prefix_len, port, a)| Filter {
            prefix_len,
            remote_peer_port: port,
            remote_peer_address: Ipv6Addr::from(a),
        });
    let prefix_v4 = prop_oneof![Just(0u8), 96u8..=128];
    let v4 = (prefix_v4, any::<u16>(), any::<[u8; 4]>()).prop_map(|(prefix_len, port, a)| Filter {
        prefix_len,
        remote_peer_port: port,
        remote_peer_address: ipv4_mapped(Ipv4Addr::from(a)),
    });
    prop_oneof![v6, v4].prop_filter("valid prefix", Filter::has_valid_prefix)
}

fn nonce() -> impl Strategy<Value = Nonce> {
    any::<[u8; 12]>().prop_map(Nonce)
}

fn map_strategy() -> impl Strategy<Value = MapData> {
    let protocol = prop_oneof![Just(0u8), Just(6), Just(17), any::<u8>()];
    (nonce(), protocol, any::<u16>(), any::<u16>(), address()).prop_map(
        |(nonce, protocol, internal_port, external_port, external_address)| MapData {
            nonce,
            protocol,
            internal_port,
            external_port,
            external_address,
        },
    )
}

/// PEER data as a request may carry it: protocol and ports not zero.
fn peer_strategy() -> impl Strategy<Value = PeerData> {
    (
        nonce(),
        1u8..,
        1u16..,
        any::<u16>(),
        address(),
        1u16..,
        address(),
    )
        .prop_map(
            |(nonce, protocol, internal_port, external_port, external_address, rport, raddr)| {
                PeerData {
                    nonce,
                    protocol,
                    internal_port,
                    external_port,
                    external_address,
                    remote_peer_port: rport,
                    remote_peer_address: raddr,
                }
            },
        )
}

/// Opcode data with options valid for it.
fn op_and_options() -> impl Strategy<Value = (OpData, Options)> {
    let map_options = (
        prop::option::of(address()),
        any::<bool>(),
        prop::collection::vec(filter_strategy(), 0..=8),
    )
        .prop_map(|(third_party, prefer_failure, filters)| Options {
            third_party,
            prefer_failure,
            filters: Filters::from_slice(&filters).unwrap(),
        });
    let peer_options = prop::option::of(address()).prop_map(|third_party| Options {
        third_party,
        ..Options::NONE
    });
    prop_oneof![
        Just((OpData::Announce, Options::NONE)),
        (map_strategy(), map_options).prop_map(|(map, options)| (OpData::Map(map), options)),
        (peer_strategy(), peer_options).prop_map(|(peer, options)| (OpData::Peer(peer), options)),
    ]
}

fn request_strategy() -> impl Strategy<Value = Request> {
    (any::<u32>(), address(), op_and_options()).prop_map(
        |(lifetime, client_address, (op, options))| Request {
            lifetime,
            client_address,
            op,
            options,
        },
    )
}

fn result_code_strategy() -> impl Strategy<Value = ResultCode> {
    prop_oneof![
        3 => Just(ResultCode::SUCCESS),
        2 => (1u8..=13).prop_map(ResultCode),
        1 => any::<u8>().prop_map(ResultCode),
    ]
}

fn response_strategy() -> impl Strategy<Value = Response> {
    (
        result_code_strategy(),
        any::<u32>(),
        any::<u32>(),
        op_and_options(),
    )
        .prop_map(|(result, lifetime, epoch, (op, options))| Response {
            result,
            lifetime,
            epoch,
            op,
            options,
        })
}

/// One option on the wire: any code (weighted to the known ones), a length near the right
/// one, its data and padding.
fn raw_option() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(option::THIRD_PARTY),
        Just(option::PREFER_FAILURE),
        Just(option::FILTER),
        Just(4u8),
        Just(0x80u8),
        any::<u8>(),
    ];
    let length = prop_oneof![Just(0u16), Just(16), Just(20), 0u16..=24];
    (
        code,
        length,
        prop::collection::vec(any::<u8>(), 24),
        any::<bool>(),
    )
        .prop_map(|(code, length, data, pad)| {
            let mut bytes = vec![code, 0];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&data[..usize::from(length)]);
            if pad {
                bytes.resize(4 + padded_len(usize::from(length)), 0);
            }
            bytes
        })
}

/// Whatever parsed re-emits to bytes that parse to the same value, and no longer.
fn check_reemit(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(request) = Request::parse(bytes) {
        let mut buf = [0u8; MAX_LEN];
        let len = request.emit(&mut buf);
        prop_assert!(len <= bytes.len());
        prop_assert_eq!(Request::parse(&buf[..len]), Ok(request));
    }
    if let Ok(response) = Response::parse(bytes) {
        let mut buf = [0u8; MAX_LEN];
        let len = response.emit(&mut buf);
        prop_assert!(len <= bytes.len());
        prop_assert_eq!(Response::parse(&buf[..len]), Ok(response));
    }
    Ok(())
}

proptest! {
    #[test]
    fn request_round_trip(request in request_strategy()) {
        let request = request.normalized();
        let mut buf = [0u8; MAX_LEN];
        let len = request.emit(&mut buf);
        prop_assert_eq!(len, request.buffer_len());
        prop_assert!(len <= MAX_LEN && len % 4 == 0);
        prop_assert_eq!(Request::parse(&buf[..len]), Ok(request));
    }

    #[test]
    fn response_round_trip(response in response_strategy()) {
        let response = response.normalized();
        let mut buf = [0u8; MAX_LEN];
        let len = response.emit(&mut buf);
        prop_assert_eq!(len, response.buffer_len());
        prop_assert!(len <= MAX_LEN && len % 4 == 0);
        prop_assert_eq!(Response::parse(&buf[..len]), Ok(response));
    }

    #[test]
    fn emit_normalizes(request in request_strategy(), response in response_strategy()) {
        let mut buf = [0u8; MAX_LEN];
        let len = request.emit(&mut buf);
        prop_assert_eq!(Request::parse(&buf[..len]), Ok(request.normalized()));
        let len = response.emit(&mut buf);
        prop_assert_eq!(Response::parse(&buf[..len]), Ok(response.normalized()));
    }

    #[test]
    fn error_response_echoes_request(
        request in request_strategy(),
        result in result_code_strategy(),
        lifetime in any::<u32>(),
        epoch in any::<u32>(),
    ) {
        let request = request.normalized();
        let mut sent = [0u8; MAX_LEN];
        let sent_len = request.emit(&mut sent);
        let mut reply = [0u8; MAX_LEN];
        let reply_len = request.error_response(result, lifetime, epoch).emit(&mut reply);
        prop_assert_eq!(reply_len, sent_len);
        prop_assert_eq!(&reply[24..reply_len], &sent[24..sent_len]);
        prop_assert_eq!(&reply[12..24], &[0u8; 12][..]);
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=1200)) {
        check_reemit(&bytes)?;
    }

    // Random bytes rarely get past the version byte and lengths; a version-2 header, a
    // chosen opcode, opcode data of a likely length and a run of options reach every branch.
    #[test]
    fn parse_structured_inputs(
        r_opcode in prop::sample::select(vec![0u8, 1, 2, 3, 0x7f, 0x80, 0x81, 0x82, 0x83, 0xff]),
        result in prop::sample::select(vec![0u8, 0, 0, 3, 5]),
        header in any::<[u8; 20]>(),
        data_len in prop::sample::select(vec![0usize, 36, 56, 32, 40]),
        data in any::<[u8; 56]>(),
        options in prop::collection::vec(raw_option(), 0..=4),
        tail in prop::collection::vec(any::<u8>(), 0..=3),
    ) {
        let mut bytes = vec![VERSION, r_opcode, 0, result];
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&data[..data_len]);
        for option in &options {
            bytes.extend_from_slice(option);
        }
        bytes.extend_from_slice(&tail);
        check_reemit(&bytes)?;
    }

    #[test]
    fn error_reply_copies_and_never_panics(
        request in prop::collection::vec(any::<u8>(), 0..=1200),
        result in any::<u8>(),
        lifetime in any::<u32>(),
        epoch in any::<u32>(),
        buf_len in 0usize..=1300,
    ) {
        let mut buf = vec![0xa5u8; buf_len];
        let len = emit_error_reply(&request, ResultCode(result), lifetime, epoch, &mut buf);
        let full = padded_len(request.len().clamp(MIN_LEN, MAX_LEN));
        prop_assert_eq!(len, full.min(buf_len));
        let mut header = vec![VERSION, 0x80 | (request.get(1).copied().unwrap_or(0) & 0x7f), 0, result];
        header.extend_from_slice(&lifetime.to_be_bytes());
        header.extend_from_slice(&epoch.to_be_bytes());
        for (i, byte) in buf[..len].iter().enumerate() {
            let expected = header.get(i).copied().unwrap_or_else(|| request.get(i).copied().unwrap_or(0));
            prop_assert_eq!(*byte, expected);
        }
        prop_assert!(buf[len..].iter().all(|&b| b == 0xa5));
        if len == full && result != 0 {
            // A version-2 reply a client can at least recognise as a response.
            let recognised = !matches!(
                Response::parse(&buf[..len]),
                Err(ParseError::NotAResponse { .. }
                    | ParseError::UnsupportedVersion { .. }
                    | ParseError::TooLong { .. }
                    | ParseError::NotMultipleOf4 { .. })
            );
            prop_assert!(recognised);
        }
    }
}
