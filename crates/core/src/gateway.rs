//! The gateway state machine: datagrams and time go in (`handle`, `poll(now)`), one
//! queue of outputs comes out (`poll`). No sockets, no clock.
//! NAT-PMP and PCP share its ingress rules, mapping table and epoch.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp, Protocol};

use crate::firewall::{FirewallChange, Installed};
use crate::output::{
    Announcement, Answer, Multicast, Output, Reply, StateEvent, Transmit, MAX_REPLY,
};
use crate::policy::{Permissions, Policy};
use crate::ratelimit::RateLimiter;
use crate::table::{Mapping, MappingKey, MappingTable, Nonce, Origin};

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
pub(crate) enum Verdict {
    /// Send the first `n` bytes of the reply buffer back to the source, from the
    /// destination address, out of the ingress interface.
    Reply(usize, Answer),
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
    /// The epoch counter is `epoch_offset` seconds at `epoch_start`: a restart that
    /// restored its state continues the epoch instead of resetting it.
    epoch_start: Instant,
    epoch_offset: u32,
    pub(crate) external_address: Option<Ipv4Addr>,
    /// Outputs not yet polled, in the order they happened.
    outputs: VecDeque<Output>,
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
            policy,
            table: MappingTable::default(),
            epoch_start: now,
            epoch_offset: 0,
            external_address,
            outputs: VecDeque::new(),
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

    /// Handles one datagram. Its outputs (firewall changes, journal records, then the
    /// reply or the reason for silence) are queued for [`Gateway::poll`].
    pub fn handle(&mut self, now: Instant, ingress: &Ingress, datagram: &[u8]) {
        self.stats.requests += 1;
        let mut reply = [0u8; MAX_REPLY];
        match self.decide(now, ingress, datagram, &mut reply) {
            Verdict::Drop(reason) => {
                self.stats.drops[reason.index()] += 1;
                self.outputs.push_back(Output::Dropped {
                    ingress: *ingress,
                    reason,
                });
            }
            Verdict::Reply(n, result) => {
                self.count_result(result);
                self.outputs
                    .push_back(Output::Transmit(Transmit::Reply(Reply {
                        to: *ingress,
                        result,
                        payload: reply[..n.min(MAX_REPLY)].to_vec(),
                    })));
            }
        }
    }

    /// The next output: what is queued first; when nothing is, the timers due at `now`
    /// (expiry, announcements, housekeeping) run; when they produce nothing either,
    /// [`Output::Wait`] with the time to come back. Poll until `Wait` after every input.
    pub fn poll(&mut self, now: Instant) -> Output {
        if self.outputs.is_empty() {
            self.handle_timeout(now);
        }
        self.outputs
            .pop_front()
            .unwrap_or_else(|| Output::Wait(self.poll_timeout()))
    }

    fn count_result(&mut self, result: Answer) {
        let slot = match result {
            Answer::NatPmp(code) => self.stats.results.get_mut(usize::from(code.0)),
            Answer::Pcp(code) => self.stats.pcp_results.get_mut(usize::from(code.0)),
        };
        if let Some(slot) = slot {
            *slot += 1;
        }
    }

    /// Queues the kernel side of adding or removing `m`.
    pub(crate) fn push_firewall(&mut self, m: &Mapping, add: bool) {
        let mut changes = Vec::new();
        m.kernel_changes(add, &mut changes);
        self.outputs
            .extend(changes.into_iter().map(Output::Firewall));
    }

    pub(crate) fn push_journal(&mut self, e: StateEvent) {
        self.outputs.push_back(Output::Journal(e));
    }

