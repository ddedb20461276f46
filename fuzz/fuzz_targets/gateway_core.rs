//! Fuzzes the gateway core as the daemon drives it: a sequence of datagrams with their
//! ingress facts, clock steps, timeouts, reloads and address changes, checking after every
//! step that nothing was opened for the wrong host and that the table matches the kernel.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use natwarden_core::{
    Action, FirewallChange, Forward, Gateway, Ingress, InternalInterface, IpNet, Ipv4Net, Ipv6Net,
    MappingKey, Outbound, Output, Pinhole, Policy, PortRange, Reply, Rule, Transmit, MAX_REPLY,
};
use natwarden_wire::{natpmp, pcp, Protocol};

const LAN_IF: u32 = 3;
const WAN_IF: u32 = 2;
const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const GW_LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const GW_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// LAN hosts are 192.168.1.X / 2001:db8:1::X for X below this, so requests collide.
const HOSTS: u8 = 8;

/// The gateway's configuration, chosen by the input (and again by a reload step).
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Config {
    nat_pmp: bool,
    pcp: bool,
    /// Small quotas and a 16-port rule, so "no ports" and the quota paths are reachable.
    tight: bool,
    /// 192.168.1.2 may use THIRD_PARTY.
    third_party: bool,
    rate: u8,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Interface {
    Lan,
    Wan,
    Other(u32),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Destination {
    GatewayLan,
    GatewayLan6,
    GatewayLinkLocal,
    External,
    Broadcast,
    Multicast,
    Other(IpAddr),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Source {
    LanHost(u8),
    LanHost6(u8),
    /// Any address of the LAN subnet: network, broadcast and the gateway included.
    LanAny(u8),
    LinkLocal(u8),
    External,
    Other(IpAddr),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Port {
    Near(u8),
    Privileged(u8),
    Any(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Lifetime {
    Zero,
    Short(u8),
    Any(u32),
}

/// A datagram: mostly built from typed fields with the wire crate, so the fuzzer reaches the
/// mapping logic; raw bytes and bit flips reach the parsers' corners.
#[derive(Debug, Clone, Arbitrary)]
enum Datagram {
    NatPmpAddress,
    NatPmpMap {
        tcp: bool,
        internal: Port,
        suggested: Port,
        lifetime: Lifetime,
    },
    PcpAnnounce,
    PcpMap {
        nonce: u8,
        protocol: u8,
        internal: Port,
        suggested: Port,
        lifetime: Lifetime,
        /// The client address field: the real source, or another address.
        client: Option<Source>,
        third_party: Option<Source>,
        prefer_failure: bool,
        filters: u8,
    },
    PcpPeer {
        nonce: u8,
        tcp: bool,
        internal: Port,
        suggested: Port,
        lifetime: Lifetime,
        third_party: Option<Source>,
        remote_port: u16,
    },
    Flipped {
        base: Box<Datagram>,
        at: u16,
        xor: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, Arbitrary)]
enum Step {
    Datagram {
        interface: Interface,
        source: Source,
        source_port: u16,
        destination: Destination,
        datagram: Datagram,
        /// Milliseconds before it arrives.
        after_ms: u16,
    },
    /// Time passes (bounded: up to about 18 hours) and the daemon calls handle_timeout.
    Timeout {
        seconds: u16,
        millis: u16,
    },
    /// The daemon wakes at the core's own poll_timeout.
    Poll,
    Reload(Config),
    ExternalAddress(Option<u8>),
    Reset,
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    external: bool,
    seed: u64,
    steps: Vec<Step>,
}

fn policy(c: Config) -> Policy {
    let mut p = Policy::new(
        vec![InternalInterface {
            name: "lan0".into(),
            index: LAN_IF,
            net: Ipv4Net::new(GW_LAN, 24).expect("prefix"),
            nets6: vec![
                Ipv6Net::new(GW_LAN6, 64).expect("prefix"),
                Ipv6Net::new(GW_LINK_LOCAL, 64).expect("prefix"),
            ],
        }],
        WAN_IF,
    );
    // A real config serves at least one protocol.
    p.nat_pmp = c.nat_pmp || !c.pcp;
    p.pcp = c.pcp;
    p.requests_per_second_per_client = u32::from(c.rate % 50) + 1;
    if c.third_party {
        p.third_party_clients = vec![IpAddr::V4(lan_host(2)), IpAddr::V6(lan_host6(2))];
    }
    if c.tight {
        p.max_per_client = 3;
        p.max_total = 6;
        p.rules = vec![
            Rule {
                action: Action::Deny,
                external_ports: PortRange::ALL_UNPRIVILEGED,
                internal_addresses: IpNet::V4(Ipv4Net::new(lan_host(3), 32).expect("prefix")),
                internal_ports: PortRange::ALL_UNPRIVILEGED,
            },
            Rule {
                action: Action::Allow,
                external_ports: PortRange {
                    first: 5000,
                    last: 5003,
                },
                internal_addresses: IpNet::V4(Ipv4Net::new(GW_LAN, 24).expect("prefix")),
                internal_ports: PortRange {
                    first: 1,
                    last: 65535,
                },
            },
            Rule {
                action: Action::Allow,
                external_ports: PortRange::ALL_UNPRIVILEGED,
                internal_addresses: IpNet::V6(Ipv6Net::new(GW_LAN6, 64).expect("prefix")),
                internal_ports: PortRange::ALL_UNPRIVILEGED,
            },
        ];
    }
    p
}

fn lan_host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 2 + n % HOSTS)
}

fn lan_host6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + u16::from(n % HOSTS))
}

fn source_ip(s: Source) -> IpAddr {
    match s {
        Source::LanHost(n) => lan_host(n).into(),
        Source::LanHost6(n) => lan_host6(n).into(),
        Source::LanAny(n) => Ipv4Addr::new(192, 168, 1, n).into(),
        Source::LinkLocal(n) => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(n)).into(),
        Source::External => EXT.into(),
        Source::Other(ip) => ip,
    }
}

fn destination_ip(d: Destination) -> IpAddr {
    match d {
        Destination::GatewayLan => GW_LAN.into(),
        Destination::GatewayLan6 => GW_LAN6.into(),
        Destination::GatewayLinkLocal => GW_LINK_LOCAL.into(),
        Destination::External => EXT.into(),
        Destination::Broadcast => Ipv4Addr::new(192, 168, 1, 255).into(),
        Destination::Multicast => Ipv4Addr::new(224, 0, 0, 1).into(),
        Destination::Other(ip) => ip,
    }
}

fn port(p: Port) -> u16 {
    match p {
        Port::Near(n) => 5000 + u16::from(n % 8),
        Port::Privileged(n) => u16::from(n),
        Port::Any(n) => n,
    }
}

fn lifetime(l: Lifetime) -> u32 {
    match l {
        Lifetime::Zero => 0,
        Lifetime::Short(n) => u32::from(n),
        Lifetime::Any(n) => n,
    }
}

fn nonce(n: u8) -> pcp::Nonce {
    pcp::Nonce([n % 3; 12])
}

/// Serialises `d`; `source` fills PCP's client address field when the datagram does not
/// choose another one.
fn build(d: &Datagram, source: IpAddr, out: &mut [u8; pcp::MAX_LEN]) -> usize {
    let wire = |s: Option<Source>| s.map(|s| pcp::to_wire_address(source_ip(s)));
    match d {
        Datagram::NatPmpAddress => natpmp::Request::ExternalAddress.emit(out),
        Datagram::NatPmpMap {
            tcp,
            internal,
            suggested,
            lifetime: l,
        } => natpmp::Request::Map(natpmp::MapRequest {
            protocol: if *tcp { Protocol::Tcp } else { Protocol::Udp },
            internal_port: port(*internal),
            suggested_external_port: port(*suggested),
            lifetime: lifetime(*l),
        })
        .emit(out),
        Datagram::PcpAnnounce => pcp::Request {
            lifetime: 0,
            client_address: pcp::to_wire_address(source),
            op: pcp::OpData::Announce,
            options: pcp::Options::NONE,
        }
        .emit(out),
        Datagram::PcpMap {
            nonce: n,
            protocol,
            internal,
            suggested,
            lifetime: l,
            client,
            third_party,
            prefer_failure,
            filters,
        } => {
            let mut options = pcp::Options {
                third_party: wire(*third_party),
                prefer_failure: *prefer_failure,
                ..pcp::Options::NONE
            };
            for i in 0..filters % 4 {
                let _ = options.filters.push(pcp::Filter {
                    prefix_len: 96 + 8 * i,
                    remote_peer_port: u16::from(i),
                    remote_peer_address: pcp::ipv4_mapped(Ipv4Addr::new(203, 0, 113, i)),
                });
            }
            pcp::Request {
                lifetime: lifetime(*l),
                client_address: wire(*client).unwrap_or(pcp::to_wire_address(source)),
                op: pcp::OpData::Map(pcp::MapData {
                    nonce: nonce(*n),
                    // Mostly TCP, UDP or "all"; sometimes anything.
                    protocol: match protocol % 8 {
                        0..=2 => 6,
                        3..=5 => 17,
                        6 => 0,
                        _ => *protocol,
                    },
                    internal_port: port(*internal),
                    external_port: port(*suggested),
                    external_address: pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED),
                }),
                options,
            }
            .emit(out)
        }
        Datagram::PcpPeer {
            nonce: n,
            tcp,
            internal,
            suggested,
            lifetime: l,
            third_party,
            remote_port,
        } => pcp::Request {
            lifetime: lifetime(*l),
            client_address: pcp::to_wire_address(source),
            op: pcp::OpData::Peer(pcp::PeerData {
                nonce: nonce(*n),
                protocol: if *tcp { 6 } else { 17 },
                internal_port: port(*internal),
                external_port: port(*suggested),
                external_address: pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED),
                remote_peer_port: *remote_port,
                remote_peer_address: pcp::ipv4_mapped(Ipv4Addr::new(203, 0, 113, 50)),
            }),
            options: pcp::Options {
                third_party: wire(*third_party),
                ..pcp::Options::NONE
            },
        }
        .emit(out),
        Datagram::Flipped { base, at, xor } => {
            let n = build(base, source, out);
            if n > 0 {
                out[usize::from(*at) % n] ^= xor;
            }
            n
        }
        Datagram::Raw(bytes) => {
            let n = bytes.len().min(out.len());
            out[..n].copy_from_slice(&bytes[..n]);
            n
        }
    }
}

