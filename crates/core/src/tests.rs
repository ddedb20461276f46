//! Gateway behaviour, request by request, with an injected clock and no sockets.
//! Each test names the RFC 6886 rule or the CERT VU#184540 problem it pins.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
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
    reply: [u8; MAX_REPLY],
}

impl Harness {
    fn new(policy: Policy) -> Harness {
        let t0 = Instant::now();
        Harness {
            gw: Gateway::new(policy, t0, Some(EXT), 0x5eed),
            t0,
            now: t0,
            kernel: BTreeSet::new(),
            reply: [0; MAX_REPLY],
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        let mut changes = Vec::new();
        self.gw.handle_timeout(self.now, &mut changes);
        self.apply(changes);
    }

    fn apply(&mut self, changes: Vec<FirewallChange>) {
        for c in changes {
            match c {
                FirewallChange::Add(f) => assert!(self.kernel.insert(f), "added twice: {f:?}"),
                FirewallChange::Remove(f) => {
                    assert!(self.kernel.remove(&f), "removed unknown: {f:?}")
                }
            }
        }
    }

    fn send_raw(&mut self, ingress: Ingress, bytes: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut changes = Vec::new();
        let v = self
            .gw
            .handle(self.now, &ingress, bytes, &mut self.reply, &mut changes);
        let verdict = match v {
            Verdict::Reply(n) => Ok(self.reply[..n].to_vec()),
            Verdict::Drop(r) => {
                assert!(changes.is_empty(), "a dropped request changed the firewall");
                Err(r)
            }
        };
        self.apply(changes);
        verdict
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

    fn forwards(&self) -> BTreeSet<Forward> {
        self.gw.mappings().map(|m| m.forward()).collect()
    }
}

fn lan(client: Ipv4Addr) -> Ingress {
    Ingress {
        interface: LAN_IF,
        source: SocketAddrV4::new(client, 40000),
        destination: GW_LAN,
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
        source: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 5555),
        destination: EXT,
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
        source: SocketAddrV4::new(HOST, 5555),
        destination: GW_LAN,
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
            source: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 5555),
            destination: dst,
        };
        assert!(h.send_raw(wan, &MAP_TCP_8080).is_err());
    }
    assert!(h.kernel.is_empty() && h.gw.mapping_count() == 0);
}

