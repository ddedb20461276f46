//! The exchange state machine against a scripted gateway and an injected clock: exact
//! retransmission schedules, fallback, and what is (not) accepted as an answer.

use super::*;
use crate::random::Scripted;

const GW: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), 5351);
const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
const NONCE: pcp::Nonce = pcp::Nonce([7; 12]);

fn params(choice: ProtocolChoice) -> Params {
    Params {
        gateway: GW,
        client_address: ME,
        client_port: 40000,
        choice,
        nonce: NONCE,
        deadline: None,
    }
}

fn map_op() -> Operation {
    Operation::Map {
        protocol: Protocol::Tcp,
        internal_port: 8080,
        suggested_external_port: 8080,
        lifetime: 7200,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Drives `t` with no answers until done; returns the send times (since `t0`), the bytes
/// sent, and the result with the time it came.
#[allow(clippy::type_complexity)]
fn run_silent(
    t: &mut Transaction,
    t0: Instant,
    random: &mut dyn Random,
) -> (Vec<Duration>, Vec<Vec<u8>>, Result<Answer, Error>, Duration) {
    let mut now = t0;
    let mut times = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..10_000 {
        match t.poll(now, random) {
            Output::Transmit(bytes) => {
                times.push(now - t0);
                sent.push(bytes);
            }
            Output::Wait(until) => {
                assert!(until > now, "a wait must move time forward");
                now = until;
            }
            Output::Done(result) => return (times, sent, result, now - t0),
        }
    }
    panic!("the exchange never finished");
}

/// Polls at `now` and expects a datagram.
fn expect_transmit(t: &mut Transaction, now: Instant) -> Vec<u8> {
    match t.poll(now, &mut Scripted::new(vec![1000])) {
        Output::Transmit(bytes) => bytes,
        other => panic!("expected a transmit, got {other:?}"),
    }
}

fn expect_done(t: &mut Transaction, now: Instant) -> Result<Answer, Error> {
    match t.poll(now, &mut Scripted::new(vec![1000])) {
        Output::Done(result) => result,
        other => panic!("expected the result, got {other:?}"),
    }
}

fn natpmp_bytes(response: natpmp::Response) -> Vec<u8> {
    let mut buf = vec![0; natpmp::Response::MAX_LEN];
    let n = response.emit(&mut buf);
    buf.truncate(n);
    buf
}

fn pcp_bytes(response: pcp::Response) -> Vec<u8> {
    let mut buf = vec![0; pcp::MAX_LEN];
    let n = response.emit(&mut buf);
    buf.truncate(n);
    buf
}

fn pcp_map_response(
    result: pcp::ResultCode,
    nonce: pcp::Nonce,
    internal_port: u16,
) -> pcp::Response {
    pcp::Response {
        result,
        lifetime: if result.is_success() { 3600 } else { 30 },
        epoch: 42,
        op: pcp::OpData::Map(pcp::MapData {
            nonce,
            protocol: 6,
            internal_port,
            external_port: 18080,
            external_address: pcp::ipv4_mapped(Ipv4Addr::new(45, 45, 45, 1)),
        }),
        options: pcp::Options::NONE,
    }
}

fn natpmp_map_response(result: natpmp::ResultCode, internal_port: u16) -> natpmp::Response {
    natpmp::Response::Map(natpmp::MapResponse {
        protocol: Protocol::Tcp,
        result,
        epoch: 100,
        internal_port,
        external_port: 8080,
        lifetime: 7200,
    })
}

fn natpmp_address_response(address: Ipv4Addr) -> natpmp::Response {
    natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
        result: natpmp::ResultCode::SUCCESS,
        epoch: 101,
        address,
    })
}

// ---- retransmission schedules ----

