//! The gateway state machine: `(now, ingress facts, bytes) -> (reply, firewall
//! changes)`, plus timers for expiry and announcements. No sockets, no clock.
//! NAT-PMP and PCP share its ingress rules, mapping table and epoch.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp, Protocol};

use crate::firewall::{FirewallChange, Installed};
use crate::host::{HostBook, HostId};
use crate::policy::{Permissions, Policy};
use crate::ratelimit::RateLimiter;
use crate::table::{Mapping, MappingKey, MappingTable, Nonce, Origin};

/// Largest reply the core writes (PCP's maximum message size, RFC 6887 section 7; an
/// "unsupported opcode" echo of a NAT-PMP request is capped here too).
pub const MAX_REPLY: usize = 1100;

/// RFC 6886 section 3.2.1: 10 announcements, the first two 250 ms apart, then doubling.
const ANNOUNCE_COUNT: u8 = 10;
const ANNOUNCE_FIRST_INTERVAL: Duration = Duration::from_millis(250);
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// Random external ports tried before a linear scan (see `Gateway::allocate`).
const RANDOM_PROBES: u32 = 32;
/// Clients whose request rate is tracked at once; beyond this the longest idle is
/// forgotten, so a flood from many (spoofable, within the LAN) addresses cannot grow
/// the limiter without bound.
const RATE_LIMITED_CLIENTS: usize = 4096;

/// What the socket layer knows about a datagram (from IP_PKTINFO/IPV6_PKTINFO): the
/// interface it came in on, who sent it, and which of our addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    pub interface: u32,
    pub source: SocketAddr,
    pub destination: IpAddr,
}

/// Why a datagram got no answer. Silence is the answer to anything from outside
/// (CERT VU#184540): a reply would leak the gateway's existence and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Arrived on the external interface.
    ExternalInterface,
    /// Arrived on an interface that is neither internal nor external.
    NotInternalInterface,
    /// Arrived on an internal interface but was addressed elsewhere (the external
    /// address, another interface's address, broadcast or multicast).
    NotToInternalAddress,
    /// The source is not a host of the internal subnet it arrived from (spoofed, the
    /// gateway itself, the subnet's network or broadcast address, link-local).
    ClientNotAllowed,
    RateLimited,
    /// Too short, too long, or otherwise not a request we can answer.
    Malformed,
    /// A response sent to the server: RFC 6886 section 3.5 and RFC 6887 section 8.3
    /// say ignore.
    NotARequest,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::ExternalInterface,
        DropReason::NotInternalInterface,
        DropReason::NotToInternalAddress,
        DropReason::ClientNotAllowed,
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::NotARequest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::ExternalInterface => "external-interface",
            DropReason::NotInternalInterface => "not-internal-interface",
            DropReason::NotToInternalAddress => "not-to-internal-address",
            DropReason::ClientNotAllowed => "client-not-allowed",
            DropReason::RateLimited => "rate-limited",
            DropReason::Malformed => "malformed",
            DropReason::NotARequest => "not-a-request",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The core's decision about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the first `n` bytes of the reply buffer back to the source, from the
    /// destination address, out of the ingress interface.
    Reply(usize),
    Drop(DropReason),
}

/// Counters for the status view and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    /// NAT-PMP replies sent, indexed by result code 0..=5.
    pub results: [u64; 6],
    /// PCP replies sent, indexed by result code 0..=13.
    pub pcp_results: [u64; 14],
    pub drops: [u64; 7],
    pub mappings_created: u64,
    pub mappings_expired: u64,
}

impl Stats {
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// A change to the mapping table, for the daemon's state journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// Created or renewed (the expiry moved).
    Upsert(Mapping),
    Remove(MappingKey),
    /// State was lost or the external address changed: the epoch restarts at zero.
    NewEpoch,
}

/// Why a saved mapping was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the client is not a host of an internal subnet any more")]
    ClientNotAllowed,
    #[error("the permission rules no longer allow it")]
    NotAllowed,
    #[error("it clashes with another restored mapping")]
    Conflict,
    #[error("it is beyond mappings.max_per_client or mappings.max_total")]
    OverQuota,
}

/// Where an unsolicited announcement goes: 224.0.0.1:5350 or [ff02::1]:5350, on
/// every internal interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multicast {
    V4,
    V6,
}

