//! The scanner in memory: simulated gateways of every kind from VU#184540, a simulated
//! clock, loss and latency; no sockets. Each test drives a whole run to `Done`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp};

use crate::report::{Deletion, Finding, MapProbeKind, Summary, TargetReport};
use crate::scan::{Config, Output, Scanner};
use crate::targets::{Cidr, Targets};

use Finding::*;

const PROBER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PROBER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Silent,
    /// Answers with its (probed) address, refuses mappings.
    Leak,
    /// Interfaces swapped: reports a private address, grants mappings as suggested.
    Swapped,
    /// Swapped without an external address: network failure.
    SwappedNoAddress,
    /// Grants everything with the suggested port, even for other hosts.
    Open,
    /// Grants everything, another port than suggested.
    OpenReassign,
    PcpOnly,
    /// Leaks its address over NAT-PMP; answers PCP with NAT-PMP "unsupported version".
    NatPmpOnly,
    /// Like Leak, but replies from another address.
    OtherSource,
    Garbage,
}

struct Gateway {
    kind: Kind,
    /// Live mappings: (protocol, internal port, client) -> external port.
    maps: HashMap<(u8, u16, Ipv6Addr), u16>,
}

fn private_of(t: IpAddr) -> Ipv4Addr {
    match t {
        IpAddr::V4(a) => {
            let o = a.octets();
            Ipv4Addr::new(10, o[1], o[2], o[3])
        }
        IpAddr::V6(_) => Ipv4Addr::new(10, 9, 9, 9),
    }
}

fn sibling(t: IpAddr) -> IpAddr {
    match t {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 65536)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + (1 << 32))),
    }
}

impl Gateway {
    fn new(kind: Kind) -> Gateway {
        Gateway {
            kind,
            maps: HashMap::new(),
        }
    }

    fn grants(&self) -> bool {
        matches!(self.kind, Kind::Swapped | Kind::Open | Kind::OpenReassign)
    }

    fn external(&self, t: IpAddr) -> IpAddr {
        match self.kind {
            Kind::Swapped => IpAddr::V4(private_of(t)),
            _ => t,
        }
    }

    fn port_for(&self, suggested: u16) -> u16 {
        match self.kind {
            Kind::OpenReassign => suggested ^ 1,
            _ => suggested,
        }
    }

    /// The reply (source, bytes) to `request` sent to `t` from `src`.
    fn answer(&mut self, t: IpAddr, src: SocketAddr, request: &[u8]) -> Option<(IpAddr, Vec<u8>)> {
        let from = if self.kind == Kind::OtherSource {
            sibling(t)
        } else {
            t
        };
        let mut out = vec![0; 1100];
        let n = match self.kind {
            Kind::Silent => return None,
            Kind::Garbage => {
                out = vec![1, 128, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9];
                return Some((from, out));
            }
            _ => match natwarden_wire::version_of(request)? {
                natpmp::VERSION if self.kind != Kind::PcpOnly => {
                    self.natpmp(t, request, &mut out)?
                }
                pcp::VERSION if self.kind == Kind::NatPmpOnly => {
                    natpmp::Response::UnsupportedVersion { epoch: 1000 }.emit(&mut out)
                }
                pcp::VERSION => self.pcp(t, src, request, &mut out)?,
                _ => return None,
            },
        };
        out.truncate(n);
        Some((from, out))
    }