#[test]
fn natpmp_sends_nine_times_at_250ms_doubling_then_gives_up_after_the_ninth_64s_wait() {
    let t0 = Instant::now();
    let mut t = Transaction::new(
        Operation::ExternalAddress,
        params(ProtocolChoice::NatPmp),
        t0,
    );
    let (times, sent, result, at) = run_silent(&mut t, t0, &mut Scripted::new(vec![0]));
    assert_eq!(
        times,
        [0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750].map(ms)
    );
    assert!(sent.iter().all(|b| b == &[0, 0]), "{sent:?}");
    assert_eq!(at, ms(127_750), "the 9th wait is 64 s");
    match result {
        Err(Error::NoResponse {
            sends,
            elapsed,
            gateway,
        }) => {
            assert_eq!((sends, elapsed, gateway), (9, ms(127_750), GW.ip()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pcp_retransmits_at_jittered_doubling_intervals_until_the_callers_deadline() {
    let t0 = Instant::now();
    let mut p = params(ProtocolChoice::Pcp);
    p.deadline = Some(t0 + Duration::from_secs(100));
    let mut t = Transaction::new(map_op(), p, t0);
    // RAND = +0.1, -0.1, 0, +0.05, ...: RT1 = 3.3, RT2 = 0.9 * 6.6 = 5.94,
    // RT3 = 1.0 * 11.88, RT4 = 1.05 * 23.76 = 24.948, RT5 = 1.1 * 49.896 = 54.8856.
    let mut random = Scripted::new(vec![
        Scripted::for_jitter(0.1),
        Scripted::for_jitter(-0.1),
        Scripted::for_jitter(0.0),
        Scripted::for_jitter(0.05),
    ]);
    let (times, sent, result, at) = run_silent(&mut t, t0, &mut random);
    assert_eq!(
        times,
        [0, 3300, 9240, 21120, 46068].map(ms),
        "send times: 0, +3.3, +5.94, +11.88, +24.948"
    );
    assert!(sent.iter().all(|b| b.len() == 60 && b[0] == 2 && b[1] == 1));
    assert!(
        sent.windows(2).all(|w| w[0] == w[1]),
        "retransmissions are identical"
    );
    assert_eq!(at, Duration::from_secs(100), "MRD: the caller's deadline");
    assert!(
        matches!(result, Err(Error::NoResponse { sends: 5, .. })),
        "{result:?}"
    );
}

#[test]
fn pcp_without_a_deadline_keeps_retransmitting_with_rt_capped_at_mrt() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Pcp), t0);
    let mut random = Scripted::new(vec![Scripted::for_jitter(0.0)]);
    let mut now = t0;
    let mut times = Vec::new();
    while times.len() < 14 {
        match t.poll(now, &mut random) {
            Output::Transmit(_) => times.push((now - t0).as_secs()),
            Output::Wait(until) => now = until,
            Output::Done(r) => panic!("PCP gave up by itself: {r:?}"),
        }
    }
    // 3, 6, 12 ... 768, then 1024 each.
    assert_eq!(
        times,
        [0, 3, 9, 21, 45, 93, 189, 381, 765, 1533, 2557, 3581, 4605, 5629]
    );
}

#[test]
fn a_deadline_cuts_natpmp_short() {
    let t0 = Instant::now();
    let mut p = params(ProtocolChoice::NatPmp);
    p.deadline = Some(t0 + ms(2000));
    let mut t = Transaction::new(Operation::ExternalAddress, p, t0);
    let (times, _, result, at) = run_silent(&mut t, t0, &mut Scripted::new(vec![0]));
    assert_eq!(times, [0, 250, 750, 1750].map(ms));
    assert_eq!(at, ms(2000));
    assert!(matches!(result, Err(Error::NoResponse { sends: 4, .. })));
}

// ---- PCP -> NAT-PMP fallback (RFC 6887 Appendix A) ----

#[test]
fn auto_falls_back_to_natpmp_on_unsupported_version_in_either_opcode_form() {
    for reply in [
        vec![0, 0, 0, 1, 0, 0, 0, 9], // RFC 6886 section 3.5 figure (natwarden)
        vec![0, 129, 0, 1, 0, 0, 0, 9], // 128 + op (miniupnpd and others)
    ] {
        let t0 = Instant::now();
        let mut t = Transaction::new(map_op(), params(ProtocolChoice::Auto), t0);
        let first = expect_transmit(&mut t, t0);
        assert_eq!((first[0], first.len()), (2, 60), "PCP first");
        assert!(t.handle(t0 + ms(5), GW, &reply));
        assert_eq!(t.version(), Version::NatPmp);
        let second = expect_transmit(&mut t, t0 + ms(5));
        assert_eq!(
            second,
            [0, 2, 0, 0, 0x1f, 0x90, 0x1f, 0x90, 0, 0, 0x1c, 0x20]
        );
        // Then the NAT-PMP schedule restarts: next send 250 ms later.
        assert!(matches!(
            t.poll(t0 + ms(5), &mut Scripted::new(vec![0])),
            Output::Wait(at) if at == t0 + ms(255)
        ));
        // A second copy of the refusal (PCP retransmission) is not taken for NAT-PMP's.
        assert!(!t.handle(t0 + ms(6), GW, &reply));
        assert!(t.handle(
            t0 + ms(20),
            GW,
            &natpmp_bytes(natpmp_map_response(natpmp::ResultCode::SUCCESS, 8080))
        ));
        let third = expect_transmit(&mut t, t0 + ms(20));
        assert_eq!(third, [0, 0], "then the external address");
        assert!(t.handle(
            t0 + ms(30),
            GW,
            &natpmp_bytes(natpmp_address_response(Ipv4Addr::new(198, 51, 100, 7)))
        ));
        let result = expect_done(&mut t, t0 + ms(30));
        let Ok(Answer::Mapped(m)) = result else {
            panic!("{result:?}")
        };
        assert_eq!(m.version, Version::NatPmp);
        assert_eq!(m.external_port, 8080);
        assert_eq!(
            m.external_address,
            Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))
        );
        assert_eq!(m.lifetime, Duration::from_secs(7200));
        assert_eq!(m.epoch, 101);
        assert_eq!(m.nonce, None);
    }
}