/// One unsolicited announcement (RFC 6886 section 3.2.1, RFC 6887 section 14.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub to: Multicast,
    pub len: usize,
    pub bytes: [u8; 24],
}

impl Announcement {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Debug)]
struct Announcer {
    next: Option<Instant>,
    remaining: u8,
    interval: Duration,
}

impl Announcer {
    fn start(now: Instant) -> Announcer {
        Announcer {
            next: Some(now),
            remaining: ANNOUNCE_COUNT,
            interval: ANNOUNCE_FIRST_INTERVAL,
        }
    }
}

/// What a mapping request asks for, whichever protocol carried it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub client: IpAddr,
    pub protocol: Protocol,
    pub internal_port: u16,
    pub suggested_port: u16,
    pub lifetime: u32,
    pub origin: Origin,
    pub nonce: Option<Nonce>,
    pub prefer_failure: bool,
    /// PEER (outbound) rather than MAP (inbound).
    pub peer: bool,
}

/// Why a mapping request is refused, whichever protocol carried it; each protocol
/// turns it into its own result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAuthorized,
    /// The mapping exists under another PCP nonce (RFC 6887 section 11.3).
    NonceMismatch,
    Quota,
    /// The gateway's table is full (`max_total`).
    TableFull,
    NoPorts,
    NetworkFailure,
    /// PREFER_FAILURE and the suggested port cannot be had (RFC 6887 section 13.2).
    CannotProvide,
}

/// The gateway: policy, mapping table, epoch and timers.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) policy: Policy,
    pub(crate) permissions: Permissions,
    pub(crate) table: MappingTable,
    limiter: RateLimiter,
    /// Link-layer addresses the shell saw LAN addresses send from.
    hosts: HostBook,
    /// The epoch counter is `epoch_offset` seconds at `epoch_start`: a restart that
    /// restored its state continues the epoch instead of resetting it.
    epoch_start: Instant,
    epoch_offset: u32,
    pub(crate) external_address: Option<Ipv4Addr>,
    /// Table changes not yet persisted, drained by the daemon's state journal.
    events: Vec<StateEvent>,
    announcer: Announcer,
    next_prune: Instant,
    rng: u64,
    pub(crate) stats: Stats,
}