    fn natpmp(&mut self, t: IpAddr, request: &[u8], out: &mut [u8]) -> Option<usize> {
        let epoch = 1000;
        let no_address = self.kind == Kind::SwappedNoAddress;
        let response = match natpmp::Request::parse(request).ok()? {
            natpmp::Request::ExternalAddress => {
                natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                    result: if no_address {
                        natpmp::ResultCode::NETWORK_FAILURE
                    } else {
                        natpmp::ResultCode::SUCCESS
                    },
                    epoch,
                    address: match (no_address, self.external(t)) {
                        (false, IpAddr::V4(a)) => a,
                        _ => Ipv4Addr::UNSPECIFIED,
                    },
                })
            }
            natpmp::Request::Map(m) => {
                let key = (
                    m.protocol.ip_number(),
                    m.internal_port,
                    Ipv6Addr::UNSPECIFIED,
                );
                let (result, external_port, lifetime) = if no_address {
                    (natpmp::ResultCode::NETWORK_FAILURE, 0, 0)
                } else if !self.grants() {
                    (natpmp::ResultCode::NOT_AUTHORIZED, 0, 0)
                } else if m.lifetime == 0 {
                    self.maps.remove(&key);
                    (natpmp::ResultCode::SUCCESS, 0, 0)
                } else {
                    let p = self.port_for(m.suggested_external_port);
                    self.maps.insert(key, p);
                    (natpmp::ResultCode::SUCCESS, p, m.lifetime)
                };
                natpmp::Response::Map(natpmp::MapResponse {
                    protocol: m.protocol,
                    result,
                    epoch,
                    internal_port: m.internal_port,
                    external_port,
                    lifetime,
                })
            }
        };
        Some(response.emit(out))
    }

    fn pcp(&mut self, t: IpAddr, src: SocketAddr, request: &[u8], out: &mut [u8]) -> Option<usize> {
        let epoch = 1000;
        let req = pcp::Request::parse(request).ok()?;
        let response = match req.op {
            pcp::OpData::Announce => pcp::Response::announce(epoch),
            pcp::OpData::Map(m) => {
                let source = crate::probe::pcp_address(src.ip());
                let checks = self.kind != Kind::Open && self.kind != Kind::OpenReassign;
                let refuse = |code| req.error_response(code, 30, epoch);
                if self.kind == Kind::SwappedNoAddress {
                    refuse(pcp::ResultCode::NETWORK_FAILURE)
                } else if !self.grants() {
                    refuse(pcp::ResultCode::NOT_AUTHORIZED)
                } else if checks && req.client_address != source {
                    refuse(pcp::ResultCode::ADDRESS_MISMATCH)
                } else if checks && req.options.third_party.is_some() {
                    refuse(pcp::ResultCode::NOT_AUTHORIZED)
                } else {
                    let client = req.options.third_party.unwrap_or(req.client_address);
                    let key = (m.protocol, m.internal_port, client);
                    let (port, lifetime) = if req.lifetime == 0 {
                        self.maps.remove(&key);
                        (m.external_port, 0)
                    } else {
                        let p = self.port_for(m.external_port);
                        self.maps.insert(key, p);
                        (p, req.lifetime)
                    };
                    pcp::Response {
                        result: pcp::ResultCode::SUCCESS,
                        lifetime,
                        epoch,
                        op: pcp::OpData::Map(pcp::MapData {
                            external_port: port,
                            external_address: crate::probe::pcp_address(self.external(t)),
                            ..m
                        }),
                        options: pcp::Options::NONE,
                    }
                }
            }
            pcp::OpData::Peer(_) => return None,
        };
        Some(response.emit(out))
    }
}

/// A simulated network: gateways by address, a latency, and which datagrams are lost.
struct Net {
    gateways: BTreeMap<IpAddr, Gateway>,
    latency: Duration,
    /// Drops the n-th datagram towards a gateway when it returns true.
    lose: Box<dyn FnMut(u64) -> bool>,
    sent: u64,
    /// Extra datagrams delivered to the scanner at the start: (src, dst port, bytes).
    injected: Vec<(SocketAddr, u16, Vec<u8>)>,
}

struct Run {
    reports: BTreeMap<IpAddr, TargetReport>,
    summary: Summary,
    gateways: BTreeMap<IpAddr, Gateway>,
    send_times: Vec<Instant>,
    duration: Duration,
}

/// A reply on its way: (arrival, sequence, source, our port, bytes).
type InFlight = (Instant, u64, SocketAddr, u16, Vec<u8>);