/// The model's own idea of a LAN host (independent of the core's): in 192.168.1.0/24 or
/// 2001:db8:1::/64, and not the gateway, the network or the broadcast address.
fn is_lan_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[..3] == [192, 168, 1] && o[3] != 0 && o[3] != 1 && o[3] != 255
        }
        IpAddr::V6(a) => {
            a.segments()[..4] == [0x2001, 0xdb8, 1, 0] && a != GW_LAN6 && !a.is_unspecified()
        }
    }
}

/// What a firewall backend holds after applying every change in order.
#[derive(Default)]
struct Kernel {
    forwards: BTreeSet<Forward>,
    outbound: BTreeSet<Outbound>,
    pinholes: BTreeSet<Pinhole>,
}

impl Kernel {
    fn apply(&mut self, changes: &[FirewallChange]) {
        for c in changes {
            let ok = match *c {
                FirewallChange::Add(f) => self.forwards.insert(f),
                FirewallChange::Remove(f) => self.forwards.remove(&f),
                FirewallChange::AddOutbound(o) => self.outbound.insert(o),
                FirewallChange::RemoveOutbound(o) => self.outbound.remove(&o),
                FirewallChange::AddPinhole(p) => self.pinholes.insert(p),
                FirewallChange::RemovePinhole(p) => self.pinholes.remove(&p),
            };
            assert!(ok, "{c:?} adds what is there or removes what is not");
        }
    }

