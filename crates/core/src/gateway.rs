//! The NAT-PMP gateway state machine: `(now, ingress facts, bytes) -> (reply, firewall
//! changes)`, plus timers for expiry and announcements. No sockets, no clock.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use natwarden_wire::natpmp::{
    self, ExternalAddressResponse, MapRequest, MapResponse, ParseError, Request, ResultCode,
};
use natwarden_wire::Protocol;

use crate::firewall::{FirewallChange, Forward};
use crate::policy::{Permissions, Policy};
use crate::ratelimit::RateLimiter;
use crate::table::{Mapping, MappingKey, MappingTable, Origin};

/// Largest reply the core writes: an "unsupported opcode" echo of a request is capped
/// here (RFC 6886 section 3.5 returns "the entire request").
pub const MAX_REPLY: usize = 1100;

/// RFC 6886 section 3.2.1: 10 announcements, the first two 250 ms apart, then doubling.
const ANNOUNCE_COUNT: u8 = 10;
const ANNOUNCE_FIRST_INTERVAL: Duration = Duration::from_millis(250);
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// What the socket layer knows about a datagram (from IP_PKTINFO): the interface it
/// came in on, who sent it, and which of our addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    pub interface: u32,
    pub source: SocketAddrV4,
    pub destination: Ipv4Addr,
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
    /// gateway itself, the subnet's network or broadcast address).
    ClientNotAllowed,
    RateLimited,
    /// Too short, too long, or otherwise not a NAT-PMP request.
    Malformed,
    /// A response (opcode >= 128) sent to the server: RFC 6886 section 3.5 says ignore.
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
}

/// Counters for the status view and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    /// Replies sent, indexed by NAT-PMP result code 0..=5.
    pub results: [u64; 6],
    pub drops: [u64; 7],
    pub mappings_created: u64,
    pub mappings_expired: u64,
}

impl Stats {
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
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

/// The gateway: policy, mapping table, epoch and timers.
#[derive(Debug)]
pub struct Gateway {
    policy: Policy,
    permissions: Permissions,
    table: MappingTable,
    limiter: RateLimiter,
    /// The epoch counter is `epoch_offset` seconds at `epoch_start`: a restart that
    /// restored its state continues the epoch instead of resetting it.
    epoch_start: Instant,
    epoch_offset: u32,
    external_address: Option<Ipv4Addr>,
    /// Table changes not yet persisted, drained by the daemon's state journal.
    events: Vec<StateEvent>,
    announcer: Announcer,
    next_prune: Instant,
    rng: u64,
    stats: Stats,
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
            limiter: RateLimiter::new(policy.requests_per_second_per_client),
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