fn drive(cfg: Config, targets: Targets, mut net: Net, abort_after: Option<usize>) -> Run {
    let t0 = Instant::now();
    let mut now = t0;
    let mut scanner = Scanner::new(cfg, targets, now);
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0;
    for (src, port, bytes) in std::mem::take(&mut net.injected) {
        seq += 1;
        wire.push(Reverse((now, seq, src, port, bytes)));
    }
    let mut reports = BTreeMap::new();
    let mut send_times = Vec::new();
    let mut grants_seen = 0;
    for _ in 0..10_000_000 {
        while let Some(Reverse((at, ..))) = wire.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, src, port, bytes))) = wire.pop() else {
                break;
            };
            scanner.handle(now, src, port, &bytes);
        }
        let wait = match scanner.poll(now) {
            Output::Transmit(t) => {
                send_times.push(now);
                net.sent += 1;
                let n = net.sent;
                if (net.lose)(n) {
                    continue;
                }
                let Some(gw) = net.gateways.get_mut(&t.dst.ip()) else {
                    continue;
                };
                let prober = match t.dst {
                    SocketAddr::V4(_) => IpAddr::V4(PROBER),
                    SocketAddr::V6(_) => IpAddr::V6(PROBER_V6),
                };
                let from = SocketAddr::new(prober, t.src_port);
                if let Some((src, bytes)) = gw.answer(t.dst.ip(), from, t.payload()) {
                    if gw.maps.len() > grants_seen {
                        grants_seen = gw.maps.len();
                    }
                    seq += 1;
                    wire.push(Reverse((
                        now + net.latency,
                        seq,
                        SocketAddr::new(src, 5351),
                        t.src_port,
                        bytes,
                    )));
                }
                if abort_after.is_some_and(|k| {
                    net.gateways.values().map(|g| g.maps.len()).sum::<usize>() >= k
                }) {
                    scanner.abort(now);
                }
                continue;
            }
            Output::Report(r) => {
                assert!(
                    reports.insert(r.target, *r).is_none(),
                    "a target reported twice"
                );
                continue;
            }
            Output::Wait(w) => w,
            Output::Done(summary) => {
                return Run {
                    reports,
                    summary,
                    gateways: net.gateways,
                    send_times,
                    duration: now - t0,
                }
            }
        };
        let next_wire = wire.peek().map(|Reverse((at, ..))| *at);
        let next = next_wire.map_or(wait, |w| w.min(wait));
        assert!(next >= now, "time goes forward");
        now = next.max(now);
        if next == now && next_wire.is_none_or(|w| w > now) && wait <= now {
            // Wait(now) with nothing due: advance a tick so the run cannot spin.
            now += Duration::from_micros(1);
        }
    }
    panic!("the run did not finish");
}

fn net(gateways: impl IntoIterator<Item = (IpAddr, Kind)>) -> Net {
    Net {
        gateways: gateways
            .into_iter()
            .map(|(a, k)| (a, Gateway::new(k)))
            .collect(),
        latency: Duration::from_millis(20),
        lose: Box::new(|_| false),
        sent: 0,
        injected: Vec::new(),
    }
}

fn config(intrusive: bool) -> Config {
    Config {
        rate: 10_000,
        intrusive,
        seed: 5,
        prober_v4: Some(PROBER),
        prober_v6: Some(PROBER_V6),
        start_unix: 2_000_000_000,
        ..Config::default()
    }
}

fn range(spec: &str) -> Targets {
    Targets::new(&[spec.parse::<Cidr>().unwrap()], &[]).unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const KINDS: [Kind; 9] = [
    Kind::Silent,
    Kind::Leak,
    Kind::Swapped,
    Kind::SwappedNoAddress,
    Kind::Open,
    Kind::OpenReassign,
    Kind::PcpOnly,
    Kind::OtherSource,
    Kind::Garbage,
];

/// What the definitions in the issue (and README) say each kind shows, IPv4.
fn expected(kind: Kind, intrusive: bool) -> Option<Vec<Finding>> {
    let v = match (kind, intrusive) {
        (Kind::Silent | Kind::Garbage, _) => return None,
        (Kind::Leak | Kind::PcpOnly | Kind::NatPmpOnly | Kind::OtherSource, _) => {
            vec![InformationDisclosure]
        }
        (Kind::SwappedNoAddress, _) => vec![InformationDisclosure, InternalTrafficInterception],
        (Kind::Swapped, false) => vec![InformationDisclosure, InternalTrafficInterception],
        (Kind::Swapped, true) => vec![
            InformationDisclosure,
            InternalTrafficInterception,
            InternalServiceAccess,
            HostServiceDos,
        ],
        (Kind::Open | Kind::OpenReassign, false) => vec![InformationDisclosure],
        (Kind::Open, true) => vec![
            InformationDisclosure,
            ExternalTrafficInterception,
            InternalServiceAccess,
            HostServiceDos,
        ],
        (Kind::OpenReassign, true) => vec![
            InformationDisclosure,
            ExternalTrafficInterception,
            InternalServiceAccess,
        ],
    };
    Some(v)
}

/// 90 gateways, ten of each kind, in 100.64.0.0/25.
fn population() -> Vec<(IpAddr, Kind)> {
    (0..90u32)
        .map(|i| {
            (
                IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)),
                KINDS[i as usize % KINDS.len()],
            )
        })
        .collect()
}

