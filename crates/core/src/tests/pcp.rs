//! PCP (RFC 6887): MAP, PEER and ANNOUNCE, options, version negotiation, IPv6
//! pinholes, and the table and epoch it shares with NAT-PMP.

use super::*;
use natwarden_wire::pcp::{
    self, ipv4_mapped, Filter, Filters, MapData, OpData, Options, PeerData, Request as PcpRequest,
    Response as PcpResponse, ResultCode as Pcp,
};
use std::net::Ipv6Addr;

const NONCE: pcp::Nonce = pcp::Nonce([7; 12]);
const GW6: &str = "2001:db8:1::1";
const HOST6: &str = "2001:db8:1::10";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6")
}

fn dual_stack() -> Policy {
    let mut p = policy();
    p.internal[0].nets6 = vec![
        crate::Ipv6Net::new(v6(GW6), 64).expect("net"),
        crate::Ipv6Net::new(v6("fe80::1"), 64).expect("net"),
    ];
    p
}

fn lan6(client: &str) -> Ingress {
    Ingress {
        interface: LAN_IF,
        source: SocketAddr::new(IpAddr::V6(v6(client)), 40000),
        destination: IpAddr::V6(v6(GW6)),
    }
}

fn map(client: IpAddr, protocol: u8, port: u16, suggested: u16, lifetime: u32) -> PcpRequest {
    PcpRequest {
        lifetime,
        client_address: pcp::to_wire_address(client),
        op: OpData::Map(MapData {
            nonce: NONCE,
            protocol,
            internal_port: port,
            external_port: suggested,
            external_address: ipv4_mapped(Ipv4Addr::UNSPECIFIED),
        }),
        options: Options::NONE,
    }
}

fn peer(client: IpAddr, port: u16, lifetime: u32) -> PcpRequest {
    PcpRequest {
        lifetime,
        client_address: pcp::to_wire_address(client),
        op: OpData::Peer(PeerData {
            nonce: NONCE,
            protocol: 17,
            internal_port: port,
            external_port: 0,
            external_address: ipv4_mapped(Ipv4Addr::UNSPECIFIED),
            remote_peer_port: 3478,
            remote_peer_address: ipv4_mapped(Ipv4Addr::new(203, 0, 113, 50)),
        }),
        options: Options::NONE,
    }
}

impl Harness {
    fn pcp(&mut self, ingress: Ingress, req: &PcpRequest) -> PcpResponse {
        let mut buf = [0u8; 1100];
        let n = req.emit(&mut buf);
        let reply = self
            .send_raw(ingress, &buf[..n])
            .expect("a LAN PCP request is answered");
        PcpResponse::parse(&reply).expect("the gateway emits valid PCP")
    }
}

fn map_data(r: &PcpResponse) -> MapData {
    match r.op {
        OpData::Map(d) => d,
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc6887_11_map_opens_a_forward_with_our_external_address() {
    let mut h = Harness::new(policy());
    let r = h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 8080, 3600));
    assert_eq!((r.result, r.lifetime, r.epoch), (Pcp::SUCCESS, 3600, 0));
    let d = map_data(&r);
    assert_eq!(
        (d.external_port, d.external_address, d.nonce),
        (8080, ipv4_mapped(EXT), NONCE)
    );
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST, Protocol::Tcp, 8080, 8080)])
    );
    assert_eq!(
        h.gw.mappings().next().map(|m| (m.origin, m.nonce)),
        Some((Origin::Pcp, Some(NONCE.0)))
    );
}

#[test]
fn rfc6887_11_natpmp_and_pcp_share_one_mapping_both_ways() {
    let mut h = Harness::new(policy());
    // NAT-PMP first; PCP sees and renews the same mapping, adopting its nonce.
    let (_, port, _) = h.map(8080, 0, 7200);
    let r = h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 0, 3600));
    assert_eq!((r.result, map_data(&r).external_port), (Pcp::SUCCESS, port));
    assert_eq!(h.kernel.len(), 1);
    // PCP first; NAT-PMP renews it and gets the same port.
    let r = h.pcp(lan(HOST), &map(HOST.into(), 17, 5000, 5000, 3600));
    assert_eq!(r.result, Pcp::SUCCESS);
    match h.map_from(HOST, Protocol::Udp, 5000, 0, 600) {
        Response::Map(m) => assert_eq!(
            (m.result, m.external_port, m.lifetime),
            (ResultCode::SUCCESS, 5000, 600)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.kernel.len(), 2);
    // A NAT-PMP deletion removes the PCP mapping too.
    match h.map_from(HOST, Protocol::Udp, 5000, 0, 0) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.kernel.len(), 1);
}

