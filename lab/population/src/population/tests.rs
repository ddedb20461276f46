use super::*;
use std::net::SocketAddrV4;

use natwarden_wire::pcp::{ipv4_mapped, MapData, Nonce, OpData, Options};

const SEED: u64 = 5;
const SCANNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn source() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(SCANNER, 40000))
}

fn source6() -> SocketAddr {
    SocketAddr::new("2001:db8:ff::1".parse().expect("address"), 40000)
}

/// A population whose every address behaves as `behaviour`.
fn only(behaviour: Behaviour) -> Population {
    let spec: Vec<String> = Behaviour::ALL
        .iter()
        .map(|b| format!("{}={}", b.name(), u32::from(*b == behaviour)))
        .collect();
    let mix = Mix::parse(&spec.join(",")).expect("valid mix");
    Population::new(
        SEED,
        mix,
        Some(Range::parse("100.64.0.0/24", false).expect("range")),
        Some(Range::parse("2001:db8:64::/120", true).expect("range")),
        65536,
    )
}

fn t4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, 5))
}

fn t6() -> IpAddr {
    "2001:db8:64::5".parse().expect("address")
}

const NOW: Duration = Duration::from_secs(100);

fn ask(
    p: &mut Population,
    source: SocketAddr,
    target: IpAddr,
    request: &[u8],
) -> Option<(IpAddr, Vec<u8>)> {
    let mut out = [0u8; REPLY_BUF_LEN];
    p.handle(NOW, source, target, request, &mut out)
        .map(|r| (r.from, out[..r.len].to_vec()))
}

fn natpmp_bytes(request: natpmp::Request) -> Vec<u8> {
    let mut buf = [0u8; natpmp::Request::MAX_LEN];
    let n = request.emit(&mut buf);
    buf[..n].to_vec()
}

fn ext_addr() -> Vec<u8> {
    natpmp_bytes(natpmp::Request::ExternalAddress)
}

fn natpmp_map(internal: u16, suggested: u16, lifetime: u32) -> Vec<u8> {
    natpmp_bytes(natpmp::Request::Map(natpmp::MapRequest {
        protocol: Protocol::Tcp,
        internal_port: internal,
        suggested_external_port: suggested,
        lifetime,
    }))
}

fn pcp_bytes(request: pcp::Request) -> Vec<u8> {
    let mut buf = [0u8; pcp::MAX_LEN];
    let n = request.emit(&mut buf);
    buf[..n].to_vec()
}

fn announce(client: IpAddr) -> Vec<u8> {
    pcp_bytes(pcp::Request {
        lifetime: 0,
        client_address: pcp::to_wire_address(client),
        op: OpData::Announce,
        options: Options::NONE,
    })
}

fn map_request(
    client: IpAddr,
    suggested: u16,
    lifetime: u32,
    third_party: Option<IpAddr>,
) -> pcp::Request {
    pcp::Request {
        lifetime,
        client_address: pcp::to_wire_address(client),
        op: OpData::Map(MapData {
            nonce: Nonce([7; 12]),
            protocol: 6,
            internal_port: 8080,
            external_port: suggested,
            external_address: if client.is_ipv6() {
                Ipv6Addr::UNSPECIFIED
            } else {
                ipv4_mapped(Ipv4Addr::UNSPECIFIED)
            },
        }),
        options: Options {
            third_party: third_party.map(pcp::to_wire_address),
            ..Options::NONE
        },
    }
}

fn pcp_map(client: IpAddr, suggested: u16, lifetime: u32, third_party: Option<IpAddr>) -> Vec<u8> {
    pcp_bytes(map_request(client, suggested, lifetime, third_party))
}

fn natpmp_reply(reply: Option<(IpAddr, Vec<u8>)>) -> natpmp::Response {
    let (_, bytes) = reply.expect("a reply");
    natpmp::Response::parse(&bytes).expect("a valid NAT-PMP response")
}

fn pcp_reply(reply: Option<(IpAddr, Vec<u8>)>) -> pcp::Response {
    let (_, bytes) = reply.expect("a reply");
    pcp::Response::parse(&bytes).expect("a valid PCP response")
}

fn ext_result(r: natpmp::Response) -> (natpmp::ResultCode, Ipv4Addr) {
    match r {
        natpmp::Response::ExternalAddress(e) => (e.result, e.address),
        other => panic!("not an external-address response: {other:?}"),
    }
}

fn map_result(r: natpmp::Response) -> natpmp::MapResponse {
    match r {
        natpmp::Response::Map(m) => m,
        other => panic!("not a map response: {other:?}"),
    }
}

