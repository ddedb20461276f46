//! The audit as a sans-IO state machine: time and received datagrams go in
//! ([`Scanner::handle`], [`Scanner::abort`]); datagrams to send, reports and the final
//! summary come out of one place ([`Scanner::poll`]). It never reads a clock or a socket.
//!
//! A run is: passes over the target permutation (the first pass probes every target, each
//! retry pass only those not yet answered, after a backoff), a cooldown for late replies,
//! then, with `--intrusive`, mapping transactions for each answering target, each granted
//! mapping deleted again before the run ends, also when it is aborted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp, Protocol};

use crate::classify::{classify, Evidence, MapEvidence};
use crate::permutation::{mix64, Permutation};
use crate::probe::{
    any_address, pcp_address, plain_address, Probe, Reply, MAX_PROBE_LEN, SERVER_PORT,
};
use crate::report::{
    Deletion, MapProbeKind, MappingReport, ServicePortReport, Summary, TargetReport,
};
use crate::slots::{Attribution, Slots};
use crate::targets::Targets;

/// The longest a source port stays one target's during the scan (see
/// [`Scanner::attribution_window`]): a reply from another address of the target counts
/// when it comes within this time (most Internet round trips do; the target's own replies
/// count whenever they come).
pub const ATTRIBUTION_WINDOW: Duration = Duration::from_millis(250);

/// The shortest window: faster than the port range allows at this, the rate is paced.
pub const MIN_ATTRIBUTION_WINDOW: Duration = Duration::from_millis(100);

/// How an audit runs. Every field is the user's to set (the CLI validates them).
#[derive(Debug, Clone)]
pub struct Config {
    /// Probes per second, all kinds together.
    pub rate: u32,
    /// Extra passes over unanswered targets, and extra attempts of each mapping request.
    pub retries: u32,
    /// How long to wait for an answer to one attempt; doubled on each retry.
    pub timeout: Duration,
    /// How long to wait for late replies after the last pass.
    pub cooldown: Duration,
    /// Ask for mappings (and delete them again).
    pub intrusive: bool,
    /// Lifetime of the mappings an intrusive audit asks for, in seconds.
    pub lifetime: u32,
    /// External ports to try to take (intrusive only).
    pub service_ports: Vec<u16>,
    /// Source ports to probe from, inclusive.
    pub source_ports: (u16, u16),
    /// Seeds the permutation, the port key, the mapped ports and the nonces.
    pub seed: u64,
    pub shard: u64,
    pub shards: u64,
    /// This host's address towards IPv4 / IPv6 targets: the PCP client address field.
    pub prober_v4: Option<Ipv4Addr>,
    pub prober_v6: Option<Ipv6Addr>,
    /// Unix time at the `now` given to [`Scanner::new`], to turn epochs into boot times.
    pub start_unix: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            rate: 1000,
            retries: 1,
            timeout: Duration::from_secs(1),
            cooldown: Duration::from_secs(1),
            intrusive: false,
            lifetime: 60,
            service_ports: Vec::new(),
            source_ports: (32768, 60999),
            seed: 0,
            shard: 0,
            shards: 1,
            prober_v4: None,
            prober_v6: None,
            start_unix: 0,
        }
    }
}

/// A datagram to send from `src_port` (on this host's address) to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub src_port: u16,
    len: usize,
    payload: [u8; MAX_PROBE_LEN],
}

impl Transmit {
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.len]
    }
}

/// What the caller does next.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    /// A finished target (only answering targets are reported).
    Report(Box<TargetReport>),
    /// Nothing to do before this time (or before a datagram arrives).
    Wait(Instant),
    /// The run is over; every granted mapping's deletion has been tried.
    Done(Summary),
}

/// Counters for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Targets probed in the first pass so far, of `targets`.
    pub probed: u64,
    pub targets: u64,
    pub answering: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
}

#[derive(Debug)]
enum Phase {
    Scanning { pass: u32, order: Permutation },
    Backoff { next_pass: u32, until: Instant },
    Cooldown { until: Instant },
    Intrusive,
    Finished,
}

/// A NAT-PMP external-address answer: the address (result 0) or the result code.
type NatPmpAddress = Result<Ipv4Addr, natpmp::ResultCode>;