#[test]
fn cert_request_addressed_to_the_external_address_from_inside_is_silent() {
    let mut h = Harness::new(policy());
    let ing = Ingress {
        destination: EXT,
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
        source: SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 40000),
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
            source: SocketAddrV4::new(own, 40000),
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
        destination: Ipv4Addr::new(224, 0, 0, 1),
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
fn rfc6886_3_5_unsupported_version_gets_result_1() {
    let mut h = Harness::new(policy());
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
    let mut buf = [0u8; 16];
    h.now += Duration::from_secs(600);
    while h.gw.poll_announcement(h.now, &mut buf).is_some() {}
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
    let mut buf = [0u8; 16];
    let mut times = Vec::new();
    let mut t = h.t0;
    // Step through time in 50 ms ticks for 200 s, recording each announcement.
    for _ in 0..4000 {
        if let Some(n) = h.gw.poll_announcement(t, &mut buf) {
            match Response::parse(&buf[..n]) {
                Ok(Response::ExternalAddress(r)) => {
                    assert_eq!(r.address, EXT);
                    assert_eq!(u64::from(r.epoch), t.duration_since(h.t0).as_secs());
                }
                other => panic!("{other:?}"),
            }
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
    let mut h = Harness::new(policy());
    let mut buf = [0u8; 16];
    h.now += Duration::from_secs(300);
    while h.gw.poll_announcement(h.now, &mut buf).is_some() {}
    assert_eq!(h.gw.epoch(h.now), 300);
    let new = Ipv4Addr::new(198, 51, 100, 8);
    h.gw.set_external_address(h.now, Some(new));
    assert_eq!(h.gw.epoch(h.now), 0);
    assert!(h.gw.poll_announcement(h.now, &mut buf).is_some());
    // Losing the address stops announcements until it returns.
    h.gw.set_external_address(h.now, None);
    assert_eq!(
        h.gw.poll_announcement(h.now + Duration::from_secs(1), &mut buf),
        None
    );
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
    h.gw.drain_events().for_each(drop);
    h.map(8080, 8080, 7200);
    h.map(8080, 8080, 3600);
    h.map(8080, 0, 0);
    let events: Vec<StateEvent> = h.gw.drain_events().collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(events[0], StateEvent::Upsert(m) if m.external_port == 8080));
    assert!(
        matches!(events[1], StateEvent::Upsert(m) if m.expires == h.now + Duration::from_secs(3600))
    );
    assert!(matches!(events[2], StateEvent::Remove(k) if k.internal_port == 8080));
    h.gw.set_external_address(h.now, Some(Ipv4Addr::new(198, 51, 100, 9)));
    assert_eq!(
        h.gw.drain_events().collect::<Vec<_>>(),
        vec![StateEvent::NewEpoch]
    );
}

#[test]
fn restore_puts_back_saved_mappings_and_continues_the_epoch() {
    let mut h = Harness::new(policy());
    h.gw.continue_epoch(h.now, 5000);
    assert_eq!(h.gw.epoch(h.now + Duration::from_secs(3)), 5003);
    let k = MappingKey {
        client: HOST,
        protocol: Protocol::Tcp,
        internal_port: 8080,
    };
    let f =
        h.gw.restore(h.now, k, 9090, Duration::from_secs(100), Origin::NatPmp)
            .expect("restorable");
    assert_eq!(f, fwd(HOST, Protocol::Tcp, 8080, 9090));
    // The client renewing after the restart keeps its port.
    assert_eq!(h.map(8080, 0, 7200), (ResultCode::SUCCESS, 9090, 7200));
}

#[test]
fn restore_refuses_what_the_current_policy_would_not_grant() {
    let mut h = Harness::new(policy());
    let key = |client, port| MappingKey {
        client,
        protocol: Protocol::Tcp,
        internal_port: port,
    };
    let life = Duration::from_secs(100);
    assert_eq!(
        h.gw.restore(
            h.now,
            key(Ipv4Addr::new(10, 1, 1, 1), 8080),
            8080,
            life,
            Origin::NatPmp
        ),
        Err(RestoreError::ClientNotAllowed)
    );
    assert_eq!(
        h.gw.restore(h.now, key(GW_LAN, 8080), 8080, life, Origin::NatPmp),
        Err(RestoreError::ClientNotAllowed)
    );
    assert_eq!(
        h.gw.restore(h.now, key(HOST, 8080), 80, life, Origin::NatPmp),
        Err(RestoreError::NotAllowed)
    );
    assert!(h
        .gw
        .restore(h.now, key(HOST, 8080), 8080, life, Origin::NatPmp)
        .is_ok());
    assert_eq!(
        h.gw.restore(h.now, key(HOST2, 8081), 8080, life, Origin::NatPmp),
        Err(RestoreError::Conflict)
    );
}

#[test]
fn admin_delete_removes_one_or_all_of_a_clients_mappings() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map_from(HOST, Protocol::Udp, 8081, 8081, 7200);
    h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 7200);
    let mut changes = Vec::new();
    assert_eq!(
        h.gw.admin_delete(HOST, Some((Protocol::Udp, 8081)), &mut changes),
        1
    );
    assert_eq!(
        h.gw.admin_delete(HOST, Some((Protocol::Udp, 8081)), &mut changes),
        0
    );
    assert_eq!(h.gw.admin_delete(HOST, None, &mut changes), 1);
    h.apply(changes);
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
    let mut changes = Vec::new();
    h.gw.set_policy(p, &mut changes);
    h.apply(changes);
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 9000, 9000)])
    );
    assert_eq!(h.forwards(), h.kernel);
}