    fn assert_matches(&self, gw: &Gateway) {
        let want = gw.installed();
        let forwards: BTreeSet<_> = want.forwards.iter().copied().collect();
        let outbound: BTreeSet<_> = want.outbound.iter().copied().collect();
        let pinholes: BTreeSet<_> = want.pinholes.iter().copied().collect();
        assert_eq!(forwards.len(), want.forwards.len(), "duplicate forwards");
        assert_eq!(self.forwards, forwards, "kernel forwards != table");
        assert_eq!(self.outbound, outbound, "kernel outbound != table");
        assert_eq!(self.pinholes, pinholes, "kernel pinholes != table");
    }
}

fn change_address(c: &FirewallChange) -> IpAddr {
    match c {
        FirewallChange::Add(f) | FirewallChange::Remove(f) => IpAddr::V4(*f.internal.ip()),
        FirewallChange::AddOutbound(o) | FirewallChange::RemoveOutbound(o) => {
            IpAddr::V4(*o.internal.ip())
        }
        FirewallChange::AddPinhole(p) | FirewallChange::RemovePinhole(p) => IpAddr::V6(p.address),
    }
}

/// What the core hands out after an input, polled until it waits (timers due at `now`
/// run then too): the firewall changes in order and the replies.
fn drain(gw: &mut Gateway, now: Instant) -> (Vec<FirewallChange>, Vec<Reply>) {
    let (mut changes, mut replies) = (Vec::new(), Vec::new());
    for _ in 0..1_000_000 {
        match gw.poll(now) {
            Output::Firewall(c) => changes.push(c),
            Output::Transmit(Transmit::Reply(r)) => replies.push(r),
            Output::Transmit(Transmit::Announcement(_))
            | Output::Journal(_)
            | Output::Dropped { .. } => {}
            Output::Wait(_) => return (changes, replies),
        }
    }
    panic!("the core never waits");
}