/// What is known of a target that answered.
#[derive(Debug, Default)]
struct Answered {
    natpmp: bool,
    pcp: bool,
    /// Replies to the non-intrusive probes: [NAT-PMP external address, PCP ANNOUNCE].
    probes_answered: [bool; 2],
    natpmp_address: Option<NatPmpAddress>,
    natpmp_result: Option<natpmp::ResultCode>,
    pcp_result: Option<pcp::ResultCode>,
    network_failure: bool,
    epoch: Option<(u32, Instant)>,
    reply_source: Option<IpAddr>,
    txns: Vec<Txn>,
    /// Its NAT-PMP external-address request has been queued after its first answer.
    followed_up: bool,
    /// The source port held for this target's mapping transactions.
    port: Option<u16>,
    reported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mapping,
    Deleting,
    Done,
}

/// One mapping request and its deletion.
#[derive(Debug)]
struct Txn {
    kind: MapProbeKind,
    probe: Probe,
    suggested_port: u16,
    stage: Stage,
    attempts: u32,
    /// When the current attempt times out (the timer heap may hold older entries).
    deadline: Instant,
    answer: Option<MapAnswer>,
    /// Sent without an answer: deleted for safety, but not reported as granted.
    deletion: Deletion,
    deletion_result: Option<String>,
}

#[derive(Debug, Clone)]
struct MapAnswer {
    result: String,
    granted: bool,
    network_failure: bool,
    external_port: u16,
    external_address: Option<IpAddr>,
    lifetime: u32,
}

/// The audit state machine.
pub struct Scanner {
    cfg: Config,
    targets: Targets,
    start: Instant,
    key: u64,
    phase: Phase,
    slots: Slots,
    /// Sends not before this (the rate).
    next_send: Instant,
    interval: Duration,
    /// How far behind `now` the send clock may lag: the largest burst.
    burst: Duration,
    /// Probes of the current target waiting for their turn at the rate.
    queue: VecDeque<Transmit>,
    /// A target whose ports were all busy, to probe first once one frees.
    stalled: Option<(IpAddr, Option<Instant>)>,
    /// Targets that answered their first probe, to ask the next one (see
    /// [`Scanner::pending_probes`]).
    followups: VecDeque<IpAddr>,
    answered: HashMap<IpAddr, Answered>,
    /// Mapping transactions due, by deadline: (when, target, txn index).
    timers: BinaryHeap<Reverse<(Instant, IpAddr, usize)>>,
    /// Answering targets waiting for a port to run their mapping transactions.
    intrusive_queue: VecDeque<IpAddr>,
    open_txns: usize,
    reports: VecDeque<TargetReport>,
    /// Answering targets still to report at the end, last first.
    unreported: Vec<IpAddr>,
    progress: Progress,
    stray: u64,
    malformed: u64,
    aborted: bool,
    /// The findings of the targets reported so far.
    totals: Summary,
    summary: Option<Summary>,
}