    /// RFC 6886 section 3.6 "Seconds Since Start of Epoch".
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
            Verdict::Reply(n) => {
                // Bytes 2..4 of every NAT-PMP reply are its result code.
                let code = reply
                    .get(2..4)
                    .filter(|_| n >= 4)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0);
                if let Some(slot) = self.stats.results.get_mut(usize::from(code)) {
                    *slot += 1;
                }
            }
        }
        verdict
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
        let client = *ingress.source.ip();
        if !self.limiter.allow(now, client) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        let epoch = self.epoch(now);
        let request = match Request::parse(datagram) {
            Ok(r) => r,
            Err(ParseError::UnsupportedVersion { .. }) => {
                let r = natpmp::Response::UnsupportedVersion { epoch };
                return Verdict::Reply(r.emit(reply));
            }
            Err(ParseError::UnsupportedOpcode { .. }) => {
                let cap = reply.len().min(MAX_REPLY);
                return Verdict::Reply(natpmp::emit_unsupported_opcode(
                    datagram,
                    &mut reply[..cap],
                ));
            }
            Err(ParseError::NotARequest { .. }) => return Verdict::Drop(DropReason::NotARequest),
            Err(_) => return Verdict::Drop(DropReason::Malformed),
        };
        let response = match request {
            Request::ExternalAddress => {
                natpmp::Response::ExternalAddress(match self.external_address {
                    Some(address) => ExternalAddressResponse {
                        result: ResultCode::SUCCESS,
                        epoch,
                        address,
                    },
                    // Section 3.5: "e.g., NAT box itself has not obtained a DHCP lease".
                    None => ExternalAddressResponse {
                        result: ResultCode::NETWORK_FAILURE,
                        epoch,
                        address: Ipv4Addr::UNSPECIFIED,
                    },
                })
            }
            Request::Map(req) => natpmp::Response::Map(self.map(now, client, req, epoch, changes)),
        };
        Verdict::Reply(response.emit(reply))
    }

    /// RFC 6886 section 3.3: "Only packets received on the internal interface(s) with
    /// a destination address matching the internal address(es) of the NAT gateway
    /// should be allowed", and the mapping goes to the source address, which must
    /// therefore be a genuine host of that interface's subnet.
    fn check_ingress(&self, ingress: &Ingress) -> Result<(), DropReason> {
        if ingress.interface == self.policy.external_index {
            return Err(DropReason::ExternalInterface);
        }
        let iface = self
            .policy
            .internal
            .iter()
            .find(|i| i.index == ingress.interface)
            .ok_or(DropReason::NotInternalInterface)?;
        if ingress.destination != iface.net.addr() {
            return Err(DropReason::NotToInternalAddress);
        }
        if self.client_allowed(ingress) {
            Ok(())
        } else {
            Err(DropReason::ClientNotAllowed)
        }
    }

    /// Whether the source of a datagram that arrived on an internal interface is a
    /// genuine host of that interface's subnet (or of an allowed range).
    fn client_allowed(&self, ingress: &Ingress) -> bool {
        let Some(iface) = self
            .policy
            .internal
            .iter()
            .find(|i| i.index == ingress.interface)
        else {
            return false;
        };
        let client = *ingress.source.ip();
        let in_subnet = iface.net.contains(client)
            || self
                .policy
                .extra_client_ranges
                .iter()
                .any(|r| r.contains(client));
        let is_gateway = self.policy.internal.iter().any(|i| i.net.addr() == client)
            || Some(client) == self.external_address;
        // On a /31 or /32 both addresses are hosts (RFC 3021); otherwise the network
        // and broadcast addresses cannot be a requester.
        let special = iface.net.prefix_len() < 31
            && (client == iface.net.network() || client == iface.net.broadcast());
        in_subnet
            && !is_gateway
            && !special
            && !client.is_unspecified()
            && !client.is_loopback()
            && !client.is_multicast()
            && !client.is_broadcast()
    }

    fn map(
        &mut self,
        now: Instant,
        client: Ipv4Addr,
        req: MapRequest,
        epoch: u32,
        changes: &mut Vec<FirewallChange>,
    ) -> MapResponse {
        let refuse = |result: ResultCode| MapResponse {
            protocol: req.protocol,
            result,
            epoch,
            internal_port: req.internal_port,
            external_port: 0,
            lifetime: 0,
        };
        if req.lifetime == 0 {
            // Section 3.4: deleting a mapping that does not exist succeeds too, and
            // internal port 0 deletes all of the client's mappings for the protocol.
            let keys = if req.internal_port == 0 {
                self.table.keys_of(client, req.protocol)
            } else {
                vec![key(client, req.protocol, req.internal_port)]
            };
            for k in keys {
                self.remove_mapping(&k, changes);
            }
            return refuse(ResultCode::SUCCESS);
        }
        if self.external_address.is_none() {
            return refuse(ResultCode::NETWORK_FAILURE);
        }
        if req.internal_port == 0 {
            return refuse(ResultCode::NOT_AUTHORIZED);
        }
        let lifetime = req
            .lifetime
            .clamp(self.policy.min_lifetime, self.policy.max_lifetime);
        let expires = now + Duration::from_secs(u64::from(lifetime));
        let k = key(client, req.protocol, req.internal_port);
        let granted = |external_port| MapResponse {
            protocol: req.protocol,
            result: ResultCode::SUCCESS,
            epoch,
            internal_port: req.internal_port,
            external_port,
            lifetime,
        };
        // Section 3.3: a repeated request for the same internal port gets the port
        // already assigned, whatever it suggests (the first answer may have been lost).
        if let Some(m) = self.table.renew(&k, expires, Origin::NatPmp) {
            self.events.push(StateEvent::Upsert(m));
            return granted(m.external_port);
        }
        if self.table.count_for(client) >= self.policy.max_per_client {
            return refuse(ResultCode::OUT_OF_RESOURCES);
        }
        let external_port = match self.allocate(client, req) {
            Ok(port) => port,
            Err(result) => return refuse(result),
        };
        let m = Mapping {
            key: k,
            external_port,
            expires,
            origin: Origin::NatPmp,
        };
        self.insert_mapping(m, changes);
        granted(external_port)
    }

    /// The suggested port when the rules allow it and it is free; otherwise a free,
    /// allowed port from a random starting point (section 3.3: "MUST return an
    /// available external port if possible"). Fails with "not authorized" when the
    /// rules grant this client no port at all, "out of resources" when all are taken.
    fn allocate(&mut self, client: Ipv4Addr, req: MapRequest) -> Result<u16, ResultCode> {
        let allowed = |g: &Gateway, port: u16| {
            port != 0 && g.permissions.allows(port, client, req.internal_port)
        };
        let free = |g: &Gateway, port: u16| g.table.is_free_for(client, req.protocol, port);
        let suggested = req.suggested_external_port;
        if allowed(self, suggested) && free(self, suggested) {
            return Ok(suggested);
        }
        let ranges: Vec<_> = self
            .permissions
            .candidate_ranges(client, req.internal_port)
            .collect();
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
            ResultCode::OUT_OF_RESOURCES
        } else {
            ResultCode::NOT_AUTHORIZED
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
            self.announcer
                .next
                .filter(|_| self.external_address.is_some()),
            // Housekeeping only matters while clients are tracked.
            Some(self.next_prune).filter(|_| self.limiter.tracked() > 0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires mappings (section 3.4: "at the time its lifetime expires, the mapping
    /// MUST be automatically deleted") and does housekeeping.
    pub fn handle_timeout(&mut self, now: Instant, changes: &mut Vec<FirewallChange>) {
        // Expiry needs no journal record: the stored expiry time says it already.
        for m in self.table.expire(now) {
            self.stats.mappings_expired += 1;
            changes.push(FirewallChange::Remove(m.forward()));
        }
        if now >= self.next_prune {
            self.limiter.prune(now);
            self.next_prune = now + PRUNE_INTERVAL;
        }
    }

    /// The next due gratuitous announcement (section 3.2.1), to be multicast to
    /// 224.0.0.1:5350 on every internal interface; `None` when none is due.
    pub fn poll_announcement(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let address = self.external_address?;
        let due = self.announcer.next.filter(|&t| t <= now)?;
        self.announcer.remaining -= 1;
        self.announcer.next = if self.announcer.remaining == 0 {
            None
        } else {
            Some(due + self.announcer.interval)
        };
        self.announcer.interval *= 2;
        let r = natpmp::Response::ExternalAddress(ExternalAddressResponse {
            result: ResultCode::SUCCESS,
            // "MUST be updated appropriately to reflect the passage of time".
            epoch: self.epoch(now),
            address,
        });
        Some(r.emit(buf))
    }

    /// A new (or lost) external address: new epoch so clients re-map (section 3.6),
    /// and a fresh round of announcements once an address is known.
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
    /// re-create what they need (section 3.7). Returns the removals for the record;
    /// the daemon reinstalls the firewall from the (now empty) table.
    pub fn reset(&mut self, now: Instant) -> Vec<Mapping> {
        self.new_epoch(now);
        self.table.clear()
    }

    fn insert_mapping(&mut self, m: Mapping, changes: &mut Vec<FirewallChange>) {
        self.table.insert(m);
        self.stats.mappings_created += 1;
        self.events.push(StateEvent::Upsert(m));
        changes.push(FirewallChange::Add(m.forward()));
    }

    fn remove_mapping(&mut self, key: &MappingKey, changes: &mut Vec<FirewallChange>) -> bool {
        let Some(m) = self.table.remove(key) else {
            return false;
        };
        self.events.push(StateEvent::Remove(*key));
        changes.push(FirewallChange::Remove(m.forward()));
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
    /// the daemon was down must not resurrect what is no longer allowed). The firewall
    /// change is returned for the atomic reinstall at start-up.
    pub fn restore(
        &mut self,
        now: Instant,
        key: MappingKey,
        external_port: u16,
        remaining: Duration,
        origin: Origin,
    ) -> Result<Forward, RestoreError> {
        let probe = Ingress {
            interface: self
                .policy
                .internal
                .iter()
                .find(|i| i.net.contains(key.client))
                .map(|i| i.index)
                .unwrap_or(0),
            source: SocketAddrV4::new(key.client, 0),
            destination: Ipv4Addr::UNSPECIFIED,
        };
        let client_ok = self.client_allowed(&probe)
            || self
                .policy
                .extra_client_ranges
                .iter()
                .any(|r| r.contains(key.client));
        if !client_ok {
            return Err(RestoreError::ClientNotAllowed);
        }
        if key.internal_port == 0
            || external_port == 0
            || !self
                .permissions
                .allows(external_port, key.client, key.internal_port)
        {
            return Err(RestoreError::NotAllowed);
        }
        if self.table.contains(&key)
            || !self
                .table
                .is_free_for(key.client, key.protocol, external_port)
        {
            return Err(RestoreError::Conflict);
        }
        let lifetime = remaining.min(Duration::from_secs(u64::from(self.policy.max_lifetime)));
        let m = Mapping {
            key,
            external_port,
            expires: now + lifetime,
            origin,
        };
        self.table.insert(m);
        self.events.push(StateEvent::Upsert(m));
        Ok(m.forward())
    }

    /// Admin removal (`natwarden status --delete`): every mapping of `client`, or the
    /// one for `(protocol, internal_port)`. Returns how many were removed.
    pub fn admin_delete(
        &mut self,
        client: Ipv4Addr,
        which: Option<(Protocol, u16)>,
        changes: &mut Vec<FirewallChange>,
    ) -> usize {
        let keys: Vec<MappingKey> = match which {
            Some((protocol, port)) => vec![key(client, protocol, port)],
            None => [Protocol::Udp, Protocol::Tcp]
                .into_iter()
                .flat_map(|p| self.table.keys_of(client, p))
                .collect(),
        };
        keys.iter()
            .filter(|k| self.remove_mapping(k, changes))
            .count()
    }

    /// A reloaded policy (SIGHUP). Mappings the new policy would not grant are removed
    /// at once: a tightened rule must not leave old forwards open until they expire.
    pub fn set_policy(&mut self, policy: Policy, changes: &mut Vec<FirewallChange>) {
        self.permissions = Permissions::new(&policy);
        self.limiter = RateLimiter::new(policy.requests_per_second_per_client);
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
                    .any(|i| i.net.contains(k.client))
                    || self
                        .policy
                        .extra_client_ranges
                        .iter()
                        .any(|r| r.contains(k.client));
                !in_lan
                    || !self
                        .permissions
                        .allows(m.external_port, k.client, k.internal_port)
            })
            .map(|m| m.key)
            .collect();
        for k in doomed {
            self.remove_mapping(&k, changes);
        }
    }
}

fn key(client: Ipv4Addr, protocol: Protocol, internal_port: u16) -> MappingKey {
    MappingKey {
        client,
        protocol,
        internal_port,
    }
}