#[test]
fn rfc6887_11_3_nonce_must_match_to_renew_or_delete() {
    let mut h = Harness::new(policy());
    h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 8080, 3600));
    h.advance(100);
    // "rejected with a NOT_AUTHORIZED error with the lifetime of the error
    // indicating duration of that existing mapping": 3500 s left, not 7.4's 30 min
    // (a regression: it was the long error lifetime). Deleting all of the client's
    // TCP mappings with the wrong nonce says the same.
    for (port, lifetime) in [(8080, 3600), (8080, 0), (0, 0)] {
        let mut other = map(HOST.into(), 6, port, 8080, lifetime);
        if let OpData::Map(d) = &mut other.op {
            d.nonce = pcp::Nonce([9; 12]);
        }
        let r = h.pcp(lan(HOST), &other);
        assert_eq!(
            (r.result, r.lifetime),
            (Pcp::NOT_AUTHORIZED, 3500),
            "port {port}, lifetime {lifetime}"
        );
        assert_eq!(h.kernel.len(), 1, "lifetime {lifetime}");
    }
    let r = h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 0, 0));
    assert_eq!((r.result, r.lifetime), (Pcp::SUCCESS, 0));
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6887_8_3_forged_client_address_gets_address_mismatch() {
    let mut h = Harness::new(policy());
    let forged = map(HOST2.into(), 6, 8080, 8080, 3600);
    let r = h.pcp(lan(HOST), &forged);
    assert_eq!(
        (r.result, r.lifetime),
        (Pcp::ADDRESS_MISMATCH, pcp::LONG_ERROR_LIFETIME)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6887_13_1_third_party_is_refused_unless_allowed_for_the_requester() {
    let mut req = map(HOST.into(), 6, 8080, 8080, 3600);
    req.options.third_party = Some(ipv4_mapped(HOST2));
    let mut h = Harness::new(policy());
    assert_eq!(h.pcp(lan(HOST), &req).result, Pcp::NOT_AUTHORIZED);
    assert!(h.kernel.is_empty());

    let mut p = policy();
    p.third_party_clients = vec![HOST.into()];
    let mut h = Harness::new(p);
    let r = h.pcp(lan(HOST), &req);
    assert_eq!(r.result, Pcp::SUCCESS);
    assert_eq!(
        r.options.third_party,
        Some(ipv4_mapped(HOST2)),
        "processed options echoed"
    );
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 8080, 8080)])
    );
    // Even an allowed requester cannot name the gateway or a host outside the LAN.
    for target in [GW_LAN, Ipv4Addr::new(10, 9, 9, 9)] {
        req.options.third_party = Some(ipv4_mapped(target));
        assert_eq!(
            h.pcp(lan(HOST), &req).result,
            Pcp::NOT_AUTHORIZED,
            "{target}"
        );
    }
}

#[test]
fn rfc6887_13_2_prefer_failure_refuses_another_port() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200);
    let mut req = map(HOST.into(), 6, 8080, 8080, 3600);
    req.options.prefer_failure = true;
    let r = h.pcp(lan(HOST), &req);
    assert_eq!(
        (r.result, r.lifetime),
        (Pcp::CANNOT_PROVIDE_EXTERNAL, pcp::SHORT_ERROR_LIFETIME)
    );
    req.options.prefer_failure = false;
    let r = h.pcp(lan(HOST), &req);
    assert_eq!(r.result, Pcp::SUCCESS);
    assert_ne!(map_data(&r).external_port, 8080);
}