#[test]
fn auto_falls_back_to_natpmp_after_pcps_first_interval_of_silence() {
    let t0 = Instant::now();
    let mut t = Transaction::new(Operation::ExternalAddress, params(ProtocolChoice::Auto), t0);
    let mut random = Scripted::new(vec![Scripted::for_jitter(0.0)]);
    let (times, sent, _, at) = run_silent(&mut t, t0, &mut random);
    // PCP at 0, then NAT-PMP's nine from 3 s on.
    let mut expected = vec![Duration::ZERO];
    expected.extend([0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750].map(|m| ms(3000 + m)));
    assert_eq!(times, expected);
    assert_eq!(sent[0][0], 2);
    assert!(sent[1..].iter().all(|b| b == &[0, 0]));
    assert_eq!(at, ms(3000 + 127_750));
}

#[test]
fn a_late_pcp_answer_after_silence_fallback_is_still_taken() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Auto), t0);
    let mut random = Scripted::new(vec![Scripted::for_jitter(0.0)]);
    assert!(matches!(t.poll(t0, &mut random), Output::Transmit(_)));
    assert!(matches!(t.poll(t0 + ms(3000), &mut random), Output::Transmit(b) if b[0] == 0));
    let late = pcp_bytes(pcp_map_response(pcp::ResultCode::SUCCESS, NONCE, 8080));
    assert!(t.handle(t0 + ms(3100), GW, &late));
    let Ok(Answer::Mapped(m)) = expect_done(&mut t, t0 + ms(3100)) else {
        panic!()
    };
    assert_eq!(m.version, Version::Pcp);
}