fn check_against_kinds(run: &Run, intrusive: bool) {
    for (a, k) in population() {
        let got = run.reports.get(&a).map(|r| r.findings.clone());
        assert_eq!(got, expected(k, intrusive), "{a} ({k:?})");
    }
    assert_eq!(run.reports.len(), 70, "only answering targets are reported");
    assert_eq!(run.summary.answering, 70);
    assert_eq!(run.summary.targets_probed, 128);
    // Garbage is no answer: each garbage gateway gets the first probe (one ANNOUNCE) in
    // each of the two passes, never the follow-up, and each reply counts as malformed.
    assert_eq!(run.summary.malformed_replies, 10 * 2);
}

#[test]
fn every_kind_of_gateway_is_classified_as_the_definitions_say() {
    let run = drive(
        config(false),
        range("100.64.0.0/25"),
        net(population()),
        None,
    );
    check_against_kinds(&run, false);
    let other = addr("100.64.0.7");
    assert_eq!(run.reports[&other].reply_source, Some(sibling(other)));
    let swapped = addr("100.64.0.2");
    assert_eq!(
        run.reports[&swapped].external_address,
        Some(IpAddr::V4(private_of(swapped)))
    );
    assert_eq!(run.reports[&swapped].epoch, Some(1000));
    assert_eq!(run.reports[&swapped].boot_time, Some(2_000_000_000 - 1000));
    assert_eq!(run.reports[&addr("100.64.0.6")].protocols, ["pcp"]);
    assert!(
        run.reports.values().all(|r| r.mappings.is_empty()),
        "non-intrusive asks for nothing"
    );
    assert!(run.gateways.values().all(|g| g.maps.is_empty()));
    assert!(!run.summary.findings.contains_key(&HostServiceDos));
    assert_eq!(run.summary.findings[&InternalTrafficInterception].count, 20);
}

#[test]
fn intrusive_audit_classifies_and_deletes_every_mapping_it_got() {
    let run = drive(
        config(true),
        range("100.64.0.0/25"),
        net(population()),
        None,
    );
    check_against_kinds(&run, true);
    for (a, g) in &run.gateways {
        assert!(
            g.maps.is_empty(),
            "{a} ({:?}) still maps {:?}",
            g.kind,
            g.maps
        );
    }
    let open = &run.reports[&addr("100.64.0.4")];
    let kinds: Vec<MapProbeKind> = open.mappings.iter().map(|m| m.probe).collect();
    assert_eq!(
        kinds,
        [
            MapProbeKind::NatPmpMap,
            MapProbeKind::PcpMap,
            MapProbeKind::PcpMapThirdParty,
            MapProbeKind::PcpMapClientMismatch
        ]
    );
    assert!(open
        .mappings
        .iter()
        .all(|m| m.granted && m.deletion == Deletion::Confirmed));
    // A correct PCP server (the swapped one checks) refuses forged client addresses.
    let swapped = &run.reports[&addr("100.64.0.2")];
    let mismatch = swapped
        .mappings
        .iter()
        .find(|m| m.probe == MapProbeKind::PcpMapClientMismatch);
    assert_eq!(
        mismatch.and_then(|m| m.result.as_deref()),
        Some("ADDRESS_MISMATCH")
    );
    let leak = &run.reports[&addr("100.64.0.1")];
    assert!(leak
        .mappings
        .iter()
        .all(|m| !m.granted && m.deletion == Deletion::NotNeeded));
    assert_eq!(run.summary.deletions_unconfirmed, 0);
    // Mapping requests are for a high port, suggesting that same port, with the lifetime.
    for m in &open.mappings {
        assert!(m.internal_port >= 49152 && m.suggested_port == m.internal_port);
        assert_eq!(m.lifetime, Some(60));
    }
}

#[test]
fn ipv6_targets_get_pcp_only_and_mapping_reveals_a_swap() {
    let t = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, i));
    let gws = [
        (t(1), Kind::Leak),
        (t(2), Kind::Swapped),
        (t(3), Kind::Open),
    ];
    let run = drive(config(false), range("2001:db8:64::/126"), net(gws), None);
    for (a, _) in gws {
        assert_eq!(run.reports[&a].findings, [InformationDisclosure], "{a}");
        assert_eq!(run.reports[&a].protocols, ["pcp"]);
    }
    let run = drive(config(true), range("2001:db8:64::/126"), net(gws), None);
    assert_eq!(run.reports[&t(1)].findings, [InformationDisclosure]);
    assert_eq!(
        run.reports[&t(2)].findings,
        [
            InformationDisclosure,
            InternalTrafficInterception,
            InternalServiceAccess,
            HostServiceDos
        ]
    );
    assert_eq!(
        run.reports[&t(3)].findings,
        [
            InformationDisclosure,
            ExternalTrafficInterception,
            InternalServiceAccess,
            HostServiceDos
        ]
    );
    assert!(run.gateways.values().all(|g| g.maps.is_empty()));
}