#[test]
fn rfc6887_13_3_filter_is_not_offered() {
    let mut h = Harness::new(policy());
    let mut req = map(HOST.into(), 6, 8080, 8080, 3600);
    let mut filters = Filters::new();
    filters
        .push(Filter {
            prefix_len: 128,
            remote_peer_port: 0,
            remote_peer_address: ipv4_mapped(Ipv4Addr::new(203, 0, 113, 5)),
        })
        .expect("room");
    req.options.filters = filters;
    assert_eq!(h.pcp(lan(HOST), &req).result, Pcp::UNSUPP_OPTION);
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6887_12_peer_pins_the_outbound_port_and_only_extends() {
    let mut h = Harness::new(policy());
    let r = h.pcp(lan(HOST), &peer(HOST.into(), 5000, 600));
    assert_eq!((r.result, r.lifetime), (Pcp::SUCCESS, 600));
    let OpData::Peer(d) = r.op else {
        panic!("{r:?}")
    };
    assert_eq!(d.external_address, ipv4_mapped(EXT));
    assert!(h.kernel.is_empty(), "PEER opens nothing inbound");
    assert_eq!(h.outbound.len(), 1);
    let o = h.outbound.iter().next().copied().expect("outbound");
    assert_eq!(
        (o.internal, o.external_port),
        (SocketAddrV4::new(HOST, 5000), d.external_port)
    );
    // A shorter PEER does not shorten; a longer one extends.
    assert_eq!(
        h.pcp(lan(HOST), &peer(HOST.into(), 5000, 200)).lifetime,
        600
    );
    assert_eq!(
        h.pcp(lan(HOST), &peer(HOST.into(), 5000, 1200)).lifetime,
        1200
    );
    // A MAP for the same port adds the inbound forward on the same external port.
    let r = h.pcp(lan(HOST), &map(HOST.into(), 17, 5000, 0, 600));
    assert_eq!(map_data(&r).external_port, d.external_port);
    assert_eq!(h.kernel.len(), 1);
    h.advance(1300);
    assert!(h.kernel.is_empty() && h.outbound.is_empty());
}

#[test]
fn rfc6887_14_1_announce_request_is_answered() {
    let mut h = Harness::new(policy());
    h.now += Duration::from_secs(9);
    let req = PcpRequest {
        lifetime: 0,
        client_address: ipv4_mapped(HOST),
        op: OpData::Announce,
        options: Options::NONE,
    };
    let r = h.pcp(lan(HOST), &req);
    assert_eq!(
        (r.result, r.lifetime, r.epoch, r.op),
        (Pcp::SUCCESS, 0, 9, OpData::Announce)
    );
}

#[test]
fn rfc6887_9_version_negotiation() {
    let mut h = Harness::new(policy());
    // Version 1 (and anything else unknown): UNSUPP_VERSION naming version 2.
    for version in [1u8, 3, 255] {
        let mut req = [0u8; 24];
        req[0] = version;
        req[1] = 1;
        let reply = h.send_raw(lan(HOST), &req).expect("answered");
        assert_eq!(
            (reply[0], reply[1], reply[3]),
            (2, 0x81, Pcp::UNSUPP_VERSION.0),
            "version {version}"
        );
    }
    // PCP-only: NAT-PMP gets PCP's UNSUPP_VERSION.
    let mut p = policy();
    p.nat_pmp = false;
    let mut h = Harness::new(p);
    let reply = h.send_raw(lan(HOST), &ADDR_REQ).expect("answered");
    assert_eq!((reply[0], reply[3]), (2, Pcp::UNSUPP_VERSION.0));
}

/// Regression: a one-octet datagram of any version but 0 and 2 was answered with
/// UNSUPP_VERSION; RFC 6887 section 8.2 drops anything shorter than two octets
/// before looking at the version.
#[test]
fn rfc6887_8_2_one_octet_datagrams_are_dropped_whatever_the_version() {
    let mut h = Harness::new(policy());
    for version in [0u8, 1, 2, 3, 255] {
        assert_eq!(
            h.send_raw(lan(HOST), &[version]),
            Err(DropReason::Malformed),
            "version {version}"
        );
    }
    // Two octets of an unsupported version are answered, R bit clear.
    let reply = h.send_raw(lan(HOST), &[1, 0]).expect("answered");
    assert_eq!(
        (reply.len(), reply[0], reply[1], reply[3]),
        (24, 2, 0x80, 1)
    );
    assert_eq!(
        h.send_raw(lan(HOST), &[1, 0x80]),
        Err(DropReason::NotARequest)
    );
}

#[test]
fn rfc6887_8_3_malformed_and_mandatory_unknown_options() {
    let mut h = Harness::new(policy());
    let mut buf = [0u8; 1100];
    let n = map(HOST.into(), 6, 8080, 8080, 3600).emit(&mut buf);
    // Not a multiple of 4: MALFORMED_REQUEST.
    let reply = h.send_raw(lan(HOST), &buf[..n + 2]).expect("answered");
    assert_eq!(reply[3], Pcp::MALFORMED_REQUEST.0);
    // An unknown mandatory option (code 99): UNSUPP_OPTION; optional (199): ignored.
    for (code, expected) in [(99u8, Pcp::UNSUPP_OPTION), (199, Pcp::SUCCESS)] {
        let mut req = buf[..n].to_vec();
        req.extend_from_slice(&[code, 0, 0, 0]);
        let reply = h.send_raw(lan(HOST), &req).expect("answered");
        assert_eq!(reply[3], expected.0, "option {code}");
    }
    // Responses sent to the server are dropped.
    let mut resp = buf[..n].to_vec();
    resp[1] |= 0x80;
    assert_eq!(h.send_raw(lan(HOST), &resp), Err(DropReason::NotARequest));
}

#[test]
fn pcp_from_the_wan_is_silent() {
    let mut h = Harness::new(policy());
    let mut buf = [0u8; 1100];
    let n = map(Ipv4Addr::new(203, 0, 113, 9).into(), 6, 8080, 8080, 3600).emit(&mut buf);
    let wan = Ingress {
        interface: WAN_IF,
        source: sa(Ipv4Addr::new(203, 0, 113, 9), 5351),
        destination: EXT.into(),
    };
    assert_eq!(
        h.send_raw(wan, &buf[..n]),
        Err(DropReason::ExternalInterface)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn pcp_errors_carry_rfc_lifetimes_quota_and_resources() {
    let mut p = policy();
    p.max_per_client = 1;
    let mut h = Harness::new(p);
    assert_eq!(
        h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 8080, 3600))
            .result,
        Pcp::SUCCESS
    );
    let r = h.pcp(lan(HOST), &map(HOST.into(), 6, 8081, 8081, 3600));
    assert_eq!(
        (r.result, r.lifetime),
        (Pcp::USER_EX_QUOTA, pcp::SHORT_ERROR_LIFETIME)
    );
    let mut full = policy();
    full.max_total = 1;
    let mut g = Harness::new(full);
    g.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 8080, 3600));
    let r = g.pcp(lan(HOST2), &map(HOST2.into(), 6, 8081, 8081, 3600));
    assert_eq!(
        (r.result, r.lifetime),
        (Pcp::NO_RESOURCES, pcp::SHORT_ERROR_LIFETIME)
    );
    let r = h.pcp(lan(HOST), &map(HOST.into(), 132, 8081, 8081, 3600));
    assert_eq!(r.result, Pcp::UNSUPP_PROTOCOL);
    h.gw.set_external_address(h.now, None);
    let r = h.pcp(lan(HOST2), &map(HOST2.into(), 6, 8082, 8082, 3600));
    assert_eq!(
        (r.result, r.lifetime),
        (Pcp::NETWORK_FAILURE, pcp::SHORT_ERROR_LIFETIME)
    );
}