impl Scanner {
    pub fn new(cfg: Config, targets: Targets, now: Instant) -> Scanner {
        let key = mix64(cfg.seed ^ 0x6e61_7477_6172_6465);
        let order = Permutation::new(targets.len(), cfg.seed, cfg.shard, cfg.shards);
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(cfg.rate.max(1)));
        let slots = Slots::new(cfg.source_ports.0, cfg.source_ports.1, key);
        let total = targets.probed_count();
        let totals = Summary::new(cfg.intrusive);
        Scanner {
            progress: Progress {
                targets: total.div_ceil(cfg.shards.max(1)),
                ..Progress::default()
            },
            cfg,
            targets,
            start: now,
            key,
            phase: Phase::Scanning { pass: 0, order },
            slots,
            next_send: now,
            interval,
            burst: (interval * 64).max(Duration::from_millis(2)),
            queue: VecDeque::new(),
            stalled: None,
            followups: VecDeque::new(),
            answered: HashMap::new(),
            timers: BinaryHeap::new(),
            intrusive_queue: VecDeque::new(),
            open_txns: 0,
            reports: VecDeque::new(),
            unreported: Vec::new(),
            stray: 0,
            malformed: 0,
            aborted: false,
            totals,
            summary: None,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Stop probing (Ctrl-C, an error): no new target and no new mapping request; every
    /// mapping that may have been granted is deleted before [`Output::Done`].
    pub fn abort(&mut self, now: Instant) {
        if self.aborted {
            return;
        }
        self.aborted = true;
        self.queue.clear();
        self.stalled = None;
        self.intrusive_queue.clear();
        let targets: Vec<IpAddr> = self.answered.keys().copied().collect();
        for t in targets {
            let Some(a) = self.answered.get_mut(&t) else {
                continue;
            };
            for (i, txn) in a.txns.iter_mut().enumerate() {
                if txn.stage != Stage::Mapping {
                    continue;
                }
                if txn.attempts == 0 {
                    txn.stage = Stage::Done;
                    self.open_txns -= 1;
                } else {
                    // It may have been granted with the answer still on its way.
                    txn.stage = Stage::Deleting;
                    txn.attempts = 0;
                    txn.deadline = now;
                    self.timers.push(Reverse((now, t, i)));
                }
            }
        }
        if !matches!(self.phase, Phase::Intrusive | Phase::Finished) {
            self.phase = Phase::Intrusive;
        }
    }

    /// Feeds a datagram received from `src` on our port `dst_port`.
    pub fn handle(&mut self, now: Instant, src: SocketAddr, dst_port: u16, payload: &[u8]) {
        self.progress.datagrams_received += 1;
        if src.port() != SERVER_PORT {
            self.stray += 1;
            return;
        }
        let source = canonical(src.ip());
        let targets = &self.targets;
        let target = match self
            .slots
            .attribute(source, dst_port, now, |a| targets.contains(a))
        {
            Attribution::Own(t) | Attribution::Other(t) => t,
            Attribution::Stray => {
                self.stray += 1;
                return;
            }
        };
        let Some(reply) = Reply::parse(payload) else {
            self.malformed += 1;
            return;
        };
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        let entry = self.answered.entry(target).or_default();
        if !(entry.natpmp || entry.pcp) {
            self.progress.answering += 1;
        }
        if source != target {
            entry.reply_source = Some(source);
        }
        entry.epoch = Some((reply.epoch(), now));
        let mut finished_txn = None;
        match reply {
            Reply::NatPmp(r) => {
                entry.natpmp = true;
                match r {
                    natpmp::Response::ExternalAddress(ext) => {
                        entry.probes_answered[0] = true;
                        entry.natpmp_result = Some(ext.result);
                        if ext.result == natpmp::ResultCode::NETWORK_FAILURE {
                            entry.network_failure = true;
                        }
                        entry.natpmp_address = Some(if ext.result.is_success() {
                            Ok(ext.address)
                        } else {
                            Err(ext.result)
                        });
                    }
                    // A NAT-PMP-only gateway's answer to the PCP probe (RFC 6887 section 9).
                    natpmp::Response::UnsupportedVersion { .. } => {
                        entry.probes_answered[1] = true;
                    }
                    natpmp::Response::Map(m) => {
                        finished_txn = natpmp_map_reply(entry, &m);
                    }
                }
            }
            Reply::Pcp(r) => {
                entry.pcp = true;
                match r.op {
                    pcp::OpData::Announce => {
                        // UNSUPP_VERSION can only answer the NAT-PMP probe (ours is version 2).
                        let i = usize::from(r.result != pcp::ResultCode::UNSUPP_VERSION);
                        entry.probes_answered[i] = true;
                        entry.pcp_result = Some(r.result);
                        if r.result == pcp::ResultCode::NETWORK_FAILURE {
                            entry.network_failure = true;
                        }
                    }
                    pcp::OpData::Map(m) => {
                        finished_txn = pcp_map_reply(entry, &r, &m);
                    }
                    pcp::OpData::Peer(_) => {}
                }
            }
        }
        // An IPv4 target that answered the first probe is asked its external address at
        // once, while the cooldown has not even begun.
        if target.is_ipv4() && !entry.probes_answered[0] && !entry.followed_up {
            entry.followed_up = true;
            if !matches!(self.phase, Phase::Intrusive | Phase::Finished) {
                self.followups.push_back(target);
            }
        }
        if let Some(stage) = finished_txn {
            self.after_reply(now, target, stage);
        }
    }

    /// Schedules what follows a transaction's answer: its deletion, or its end.
    fn after_reply(&mut self, now: Instant, target: IpAddr, (index, next): (usize, Stage)) {
        match next {
            Stage::Deleting => {
                if let Some(txn) = self
                    .answered
                    .get_mut(&target)
                    .and_then(|a| a.txns.get_mut(index))
                {
                    txn.deadline = now;
                }
                self.timers.push(Reverse((now, target, index)));
            }
            Stage::Done => self.txn_done(now, target),
            Stage::Mapping => {}
        }
    }

    fn txn_done(&mut self, now: Instant, target: IpAddr) {
        self.open_txns -= 1;
        let Some(a) = self.answered.get_mut(&target) else {
            return;
        };
        if a.txns.iter().all(|t| t.stage == Stage::Done) {
            if let Some(port) = a.port.take() {
                self.slots.release(port, now);
            }
            self.report(target);
        }
    }

    /// A finished target's report, built from the end-of-run list when none is queued.
    fn next_report(&mut self) -> Option<TargetReport> {
        if self.reports.is_empty() {
            if let Some(t) = self.unreported.pop() {
                self.report(t);
            }
        }
        self.reports.pop_front()
    }

    /// The next thing to do.
    pub fn poll(&mut self, now: Instant) -> Output {
        if let Some(r) = self.next_report() {
            return Output::Report(Box::new(r));
        }
        if let Some(s) = &self.summary {
            return Output::Done(s.clone());
        }
        loop {
            let wake = match self.step(now) {
                Step::Send(t) => {
                    // Unused time is credited up to `burst`, so a caller that wakes
                    // late (a millisecond timer) still keeps the average rate.
                    let floor = now.checked_sub(self.burst).unwrap_or(now);
                    self.next_send = self.next_send.max(floor) + self.interval;
                    self.progress.datagrams_sent += 1;
                    return Output::Transmit(t);
                }
                Step::Again => continue,
                Step::Wait(w) => w,
            };
            if let Some(r) = self.next_report() {
                return Output::Report(Box::new(r));
            }
            if let Phase::Finished = self.phase {
                let s = self.summary();
                self.summary = Some(s.clone());
                return Output::Done(s);
            }
            return Output::Wait(wake);
        }
    }

    fn step(&mut self, now: Instant) -> Step {
        let may_send = now >= self.next_send;
        if !self.queue.is_empty() {
            if !may_send {
                return Step::Wait(self.next_send);
            }
            return match self.queue.pop_front() {
                Some(t) => Step::Send(t),
                None => Step::Again,
            };
        }
        // Mapping transactions first: they hold ports and mappings open.
        if let Some(&Reverse((when, target, index))) = self.timers.peek() {
            if when <= now {
                if !may_send {
                    return Step::Wait(self.next_send);
                }
                self.timers.pop();
                return match self.txn_due(now, target, index, when) {
                    Some(t) => Step::Send(t),
                    None => Step::Again,
                };
            }
        }
        // Follow-ups to targets that just answered, before new targets.
        if !self.followups.is_empty() && !self.aborted {
            if !may_send {
                return Step::Wait(self.next_send);
            }
            if let Some(target) = self.followups.pop_front() {
                let hold = Some(now + self.attribution_window());
                if let (Ok(port), Some(probe)) = (
                    self.slots.acquire(target, now, hold),
                    self.pending_probes(target),
                ) {
                    return Step::Send(transmit(target, port, &probe));
                }
                // No port free just now: the next pass asks it.
                return Step::Again;
            }
        }
        let timer = self.timers.peek().map(|Reverse((w, _, _))| *w);
        let wait = |w: Instant| Step::Wait(timer.map_or(w, |t| t.min(w)));
        match &mut self.phase {
            Phase::Scanning { pass, order } => {
                if self.aborted {
                    self.phase = Phase::Intrusive;
                    return Step::Again;
                }
                let pass = *pass;
                let target = match self.stalled.take() {
                    Some((t, _)) => Some(t),
                    None => next_target(order, &self.targets),
                };
                let Some(target) = target else {
                    self.phase = if pass < self.cfg.retries {
                        Phase::Backoff {
                            next_pass: pass + 1,
                            until: now + self.cfg.timeout * 2u32.saturating_pow(pass),
                        }
                    } else {
                        Phase::Cooldown {
                            until: now + self.cfg.timeout.max(self.cfg.cooldown),
                        }
                    };
                    return Step::Again;
                };
                if pass == 0 {
                    self.progress.probed += 1;
                }
                let Some(probe) = self.pending_probes(target) else {
                    return Step::Again;
                };
                // A port is the target's alone for the attribution window: long enough for
                // a reply from another of its addresses, short enough that the port range
                // does not pace the scan (its own replies validate by key at any time).
                let hold = Some(now + self.attribution_window());
                match self.slots.acquire(target, now, hold) {
                    Ok(port) => {
                        self.queue.push_back(transmit(target, port, &probe));
                        Step::Again
                    }
                    Err(free_at) => {
                        if pass == 0 {
                            self.progress.probed -= 1;
                        }
                        self.stalled = Some((target, free_at));
                        wait(free_at.unwrap_or(now + self.cfg.timeout))
                    }
                }
            }
            Phase::Backoff { next_pass, until } => {
                if self.aborted || now >= *until {
                    let pass = *next_pass;
                    self.phase = Phase::Scanning {
                        pass,
                        order: Permutation::new(
                            self.targets.len(),
                            self.cfg.seed,
                            self.cfg.shard,
                            self.cfg.shards,
                        ),
                    };
                    Step::Again
                } else {
                    wait(*until)
                }
            }
            Phase::Cooldown { until } => {
                if self.aborted || now >= *until {
                    self.phase = Phase::Intrusive;
                    if self.cfg.intrusive && !self.aborted {
                        let mut ts: Vec<IpAddr> = self.answered.keys().copied().collect();
                        ts.sort();
                        self.intrusive_queue.extend(ts);
                    }
                    Step::Again
                } else {
                    wait(*until)
                }
            }
            Phase::Intrusive => {
                if let Some(&target) = self.intrusive_queue.front() {
                    match self.slots.acquire(target, now, None) {
                        Ok(port) => {
                            self.intrusive_queue.pop_front();
                            self.start_txns(now, target, port);
                            return Step::Again;
                        }
                        Err(free_at) if self.open_txns == 0 => {
                            return wait(free_at.unwrap_or(now + self.cfg.timeout));
                        }
                        Err(_) => {}
                    }
                }
                if self.open_txns == 0 && self.intrusive_queue.is_empty() {
                    let mut rest: Vec<IpAddr> = self
                        .answered
                        .iter()
                        .filter(|(_, a)| !a.reported)
                        .map(|(t, _)| *t)
                        .collect();
                    // Built one at a time as they are polled: the reports of a large
                    // range never all sit in memory at once.
                    rest.sort_unstable_by(|a, b| b.cmp(a));
                    self.unreported = rest;
                    self.phase = Phase::Finished;
                    return Step::Wait(now);
                }
                match timer {
                    Some(t) => Step::Wait(t),
                    None => Step::Wait(now + self.cfg.timeout),
                }
            }
            Phase::Finished => Step::Wait(now),
        }
    }

    /// How long a port stays a probed target's, for replies from its other addresses.
    /// [`ATTRIBUTION_WINDOW`], shortened (to [`MIN_ATTRIBUTION_WINDOW`] at most) when the
    /// rate would send more targets through the port range than it can hold that long,
    /// and never longer than the timeout.
    fn attribution_window(&self) -> Duration {
        let ports = u32::from(self.cfg.source_ports.1 - self.cfg.source_ports.0) + 1;
        let fits = self.interval * ports;
        fits.clamp(MIN_ATTRIBUTION_WINDOW, ATTRIBUTION_WINDOW)
            .min(self.cfg.timeout)
    }

    /// The non-intrusive probes `target` has not answered yet. First contact is one PCP
    /// ANNOUNCE, which every kind of gateway answers (a NAT-PMP-only one with "unsupported
    /// version", RFC 6887 Appendix A); the NAT-PMP external-address request goes only to
    /// IPv4 targets that answered it, so a silent address costs one probe per pass.
    fn pending_probes(&self, target: IpAddr) -> Option<Probe> {
        let answered = self.answered.get(&target).map(|a| a.probes_answered);
        let [natpmp_done, announce_done] = answered.unwrap_or_default();
        if !announce_done && !natpmp_done {
            Some(Probe::PcpAnnounce {
                client: self.client_address(target),
            })
        } else if target.is_ipv4() && !natpmp_done {
            Some(Probe::NatPmpAddress)
        } else {
            None
        }
    }

    fn prober(&self, target: IpAddr) -> Option<IpAddr> {
        match target {
            IpAddr::V4(_) => self.cfg.prober_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.cfg.prober_v6.map(IpAddr::V6),
        }
    }

    fn client_address(&self, target: IpAddr) -> Ipv6Addr {
        match self.prober(target) {
            Some(a) => pcp_address(a),
            None => any_address(target),
        }
    }

    /// A random high port (49152-65535) for mapping request `n` to `target`, from the seed.
    fn random_port(&self, target: IpAddr, n: u64) -> u16 {
        let bits = match target {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => mix64(u128::from(a) as u64) ^ (u128::from(a) >> 64) as u64,
        };
        49152 + (mix64(self.key ^ mix64(bits) ^ n.wrapping_mul(0x9e37)) % 16384) as u16
    }

    fn start_txns(&mut self, now: Instant, target: IpAddr, port: u16) {
        let client = self.client_address(target);
        let lifetime = self.cfg.lifetime;
        let (natpmp, pcp) = match self.answered.get(&target) {
            Some(a) => (a.probes_answered[0] && a.natpmp_address.is_some(), a.pcp),
            None => return,
        };
        let other = other_host(target);
        let mut txns = Vec::new();
        let mut n = 0u64;
        let mut port_for = |s: &Scanner| {
            n += 1;
            s.random_port(target, n)
        };
        let mut pcp_map = |s: &Scanner, kind, client, third_party, suggested: Option<u16>| {
            let internal = port_for(s);
            let suggested = suggested.unwrap_or(internal);
            let nonce = nonce(s.key, target, u64::from(internal) << 8 | kind as u64);
            let transport = if kind == MapProbeKind::ServicePort {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            Txn::new(
                kind,
                Probe::PcpMap {
                    client,
                    nonce,
                    transport,
                    internal_port: internal,
                    suggested_port: suggested,
                    any_address: any_address(target),
                    third_party,
                    lifetime,
                },
                suggested,
                now,
            )
        };
        if natpmp {
            let internal = self.random_port(target, 100);
            txns.push(Txn::new(
                MapProbeKind::NatPmpMap,
                Probe::NatPmpMap {
                    transport: Protocol::Udp,
                    internal_port: internal,
                    suggested_port: internal,
                    lifetime,
                },
                internal,
                now,
            ));
        }
        if pcp {
            txns.push(pcp_map(self, MapProbeKind::PcpMap, client, None, None));
            txns.push(pcp_map(
                self,
                MapProbeKind::PcpMapThirdParty,
                client,
                Some(other),
                None,
            ));
            txns.push(pcp_map(
                self,
                MapProbeKind::PcpMapClientMismatch,
                other,
                None,
                None,
            ));
        }
        for (i, &service) in self.cfg.service_ports.iter().enumerate() {
            if natpmp {
                let internal = self.random_port(target, 200 + i as u64);
                txns.push(Txn::new(
                    MapProbeKind::ServicePort,
                    Probe::NatPmpMap {
                        transport: Protocol::Tcp,
                        internal_port: internal,
                        suggested_port: service,
                        lifetime,
                    },
                    service,
                    now,
                ));
            } else if pcp {
                txns.push(pcp_map(
                    self,
                    MapProbeKind::ServicePort,
                    client,
                    None,
                    Some(service),
                ));
            }
        }
        let Some(a) = self.answered.get_mut(&target) else {
            return;
        };
        if txns.is_empty() {
            self.slots.release(port, now);
            self.report(target);
            return;
        }
        a.port = Some(port);
        for i in 0..txns.len() {
            self.timers.push(Reverse((now, target, a.txns.len() + i)));
        }
        self.open_txns += txns.len();
        a.txns.extend(txns);
    }

    /// A transaction's timer fired at `when`: (re)send, or give up.
    fn txn_due(
        &mut self,
        now: Instant,
        target: IpAddr,
        index: usize,
        when: Instant,
    ) -> Option<Transmit> {
        let retries = self.cfg.retries;
        let timeout = self.cfg.timeout;
        let a = self.answered.get_mut(&target)?;
        let port = a.port?;
        let txn = a.txns.get_mut(index)?;
        if txn.stage == Stage::Done || when != txn.deadline {
            return None;
        }
        if txn.attempts > retries {
            match txn.stage {
                Stage::Mapping => {
                    // No answer: delete anyway, in case only the answer was lost.
                    txn.stage = Stage::Deleting;
                    txn.attempts = 0;
                    txn.deadline = now;
                    self.timers.push(Reverse((now, target, index)));
                    return None;
                }
                Stage::Deleting => {
                    txn.stage = Stage::Done;
                    txn.deletion = if txn.answer.as_ref().is_some_and(|m| m.granted) {
                        Deletion::Unconfirmed
                    } else {
                        Deletion::NotNeeded
                    };
                    self.txn_done(now, target);
                    return None;
                }
                Stage::Done => return None,
            }
        }
        let probe = match txn.stage {
            Stage::Mapping => txn.probe,
            _ => txn.probe.deletion(),
        };
        txn.deadline = now + timeout * 2u32.saturating_pow(txn.attempts);
        txn.attempts += 1;
        self.timers.push(Reverse((txn.deadline, target, index)));
        Some(transmit(target, port, &probe))
    }

    fn report(&mut self, target: IpAddr) {
        let prober = self.prober(target);
        let start = self.start;
        let start_unix = self.cfg.start_unix;
        let Some(a) = self.answered.get_mut(&target) else {
            return;
        };
        if a.reported {
            return;
        }
        a.reported = true;
        let evidence = Evidence {
            answered: a.natpmp || a.pcp,
            natpmp_address: a.natpmp_address.map(|r| r.map_err(|c| c.0)),
            network_failure: a.network_failure
                || a.txns
                    .iter()
                    .filter_map(|t| t.answer.as_ref())
                    .any(|m| m.network_failure),
            maps: a
                .txns
                .iter()
                .filter_map(|t| {
                    let m = t.answer.as_ref()?;
                    Some(MapEvidence {
                        kind: t.kind,
                        suggested_port: t.suggested_port,
                        granted: m.granted,
                        external_port: m.external_port,
                        external_address: m.external_address,
                    })
                })
                .collect(),
        };
        let mut protocols = Vec::new();
        if a.natpmp {
            protocols.push("nat-pmp".to_string());
        }
        if a.pcp {
            protocols.push("pcp".to_string());
        }
        let service_ports = a
            .txns
            .iter()
            .filter(|t| t.kind == MapProbeKind::ServicePort)
            .map(|t| ServicePortReport {
                port: t.suggested_port,
                taken: t
                    .answer
                    .as_ref()
                    .is_some_and(|m| m.granted && m.external_port == t.suggested_port),
            })
            .collect();
        let report = TargetReport {
            target,
            protocols,
            external_address: match a.natpmp_address {
                Some(Ok(addr)) => Some(IpAddr::V4(addr)),
                _ => None,
            },
            epoch: a.epoch.map(|(e, _)| e),
            boot_time: a.epoch.map(|(e, at)| {
                (start_unix + at.saturating_duration_since(start).as_secs())
                    .saturating_sub(u64::from(e))
            }),
            reply_source: a.reply_source,
            nat_pmp_result: a.natpmp_result.map(|c| c.description().to_string()),
            pcp_result: a.pcp_result.map(|c| c.name().to_string()),
            findings: classify(target, prober, &evidence),
            mappings: a.txns.iter().map(Txn::report).collect(),
            service_ports,
        };
        self.totals.add(&report);
        self.reports.push_back(report);
    }

    fn summary(&self) -> Summary {
        let mut s = self.totals.clone();
        s.targets_probed = self.progress.probed;
        s.stray_replies = self.stray;
        s.malformed_replies = self.malformed;
        s
    }
}

enum Step {
    Send(Transmit),
    Again,
    Wait(Instant),
}

fn next_target(order: &mut Permutation, targets: &Targets) -> Option<IpAddr> {
    order.by_ref().find_map(|i| targets.get(i))
}

fn transmit(target: IpAddr, src_port: u16, probe: &Probe) -> Transmit {
    let mut payload = [0; MAX_PROBE_LEN];
    let len = probe.emit(&mut payload);
    Transmit {
        dst: SocketAddr::new(target, SERVER_PORT),
        src_port,
        len,
        payload,
    }
}

/// An IPv4 reply may reach an IPv6 socket as `::ffff:a.b.c.d`.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => plain_address(v6),
        v4 => v4,
    }
}