    fn decide(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        datagram: &[u8],
        reply: &mut [u8],
    ) -> Verdict {
        if let Err(reason) = self.check_ingress(ingress) {
            return Verdict::Drop(reason);
        }
        if !self.limiter.allow(now, ingress.source.ip()) {
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
                self.serve_natpmp(now, ingress, datagram, reply)
            }
            pcp::VERSION if self.policy.pcp => self.serve_pcp(now, ingress, datagram, reply),
            _ if datagram.get(1).is_some_and(|op| op & 0x80 != 0) => {
                Verdict::Drop(DropReason::NotARequest)
            }
            _ if self.policy.pcp => self.pcp_unsupported_version(now, datagram, reply),
            // NAT-PMP only, and NAT-PMP is IPv4 only.
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
    pub(crate) fn grant(&mut self, now: Instant, ask: Ask) -> Result<Mapping, Refusal> {
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
            self.push_firewall(&added, true);
            self.table.update(new);
            self.push_journal(StateEvent::Upsert(new));
            return Ok(new);
        }
        if self.table.len() >= self.policy.max_total as usize {
            return Err(Refusal::TableFull);
        }
        if self.table.count_for(ask.client) >= self.policy.max_per_client {
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
        self.table.insert(m);
        self.stats.mappings_created += 1;
        self.push_journal(StateEvent::Upsert(m));
        self.push_firewall(&m, true);
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
            self.remove_mapping(&k);
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

    /// When the core next has something to do without an input ([`Output::Wait`]).
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
    /// mapping MUST be automatically deleted"), queues the announcements due and does
    /// housekeeping.
    fn handle_timeout(&mut self, now: Instant) {
        // Expiry needs no journal record: the stored expiry time says it already.
        for m in self.table.expire(now) {
            self.stats.mappings_expired += 1;
            self.push_firewall(&m, false);
        }
        self.announce(now);
        if now >= self.next_prune {
            self.limiter.prune(now);
            self.next_prune = now + PRUNE_INTERVAL;
        }
    }

    /// NAT-PMP announcements need an external address; PCP ANNOUNCE does not.
    fn has_announcements(&self) -> bool {
        self.policy.pcp || (self.policy.nat_pmp && self.external_address.is_some())
    }

    /// Queues the announcements due now (RFC 6886 section 3.2.1; RFC 6887 section
    /// 14.1.3), to be multicast on every internal interface: the NAT-PMP external
    /// address and the PCP ANNOUNCE, each with the current epoch.
    fn announce(&mut self, now: Instant) {
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
            self.push_announcement(a);
        }
        if self.policy.pcp {
            a.len = pcp::Response::announce(epoch).emit(&mut a.bytes);
            self.push_announcement(a);
            if self.policy.internal.iter().any(|i| !i.nets6.is_empty()) {
                self.push_announcement(Announcement {
                    to: Multicast::V6,
                    ..a
                });
            }
        }
    }

    fn push_announcement(&mut self, a: Announcement) {
        self.outputs
            .push_back(Output::Transmit(Transmit::Announcement(a)));
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
        self.push_journal(StateEvent::NewEpoch);
    }

    /// Forgets every mapping (e.g. the kernel refused a change and the table can no
    /// longer be trusted to match it): new epoch and announcements, so that clients
    /// re-create what they need (RFC 6886 section 3.7). Returns the mappings dropped.
    /// Outputs not yet polled are discarded: the daemon reinstalls the firewall and
    /// rewrites the journal from the (now empty) table.
    pub fn reset(&mut self, now: Instant) -> Vec<Mapping> {
        self.new_epoch(now);
        self.outputs.clear();
        self.table.clear()
    }

    pub(crate) fn remove_mapping(&mut self, key: &MappingKey) -> bool {
        let Some(m) = self.table.remove(key) else {
            return false;
        };
        self.push_journal(StateEvent::Remove(*key));
        self.push_firewall(&m, false);
        true
    }

    /// Continues an epoch saved by an earlier run (RFC 6886 section 3.6 allows this
    /// only when no mapping state was lost): the counter reads `seconds` now.
    pub fn continue_epoch(&mut self, now: Instant, seconds: u32) {
        self.epoch_start = now;
        self.epoch_offset = seconds;
    }

    /// Puts back a mapping saved by an earlier run, with the lifetime it has left. It
    /// is checked against the current policy like a new request (a config change while
    /// the daemon was down must not resurrect what is no longer allowed). Nothing is
    /// queued: its kernel entries come from [`Gateway::installed`] for the atomic
    /// reinstall at start-up, and the daemon's journal starts with a snapshot.
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
            || self.table.count_for(key.client) >= self.policy.max_per_client
        {
            return Err(RestoreError::OverQuota);
        }
        let lifetime = remaining.min(Duration::from_secs(u64::from(self.policy.max_lifetime)));
        let m = Mapping {
            expires: now + lifetime,
            ..saved
        };
        self.table.insert(m);
        Ok(())
    }

    /// Admin removal (`natwarden status --delete`): every mapping of `client`, or the
    /// one for `(protocol, internal_port)`. Returns how many were removed.
    pub fn admin_delete(&mut self, client: IpAddr, which: Option<(Protocol, u16)>) -> usize {
        let keys: Vec<MappingKey> = match which {
            Some((protocol, internal_port)) => vec![MappingKey {
                client,
                protocol,
                internal_port,
            }],
            None => self.table.keys_of(client, None),
        };
        keys.iter().filter(|k| self.remove_mapping(k)).count()
    }

    /// A reloaded policy (SIGHUP). Mappings the new policy would not grant are removed
    /// at once: a tightened rule must not leave old forwards open until they expire.
    pub fn set_policy(&mut self, policy: Policy) {
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
            self.remove_mapping(&k);
        }
        // A lowered quota applies to what exists: the oldest mappings beyond it close.
        let mut per_client: std::collections::HashMap<IpAddr, u32> = Default::default();
        let mut over_quota = Vec::new();
        // Newest first, so the first `max_per_client` of each client are kept.
        let by_age = self.table.keys_oldest_first();
        for k in by_age.iter().rev() {
            let n = per_client.entry(k.client).or_insert(0);
            *n += 1;
            if *n > self.policy.max_per_client {
                over_quota.push(*k);
            }
        }
        for k in over_quota.iter().rev() {
            self.remove_mapping(k);
        }
        let total = self.policy.max_total as usize;
        if self.table.len() > total {
            let excess = self.table.len() - total;
            for k in self.table.keys_oldest_first().into_iter().take(excess) {
                self.remove_mapping(&k);
            }
        }
    }
}