#[test]
fn protocol_zero_lifetime_zero_deletes_all_of_the_clients_mappings() {
    let mut h = Harness::new(policy());
    h.pcp(lan(HOST), &map(HOST.into(), 6, 8080, 8080, 3600));
    h.pcp(lan(HOST), &map(HOST.into(), 17, 8081, 8081, 3600));
    h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 3600);
    assert_eq!(
        h.pcp(lan(HOST), &map(HOST.into(), 0, 0, 0, 0)).result,
        Pcp::SUCCESS
    );
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 8082, 8082)])
    );
}

#[test]
fn rfc6887_ipv6_map_opens_a_pinhole_to_the_requester_only() {
    let mut h = Harness::new(dual_stack());
    let client = IpAddr::V6(v6(HOST6));
    let r = h.pcp(lan6(HOST6), &map(client, 6, 8080, 9999, 3600));
    assert_eq!(r.result, Pcp::SUCCESS);
    let d = map_data(&r);
    assert_eq!(
        (d.external_port, d.external_address),
        (8080, v6(HOST6)),
        "no translation"
    );
    assert_eq!(
        h.pinholes
            .iter()
            .map(|p| (p.address, p.port))
            .collect::<Vec<_>>(),
        vec![(v6(HOST6), 8080)]
    );
    assert!(h.kernel.is_empty());
    // The same rules, quotas and lifetimes: privileged ports stay closed.
    assert_eq!(
        h.pcp(lan6(HOST6), &map(client, 6, 22, 22, 3600)).result,
        Pcp::NOT_AUTHORIZED
    );
    // A link-local source (or one outside the LAN prefix) is dropped.
    let ll = Ingress {
        source: SocketAddr::new(IpAddr::V6(v6("fe80::10")), 40000),
        ..lan6(HOST6)
    };
    let mut buf = [0u8; 1100];
    let n = map(ll.source.ip(), 6, 8081, 0, 3600).emit(&mut buf);
    assert_eq!(h.send_raw(ll, &buf[..n]), Err(DropReason::ClientNotAllowed));
    let stranger = lan6("2001:db8:99::5");
    let n = map(stranger.source.ip(), 6, 8081, 0, 3600).emit(&mut buf);
    assert_eq!(
        h.send_raw(stranger, &buf[..n]),
        Err(DropReason::ClientNotAllowed)
    );
    // Deleting closes the pinhole.
    assert_eq!(
        h.pcp(lan6(HOST6), &map(client, 6, 8080, 0, 0)).result,
        Pcp::SUCCESS
    );
    assert!(h.pinholes.is_empty());
}