fn pcp_map_data(r: &pcp::Response) -> MapData {
    match r.op {
        OpData::Map(m) => m,
        other => panic!("not a MAP response: {other:?}"),
    }
}

fn scanner() -> IpAddr {
    IpAddr::V4(SCANNER)
}

#[test]
fn silent_never_answers() {
    let mut p = only(Behaviour::Silent);
    for req in [
        ext_addr(),
        natpmp_map(1, 2, 3),
        announce(scanner()),
        pcp_map(scanner(), 9, 60, None),
    ] {
        assert_eq!(ask(&mut p, source(), t4(), &req), None);
    }
    assert_eq!(
        ask(&mut p, source6(), t6(), &announce(source6().ip())),
        None
    );
}

#[test]
fn outside_the_ranges_nobody_answers() {
    let mut p = only(Behaviour::Open);
    let sibling = IpAddr::V4(Ipv4Addr::new(100, 65, 0, 5));
    assert_eq!(ask(&mut p, source(), sibling, &ext_addr()), None);
    assert_eq!(
        ask(
            &mut p,
            source6(),
            "2001:db8:64::1:0".parse().expect("a"),
            &announce(source6().ip())
        ),
        None
    );
}

#[test]
fn leak_discloses_and_refuses() {
    let mut p = only(Behaviour::Leak);
    let (from, _) = ask(&mut p, source(), t4(), &ext_addr()).expect("reply");
    assert_eq!(from, t4());
    let r = natpmp_reply(ask(&mut p, source(), t4(), &ext_addr()));
    assert_eq!(
        ext_result(r),
        (natpmp::ResultCode::SUCCESS, Ipv4Addr::new(100, 64, 0, 5))
    );
    assert_eq!(r.epoch(), 100);
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(22, 22, 60),
    )));
    assert_eq!(m.result, natpmp::ResultCode::NOT_AUTHORIZED);
    assert_eq!(m.internal_port, 22);
    assert_eq!(
        pcp_reply(ask(&mut p, source(), t4(), &announce(scanner()))).result,
        pcp::ResultCode::SUCCESS
    );
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 60, None),
    ));
    assert_eq!(r.result, pcp::ResultCode::NOT_AUTHORIZED);
    assert_eq!(r.lifetime, 30);
    assert_eq!(
        pcp_map_data(&r).external_port,
        9000,
        "error copies the request's data"
    );
    assert!(p.live_mappings(NOW).is_empty());
}

#[test]
fn other_source_answers_like_leak_from_the_sibling() {
    let mut p = only(Behaviour::OtherSource);
    let sibling = IpAddr::V4(Ipv4Addr::new(100, 65, 0, 5));
    let reply = ask(&mut p, source(), t4(), &ext_addr());
    assert_eq!(reply.as_ref().map(|r| r.0), Some(sibling));
    assert_eq!(
        ext_result(natpmp_reply(reply)).1,
        Ipv4Addr::new(100, 64, 0, 5)
    );
    let reply = ask(&mut p, source6(), t6(), &announce(source6().ip()));
    assert_eq!(
        reply.as_ref().map(|r| r.0),
        Some("2001:db8:64::1:5".parse().expect("a"))
    );
    assert_eq!(pcp_reply(reply).result, pcp::ResultCode::SUCCESS);
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 60, None),
    ));
    assert_eq!(r.result, pcp::ResultCode::NOT_AUTHORIZED);
}

