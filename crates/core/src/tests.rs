//! Gateway behaviour, request by request, with an injected clock and no sockets.
//! Each test names the RFC 6886 rule or the CERT VU#184540 problem it pins.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use natwarden_wire::natpmp::{MapRequest, Request, Response, ResultCode};
use natwarden_wire::Protocol;
use proptest::prelude::*;

use crate::*;

const LAN_IF: u32 = 3;
const WAN_IF: u32 = 2;
const OTHER_IF: u32 = 7;
const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const HOST2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);

fn policy() -> Policy {
    Policy::new(
        vec![InternalInterface {
            name: "lan0".into(),
            index: LAN_IF,
            net: Ipv4Net::new(GW_LAN, 24).expect("prefix"),
            nets6: Vec::new(),
        }],
        WAN_IF,
    )
}

struct Harness {
    gw: Gateway,
    t0: Instant,
    now: Instant,
    /// What a firewall backend would hold after applying every change in order.
    kernel: BTreeSet<Forward>,
    outbound: BTreeSet<Outbound>,
    pinholes: BTreeSet<Pinhole>,
    /// Journal records polled so far, in order.
    events: Vec<StateEvent>,
    /// Announcements polled so far, not yet taken by a test.
    announced: Vec<Announcement>,
}

impl Harness {
    fn new(policy: Policy) -> Harness {
        let t0 = Instant::now();
        Harness {
            gw: Gateway::new(policy, t0, Some(EXT), 0x5eed),
            t0,
            now: t0,
            kernel: BTreeSet::new(),
            outbound: BTreeSet::new(),
            pinholes: BTreeSet::new(),
            events: Vec::new(),
            announced: Vec::new(),
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.drain();
    }

    /// Polls the gateway at `self.now` until it waits, carrying out its outputs as the
    /// daemon would: firewall changes applied, journal records and announcements kept;
    /// returns the replies and drops.
    fn drain(&mut self) -> Vec<Result<Reply, DropReason>> {
        self.drain_at(self.now)
    }

    fn drain_at(&mut self, now: Instant) -> Vec<Result<Reply, DropReason>> {
        let mut answers = Vec::new();
        loop {
            match self.gw.poll(now) {
                Output::Firewall(c) => self.apply(vec![c]),
                Output::Journal(e) => self.events.push(e),
                Output::Transmit(Transmit::Reply(r)) => answers.push(Ok(r)),
                Output::Transmit(Transmit::Announcement(a)) => self.announced.push(a),
                Output::Dropped { reason, .. } => answers.push(Err(reason)),
                Output::Wait(_) => return answers,
            }
        }
    }

    fn apply(&mut self, changes: Vec<FirewallChange>) {
        for c in changes {
            match c {
                FirewallChange::Add(f) => assert!(self.kernel.insert(f), "added twice: {f:?}"),
                FirewallChange::Remove(f) => {
                    assert!(self.kernel.remove(&f), "removed unknown: {f:?}")
                }
                FirewallChange::AddOutbound(o) => assert!(self.outbound.insert(o), "{o:?}"),
                FirewallChange::RemoveOutbound(o) => assert!(self.outbound.remove(&o), "{o:?}"),
                FirewallChange::AddPinhole(p) => assert!(self.pinholes.insert(p), "{p:?}"),
                FirewallChange::RemovePinhole(p) => assert!(self.pinholes.remove(&p), "{p:?}"),
            }
        }
    }

    fn send_raw(&mut self, ingress: Ingress, bytes: &[u8]) -> Result<Vec<u8>, DropReason> {
        // Whatever was due before the datagram, as the daemon's loop does.
        self.drain();
        let (kernel, outbound, pinholes) = (
            self.kernel.clone(),
            self.outbound.clone(),
            self.pinholes.clone(),
        );
        self.gw.handle(self.now, &ingress, bytes);
        let mut answers = self.drain();
        assert_eq!(answers.len(), 1, "one datagram, one verdict: {answers:?}");
        match answers.remove(0) {
            Ok(r) => {
                assert_eq!(r.to, ingress, "a reply goes back the way its request came");
                Ok(r.payload)
            }
            Err(reason) => {
                assert!(
                    self.kernel == kernel && self.outbound == outbound && self.pinholes == pinholes,
                    "a dropped request changed the firewall"
                );
                Err(reason)
            }
        }
    }

    fn send(&mut self, ingress: Ingress, req: Request) -> Result<Response, DropReason> {
        let mut buf = [0u8; 16];
        let n = req.emit(&mut buf);
        self.send_raw(ingress, &buf[..n])
            .map(|bytes| Response::parse(&bytes).expect("the gateway emits valid responses"))
    }

    fn map_from(
        &mut self,
        client: Ipv4Addr,
        protocol: Protocol,
        int: u16,
        sugg: u16,
        life: u32,
    ) -> Response {
        self.send(
            lan(client),
            Request::Map(MapRequest {
                protocol,
                internal_port: int,
                suggested_external_port: sugg,
                lifetime: life,
            }),
        )
        .expect("a LAN request is answered")
    }

    fn map(&mut self, int: u16, sugg: u16, life: u32) -> (ResultCode, u16, u32) {
        match self.map_from(HOST, Protocol::Tcp, int, sugg, life) {
            Response::Map(m) => {
                assert_eq!(m.internal_port, int, "section 3.5: internal port echoed");
                assert_eq!(m.protocol, Protocol::Tcp);
                (m.result, m.external_port, m.lifetime)
            }
            other => panic!("expected a map response, got {other:?}"),
        }
    }

    /// Takes every announcement due now; returns how many there were.
    fn drain_announcements(&mut self) -> usize {
        self.drain();
        std::mem::take(&mut self.announced).len()
    }

    /// The announcements polled at `t`, and any polled before and not yet taken.
    fn announcements_at(&mut self, t: Instant) -> Vec<Announcement> {
        self.drain_at(t);
        std::mem::take(&mut self.announced)
    }

    fn forwards(&self) -> BTreeSet<Forward> {
        self.gw.installed().forwards.into_iter().collect()
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn lan(client: Ipv4Addr) -> Ingress {
    Ingress {
        interface: LAN_IF,
        source: sa(client, 40000),
        destination: GW_LAN.into(),
    }
}

fn fwd(client: Ipv4Addr, protocol: Protocol, int: u16, ext: u16) -> Forward {
    Forward {
        protocol,
        external_port: ext,
        internal: SocketAddrV4::new(client, int),
    }
}

const ADDR_REQ: [u8; 2] = [0, 0];
const MAP_TCP_8080: [u8; 12] = [0, 2, 0, 0, 0x1f, 0x90, 0x1f, 0x90, 0, 0, 0x1c, 0x20];

// ---- CERT VU#184540: the five problems, each tried from the WAN side ----

#[test]
fn cert_information_disclosure_external_address_request_from_wan_is_silent() {
    let mut h = Harness::new(policy());
    let wan = Ingress {
        interface: WAN_IF,
        source: sa(Ipv4Addr::new(203, 0, 113, 9), 5555),
        destination: EXT.into(),
    };
    assert_eq!(
        h.send_raw(wan, &ADDR_REQ),
        Err(DropReason::ExternalInterface)
    );
    assert_eq!(h.gw.stats().drops_for(DropReason::ExternalInterface), 1);
}

#[test]
fn cert_wan_request_aimed_at_the_lan_address_through_the_wan_link_is_silent() {
    // The attacker routes a packet for 192.168.1.1 over the WAN link: it arrives on
    // the external interface although addressed to the internal address.
    let mut h = Harness::new(policy());
    let wan = Ingress {
        interface: WAN_IF,
        source: sa(HOST, 5555),
        destination: GW_LAN.into(),
    };
    assert_eq!(
        h.send_raw(wan, &MAP_TCP_8080),
        Err(DropReason::ExternalInterface)
    );
    assert_eq!(
        h.send_raw(wan, &ADDR_REQ),
        Err(DropReason::ExternalInterface)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn cert_interception_and_service_access_mapping_request_from_wan_opens_nothing() {
    let mut h = Harness::new(policy());
    for dst in [EXT, GW_LAN] {
        let wan = Ingress {
            interface: WAN_IF,
            source: sa(Ipv4Addr::new(203, 0, 113, 9), 5555),
            destination: dst.into(),
        };
        assert!(h.send_raw(wan, &MAP_TCP_8080).is_err());
    }
    assert!(h.kernel.is_empty() && h.gw.mapping_count() == 0);
}

#[test]
fn cert_request_addressed_to_the_external_address_from_inside_is_silent() {
    let mut h = Harness::new(policy());
    let ing = Ingress {
        destination: EXT.into(),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(ing, &MAP_TCP_8080),
        Err(DropReason::NotToInternalAddress)
    );
}

#[test]
fn cert_mapping_for_another_address_is_impossible_spoofed_source_outside_subnet() {
    let mut h = Harness::new(policy());
    let spoofed = Ingress {
        source: sa(Ipv4Addr::new(10, 9, 9, 9), 40000),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(spoofed, &MAP_TCP_8080),
        Err(DropReason::ClientNotAllowed)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn cert_dos_against_host_services_mapping_may_never_target_the_gateway() {
    let mut h = Harness::new(policy());
    for own in [
        GW_LAN,
        EXT,
        Ipv4Addr::new(192, 168, 1, 0),
        Ipv4Addr::new(192, 168, 1, 255),
    ] {
        let ing = Ingress {
            source: sa(own, 40000),
            ..lan(HOST)
        };
        assert_eq!(
            h.send_raw(ing, &MAP_TCP_8080),
            Err(DropReason::ClientNotAllowed),
            "{own}"
        );
    }
    assert!(h.kernel.is_empty());
}

#[test]
fn datagrams_on_an_unknown_interface_or_to_multicast_are_dropped() {
    let mut h = Harness::new(policy());
    let other = Ingress {
        interface: OTHER_IF,
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(other, &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    let mcast = Ingress {
        destination: Ipv4Addr::new(224, 0, 0, 1).into(),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(mcast, &ADDR_REQ),
        Err(DropReason::NotToInternalAddress)
    );
}

#[test]
fn a_mapping_always_points_at_the_requester() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Udp, 6000, 6000, 3600);
    assert_eq!(
        h.kernel.iter().copied().collect::<Vec<_>>(),
        vec![fwd(HOST2, Protocol::Udp, 6000, 6000)]
    );
}

// ---- RFC 6886 ----

#[test]
fn rfc6886_3_2_external_address_and_epoch() {
    let mut h = Harness::new(policy());
    h.now += Duration::from_secs(42);
    match h.send(lan(HOST), Request::ExternalAddress) {
        Ok(Response::ExternalAddress(r)) => {
            assert_eq!(r.result, ResultCode::SUCCESS);
            assert_eq!(r.address, EXT);
            assert_eq!(r.epoch, 42);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc6886_3_5_network_failure_without_external_address() {
    let mut h = Harness::new(policy());
    h.gw.set_external_address(h.now, None);
    match h.send(lan(HOST), Request::ExternalAddress) {
        Ok(Response::ExternalAddress(r)) => {
            assert_eq!(r.result, ResultCode::NETWORK_FAILURE);
            assert_eq!(r.address, Ipv4Addr::UNSPECIFIED, "MUST be zero on error");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.map(8080, 8080, 7200), (ResultCode::NETWORK_FAILURE, 0, 0));
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6886_3_5_unsupported_version_gets_result_1_in_nat_pmp_only_mode() {
    // RFC 6887 Appendix A: a NAT-PMP-only server answers PCP (version 2) with NAT-PMP
    // result 1 so that PCP clients fall back.
    let mut p = policy();
    p.pcp = false;
    let mut h = Harness::new(p);
    for version in [1u8, 2, 255] {
        let reply = h.send_raw(lan(HOST), &[version, 0]).expect("answered");
        assert_eq!(
            Response::parse(&reply),
            Ok(Response::UnsupportedVersion { epoch: 0 })
        );
        assert_eq!(&reply[2..4], &[0, 1]);
    }
}

#[test]
fn rfc6886_3_5_unsupported_opcode_echoes_request_with_result_5() {
    let mut h = Harness::new(policy());
    let req = [0u8, 3, 0, 0, 1, 2, 3, 4];
    let reply = h.send_raw(lan(HOST), &req).expect("answered");
    assert_eq!(reply, vec![0, 128 + 3, 0, 5, 1, 2, 3, 4]);
    assert_eq!(h.gw.stats().results[5], 1);
}

#[test]
fn rfc6886_3_5_responses_and_short_packets_are_ignored() {
    let mut h = Harness::new(policy());
    assert_eq!(
        h.send_raw(lan(HOST), &[0, 128, 0, 0]),
        Err(DropReason::NotARequest)
    );
    assert_eq!(h.send_raw(lan(HOST), &[]), Err(DropReason::Malformed));
    assert_eq!(h.send_raw(lan(HOST), &[0]), Err(DropReason::Malformed));
    assert_eq!(
        h.send_raw(lan(HOST), &MAP_TCP_8080[..11]),
        Err(DropReason::Malformed)
    );
    let mut long = MAP_TCP_8080.to_vec();
    long.push(0);
    assert_eq!(h.send_raw(lan(HOST), &long), Err(DropReason::Malformed));
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6886_3_3_suggested_port_honoured_when_free() {
    let mut h = Harness::new(policy());
    assert_eq!(h.map(8080, 9090, 7200), (ResultCode::SUCCESS, 9090, 7200));
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST, Protocol::Tcp, 8080, 9090)])
    );
    assert_eq!(h.forwards(), h.kernel);
}

#[test]
fn rfc6886_3_3_taken_port_gets_another_allowed_port() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200);
    let (res, ext, _) = h.map(8080, 8080, 7200);
    assert_eq!(res, ResultCode::SUCCESS);
    assert_ne!(ext, 8080);
    assert!(ext >= 1024, "default rules allow only unprivileged ports");
    assert_eq!(h.kernel.len(), 2);
}

#[test]
fn rfc6886_3_3_companion_port_of_other_protocol_is_reserved() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200);
    match h.map_from(HOST, Protocol::Udp, 8080, 8080, 7200) {
        Response::Map(m) => assert_ne!(m.external_port, 8080),
        other => panic!("{other:?}"),
    }
    // The owner itself may take the companion port.
    match h.map_from(HOST2, Protocol::Udp, 8080, 8080, 7200) {
        Response::Map(m) => assert_eq!(m.external_port, 8080),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc6886_3_3_same_client_renewing_gets_the_same_port() {
    let mut h = Harness::new(policy());
    let (_, first, _) = h.map(8080, 0, 7200);
    assert!(first >= 1024);
    h.advance(3000);
    assert_eq!(h.map(8080, 12345, 7200), (ResultCode::SUCCESS, first, 7200));
    assert_eq!(h.kernel.len(), 1, "a renewal adds no second forward");
    // The renewal moved the expiry: the original deadline passes without loss.
    h.advance(5000);
    assert_eq!(h.kernel.len(), 1);
    h.advance(2300);
    assert!(h.kernel.is_empty(), "expired 7200 s after the renewal");
}

#[test]
fn rfc6886_3_3_lifetimes_are_clamped_to_configured_bounds() {
    let mut p = policy();
    p.min_lifetime = 120;
    p.max_lifetime = 3600;
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 1).2, 120);
    assert_eq!(h.map(8081, 8081, 999_999).2, 3600);
    assert_eq!(h.map(8082, 8082, 600).2, 600);
}

#[test]
fn rfc6886_3_4_lifetime_zero_deletes_and_deleting_twice_succeeds_the_same() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    let first = h.map(8080, 0, 0);
    assert_eq!(first, (ResultCode::SUCCESS, 0, 0));
    assert!(h.kernel.is_empty());
    assert_eq!(h.map(8080, 0, 0), first);
}

#[test]
fn rfc6886_3_4_internal_port_zero_deletes_all_of_the_clients_mappings_for_the_protocol() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map(8081, 8081, 7200);
    h.map_from(HOST, Protocol::Udp, 8082, 8082, 7200);
    h.map_from(HOST2, Protocol::Tcp, 8083, 8083, 7200);
    assert_eq!(h.map(0, 0, 0), (ResultCode::SUCCESS, 0, 0));
    assert_eq!(
        h.kernel,
        BTreeSet::from([
            fwd(HOST, Protocol::Udp, 8082, 8082),
            fwd(HOST2, Protocol::Tcp, 8083, 8083)
        ])
    );
}

#[test]
fn rfc6886_3_4_expiry_removes_the_forward() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 200);
    h.advance(199);
    assert_eq!(h.kernel.len(), 1);
    h.advance(1);
    assert!(h.kernel.is_empty());
    assert_eq!(h.gw.stats().mappings_expired, 1);
}

#[test]
fn poll_timeout_reports_the_next_expiry() {
    let mut p = policy();
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    // Drain the start-up announcements so only the expiry remains.
    h.now += Duration::from_secs(600);
    h.drain_announcements();
    assert_eq!(h.gw.poll_timeout(), None, "nothing to wait for");
    h.map(8080, 8080, 150);
    assert_eq!(h.gw.poll_timeout(), Some(h.now + Duration::from_secs(150)));
}

#[test]
fn internal_port_zero_with_a_lifetime_is_refused() {
    let mut h = Harness::new(policy());
    assert_eq!(h.map(0, 8080, 7200), (ResultCode::NOT_AUTHORIZED, 0, 0));
}

#[test]
fn per_client_quota_gives_out_of_resources() {
    let mut p = policy();
    p.max_per_client = 2;
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    assert_eq!(h.map(8081, 8081, 7200).0, ResultCode::SUCCESS);
    assert_eq!(
        h.map(8082, 8082, 7200),
        (ResultCode::OUT_OF_RESOURCES, 0, 0)
    );
    // Renewing an existing one is still allowed, and another host has its own quota.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    match h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn global_cap_gives_out_of_resources_whoever_asks() {
    let mut p = policy();
    p.max_total = 3;
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    for port in [8080, 8081, 8082] {
        assert_eq!(h.map(port, port, 7200).0, ResultCode::SUCCESS);
    }
    // One host filled the table; another host gets "out of resources" too.
    match h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200) {
        Response::Map(m) => assert_eq!(
            (m.result, m.external_port),
            (ResultCode::OUT_OF_RESOURCES, 0)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.forwards().len(), 3);
    // Renewing is not a new mapping; and once one goes, there is room again.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    assert_eq!(h.map(8081, 8081, 0).0, ResultCode::SUCCESS);
    match h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reload_with_a_lowered_quota_closes_the_oldest_mappings_beyond_it() {
    let mut p = policy();
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p.clone());
    for port in [8080, 8081, 8082, 8083] {
        assert_eq!(h.map(port, port, 7200).0, ResultCode::SUCCESS);
        h.advance(1);
    }
    // A renewal does not make the first one younger.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200);
    p.max_per_client = 2;
    h.gw.set_policy(p.clone());
    h.drain();
    assert_eq!(
        h.forwards(),
        [
            fwd(HOST, Protocol::Tcp, 8082, 8082),
            fwd(HOST, Protocol::Tcp, 8083, 8083),
            fwd(HOST2, Protocol::Tcp, 9000, 9000),
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        h.kernel,
        h.forwards(),
        "the kernel lost the closed forwards too"
    );
    // A lowered global cap likewise keeps the newest.
    p.max_total = 1;
    h.gw.set_policy(p);
    h.drain();
    assert_eq!(
        h.forwards(),
        [fwd(HOST2, Protocol::Tcp, 9000, 9000)]
            .into_iter()
            .collect()
    );
    assert_eq!(h.kernel, h.forwards());
}

#[test]
fn exhausted_port_range_gives_out_of_resources() {
    let mut p = policy();
    p.rules = vec![Rule {
        action: Action::Allow,
        external_ports: "5000".parse().expect("range"),
        internal_addresses: "192.168.1.0/24".parse().expect("net"),
        internal_ports: "1024-65535".parse().expect("range"),
    }];
    let mut h = Harness::new(p);
    match h.map_from(HOST2, Protocol::Tcp, 8080, 0, 7200) {
        Response::Map(m) => assert_eq!((m.result, m.external_port), (ResultCode::SUCCESS, 5000)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.map(8080, 5000, 7200),
        (ResultCode::OUT_OF_RESOURCES, 0, 0)
    );
}

#[test]
fn rules_first_match_wins_and_no_match_is_not_authorized() {
    let mut p = policy();
    p.rules = vec![
        Rule {
            action: Action::Deny,
            external_ports: "1-65535".parse().expect("range"),
            internal_addresses: "192.168.1.10/32".parse().expect("net"),
            internal_ports: "1-65535".parse().expect("range"),
        },
        Rule {
            action: Action::Allow,
            external_ports: "1024-65535".parse().expect("range"),
            internal_addresses: "192.168.1.0/24".parse().expect("net"),
            internal_ports: "1024-65535".parse().expect("range"),
        },
    ];
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 7200), (ResultCode::NOT_AUTHORIZED, 0, 0));
    match h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    match h.map_from(HOST2, Protocol::Tcp, 22, 22, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
}

#[test]
fn privileged_suggested_port_is_replaced_by_an_allowed_one() {
    let mut h = Harness::new(policy());
    let (res, ext, _) = h.map(8080, 80, 7200);
    assert_eq!(res, ResultCode::SUCCESS);
    assert!(ext >= 1024);
}

#[test]
fn rate_limit_drops_a_flooding_client_but_not_its_neighbour() {
    let mut p = policy();
    p.requests_per_second_per_client = 3;
    let mut h = Harness::new(p);
    for _ in 0..3 {
        assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
    }
    assert_eq!(
        h.send_raw(lan(HOST), &ADDR_REQ),
        Err(DropReason::RateLimited)
    );
    assert!(h.send_raw(lan(HOST2), &ADDR_REQ).is_ok());
    h.now += Duration::from_secs(1);
    assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
}

#[test]
fn wan_floods_do_not_consume_a_lan_clients_rate() {
    let mut p = policy();
    p.requests_per_second_per_client = 1;
    let mut h = Harness::new(p);
    let wan = Ingress {
        interface: WAN_IF,
        ..lan(HOST)
    };
    for _ in 0..10 {
        assert!(h.send_raw(wan, &ADDR_REQ).is_err());
    }
    assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
}

#[test]
fn rfc6886_3_2_1_ten_announcements_250ms_doubling_with_current_epoch() {
    let mut h = Harness::new(policy());
    let mut times = Vec::new();
    let mut t = h.t0;
    // Step through time in 50 ms ticks for 200 s, recording each announcement.
    for _ in 0..4000 {
        let out = h.announcements_at(t);
        if !out.is_empty() {
            // NAT-PMP's external address to 224.0.0.1, and PCP's ANNOUNCE (RFC 6887
            // section 14.1.3) with the same epoch.
            assert_eq!(out.len(), 2, "{out:?}");
            let secs = t.duration_since(h.t0).as_secs();
            match Response::parse(out[0].payload()) {
                Ok(Response::ExternalAddress(r)) => {
                    assert_eq!(r.address, EXT);
                    assert_eq!(u64::from(r.epoch), secs);
                }
                other => panic!("{other:?}"),
            }
            let pcp = natwarden_wire::pcp::Response::parse(out[1].payload()).expect("PCP ANNOUNCE");
            assert_eq!(pcp, natwarden_wire::pcp::Response::announce(secs as u32));
            assert!(
                out.iter().all(|a| a.to == Multicast::V4),
                "no IPv6 on this LAN"
            );
            times.push(t.duration_since(h.t0).as_millis());
        }
        t += Duration::from_millis(50);
    }
    assert_eq!(
        times,
        vec![0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750, 127750]
    );
}

#[test]
fn address_change_resets_epoch_and_announces_again() {
    let mut p = policy();
    p.pcp = false;
    let mut h = Harness::new(p);
    h.now += Duration::from_secs(300);
    h.drain_announcements();
    assert_eq!(h.gw.epoch(h.now), 300);
    let new = Ipv4Addr::new(198, 51, 100, 8);
    h.gw.set_external_address(h.now, Some(new));
    assert_eq!(h.gw.epoch(h.now), 0);
    assert_eq!(h.drain_announcements(), 1);
    // Losing the address stops NAT-PMP announcements until it returns.
    h.gw.set_external_address(h.now, None);
    h.now += Duration::from_secs(1);
    assert_eq!(h.drain_announcements(), 0);
}

#[test]
fn reset_forgets_every_mapping_and_starts_a_new_epoch() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.now += Duration::from_secs(100);
    let gone = h.gw.reset(h.now);
    assert_eq!(gone.len(), 1);
    assert_eq!(h.gw.mapping_count(), 0);
    assert_eq!(h.gw.epoch(h.now), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        host: u8,
        tcp: bool,
        int: u16,
        sugg: u16,
        life: u32,
    },
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (2u8..6, any::<bool>(), prop_oneof![Just(0u16), 1000u16..1010], prop_oneof![Just(0u16), 1000u16..1010, 1u16..1024], prop_oneof![Just(0u32), 1u32..500, Just(u32::MAX)])
            .prop_map(|(host, tcp, int, sugg, life)| Op::Map { host, tcp, int, sugg, life }),
        1 => (1u16..400).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever LAN hosts ask, in whatever order: the firewall changes replayed in
    /// order equal the table; every forward points at its requester; external ports
    /// are unique per protocol and allowed by the rules; quotas hold.
    #[test]
    fn table_and_firewall_never_diverge(ops in prop::collection::vec(op(), 1..120)) {
        let mut p = policy();
        p.max_per_client = 4;
        p.requests_per_second_per_client = 0;
        p.rules = vec![Rule {
            action: Action::Allow,
            external_ports: "1000-1015".parse().expect("range"),
            internal_addresses: "192.168.1.0/24".parse().expect("net"),
            internal_ports: "1000-1010".parse().expect("range"),
        }];
        let mut h = Harness::new(p);
        for op in ops {
            match op {
                Op::Advance(s) => h.advance(u64::from(s)),
                Op::Map { host, tcp, int, sugg, life } => {
                    let client = Ipv4Addr::new(192, 168, 1, host);
                    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
                    let r = h.map_from(client, protocol, int, sugg, life);
                    let Response::Map(m) = r else { panic!("{r:?}") };
                    if m.result == ResultCode::SUCCESS && life != 0 {
                        prop_assert!(h.kernel.contains(&fwd(client, protocol, int, m.external_port)));
                        prop_assert!((1000..=1015).contains(&m.external_port));
                    } else {
                        prop_assert_eq!((m.external_port, m.lifetime), (0, 0));
                    }
                }
            }
            prop_assert_eq!(&h.forwards(), &h.kernel);
            let mut seen = BTreeSet::new();
            for m in h.gw.mappings() {
                prop_assert!(seen.insert((m.key.protocol, m.external_port)));
                prop_assert!(h.gw.mappings().filter(|x| x.key.client == m.key.client).count() <= 4);
            }
        }
    }
}

// ---- state, restore and administration ----

#[test]
fn every_table_change_is_reported_for_the_journal() {
    let mut h = Harness::new(policy());
    h.drain();
    h.events.clear();
    h.map(8080, 8080, 7200);
    h.map(8080, 8080, 3600);
    h.map(8080, 0, 0);
    let events: Vec<StateEvent> = std::mem::take(&mut h.events);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(events[0], StateEvent::Upsert(m) if m.external_port == 8080));
    assert!(
        matches!(events[1], StateEvent::Upsert(m) if m.expires == h.now + Duration::from_secs(3600))
    );
    assert!(matches!(events[2], StateEvent::Remove(k) if k.internal_port == 8080));
    h.gw.set_external_address(h.now, Some(Ipv4Addr::new(198, 51, 100, 9)));
    h.drain();
    assert_eq!(std::mem::take(&mut h.events), vec![StateEvent::NewEpoch]);
}