#[test]
fn rfc6887_14_1_3_announce_goes_to_both_families_on_a_dual_stack_lan() {
    let mut h = Harness::new(dual_stack());
    let out = h.announcements_at(h.now);
    let to: Vec<Multicast> = out.iter().map(|a| a.to).collect();
    assert_eq!(to, vec![Multicast::V4, Multicast::V4, Multicast::V6]);
    assert_eq!(
        PcpResponse::parse(out[2].payload()),
        Ok(PcpResponse::announce(0))
    );
}

#[test]
fn one_host_rotating_ipv6_addresses_gets_one_quota_and_one_rate_limit() {
    let mut p = dual_stack();
    p.max_per_client = 4;
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    let mac = [0x02, 0, 0, 0, 0, 0x10];
    let addr = |i: u16| format!("2001:db8:1::{:x}", 0x1000 + i);
    let mut granted = 0;
    for i in 0..200u16 {
        let a = addr(i);
        h.gw.learn_host(IpAddr::V6(v6(&a)), mac);
        let r = h.pcp(lan6(&a), &map(IpAddr::V6(v6(&a)), 6, 10000 + i, 0, 3600));
        if r.result == Pcp::SUCCESS {
            granted += 1;
        } else {
            assert_eq!(r.result, Pcp::USER_EX_QUOTA, "address {a}");
        }
    }
    assert_eq!(
        granted, 4,
        "200 addresses of one link-layer host share its quota"
    );
    // Another host (another link-layer address) has a quota of its own.
    let other = "2001:db8:1::20";
    h.gw.learn_host(IpAddr::V6(v6(other)), [0x02, 0, 0, 0, 0, 0x20]);
    let r = h.pcp(lan6(other), &map(IpAddr::V6(v6(other)), 6, 10000, 0, 3600));
    assert_eq!(r.result, Pcp::SUCCESS);

    // The rate limit is per host too: the rotation does not refill it.
    let mut p = dual_stack();
    p.requests_per_second_per_client = 3;
    let mut h = Harness::new(p);
    let answered = (0..50u16)
        .filter(|&i| {
            let a = addr(i);
            h.gw.learn_host(IpAddr::V6(v6(&a)), mac);
            let mut buf = [0u8; 1100];
            let n = map(IpAddr::V6(v6(&a)), 6, 10000 + i, 0, 3600).emit(&mut buf);
            h.send_raw(lan6(&a), &buf[..n]).is_ok()
        })
        .count();
    assert_eq!(
        answered, 3,
        "one second's worth of requests, whatever the address"
    );
}