/// The host a THIRD_PARTY or forged client address names: a documentation address
/// (RFC 5737, RFC 3849), so a gateway that grants it sends nothing to a real host.
fn other_host(target: IpAddr) -> Ipv6Addr {
    match target {
        IpAddr::V4(_) => pcp::ipv4_mapped(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V6(_) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    }
}

fn nonce(key: u64, target: IpAddr, n: u64) -> pcp::Nonce {
    let t = match target {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => mix64(u128::from(a) as u64 ^ mix64((u128::from(a) >> 64) as u64)),
    };
    let a = mix64(key ^ mix64(t ^ mix64(n)));
    let b = mix64(a ^ 0x5851_f42d_4c95_7f2d);
    let mut out = [0; 12];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes()[..4]);
    pcp::Nonce(out)
}

impl Txn {
    fn new(kind: MapProbeKind, probe: Probe, suggested_port: u16, now: Instant) -> Txn {
        Txn {
            kind,
            probe,
            suggested_port,
            stage: Stage::Mapping,
            attempts: 0,
            deadline: now,
            answer: None,
            deletion: Deletion::NotNeeded,
            deletion_result: None,
        }
    }

    fn report(&self) -> MappingReport {
        let (protocol, transport, internal_port) = match self.probe {
            Probe::NatPmpMap {
                transport,
                internal_port,
                ..
            } => ("nat-pmp", transport, internal_port),
            Probe::PcpMap {
                transport,
                internal_port,
                ..
            } => ("pcp", transport, internal_port),
            _ => ("", Protocol::Udp, 0),
        };
        let answer = self.answer.as_ref();
        MappingReport {
            probe: self.kind,
            protocol: protocol.to_string(),
            transport: transport.name().to_string(),
            internal_port,
            suggested_port: self.suggested_port,
            result: answer.map(|m| m.result.clone()),
            granted: answer.is_some_and(|m| m.granted),
            external_port: answer.filter(|m| m.granted).map(|m| m.external_port),
            external_address: answer
                .filter(|m| m.granted)
                .and_then(|m| m.external_address),
            lifetime: answer.filter(|m| m.granted).map(|m| m.lifetime),
            deletion: self.deletion,
            deletion_result: self.deletion_result.clone(),
        }
    }