#[test]
fn forced_pcp_reports_a_natpmp_only_gateway() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Pcp), t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(t0, GW, &[0, 0, 0, 1, 0, 0, 0, 9]));
    let result = expect_done(&mut t, t0);
    assert!(
        matches!(
            result,
            Err(Error::VersionNotSupported {
                version: Version::Pcp,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn forced_natpmp_never_sends_pcp_and_needs_ipv4() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::NatPmp), t0);
    assert_eq!(expect_transmit(&mut t, t0)[0], 0);
    let mut p = params(ProtocolChoice::NatPmp);
    p.gateway = "[fe80::1]:5351".parse().unwrap();
    let mut t = Transaction::new(map_op(), p, t0);
    assert!(matches!(
        expect_done(&mut t, t0),
        Err(Error::NatPmpNeedsIpv4(_))
    ));
}

#[test]
fn an_ipv6_gateway_in_auto_mode_stays_with_pcp() {
    let t0 = Instant::now();
    let mut p = params(ProtocolChoice::Auto);
    p.gateway = "[2001:db8::1]:5351".parse().unwrap();
    p.client_address = "2001:db8::10".parse().unwrap();
    p.deadline = Some(t0 + Duration::from_secs(10));
    let mut t = Transaction::new(map_op(), p, t0);
    let (times, sent, _, _) = run_silent(&mut t, t0, &mut Scripted::new(vec![1000]));
    assert_eq!(times, [0, 3000, 9000].map(ms));
    assert!(sent.iter().all(|b| b[0] == 2));
    // The client address goes in as is, the suggested address is "::".
    assert_eq!(
        &sent[0][8..24],
        &"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(&sent[0][44..60], &[0; 16]);
}

// ---- what is accepted ----

#[test]
fn pcp_map_request_layout() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Pcp), t0);
    let b = expect_transmit(&mut t, t0);
    let request = pcp::Request::parse(&b).expect("a valid PCP request");
    assert_eq!(request.lifetime, 7200);
    assert_eq!(
        request.client_address,
        pcp::ipv4_mapped(Ipv4Addr::new(192, 168, 1, 10))
    );
    let pcp::OpData::Map(map) = request.op else {
        panic!()
    };
    assert_eq!(map.nonce, NONCE);
    assert_eq!(
        (map.protocol, map.internal_port, map.external_port),
        (6, 8080, 8080)
    );
    assert_eq!(
        map.external_address,
        pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED)
    );
}

#[test]
fn only_the_matching_answer_from_the_gateways_port_5351_is_taken() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Pcp), t0);
    expect_transmit(&mut t, t0);
    let good = pcp_bytes(pcp_map_response(pcp::ResultCode::SUCCESS, NONCE, 8080));
    let other_host: SocketAddr = "192.168.1.66:5351".parse().unwrap();
    let other_port: SocketAddr = "192.168.1.1:5350".parse().unwrap();
    assert!(!t.handle(t0, other_host, &good), "another host");
    assert!(!t.handle(t0, other_port, &good), "another port");
    assert!(
        !t.handle(
            t0,
            GW,
            &pcp_bytes(pcp_map_response(
                pcp::ResultCode::SUCCESS,
                pcp::Nonce([8; 12]),
                8080
            ))
        ),
        "another nonce"
    );
    assert!(
        !t.handle(
            t0,
            GW,
            &pcp_bytes(pcp_map_response(pcp::ResultCode::SUCCESS, NONCE, 8081))
        ),
        "another internal port"
    );
    let mut udp = pcp_map_response(pcp::ResultCode::SUCCESS, NONCE, 8080);
    if let pcp::OpData::Map(m) = &mut udp.op {
        m.protocol = 17;
    }
    assert!(!t.handle(t0, GW, &pcp_bytes(udp)), "another protocol");
    assert!(
        !t.handle(t0, GW, &pcp_bytes(pcp::Response::announce(3))),
        "an ANNOUNCE"
    );
    assert!(!t.handle(t0, GW, &good[..59]), "truncated");
    assert!(!t.handle(t0, GW, &[]), "empty");
    assert!(
        !t.handle(
            t0,
            GW,
            &natpmp_bytes(natpmp_map_response(natpmp::ResultCode::SUCCESS, 8080))
        ),
        "NAT-PMP while speaking PCP"
    );
    let mut request = good.clone();
    request[1] = 1; // R bit clear: our own request reflected
    assert!(!t.handle(t0, GW, &request), "a request");
    assert!(!t.is_done());

    assert!(t.handle(t0 + ms(40), GW, &good));
    let Ok(Answer::Mapped(m)) = expect_done(&mut t, t0 + ms(40)) else {
        panic!()
    };
    assert_eq!(m.external_port, 18080);
    assert_eq!(
        m.external_address,
        Some(IpAddr::V4(Ipv4Addr::new(45, 45, 45, 1)))
    );
    assert_eq!(m.lifetime, Duration::from_secs(3600));
    assert_eq!((m.epoch, m.nonce), (42, Some(NONCE)));
    assert!(!t.handle(t0, GW, &good), "nothing after the answer");
}