#[test]
fn abort_during_the_intrusive_phase_still_deletes_what_was_granted() {
    let gws: Vec<(IpAddr, Kind)> = (0..20u32)
        .map(|i| (IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)), Kind::Open))
        .collect();
    let mut cfg = config(true);
    cfg.rate = 100;
    let run = drive(cfg, range("100.64.0.0/27"), net(gws), Some(3));
    assert!(
        run.gateways.values().all(|g| g.maps.is_empty()),
        "a mapping was left behind"
    );
    let granted: usize = run
        .reports
        .values()
        .flat_map(|r| &r.mappings)
        .filter(|m| m.granted)
        .count();
    assert!(granted >= 3, "the abort came after {granted} grants");
    assert!(run
        .reports
        .values()
        .flat_map(|r| &r.mappings)
        .filter(|m| m.granted)
        .all(|m| m.deletion == Deletion::Confirmed));
    // Aborted before every target was mapped: no new mapping request after the abort.
    let requested = run
        .reports
        .values()
        .filter(|r| !r.mappings.is_empty())
        .count();
    assert!(
        requested < 20,
        "{requested} targets were asked after the abort"
    );
}

#[test]
fn lost_probes_are_retried_and_without_retries_missed() {
    let gws = [
        (addr("192.0.2.1"), Kind::Leak),
        (addr("192.0.2.2"), Kind::Open),
    ];
    // Every first datagram is lost.
    let mut n = net(gws);
    n.lose = Box::new(|i| i <= 4);
    let run = drive(config(false), range("192.0.2.0/30"), n, None);
    assert_eq!(run.reports.len(), 2, "the retry pass found both");
    let mut cfg = config(false);
    cfg.retries = 0;
    let mut n = net(gws);
    n.lose = Box::new(|i| i <= 4);
    let run = drive(cfg, range("192.0.2.0/30"), n, None);
    assert!(run.reports.len() < 2);
    // Intrusive: lost mapping answers are retried and the deletion still confirmed.
    let mut n = net([(addr("192.0.2.2"), Kind::Open)]);
    n.lose = Box::new(|i| i == 3 || i == 5);
    let run = drive(config(true), range("192.0.2.2/32"), n, None);
    let r = &run.reports[&addr("192.0.2.2")];
    assert!(
        r.mappings
            .iter()
            .all(|m| m.granted && m.deletion == Deletion::Confirmed),
        "{r:?}"
    );
    assert!(run.gateways.values().all(|g| g.maps.is_empty()));
}

#[test]
fn stray_forged_and_garbage_replies_are_never_findings() {
    let t = addr("192.0.2.1");
    let mut n = net([(t, Kind::Silent)]);
    let mut reply = [0u8; 12];
    let ok = natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
        result: natpmp::ResultCode::SUCCESS,
        epoch: 1,
        address: Ipv4Addr::new(192, 0, 2, 1),
    });
    let len = ok.emit(&mut reply);
    n.injected = vec![
        // From the target, but to a port that is not its keyed one.
        (SocketAddr::new(t, 5351), 1024, reply[..len].to_vec()),
        // From an address never probed, to a port nothing was sent from yet.
        (
            SocketAddr::new(addr("198.51.100.9"), 5351),
            40000,
            reply[..len].to_vec(),
        ),
        // From the right address but not the gateway port.
        (SocketAddr::new(t, 9999), 40000, reply[..len].to_vec()),
    ];
    let run = drive(config(false), range("192.0.2.0/30"), n, None);
    assert!(run.reports.is_empty(), "{:?}", run.reports);
    assert_eq!(run.summary.stray_replies, 3);
    assert_eq!(run.summary.answering, 0);
    assert!(run.summary.findings.values().all(|c| c.count == 0));
}