#[test]
fn swapped_gives_a_private_address_and_grants_but_checks_pcp() {
    let mut p = only(Behaviour::Swapped);
    let (result, address) = ext_result(natpmp_reply(ask(&mut p, source(), t4(), &ext_addr())));
    assert_eq!(
        (result, address),
        (natpmp::ResultCode::SUCCESS, Ipv4Addr::new(10, 64, 0, 5))
    );
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(22, 8022, 7200),
    )));
    assert_eq!(
        (m.result, m.external_port, m.lifetime),
        (natpmp::ResultCode::SUCCESS, 8022, 3600)
    );
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(23, 0, 60),
    )));
    assert_eq!(m.external_port, 23, "no suggestion: the internal port");
    assert_eq!(p.live_mappings(NOW).len(), 2);
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(22, 0, 0),
    )));
    assert_eq!(
        (m.result, m.external_port, m.lifetime),
        (natpmp::ResultCode::SUCCESS, 0, 0)
    );
    assert_eq!(p.live_mappings(NOW).len(), 1);

    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 60, None),
    ));
    assert_eq!(r.result, pcp::ResultCode::SUCCESS);
    let d = pcp_map_data(&r);
    assert_eq!(
        (d.external_port, d.external_address),
        (9000, ipv4_mapped(Ipv4Addr::new(10, 64, 0, 5)))
    );
    assert_eq!(
        (d.nonce, d.protocol, d.internal_port),
        (Nonce([7; 12]), 6, 8080)
    );
    let other = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
    let r = pcp_reply(ask(&mut p, source(), t4(), &pcp_map(other, 9001, 60, None)));
    assert_eq!(r.result, pcp::ResultCode::ADDRESS_MISMATCH);
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9002, 60, Some(other)),
    ));
    assert_eq!(r.result, pcp::ResultCode::NOT_AUTHORIZED);
    assert_eq!(p.live_mappings(NOW).len(), 2);
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 0, None),
    ));
    assert_eq!((r.result, r.lifetime), (pcp::ResultCode::SUCCESS, 0));
    assert_eq!(p.live_mappings(NOW).len(), 1);

    // IPv6: a ULA external address, no NAT-PMP.
    assert_eq!(ask(&mut p, source6(), t6(), &ext_addr()), None);
    let r = pcp_reply(ask(
        &mut p,
        source6(),
        t6(),
        &pcp_map(source6().ip(), 9000, 60, None),
    ));
    assert_eq!(
        pcp_map_data(&r).external_address,
        "fd00::5".parse::<Ipv6Addr>().expect("a")
    );
}

#[test]
fn swapped_nofail_fails_with_network_failure() {
    let mut p = only(Behaviour::SwappedNofail);
    let r = natpmp_reply(ask(&mut p, source(), t4(), &ext_addr()));
    assert_eq!(
        ext_result(r),
        (natpmp::ResultCode::NETWORK_FAILURE, Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!(r.epoch(), 100);
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(22, 22, 60),
    )));
    assert_eq!(m.result, natpmp::ResultCode::NETWORK_FAILURE);
    assert_eq!(
        pcp_reply(ask(&mut p, source(), t4(), &announce(scanner()))).result,
        pcp::ResultCode::SUCCESS
    );
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 60, None),
    ));
    assert_eq!(r.result, pcp::ResultCode::NETWORK_FAILURE);
    assert!(p.live_mappings(NOW).is_empty());
}

#[test]
fn open_grants_everything_even_for_others() {
    let mut p = only(Behaviour::Open);
    assert_eq!(
        ext_result(natpmp_reply(ask(&mut p, source(), t4(), &ext_addr()))).1,
        Ipv4Addr::new(100, 64, 0, 5)
    );
    let m = map_result(natpmp_reply(ask(
        &mut p,
        source(),
        t4(),
        &natpmp_map(22, 8022, 60),
    )));
    assert_eq!(
        (m.result, m.external_port, m.lifetime),
        (natpmp::ResultCode::SUCCESS, 8022, 60)
    );
    let other = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
    let r = pcp_reply(ask(&mut p, source(), t4(), &pcp_map(other, 9001, 60, None)));
    assert_eq!(r.result, pcp::ResultCode::SUCCESS);
    let d = pcp_map_data(&r);
    assert_eq!(
        (d.external_port, d.external_address),
        (9001, ipv4_mapped(Ipv4Addr::new(100, 64, 0, 5)))
    );
    let victim = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9002, 60, Some(victim)),
    ));
    assert_eq!(r.result, pcp::ResultCode::SUCCESS);
    assert_eq!(r.options.third_party, Some(pcp::to_wire_address(victim)));
    let clients: Vec<IpAddr> = p.live_mappings(NOW).iter().map(|(k, _)| k.client).collect();
    assert!(clients.contains(&other) && clients.contains(&victim) && clients.contains(&scanner()));
    // Expiry.
    assert_eq!(p.live_mappings(NOW + Duration::from_secs(60)).len(), 0);
    p.expire(NOW + Duration::from_secs(60));
    assert!(p.live_mappings(NOW).is_empty());
}

#[test]
fn open_reassign_never_gives_the_suggested_port() {
    let mut p = only(Behaviour::OpenReassign);
    for suggested in [0u16, 1, 22, 1023, 1024, 8080, 65535] {
        let m = map_result(natpmp_reply(ask(
            &mut p,
            source(),
            t4(),
            &natpmp_map(22, suggested, 60),
        )));
        assert_eq!(m.result, natpmp::ResultCode::SUCCESS);
        assert_ne!(m.external_port, suggested);
        assert!(
            m.external_port >= 1024,
            "{suggested} -> {}",
            m.external_port
        );
        let r = pcp_reply(ask(
            &mut p,
            source(),
            t4(),
            &pcp_map(scanner(), suggested, 60, None),
        ));
        assert_eq!(r.result, pcp::ResultCode::SUCCESS);
        assert_ne!(pcp_map_data(&r).external_port, suggested);
    }
}