fn saved(h: &Harness, client: Ipv4Addr, internal_port: u16, external_port: u16) -> Mapping {
    Mapping {
        key: MappingKey {
            client: client.into(),
            protocol: Protocol::Tcp,
            internal_port,
        },
        external_port,
        expires: h.now,
        origin: Origin::NatPmp,
        nonce: None,
        inbound: true,
        outbound: false,
    }
}

#[test]
fn restore_puts_back_saved_mappings_and_continues_the_epoch() {
    let mut h = Harness::new(policy());
    h.gw.continue_epoch(h.now, 5000);
    assert_eq!(h.gw.epoch(h.now + Duration::from_secs(3)), 5003);
    let m = saved(&h, HOST, 8080, 9090);
    h.gw.restore(h.now, m, Duration::from_secs(100))
        .expect("restorable");
    assert_eq!(
        h.gw.installed().forwards,
        vec![fwd(HOST, Protocol::Tcp, 8080, 9090)]
    );
    h.kernel = h.forwards();
    // The client renewing after the restart keeps its port.
    assert_eq!(h.map(8080, 0, 7200), (ResultCode::SUCCESS, 9090, 7200));
}

#[test]
fn restore_refuses_what_the_current_policy_would_not_grant() {
    let mut h = Harness::new(policy());
    let life = Duration::from_secs(100);
    let cases = [
        (
            saved(&h, Ipv4Addr::new(10, 1, 1, 1), 8080, 8080),
            Err(RestoreError::ClientNotAllowed),
        ),
        (
            saved(&h, GW_LAN, 8080, 8080),
            Err(RestoreError::ClientNotAllowed),
        ),
        (saved(&h, HOST, 8080, 80), Err(RestoreError::NotAllowed)),
        (saved(&h, HOST, 8080, 8080), Ok(())),
        (saved(&h, HOST2, 8081, 8080), Err(RestoreError::Conflict)),
    ];
    for (m, expected) in cases {
        assert_eq!(h.gw.restore(h.now, m, life), expected, "{m:?}");
    }
}

