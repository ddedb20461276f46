//! The gateway state machine: datagrams go in (`handle`), one queue of outputs and the
//! timers come out (`poll(now)`). No sockets, no clock; its state, epoch and counters.
//!
//! NAT-PMP and PCP share its ingress rules (`ingress`), mapping table (`mappings`) and
//! epoch (`announce`); `serve_natpmp` and `serve_pcp` turn requests into answers.

mod announce;
mod ingress;
mod mappings;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp};

use crate::firewall::{FirewallChange, Installed};
use crate::host::{HostBook, HostId};
use crate::output::{Answer, Output, Reply, StateEvent, Transmit, MAX_REPLY};
use crate::policy::{Permissions, Policy};
use crate::ratelimit::RateLimiter;
use crate::table::{Mapping, MappingTable};

use announce::Announcer;
pub use ingress::{DropReason, Ingress};
pub use mappings::RestoreError;
pub(crate) use mappings::{Ask, Refusal};

const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// Clients whose request rate is tracked at once; beyond this the longest idle is
/// forgotten, so a flood from many (spoofable, within the LAN) addresses cannot grow
/// the limiter without bound.
const RATE_LIMITED_CLIENTS: usize = 4096;

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
            hosts: HostBook::new(RATE_LIMITED_CLIENTS),
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

    /// The shell saw `ip` send from link-layer address `link` (a LAN frame's source):
    /// from then on quotas and the rate limit count `ip` as that host, however many
    /// addresses it rotates through (see [`HostId`]).
    pub fn learn_host(&mut self, ip: IpAddr, link: [u8; 6]) {
        self.hosts.learn(ip, link);
    }

    /// Whether the shell has told which link-layer host `ip` is (see [`Gateway::learn_host`]).
    pub fn knows_host(&self, ip: IpAddr) -> bool {
        matches!(self.hosts.host_of(ip), HostId::Link(_))
    }

    /// The host quotas and rate limits count `ip` as.
    pub(crate) fn host_of(&self, ip: IpAddr) -> HostId {
        self.hosts.host_of(ip)
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
                self.serve_natpmp(now, ingress, datagram, reply)
            }
            pcp::VERSION if self.policy.pcp => self.serve_pcp(now, ingress, datagram, reply),
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

    /// When the core next has something to do without an input ([`Output::Wait`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.table.next_expiry(),
            self.next_announcement(),
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

    /// Continues an epoch saved by an earlier run (RFC 6886 section 3.6 allows this
    /// only when no mapping state was lost): the counter reads `seconds` now.
    pub fn continue_epoch(&mut self, now: Instant, seconds: u32) {
        self.epoch_start = now;
        self.epoch_offset = seconds;
    }
}
