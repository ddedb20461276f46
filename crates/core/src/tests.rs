//! The shared harness for the gateway's tests: a fake clock, no sockets, and a fake
//! kernel that replays the firewall changes polled, as the daemon would.
//!
//! The tests, by subject (each names the RFC rule or CERT VU#184540 problem it pins):
//! `cert`, `natpmp`, `pcp`, `state` and `properties`.

mod cert;
mod natpmp;
mod pcp;
mod properties;
mod state;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use natwarden_wire::natpmp::{MapRequest, Request, Response, ResultCode};
use natwarden_wire::Protocol;

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