#[test]
fn admin_delete_removes_one_or_all_of_a_clients_mappings() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map_from(HOST, Protocol::Udp, 8081, 8081, 7200);
    h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 7200);
    assert_eq!(
        h.gw.admin_delete(HOST.into(), Some((Protocol::Udp, 8081))),
        1
    );
    assert_eq!(
        h.gw.admin_delete(HOST.into(), Some((Protocol::Udp, 8081))),
        0
    );
    assert_eq!(h.gw.admin_delete(HOST.into(), None), 1);
    h.drain();
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 8082, 8082)])
    );
}

#[test]
fn a_tightened_policy_closes_forwards_it_would_no_longer_grant() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200);
    let mut p = policy();
    p.rules = vec![Rule {
        action: Action::Allow,
        external_ports: "9000-9999".parse().expect("range"),
        internal_addresses: "192.168.1.0/24".parse().expect("net"),
        internal_ports: "1024-65535".parse().expect("range"),
    }];
    h.gw.set_policy(p);
    h.drain();
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 9000, 9000)])
    );
    assert_eq!(h.forwards(), h.kernel);
}

#[test]
fn an_absent_internal_interface_is_not_served_and_keeps_its_hosts_mappings() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    let mut gone = policy();
    gone.internal[0].index = InternalInterface::ABSENT;
    h.gw.set_policy(gone);
    h.drain();
    assert_eq!(h.kernel.len(), 1, "a brief outage must not close forwards");
    // Neither the old index nor index 0 (unknown ingress) finds the absent interface.
    assert_eq!(
        h.send_raw(lan(HOST), &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    let unknown = Ingress {
        interface: InternalInterface::ABSENT,
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(unknown, &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    // Back with a new index (re-created): served at once.
    let mut back = policy();
    back.internal[0].index = OTHER_IF;
    h.gw.set_policy(back);
    h.drain();
    let moved = Ingress {
        interface: OTHER_IF,
        ..lan(HOST)
    };
    assert!(h.send_raw(moved, &ADDR_REQ).is_ok());
    assert_eq!(h.kernel.len(), 1);
}

// ---- PCP (RFC 6887) ----

mod pcp_tests {
    use super::*;
    use natwarden_wire::pcp::{
        self, ipv4_mapped, Filter, Filters, MapData, OpData, Options, PeerData,
        Request as PcpRequest, Response as PcpResponse, ResultCode as Pcp,
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
        for lifetime in [3600, 0] {
            let mut other = map(HOST.into(), 6, 8080, 8080, lifetime);
            if let OpData::Map(d) = &mut other.op {
                d.nonce = pcp::Nonce([9; 12]);
            }
            let r = h.pcp(lan(HOST), &other);
            assert_eq!(
                (r.result, r.lifetime),
                (Pcp::NOT_AUTHORIZED, pcp::LONG_ERROR_LIFETIME)
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
}

proptest! {
    /// Any bytes, from anywhere: the core never panics, never answers or changes the
    /// firewall for the WAN side, keeps replies within MAX_REPLY, and every forward it
    /// opens points at the datagram's own source.
    #[test]
    fn arbitrary_datagrams_never_panic_and_never_open_anything_for_the_wan(
        bytes in prop::collection::vec(any::<u8>(), 0..1200),
        from_wan in any::<bool>(),
        host in 2u8..250,
        pcp_bias in any::<bool>(),
    ) {
        let mut bytes = bytes;
        // Steer half the cases into the protocols' parsers rather than version errors.
        if let (Some(first), true) = (bytes.first_mut(), pcp_bias) {
            *first = if host % 2 == 0 { 0 } else { 2 };
        }
        let mut h = Harness::new(policy());
        let client = Ipv4Addr::new(192, 168, 1, host);
        let ingress = if from_wan {
            Ingress { interface: WAN_IF, source: sa(client, 5351), destination: EXT.into() }
        } else {
            lan(client)
        };
        h.drain();
        h.gw.handle(h.now, &ingress, &bytes);
        let mut changes = Vec::new();
        let mut verdicts = Vec::new();
        loop {
            match h.gw.poll(h.now) {
                Output::Firewall(c) => changes.push(c),
                Output::Transmit(Transmit::Reply(r)) => verdicts.push(Ok(r.payload.len())),
                Output::Dropped { reason, .. } => verdicts.push(Err(reason)),
                Output::Wait(_) => break,
                Output::Journal(_) | Output::Transmit(Transmit::Announcement(_)) => {}
            }
        }
        prop_assert_eq!(verdicts.len(), 1);
        let v = verdicts[0];
        if from_wan {
            prop_assert_eq!(v, Err(DropReason::ExternalInterface));
            prop_assert!(changes.is_empty());
        }
        if let Ok(n) = v {
            prop_assert!(n <= MAX_REPLY && n > 0);
        }
        for c in changes {
            match c {
                FirewallChange::Add(f) => prop_assert_eq!(*f.internal.ip(), client),
                FirewallChange::AddOutbound(o) => prop_assert_eq!(*o.internal.ip(), client),
                other => prop_assert!(false, "unexpected change {:?}", other),
            }
        }
    }
}