    /// An answer to this transaction arrived: what happens next.
    fn answered(
        &mut self,
        success: bool,
        lifetime: u32,
        result: String,
        answer: impl FnOnce() -> MapAnswer,
    ) -> Option<Stage> {
        match self.stage {
            Stage::Mapping => {
                let a = answer();
                let granted = a.granted;
                self.answer = Some(a);
                // Even a refusal ends with a deletion request when it claimed success.
                self.stage = if granted || success {
                    self.attempts = 0;
                    Stage::Deleting
                } else {
                    Stage::Done
                };
                Some(self.stage)
            }
            Stage::Deleting => {
                if success && lifetime > 0 {
                    // A late answer to the mapping request, not to its deletion.
                    if self.answer.is_none() {
                        self.answer = Some(answer());
                    }
                    return None;
                }
                self.deletion = if success {
                    Deletion::Confirmed
                } else if self.answer.as_ref().is_some_and(|m| m.granted) {
                    Deletion::Refused
                } else {
                    Deletion::NotNeeded
                };
                if !success {
                    self.deletion_result = Some(result);
                }
                self.stage = Stage::Done;
                Some(Stage::Done)
            }
            Stage::Done => None,
        }
    }
}

fn natpmp_map_reply(a: &mut Answered, m: &natpmp::MapResponse) -> Option<(usize, Stage)> {
    let index = a.txns.iter().position(|t| {
        matches!(t.probe, Probe::NatPmpMap { transport, internal_port, .. }
            if transport == m.protocol && internal_port == m.internal_port)
    })?;
    let success = m.result.is_success();
    let answer = || MapAnswer {
        result: m.result.description().to_string(),
        granted: success && m.lifetime > 0,
        network_failure: m.result == natpmp::ResultCode::NETWORK_FAILURE,
        external_port: m.external_port,
        external_address: None,
        lifetime: m.lifetime,
    };
    let stage = a.txns[index].answered(
        success,
        m.lifetime,
        m.result.description().to_string(),
        answer,
    )?;
    Some((index, stage))
}

fn pcp_map_reply(a: &mut Answered, r: &pcp::Response, m: &pcp::MapData) -> Option<(usize, Stage)> {
    let index = a.txns.iter().position(|t| {
        matches!(t.probe, Probe::PcpMap { nonce, internal_port, transport, .. }
            if nonce == m.nonce && internal_port == m.internal_port
                && transport.ip_number() == m.protocol)
    })?;
    let success = r.result.is_success();
    let answer = || MapAnswer {
        result: r.result.name().to_string(),
        granted: success && r.lifetime > 0,
        network_failure: r.result == pcp::ResultCode::NETWORK_FAILURE,
        external_port: m.external_port,
        external_address: success.then(|| plain_address(m.external_address)),
        lifetime: r.lifetime,
    };
    let stage = a.txns[index].answered(success, r.lifetime, r.result.name().to_string(), answer)?;
    Some((index, stage))
}

#[cfg(test)]
impl Scanner {
    /// Targets held in memory (answering ones only).
    pub(crate) fn answered_len(&self) -> usize {
        self.answered.len()
    }
}