#[test]
fn probes_keep_to_the_rate() {
    let mut cfg = config(false);
    cfg.rate = 1000;
    let run = drive(cfg, range("192.0.2.0/24"), net([]), None);
    // 256 silent targets, one probe each (the second only goes to those that answer),
    // retried once: 512 probes at 1000/s.
    assert_eq!(run.send_times.len(), 512);
    for w in run.send_times.windows(200) {
        let span = w[199] - w[0];
        assert!(
            span >= Duration::from_millis(199 - 64),
            "200 probes in {span:?}"
        );
    }
    assert!(
        run.duration < Duration::from_secs(5),
        "bounded: {:?}",
        run.duration
    );
}

#[test]
fn shards_together_probe_the_range_exactly_once() {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for shard in 0..3 {
        let mut cfg = config(false);
        cfg.retries = 0;
        cfg.shards = 3;
        cfg.shard = shard;
        let gws: Vec<(IpAddr, Kind)> = (0..64u32)
            .map(|i| (IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)), Kind::Leak))
            .collect();
        let run = drive(cfg, range("192.0.2.0/26"), net(gws), None);
        total += run.summary.targets_probed;
        for a in run.reports.keys() {
            assert!(seen.insert(*a), "{a} probed by two shards");
        }
    }
    assert_eq!(total, 64);
    assert_eq!(seen.len(), 64);
}

#[test]
fn memory_is_bounded_by_answering_targets_not_the_range() {
    let t0 = Instant::now();
    let mut cfg = config(false);
    cfg.rate = 1_000_000;
    cfg.retries = 0;
    let mut s = Scanner::new(cfg, range("10.0.0.0/14"), t0);
    let mut now = t0;
    let mut sent = 0u64;
    loop {
        match s.poll(now) {
            Output::Transmit(_) => sent += 1,
            Output::Wait(w) => now = w.max(now + Duration::from_micros(1)),
            Output::Report(_) => {}
            Output::Done(summary) => {
                assert_eq!(summary.targets_probed, 1 << 18);
                break;
            }
        }
    }
    assert_eq!(sent, 1 << 18, "one probe per silent target");
    assert!(s.answered_len() == 0);
}

#[test]
fn a_nat_pmp_only_gateway_answers_the_first_probe_and_is_asked_its_address() {
    let t = addr("192.0.2.1");
    let run = drive(
        config(false),
        range("192.0.2.1/32"),
        net([(t, Kind::NatPmpOnly)]),
        None,
    );
    let r = &run.reports[&t];
    assert_eq!(r.protocols, ["nat-pmp"]);
    assert_eq!(r.external_address, Some(t));
    assert_eq!(r.findings, [InformationDisclosure]);
    // ANNOUNCE, then the external-address request; nothing more (no retry needed).
    assert_eq!(run.send_times.len(), 2);
}

#[test]
fn excluded_addresses_are_never_probed() {
    let include = ["192.0.2.0/28".parse::<Cidr>().unwrap()];
    let exclude = [
        "192.0.2.4/30".parse::<Cidr>().unwrap(),
        "192.0.2.9".parse::<Cidr>().unwrap(),
    ];
    let targets = Targets::new(&include, &exclude).unwrap();
    let all: Vec<(IpAddr, Kind)> = (0..16u32)
        .map(|i| (IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)), Kind::Leak))
        .collect();
    let run = drive(config(false), targets, net(all), None);
    assert_eq!(run.summary.targets_probed, 11);
    let reported: Vec<String> = run.reports.keys().map(ToString::to_string).collect();
    for excluded in [
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.6",
        "192.0.2.7",
        "192.0.2.9",
    ] {
        assert!(
            !reported.iter().any(|r| r == excluded),
            "{excluded} was probed"
        );
    }
    assert_eq!(reported.len(), 11);
}

#[test]
fn the_source_port_range_paces_a_silent_range_only_by_the_attribution_window() {
    // 8192 silent targets through 2000 ports at 1M probes/s: each port is held for the
    // attribution window, not the timeout (here 1 s); the window shrinks to its floor
    // (100 ms) at this rate, so 20,000 targets a second fit.
    let mut cfg = config(false);
    cfg.rate = 1_000_000;
    cfg.retries = 0;
    cfg.source_ports = (40000, 41999);
    let run = drive(cfg, range("10.0.0.0/19"), net([]), None);
    assert_eq!(run.summary.targets_probed, 8192);
    // At best 0.41 s of sending (hashed ports fill a little less than perfectly), then
    // the 1 s cooldown, in simulated time; holding ports for the timeout takes over 5 s.
    assert!(
        run.duration < Duration::from_millis(1700),
        "{:?}",
        run.duration
    );
    assert!(
        run.duration > Duration::from_millis(1400),
        "{:?}",
        run.duration
    );
}