fn is_removal(c: &FirewallChange) -> bool {
    matches!(
        c,
        FirewallChange::Remove(_)
            | FirewallChange::RemoveOutbound(_)
            | FirewallChange::RemovePinhole(_)
    )
}

fuzz_target!(|input: Input| {
    let mut config = input.config;
    let t0 = Instant::now();
    let mut now = t0;
    let mut gw = Gateway::new(
        policy(config),
        now,
        input.external.then_some(EXT),
        input.seed,
    );
    let mut kernel = Kernel::default();
    let mut changes: Vec<FirewallChange>;
    let mut bytes = [0u8; pcp::MAX_LEN];

    for step in input.steps.iter().take(64) {
        let before: BTreeSet<MappingKey> = gw.mappings().map(|m| m.key).collect();
        let mut asked_by = None;
        let mut expired_by = None;
        match step {
            Step::Datagram {
                interface,
                source,
                source_port,
                destination,
                datagram,
                after_ms,
            } => {
                now += Duration::from_millis(u64::from(*after_ms));
                let src = source_ip(*source);
                let ingress = Ingress {
                    interface: match interface {
                        Interface::Lan => LAN_IF,
                        Interface::Wan => WAN_IF,
                        Interface::Other(i) => *i,
                    },
                    source: SocketAddr::new(src, *source_port),
                    destination: destination_ip(*destination),
                };
                // Timers due before the datagram run first, so what follows is its own.
                let (due, _) = drain(&mut gw, now);
                assert!(due.iter().all(is_removal), "expiry added {due:?}");
                kernel.apply(&due);
                let n = build(datagram, src, &mut bytes);
                gw.handle(now, &ingress, &bytes[..n]);
                let replies;
                (changes, replies) = drain(&mut gw, now);
                // CERT VU#184540: only a request that arrived on an internal interface,
                // addressed to the gateway's own address there, from a host of its
                // subnet, gets an answer or changes anything.
                let dst = ingress.destination;
                let internal_to_its_address = ingress.interface == LAN_IF
                    && (dst == IpAddr::V4(GW_LAN)
                        || dst == IpAddr::V6(GW_LAN6)
                        || dst == IpAddr::V6(GW_LINK_LOCAL));
                if !internal_to_its_address || !is_lan_host(src) {
                    assert!(replies.is_empty(), "answered {ingress:?}: {replies:?}");
                    assert!(changes.is_empty(), "{ingress:?} changed {changes:?}");
                }
                for r in &replies {
                    assert_eq!(r.to, ingress, "a reply goes back the way the request came");
                    assert!(!r.payload.is_empty() && r.payload.len() <= MAX_REPLY);
                }
                // Every change touches the requester's own address, or, for a client
                // allowed THIRD_PARTY, a host of its subnet of the same family.
                let third_party = gw.policy().third_party_clients.contains(&src);
                for c in &changes {
                    let addr = change_address(c);
                    assert!(
                        addr == src
                            || (third_party
                                && is_lan_host(addr)
                                && addr.is_ipv4() == src.is_ipv4()),
                        "{c:?} for a request from {src}"
                    );
                }
                asked_by = Some((src, third_party));
            }
            Step::Timeout { seconds, millis } => {
                now += Duration::from_secs(u64::from(*seconds))
                    + Duration::from_millis(u64::from(*millis));
                (changes, _) = drain(&mut gw, now);
                assert!(changes.iter().all(is_removal), "expiry added {changes:?}");
                expired_by = Some(now);
            }
            Step::Poll => {
                changes = Vec::new();
                if let Some(t) = gw.poll_timeout() {
                    assert!(t <= now + Duration::from_secs(86_400 + 10), "timer too far");
                    now = now.max(t);
                    (changes, _) = drain(&mut gw, now);
                    assert!(changes.iter().all(is_removal), "expiry added {changes:?}");
                    expired_by = Some(now);
                }
            }
            Step::Reload(c) => {
                config = *c;
                gw.set_policy(policy(config));
                (changes, _) = drain(&mut gw, now);
                assert!(changes.iter().all(is_removal), "reload added {changes:?}");
            }
            Step::ExternalAddress(a) => {
                let address = a.map(|n| Ipv4Addr::new(198, 51, 100, n));
                gw.set_external_address(now, address);
                (changes, _) = drain(&mut gw, now);
            }
            Step::Reset => {
                gw.reset(now);
                // The daemon reinstalls the firewall from the (empty) table.
                kernel = Kernel::default();
                (changes, _) = drain(&mut gw, now);
            }
        }
        kernel.apply(&changes);
        kernel.assert_matches(&gw);

        // Mappings: new ones were made by this step's requester for itself (or a
        // THIRD_PARTY host); none ever targets the gateway; quotas hold.
        let mut per_client: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for m in gw.mappings() {
            let k = m.key;
            assert!(is_lan_host(k.client), "mapping for a non-host: {m:?}");
            // RFC 6886 section 3.4: expired mappings go at the timeout that is due.
            if let Some(t) = expired_by {
                assert!(m.expires > t, "expired mapping still held: {m:?}");
            }
            if !before.contains(&k) {
                let (src, third_party) = asked_by.expect("only a request creates a mapping");
                assert!(k.client == src || third_party, "{m:?} created by {src}");
            }
            *per_client.entry(k.client).or_default() += 1;
        }
        let p = gw.policy();
        assert!(gw.mapping_count() <= p.max_total as usize);
        assert!(per_client.values().all(|&n| n <= p.max_per_client));
    }
});