#[test]
fn natpmp_answers_must_match_opcode_and_internal_port() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::NatPmp), t0);
    expect_transmit(&mut t, t0);
    let address = natpmp_bytes(natpmp_address_response(Ipv4Addr::new(1, 2, 3, 4)));
    assert!(
        !t.handle(t0, GW, &address),
        "an announcement is not the map answer"
    );
    assert!(!t.handle(
        t0,
        GW,
        &natpmp_bytes(natpmp_map_response(natpmp::ResultCode::SUCCESS, 9090))
    ));
    let mut udp = natpmp_map_response(natpmp::ResultCode::SUCCESS, 8080);
    if let natpmp::Response::Map(m) = &mut udp {
        m.protocol = Protocol::Udp;
    }
    assert!(!t.handle(t0, GW, &natpmp_bytes(udp)));
    assert!(!t.handle(
        t0,
        "192.168.1.2:5351".parse().unwrap(),
        &natpmp_bytes(natpmp_map_response(natpmp::ResultCode::SUCCESS, 8080))
    ));
    assert!(!t.handle(t0, GW, &[0, 0, 0, 1, 0, 0, 0, 1, 0]), "malformed");
    assert!(!t.is_done());
    assert!(t.handle(
        t0,
        GW,
        &natpmp_bytes(natpmp_map_response(natpmp::ResultCode::SUCCESS, 8080))
    ));
}

#[test]
fn refusals_carry_the_result_code() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::NatPmp), t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(
        t0,
        GW,
        &natpmp_bytes(natpmp_map_response(
            natpmp::ResultCode::NOT_AUTHORIZED,
            8080
        ))
    ));
    let Err(Error::Refused(r)) = expect_done(&mut t, t0) else {
        panic!()
    };
    assert_eq!(r, Refusal::NatPmp(natpmp::ResultCode::NOT_AUTHORIZED));

    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Pcp), t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(
        t0,
        GW,
        &pcp_bytes(pcp_map_response(pcp::ResultCode::NO_RESOURCES, NONCE, 8080))
    ));
    let Err(Error::Refused(r)) = expect_done(&mut t, t0) else {
        panic!()
    };
    assert_eq!(
        r,
        Refusal::Pcp {
            code: pcp::ResultCode::NO_RESOURCES,
            lifetime: 30
        }
    );
}

#[test]
fn natpmp_unmap_and_unmap_all() {
    let t0 = Instant::now();
    for port in [8080, 0] {
        let op = Operation::Unmap {
            protocol: Protocol::Tcp,
            internal_port: port,
        };
        let mut t = Transaction::new(op, params(ProtocolChoice::NatPmp), t0);
        let b = expect_transmit(&mut t, t0);
        let [hi, lo] = port.to_be_bytes();
        assert_eq!(b, [0, 2, 0, 0, hi, lo, 0, 0, 0, 0, 0, 0]);
        let mut reply = natpmp_map_response(natpmp::ResultCode::SUCCESS, port);
        if let natpmp::Response::Map(m) = &mut reply {
            m.external_port = 0;
            m.lifetime = 0;
        }
        assert!(t.handle(t0, GW, &natpmp_bytes(reply)));
        let Ok(Answer::Unmapped(u)) = expect_done(&mut t, t0) else {
            panic!()
        };
        assert_eq!((u.internal_port, u.version), (port, Version::NatPmp));
    }
}