#[test]
fn pcp_only_ignores_natpmp() {
    let mut p = only(Behaviour::PcpOnly);
    assert_eq!(ask(&mut p, source(), t4(), &ext_addr()), None);
    assert_eq!(ask(&mut p, source(), t4(), &natpmp_map(22, 22, 60)), None);
    assert_eq!(
        pcp_reply(ask(&mut p, source(), t4(), &announce(scanner()))).result,
        pcp::ResultCode::SUCCESS
    );
    let r = pcp_reply(ask(
        &mut p,
        source(),
        t4(),
        &pcp_map(scanner(), 9000, 60, None),
    ));
    assert_eq!(r.result, pcp::ResultCode::NOT_AUTHORIZED);
}

#[test]
fn garbage_never_parses() {
    let mut p = only(Behaviour::Garbage);
    let requests = [
        ext_addr(),
        natpmp_map(22, 22, 60),
        announce(scanner()),
        pcp_map(scanner(), 9, 60, None),
    ];
    let mut lengths = std::collections::HashSet::new();
    for i in 0..2000u16 {
        let source = SocketAddr::V4(SocketAddrV4::new(SCANNER, i));
        for req in &requests {
            let (from, bytes) = ask(&mut p, source, t4(), req).expect("garbage always answers");
            assert_eq!(from, t4());
            assert!(natpmp::Response::parse(&bytes).is_err(), "{bytes:?}");
            assert!(pcp::Response::parse(&bytes).is_err(), "{bytes:?}");
            lengths.insert(bytes.len());
        }
    }
    assert!(
        lengths.contains(&7)
            && lengths.contains(&12)
            && lengths.contains(&23)
            && lengths.len() > 10
    );
}

#[test]
fn unknown_requests_get_rfc_answers_or_none() {
    let mut p = only(Behaviour::Leak);
    // NAT-PMP unsupported opcode: echoed with result 5.
    let (_, bytes) = ask(&mut p, source(), t4(), &[0, 9]).expect("reply");
    assert_eq!(&bytes[..4], &[0, 0x89, 0, 5]);
    // NAT-PMP version 1: unsupported version.
    let r = natpmp_reply(ask(&mut p, source(), t4(), &[1, 0]));
    assert_eq!(r.result(), natpmp::ResultCode::UNSUPPORTED_VERSION);
    // PCP unknown opcode: UNSUPP_OPCODE.
    let mut req = announce(scanner());
    req[1] = 5;
    let (_, bytes) = ask(&mut p, source(), t4(), &req).expect("reply");
    assert_eq!(bytes[3], pcp::ResultCode::UNSUPP_OPCODE.0);
    // Responses and empty datagrams: nothing.
    assert_eq!(ask(&mut p, source(), t4(), &[]), None);
    assert_eq!(ask(&mut p, source(), t4(), &[0, 0x80]), None);
}

#[test]
fn sibling_and_private_addresses() {
    assert_eq!(
        sibling(t4(), 65536),
        IpAddr::V4(Ipv4Addr::new(100, 65, 0, 5))
    );
    assert_eq!(
        sibling(t6(), 65536),
        "2001:db8:64::1:5".parse::<IpAddr>().expect("a")
    );
    assert_eq!(
        sibling("::ffff:ffff".parse().expect("a"), 1),
        "::".parse::<IpAddr>().expect("a")
    );
    assert_eq!(
        private_v4(Ipv4Addr::new(100, 64, 2, 3)),
        Ipv4Addr::new(10, 64, 2, 3)
    );
}

#[test]
fn zmaps_four_byte_probe_is_an_external_address_request() {
    let mut p = only(Behaviour::Leak);
    let r = natpmp_reply(ask(&mut p, source(), t4(), &[0, 0, 0, 0]));
    assert_eq!(
        ext_result(r),
        (natpmp::ResultCode::SUCCESS, Ipv4Addr::new(100, 64, 0, 5))
    );
    let mut long_map = natpmp_map(22, 22, 60);
    long_map.extend_from_slice(&[0; 4]);
    let m = map_result(natpmp_reply(ask(&mut p, source(), t4(), &long_map)));
    assert_eq!(m.result, natpmp::ResultCode::NOT_AUTHORIZED);
    // Too short stays unanswered.
    assert_eq!(
        ask(&mut p, source(), t4(), &natpmp_map(22, 22, 60)[..11]),
        None
    );
}