impl Gateway {
    /// A gateway with an empty table and a new epoch starting at `now`; announcements
    /// are scheduled at once (RFC 6886 section 3.2.1 "upon boot"). `seed` feeds the
    /// external port allocator: give it real randomness so ports are not predictable.
    pub fn new(
        policy: Policy,
        now: Instant,
        external_address: Option<Ipv4Addr>,
        seed: u64,
    ) -> Gateway {
        Gateway {
            permissions: Permissions::new(&policy),
            limiter: RateLimiter::new(policy.requests_per_second_per_client, RATE_LIMITED_CLIENTS),
            hosts: HostBook::new(RATE_LIMITED_CLIENTS),
            policy,
            table: MappingTable::default(),
            epoch_start: now,
            epoch_offset: 0,
            external_address,
            events: Vec::new(),
            announcer: Announcer::start(now),
            next_prune: now + PRUNE_INTERVAL,
            // xorshift must not start at zero.
            rng: seed | 1,
            stats: Stats::default(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn external_address(&self) -> Option<Ipv4Addr> {
        self.external_address
    }

    /// RFC 6886 section 3.6 "Seconds Since Start of Epoch", RFC 6887 section 8.5.
    pub fn epoch(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch_start).as_secs();
        u32::try_from(secs)
            .unwrap_or(u32::MAX)
            .saturating_add(self.epoch_offset)
    }

    pub fn mappings(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.table.iter()
    }

    pub fn mapping_count(&self) -> usize {
        self.table.len()
    }

    /// Everything the kernel should hold now, for an atomic reinstall.
    pub fn installed(&self) -> Installed {
        let mut changes = Vec::new();
        for m in self.table.iter() {
            m.kernel_changes(true, &mut changes);
        }
        let mut out = Installed::default();
        for c in changes {
            match c {
                FirewallChange::Add(f) => out.forwards.push(f),
                FirewallChange::AddOutbound(o) => out.outbound.push(o),
                FirewallChange::AddPinhole(p) => out.pinholes.push(p),
                _ => {}
            }
        }
        out
    }

    /// The shell saw `ip` send from link-layer address `link` (a LAN frame's source):
    /// from then on quotas and the rate limit count `ip` as that host, however many
    /// addresses it rotates through (see [`HostId`]).
    pub fn learn_host(&mut self, ip: IpAddr, link: [u8; 6]) {
        self.hosts.learn(ip, link);
    }

    /// Handles one datagram. The reply, if any, is written to `reply` (at least
    /// [`MAX_REPLY`] bytes); firewall changes are appended to `changes`. The caller
    /// applies the changes before sending the reply, so nothing is acknowledged that
    /// the kernel does not hold.
    pub fn handle(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        datagram: &[u8],
        reply: &mut [u8],
        changes: &mut Vec<FirewallChange>,
    ) -> Verdict {
        self.stats.requests += 1;
        let verdict = self.decide(now, ingress, datagram, reply, changes);
        match verdict {
            Verdict::Drop(r) => self.stats.drops[r.index()] += 1,
            Verdict::Reply(n) => self.count_result(&reply[..n.min(reply.len())]),
        }
        verdict
    }

    fn count_result(&mut self, reply: &[u8]) {
        match reply {
            // NAT-PMP: the result code is bytes 2..4.
            [0, _, hi, lo, ..] => {
                if let Some(slot) = self
                    .stats
                    .results
                    .get_mut(usize::from(u16::from_be_bytes([*hi, *lo])))
                {
                    *slot += 1;
                }
            }
            // PCP: byte 3.
            [pcp::VERSION, _, _, code, ..] => {
                if let Some(slot) = self.stats.pcp_results.get_mut(usize::from(*code)) {
                    *slot += 1;
                }
            }
            _ => {}
        }
    }

    fn decide(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        datagram: &[u8],
        reply: &mut [u8],
        changes: &mut Vec<FirewallChange>,
    ) -> Verdict {
        if let Err(reason) = self.check_ingress(ingress) {
            return Verdict::Drop(reason);
        }
        if !self
            .limiter
            .allow(now, self.hosts.host_of(ingress.source.ip()))
        {
            return Verdict::Drop(DropReason::RateLimited);
        }
        let cap = reply.len().min(MAX_REPLY);
        let reply = &mut reply[..cap];
        // RFC 6887 section 9 and Appendix A: the version byte chooses the protocol; a
        // server without one answers that protocol's requests with the other's
        // "unsupported version", so clients fall back.
        let Some(&version) = datagram.first() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let v4 = ingress.source.is_ipv4();
        match version {
            natpmp::VERSION if self.policy.nat_pmp && v4 => {
                self.serve_natpmp(now, ingress, datagram, reply, changes)
            }
            pcp::VERSION if self.policy.pcp => {
                self.serve_pcp(now, ingress, datagram, reply, changes)
            }
            // RFC 6887 section 8.2: "less than two octets long, it is silently dropped",
            // before the version is looked at.
            _ if self.policy.pcp && datagram.len() < 2 => Verdict::Drop(DropReason::Malformed),
            _ if self.policy.pcp => {
                // Section 8.2 again: the R bit is checked before the version.
                if datagram.get(1).is_some_and(|op| op & 0x80 != 0) {
                    Verdict::Drop(DropReason::NotARequest)
                } else {
                    self.pcp_unsupported_version(now, datagram, reply)
                }
            }
            // NAT-PMP only, and NAT-PMP is IPv4 only. RFC 6886 section 3.5 checks the
            // version before the opcode: any version but 0 gets result 1, even with an
            // opcode of 128 or more.
            _ if v4 => self.natpmp_unsupported_version(now, reply),
            _ => Verdict::Drop(DropReason::Malformed),
        }
    }

    /// RFC 6886 section 3.3: "Only packets received on the internal interface(s) with
    /// a destination address matching the internal address(es) of the NAT gateway
    /// should be allowed", and the mapping goes to the source address, which must
    /// therefore be a genuine host of that interface's subnet. RFC 6887 section 8.3
    /// applies the same to PCP.
    fn check_ingress(&self, ingress: &Ingress) -> Result<(), DropReason> {
        if ingress.interface == self.policy.external_index {
            return Err(DropReason::ExternalInterface);
        }
        let iface = self
            .policy
            .internal
            .iter()
            .find(|i| i.is_present() && i.index == ingress.interface)
            .ok_or(DropReason::NotInternalInterface)?;
        if !iface.owns(ingress.destination) {
            return Err(DropReason::NotToInternalAddress);
        }
        if self.host_allowed(ingress.interface, ingress.source.ip()) {
            Ok(())
        } else {
            Err(DropReason::ClientNotAllowed)
        }
    }

    /// Whether `client` is a genuine host of interface `interface`'s subnets (or of an
    /// allowed range): never the gateway itself, a network or broadcast address, or a
    /// multicast, loopback, unspecified or link-local address.
    pub(crate) fn host_allowed(&self, interface: u32, client: IpAddr) -> bool {
        let Some(iface) = self
            .policy
            .internal
            .iter()
            .find(|i| i.is_present() && i.index == interface)
        else {
            return false;
        };
        let in_subnet = iface.subnet_contains(client) || self.in_extra_range(client);
        let is_gateway = self.policy.internal.iter().any(|i| i.owns(client))
            || Some(client) == self.external_address.map(IpAddr::V4);
        let special = match client {
            // On a /31 or /32 both addresses are hosts (RFC 3021).
            IpAddr::V4(a) => {
                (iface.net.prefix_len() < 31
                    && (a == iface.net.network() || a == iface.net.broadcast()))
                    || a.is_broadcast()
                    || a.is_link_local()
            }
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        in_subnet
            && !is_gateway
            && !special
            && !client.is_unspecified()
            && !client.is_loopback()
            && !client.is_multicast()
    }

    /// Whether `client` lies in a configured extra client range (IPv4 only).
    fn in_extra_range(&self, client: IpAddr) -> bool {
        match client {
            IpAddr::V4(a) => self
                .policy
                .extra_client_ranges
                .iter()
                .any(|r| r.contains(a)),
            IpAddr::V6(_) => false,
        }
    }

    /// Creates or renews a mapping (protocol-neutral part of RFC 6886 section 3.3 and
    /// RFC 6887 sections 11.3 and 12.3).
    pub(crate) fn grant(
        &mut self,
        now: Instant,
        ask: Ask,
        changes: &mut Vec<FirewallChange>,
    ) -> Result<Mapping, Refusal> {
        if ask.client.is_ipv4() && self.external_address.is_none() {
            return Err(Refusal::NetworkFailure);
        }
        let lifetime = ask
            .lifetime
            .clamp(self.policy.min_lifetime, self.policy.max_lifetime);
        let expires = now + Duration::from_secs(u64::from(lifetime));
        let k = MappingKey {
            client: ask.client,
            protocol: ask.protocol,
            internal_port: ask.internal_port,
        };
        if let Some(old) = self.table.get(&k) {
            if let (Some(have), Some(asked)) = (old.nonce, ask.nonce) {
                if have != asked {
                    return Err(Refusal::NonceMismatch);
                }
            }
            if ask.prefer_failure
                && ask.suggested_port != 0
                && ask.suggested_port != old.external_port
            {
                return Err(Refusal::CannotProvide);
            }
            // A repeated request gets the port already assigned (RFC 6886 section 3.3);
            // PEER only ever extends (RFC 6887 section 12.3), MAP sets the lifetime.
            let new = Mapping {
                expires: if ask.peer {
                    old.expires.max(expires)
                } else {
                    expires
                },
                origin: ask.origin,
                nonce: ask.nonce.or(old.nonce),
                inbound: old.inbound || !ask.peer,
                outbound: old.outbound || ask.peer,
                ..old
            };
            let added = Mapping {
                inbound: new.inbound && !old.inbound,
                outbound: new.outbound && !old.outbound,
                ..new
            };
            added.kernel_changes(true, changes);
            self.table.update(new);
            self.events.push(StateEvent::Upsert(new));
            return Ok(new);
        }
        if self.table.len() >= self.policy.max_total as usize {
            return Err(Refusal::TableFull);
        }
        if self.table.count_for_host(self.hosts.host_of(ask.client)) >= self.policy.max_per_client {
            return Err(Refusal::Quota);
        }
        let external_port = match ask.client {
            IpAddr::V4(_) => self.allocate(&ask)?,
            IpAddr::V6(_) => {
                // A pinhole translates nothing: the external port is the internal one.
                if ask.prefer_failure
                    && ask.suggested_port != 0
                    && ask.suggested_port != ask.internal_port
                {
                    return Err(Refusal::CannotProvide);
                }
                if !self
                    .permissions
                    .allows(ask.internal_port, ask.client, ask.internal_port)
                {
                    return Err(Refusal::NotAuthorized);
                }
                ask.internal_port
            }
        };
        let m = Mapping {
            key: k,
            external_port,
            expires,
            origin: ask.origin,
            nonce: ask.nonce,
            inbound: !ask.peer,
            outbound: ask.peer,
        };
        let host = self.hosts.host_of(m.key.client);
        self.table.insert(m, host);
        self.stats.mappings_created += 1;
        self.events.push(StateEvent::Upsert(m));
        m.kernel_changes(true, changes);
        Ok(m)
    }

    /// Deletes one mapping, or (`internal_port` 0) all of the client's mappings for
    /// `protocol` (`None`: every protocol). A PCP nonce must match the mapping's; a
    /// NAT-PMP request (no nonce) comes from the same host and may delete any
    /// (RFC 6886 section 3.4, RFC 6887 section 11.3). Deleting nothing succeeds.
    pub(crate) fn delete(
        &mut self,
        client: IpAddr,
        protocol: Option<Protocol>,
        internal_port: u16,
        nonce: Option<Nonce>,
        changes: &mut Vec<FirewallChange>,
    ) -> Result<(), Refusal> {
        let keys = match (protocol, internal_port) {
            (Some(p), port) if port != 0 => vec![MappingKey {
                client,
                protocol: p,
                internal_port: port,
            }],
            (p, _) => self.table.keys_of(client, p),
        };
        let mut refused = false;
        for k in keys {
            let Some(m) = self.table.get(&k) else {
                continue;
            };
            if matches!((m.nonce, nonce), (Some(a), Some(b)) if a != b) {
                refused = true;
                continue;
            }
            self.remove_mapping(&k, changes);
        }
        // Section 3.4: delete as many as possible, but say so when some were not.
        if refused {
            Err(Refusal::NonceMismatch)
        } else {
            Ok(())
        }
    }

    /// The suggested port when the rules allow it and it is free; otherwise a free,
    /// allowed port from a random starting point (RFC 6886 section 3.3: "MUST return an
    /// available external port if possible"), unless PREFER_FAILURE forbids an
    /// alternative. "Not authorized" when the rules grant this client no port at all,
    /// "no ports" when all are taken.
    fn allocate(&mut self, ask: &Ask) -> Result<u16, Refusal> {
        let allowed = |g: &Gateway, port: u16| {
            port != 0 && g.permissions.allows(port, ask.client, ask.internal_port)
        };
        let free = |g: &Gateway, port: u16| g.table.is_free_for(ask.client, ask.protocol, port);
        let suggested = ask.suggested_port;
        if allowed(self, suggested) && free(self, suggested) {
            return Ok(suggested);
        }
        if ask.prefer_failure && suggested != 0 {
            return Err(Refusal::CannotProvide);
        }
        let ranges: Vec<_> = self
            .permissions
            .candidate_ranges(ask.client, ask.internal_port)
            .collect();
        // Random probes first: with the table F full each finds a free port with
        // probability 1-F, so a few suffice even at 50,000 mappings, whatever pattern
        // of suggested ports LAN hosts have used. A linear scan from a random start
        // would cross a long run of taken ports for every request (a host can make
        // such runs on purpose by suggesting consecutive ports).
        for _ in 0..RANDOM_PROBES {
            let Some(range) =
                ranges.get((self.next_random() % ranges.len().max(1) as u64) as usize)
            else {
                break;
            };
            let offset = (self.next_random() % u64::from(range.len())) as u32;
            // offset < len <= 65536, so the sum stays within u16.
            let port = (u32::from(range.first) + offset) as u16;
            if allowed(self, port) && free(self, port) {
                return Ok(port);
            }
        }
        // Then the exhaustive scan, which also tells "all taken" from "none allowed".
        let mut any_allowed = false;
        for range in ranges {
            let len = range.len();
            let start = (self.next_random() % u64::from(len)) as u32;
            for i in 0..len {
                let offset = (start + i) % len;
                // offset < len <= 65536, so the sum stays within u16.
                let port = (u32::from(range.first) + offset) as u16;
                if allowed(self, port) {
                    any_allowed = true;
                    if free(self, port) {
                        return Ok(port);
                    }
                }
            }
        }
        Err(if any_allowed {
            Refusal::NoPorts
        } else {
            Refusal::NotAuthorized
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to make ports unpredictable to a LAN host that cannot
        // observe the seed; not a cryptographic generator.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// When the core next needs [`Gateway::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.table.next_expiry(),
            self.announcer.next.filter(|_| self.has_announcements()),
            // Housekeeping only matters while clients are tracked.
            Some(self.next_prune).filter(|_| self.limiter.tracked() > 0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires mappings (RFC 6886 section 3.4: "at the time its lifetime expires, the
    /// mapping MUST be automatically deleted") and does housekeeping.
    pub fn handle_timeout(&mut self, now: Instant, changes: &mut Vec<FirewallChange>) {
        // Expiry needs no journal record: the stored expiry time says it already.
        for m in self.table.expire(now) {
            self.stats.mappings_expired += 1;
            m.kernel_changes(false, changes);
        }
        if now >= self.next_prune {
            self.limiter.prune(now);
            self.next_prune = now + PRUNE_INTERVAL;
        }
    }

    /// NAT-PMP announcements need an external address; PCP ANNOUNCE does not.
    fn has_announcements(&self) -> bool {
        self.policy.pcp || (self.policy.nat_pmp && self.external_address.is_some())
    }

    /// The announcements due now (RFC 6886 section 3.2.1; RFC 6887 section 14.1.3), to
    /// be multicast on every internal interface: the NAT-PMP external address and the
    /// PCP ANNOUNCE, each with the current epoch.
    pub fn poll_announcements(&mut self, now: Instant, out: &mut Vec<Announcement>) {
        if !self.has_announcements() {
            return;
        }
        let Some(due) = self.announcer.next.filter(|&t| t <= now) else {
            return;
        };
        self.announcer.remaining -= 1;
        self.announcer.next = if self.announcer.remaining == 0 {
            None
        } else {
            Some(due + self.announcer.interval)
        };
        self.announcer.interval *= 2;
        // "MUST be updated appropriately to reflect the passage of time".
        let epoch = self.epoch(now);
        let mut a = Announcement {
            to: Multicast::V4,
            len: 0,
            bytes: [0; 24],
        };
        if let (true, Some(address)) = (self.policy.nat_pmp, self.external_address) {
            let r = natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                result: natpmp::ResultCode::SUCCESS,
                epoch,
                address,
            });
            a.len = r.emit(&mut a.bytes);
            out.push(a);
        }
        if self.policy.pcp {
            a.len = pcp::Response::announce(epoch).emit(&mut a.bytes);
            out.push(a);
            if self.policy.internal.iter().any(|i| !i.nets6.is_empty()) {
                out.push(Announcement {
                    to: Multicast::V6,
                    ..a
                });
            }
        }
    }

    /// A new (or lost) external address: new epoch so clients re-map (RFC 6886 section
    /// 3.6), and a fresh round of announcements.
    pub fn set_external_address(&mut self, now: Instant, address: Option<Ipv4Addr>) {
        if address == self.external_address {
            return;
        }
        self.external_address = address;
        self.new_epoch(now);
    }

    fn new_epoch(&mut self, now: Instant) {
        self.epoch_start = now;
        self.epoch_offset = 0;
        self.announcer = Announcer::start(now);
        self.events.push(StateEvent::NewEpoch);
    }

    /// Forgets every mapping (e.g. the kernel refused a change and the table can no
    /// longer be trusted to match it): new epoch and announcements, so that clients
    /// re-create what they need (RFC 6886 section 3.7). Returns the mappings dropped;
    /// the daemon reinstalls the firewall from the (now empty) table.
    pub fn reset(&mut self, now: Instant) -> Vec<Mapping> {
        self.new_epoch(now);
        self.table.clear()
    }

    pub(crate) fn remove_mapping(
        &mut self,
        key: &MappingKey,
        changes: &mut Vec<FirewallChange>,
    ) -> bool {
        let Some(m) = self.table.remove(key) else {
            return false;
        };
        self.events.push(StateEvent::Remove(*key));
        m.kernel_changes(false, changes);
        true
    }

    /// Table changes since the last call, in order, for the state journal. The daemon
    /// makes them durable before it sends the replies that acknowledge them.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, StateEvent> {
        self.events.drain(..)
    }

    /// Continues an epoch saved by an earlier run (RFC 6886 section 3.6 allows this
    /// only when no mapping state was lost): the counter reads `seconds` now.
    pub fn continue_epoch(&mut self, now: Instant, seconds: u32) {
        self.epoch_start = now;
        self.epoch_offset = seconds;
    }

    /// Puts back a mapping saved by an earlier run, with the lifetime it has left. It
    /// is checked against the current policy like a new request (a config change while
    /// the daemon was down must not resurrect what is no longer allowed). Its kernel
    /// entries come from [`Gateway::installed`] for the atomic reinstall at start-up.
    pub fn restore(
        &mut self,
        now: Instant,
        saved: Mapping,
        remaining: Duration,
    ) -> Result<(), RestoreError> {
        let key = saved.key;
        let home = self
            .policy
            .internal
            .iter()
            .find(|i| i.subnet_contains(key.client))
            .map(|i| i.index);
        let ok = match home {
            Some(index) => self.host_allowed(index, key.client),
            None => self.in_extra_range(key.client),
        };
        if !ok {
            return Err(RestoreError::ClientNotAllowed);
        }
        if key.internal_port == 0
            || saved.external_port == 0
            || (saved.inbound
                && !self
                    .permissions
                    .allows(saved.external_port, key.client, key.internal_port))
        {
            return Err(RestoreError::NotAllowed);
        }
        if self.table.get(&key).is_some()
            || (key.client.is_ipv4()
                && !self
                    .table
                    .is_free_for(key.client, key.protocol, saved.external_port))
        {
            return Err(RestoreError::Conflict);
        }
        if self.table.len() >= self.policy.max_total as usize
            || self.table.count_for_host(self.hosts.host_of(key.client))
                >= self.policy.max_per_client
        {
            return Err(RestoreError::OverQuota);
        }
        let lifetime = remaining.min(Duration::from_secs(u64::from(self.policy.max_lifetime)));
        let m = Mapping {
            expires: now + lifetime,
            ..saved
        };
        let host = self.hosts.host_of(m.key.client);
        self.table.insert(m, host);
        self.events.push(StateEvent::Upsert(m));
        Ok(())
    }

    /// Admin removal (`natwarden status --delete`): every mapping of `client`, or the
    /// one for `(protocol, internal_port)`. Returns how many were removed.
    pub fn admin_delete(
        &mut self,
        client: IpAddr,
        which: Option<(Protocol, u16)>,
        changes: &mut Vec<FirewallChange>,
    ) -> usize {
        let keys: Vec<MappingKey> = match which {
            Some((protocol, internal_port)) => vec![MappingKey {
                client,
                protocol,
                internal_port,
            }],
            None => self.table.keys_of(client, None),
        };
        keys.iter()
            .filter(|k| self.remove_mapping(k, changes))
            .count()
    }

    /// A reloaded policy (SIGHUP). Mappings the new policy would not grant are removed
    /// at once: a tightened rule must not leave old forwards open until they expire.
    pub fn set_policy(&mut self, policy: Policy, changes: &mut Vec<FirewallChange>) {
        self.permissions = Permissions::new(&policy);
        self.limiter =
            RateLimiter::new(policy.requests_per_second_per_client, RATE_LIMITED_CLIENTS);
        self.policy = policy;
        let doomed: Vec<MappingKey> = self
            .table
            .iter()
            .filter(|m| {
                let k = m.key;
                let in_lan = self
                    .policy
                    .internal
                    .iter()
                    .any(|i| i.subnet_contains(k.client))
                    || self.in_extra_range(k.client);
                !in_lan
                    || (m.inbound
                        && !self
                            .permissions
                            .allows(m.external_port, k.client, k.internal_port))
            })
            .map(|m| m.key)
            .collect();
        for k in doomed {
            self.remove_mapping(&k, changes);
        }
        // A lowered quota applies to what exists: the oldest mappings beyond it close.
        let mut per_host: std::collections::HashMap<HostId, u32> = Default::default();
        let mut over_quota = Vec::new();
        // Newest first, so the first `max_per_client` of each host are kept.
        let by_age = self.table.keys_oldest_first();
        for k in by_age.iter().rev() {
            let host = self.table.host_of(k).unwrap_or(HostId::Address(k.client));
            let n = per_host.entry(host).or_insert(0);
            *n += 1;
            if *n > self.policy.max_per_client {
                over_quota.push(*k);
            }
        }
        for k in over_quota.iter().rev() {
            self.remove_mapping(k, changes);
        }
        let total = self.policy.max_total as usize;
        if self.table.len() > total {
            let excess = self.table.len() - total;
            for k in self.table.keys_oldest_first().into_iter().take(excess) {
                self.remove_mapping(&k, changes);
            }
        }
    }
}