#[test]
fn pcp_unmap_is_a_zero_lifetime_map_with_the_same_nonce() {
    let t0 = Instant::now();
    let op = Operation::Unmap {
        protocol: Protocol::Udp,
        internal_port: 5000,
    };
    let mut t = Transaction::new(op, params(ProtocolChoice::Pcp), t0);
    let request = pcp::Request::parse(&expect_transmit(&mut t, t0)).unwrap();
    assert_eq!(request.lifetime, 0);
    let pcp::OpData::Map(map) = request.op else {
        panic!()
    };
    assert_eq!(
        (
            map.nonce,
            map.protocol,
            map.internal_port,
            map.external_port
        ),
        (NONCE, 17, 5000, 0)
    );
}

#[test]
fn pcp_external_address_probe_deletes_the_discard_port_and_reads_the_address() {
    let t0 = Instant::now();
    let mut t = Transaction::new(Operation::ExternalAddress, params(ProtocolChoice::Auto), t0);
    let request = pcp::Request::parse(&expect_transmit(&mut t, t0)).unwrap();
    assert_eq!(request.lifetime, 0, "a deletion creates nothing");
    let pcp::OpData::Map(map) = request.op else {
        panic!()
    };
    assert_eq!(
        (map.protocol, map.internal_port),
        (17, PCP_ADDRESS_PROBE_PORT)
    );
    // miniupnpd answers the deletion of a missing mapping NO_RESOURCES, with the address.
    let mut reply = pcp_map_response(pcp::ResultCode::NO_RESOURCES, NONCE, 9);
    if let pcp::OpData::Map(m) = &mut reply.op {
        m.protocol = 17;
    }
    assert!(t.handle(t0, GW, &pcp_bytes(reply)));
    let Ok(Answer::ExternalAddress(a)) = expect_done(&mut t, t0) else {
        panic!()
    };
    assert_eq!(
        (a.address, a.version),
        (IpAddr::V4(Ipv4Addr::new(45, 45, 45, 1)), Version::Pcp)
    );

    // A deletion answer without an address (natwarden, RFC-strict gateways): the client maps
    // its own request port for a moment, reads the address, and deletes the mapping again.
    if let pcp::OpData::Map(m) = &mut reply.op {
        m.external_address = pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED);
    }
    reply.result = pcp::ResultCode::SUCCESS;
    for choice in [ProtocolChoice::Auto, ProtocolChoice::Pcp] {
        let mut t = Transaction::new(Operation::ExternalAddress, params(choice), t0);
        expect_transmit(&mut t, t0);
        assert!(t.handle(t0, GW, &pcp_bytes(reply)));
        let own = pcp::Request::parse(&expect_transmit(&mut t, t0)).unwrap();
        assert_eq!(own.lifetime, PCP_OWN_PORT_PROBE_LIFETIME);
        let pcp::OpData::Map(m) = own.op else {
            panic!()
        };
        assert_eq!(
            (m.protocol, m.internal_port, m.external_port),
            (17, 40000, 40000)
        );
        // The late copy of the deletion probe's answer no longer matches.
        assert!(!t.handle(t0, GW, &pcp_bytes(reply)));
        let mut granted = reply;
        granted.lifetime = 120;
        if let pcp::OpData::Map(g) = &mut granted.op {
            g.internal_port = 40000;
            g.external_port = 40000;
            g.external_address = pcp::ipv4_mapped(Ipv4Addr::new(198, 51, 100, 7));
        }
        assert!(t.handle(t0, GW, &pcp_bytes(granted)));
        let delete = pcp::Request::parse(&expect_transmit(&mut t, t0)).unwrap();
        assert_eq!(delete.lifetime, 0, "{choice:?}: deleted again at once");
        assert_eq!(delete.op.nonce(), own.op.nonce());
        let pcp::OpData::Map(d) = delete.op else {
            panic!()
        };
        assert_eq!((d.protocol, d.internal_port), (17, 40000));
        let mut deleted = granted;
        deleted.lifetime = 0;
        assert!(t.handle(t0, GW, &pcp_bytes(deleted)));
        let Ok(Answer::ExternalAddress(a)) = expect_done(&mut t, t0) else {
            panic!()
        };
        assert_eq!(a.address, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(a.version, Version::Pcp);
    }

    // An unanswered deletion of the probe mapping still yields the address (the mapping
    // expires by itself).
    let mut p = params(ProtocolChoice::Pcp);
    p.deadline = Some(t0 + Duration::from_secs(10));
    let mut t = Transaction::new(Operation::ExternalAddress, p, t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(t0, GW, &pcp_bytes(reply)));
    expect_transmit(&mut t, t0);
    let mut granted = reply;
    if let pcp::OpData::Map(g) = &mut granted.op {
        g.internal_port = 40000;
        g.external_address = pcp::ipv4_mapped(Ipv4Addr::new(198, 51, 100, 7));
    }
    assert!(t.handle(t0, GW, &pcp_bytes(granted)));
    let (_, _, result, _) = run_silent(&mut t, t0, &mut Scripted::new(vec![1000]));
    assert!(
        matches!(result, Ok(Answer::ExternalAddress(_))),
        "{result:?}"
    );

    // Without the client's port, forced PCP cannot ask further; Auto asks NAT-PMP.
    let mut p = params(ProtocolChoice::Pcp);
    p.client_port = 0;
    let mut t = Transaction::new(Operation::ExternalAddress, p, t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(t0, GW, &pcp_bytes(reply)));
    assert!(matches!(
        expect_done(&mut t, t0),
        Err(Error::NoExternalAddress(_))
    ));
    let mut p = params(ProtocolChoice::Auto);
    p.client_port = 0;
    let mut t = Transaction::new(Operation::ExternalAddress, p, t0);
    expect_transmit(&mut t, t0);
    assert!(t.handle(t0, GW, &pcp_bytes(reply)));
    assert_eq!(expect_transmit(&mut t, t0), [0, 0]);
}

#[test]
fn a_pcp_server_of_another_version_answering_unsupp_version_means_fallback() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::Auto), t0);
    expect_transmit(&mut t, t0);
    let mut reply = vec![0u8; 24];
    reply[0] = 1;
    reply[1] = 0x81;
    reply[3] = 1;
    assert!(!t.handle(t0, "192.168.1.1:9999".parse().unwrap(), &reply));
    assert!(t.handle(t0, GW, &reply));
    assert_eq!(t.version(), Version::NatPmp);
}

#[test]
fn invalid_arguments_are_refused_before_sending() {
    let t0 = Instant::now();
    let op = Operation::Map {
        protocol: Protocol::Tcp,
        internal_port: 1,
        suggested_external_port: 1,
        lifetime: 0,
    };
    let mut t = Transaction::new(op, params(ProtocolChoice::Auto), t0);
    assert!(matches!(
        expect_done(&mut t, t0),
        Err(Error::InvalidArgument(_))
    ));
    let mut p = params(ProtocolChoice::Auto);
    p.gateway.set_port(5350);
    let mut t = Transaction::new(map_op(), p, t0);
    assert!(matches!(
        expect_done(&mut t, t0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn an_unsupported_opcode_echo_is_a_refusal_not_silence() {
    let t0 = Instant::now();
    let mut t = Transaction::new(map_op(), params(ProtocolChoice::NatPmp), t0);
    let request = expect_transmit(&mut t, t0);
    let mut echo = request.clone();
    echo[1] |= 0x80;
    echo[2..4].copy_from_slice(&5u16.to_be_bytes());
    // Someone else's request echoed (another port) is not ours.
    let mut other = echo.clone();
    other[5] ^= 1;
    assert!(!t.handle(t0, GW, &other));
    assert!(t.handle(t0, GW, &echo));
    let Err(Error::Refused(r)) = expect_done(&mut t, t0) else {
        panic!()
    };
    assert_eq!(r, Refusal::NatPmp(natpmp::ResultCode::UNSUPPORTED_OPCODE));
}

#[test]
fn lease_and_client_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<crate::Lease>();
    send::<crate::Client>();
    send::<Transaction>();
}
