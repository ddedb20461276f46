//! The I/O shell around the gateway core: feeds it datagrams, time, signals, interface
//! changes and admin requests; carries out its outputs (kernel, then disk, then replies).
//!
//! It also keeps the kernel table true when someone else changes it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use natwarden_core::{
    Announcement, DropReason, FirewallChange, Gateway, Mapping, Multicast, Output, Reply,
    StateEvent, Transmit,
};
use natwarden_core::{InternalInterface, Ipv4Net, Ipv6Net};
use natwarden_kernel::rtnl::{self, AddressMonitor};
use natwarden_kernel::{Backend, TableWatch};
use natwarden_wire::{natpmp, pcp};
use tracing::{debug, error, info, warn};

use crate::config::{self, Settings};
use crate::control::{self, ControlServer};
use crate::linklayer::LinkTap;
use crate::signals::{poll_readable, Signal, Signals};
use crate::state::{self, Journal, Loaded, Record, SavedMapping};
use crate::status;
use crate::udp::PktinfoSocket;

/// Datagrams handled per wake-up before their firewall changes are committed in one
/// netlink batch and their journal records in one fdatasync: large enough to amortise
/// both, small enough to keep latency low.
const BATCH: usize = 256;
/// Drops are logged at most this often, with a count of those not logged.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// A table rebuild or interface re-read that failed is retried this often.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// One round of the core's outputs, sorted by where they go: the kernel, the disk, the
/// sockets. [`Daemon::carry_out`] takes them in that order.
#[derive(Default)]
struct Round {
    changes: Vec<FirewallChange>,
    events: Vec<StateEvent>,
    transmits: Vec<Transmit>,
}

struct DropLog {
    next: Instant,
    suppressed: u64,
}

impl DropLog {
    fn record(&mut self, now: Instant, reason: DropReason, source: SocketAddr, interface: u32) {
        if now < self.next {
            self.suppressed += 1;
            return;
        }
        let what = match reason {
            DropReason::ExternalInterface => Some("from the external interface"),
            DropReason::NotToInternalAddress => Some("not addressed to an internal address"),
            DropReason::ClientNotAllowed => Some("from a source outside the internal subnets"),
            _ => None,
        };
        match what {
            Some(what) => {
                warn!(%source, interface, reason = reason.name(), suppressed = self.suppressed, "dropped request {what}")
            }
            None => {
                info!(%source, interface, reason = reason.name(), suppressed = self.suppressed, "dropped request")
            }
        }
        self.suppressed = 0;
        self.next = now + DROP_LOG_INTERVAL;
    }
}

/// Converts the core's monotonic instants to wall-clock for the state file.
#[derive(Clone, Copy)]
pub struct Clock {
    pub mono: Instant,
    pub wall_ms: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            mono: Instant::now(),
            wall_ms: state::unix_ms(SystemTime::now()),
        }
    }

    pub fn wall_ms_of(&self, t: Instant) -> u64 {
        let ahead =
            u64::try_from(t.saturating_duration_since(self.mono).as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.saturating_add(ahead)
    }
}

pub struct Daemon {
    config_path: PathBuf,
    settings: Settings,
    gateway: Gateway,
    backend: Box<dyn Backend>,
    socket: PktinfoSocket,
    /// IPv6 (PCP only), when an internal interface has IPv6 addresses.
    socket6: Option<PktinfoSocket>,
    /// The link-layer source of IPv6 requests (see linklayer.rs).
    link_tap: Option<LinkTap>,
    signals: Signals,
    control: ControlServer,
    monitor: AddressMonitor,
    /// Changes to our nftables table made by someone else (None for the dry-run backend).
    watch: Option<TableWatch>,
    /// The kernel table is known not to hold what the core does: no reply goes out
    /// until a rebuild succeeds.
    table_damaged: bool,
    /// Re-reading the interfaces failed: retried every [`RETRY_INTERVAL`].
    interfaces_stale: bool,
    journal: Journal,
    epoch_start_ms: u64,
    drops: DropLog,
}

impl Daemon {
    /// Opens the sockets, restores the saved state (or starts a new epoch), rebuilds the
    /// nftables table from it atomically, then drops privileges.
    pub fn start(
        config_path: PathBuf,
        settings: Settings,
        mut backend: Box<dyn Backend>,
        seed: u64,
    ) -> anyhow::Result<Daemon> {
        let signals = Signals::new().context("setting up signal handling")?;
        let socket = PktinfoSocket::bind(natpmp::SERVER_PORT, false)
            .with_context(|| format!("binding UDP port {}", natpmp::SERVER_PORT))?;
        // PCP over IPv6 whenever PCP is on: a LAN may get its IPv6 prefix after start-up
        // (the addresses are followed). A kernel without IPv6 just means IPv4 only.
        let socket6 = if settings.policy.pcp {
            match PktinfoSocket::bind(pcp::SERVER_PORT, true) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("no IPv6 socket ({e}): PCP is served over IPv4 only");
                    None
                }
            }
        } else {
            None
        };
        // Which host sent each IPv6 request (its link-layer address), for per-host quotas.
        let link_tap = match socket6 {
            Some(_) => match LinkTap::open(pcp::SERVER_PORT) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!("no link-layer tap ({e}; needs CAP_NET_RAW at start): an IPv6 host's quota and rate limit count each of its addresses apart");
                    None
                }
            },
            None => None,
        };
        let group = settings
            .control_group
            .as_deref()
            .map(group_id)
            .transpose()?;
        let control = ControlServer::bind(&settings.control_socket, group).with_context(|| {
            format!(
                "creating the control socket {}",
                settings.control_socket.display()
            )
        })?;
        // Interfaces are followed by name, with their addresses: the external address
        // (unless the config fixes it), the internal IPv4 addresses and IPv6 prefixes.
        let monitor =
            AddressMonitor::open().context("following interfaces and addresses over rtnetlink")?;

        let clock = Clock::now();
        let mut gateway = Gateway::new(
            settings.policy.clone(),
            clock.mono,
            settings.external_address,
            seed,
        );
        let epoch_start_ms = restore(&mut gateway, &settings, clock);
        // The kernel gets exactly the restored state: nothing it does not know, nothing missing.
        backend
            .install(&gateway.installed())
            .context("installing the nftables table")?;
        let watch = backend
            .watch()
            .context("following changes to the nftables table")?;
        let snapshot = snapshot(&gateway, clock);
        let journal = Journal::create(&settings.state_file, epoch_start_ms, &snapshot)
            .with_context(|| format!("writing the state file {}", settings.state_file.display()))?;

        crate::privileges::drop_to_net_admin().context("dropping privileges")?;
        info!(
            external = %settings.external_interface,
            address = ?settings.external_address,
            internal = ?settings.policy.internal.iter().map(|i| format!("{} {}", i.name, i.net)).collect::<Vec<_>>(),
            mappings = gateway.mapping_count(),
            epoch = gateway.epoch(clock.mono),
            nat_pmp = settings.policy.nat_pmp,
            pcp = settings.policy.pcp,
            ipv6 = socket6.is_some(),
            "natwarden serving NAT-PMP/PCP on port {}",
            natpmp::SERVER_PORT
        );
        Ok(Daemon {
            config_path,
            settings,
            gateway,
            backend,
            socket,
            socket6,
            link_tap,
            signals,
            control,
            monitor,
            watch,
            table_damaged: false,
            interfaces_stale: false,
            journal,
            epoch_start_ms,
            drops: DropLog {
                next: clock.mono,
                suppressed: 0,
            },
        })
    }

    /// Runs until SIGTERM/SIGINT, then removes the table.
    pub fn run(mut self) -> anyhow::Result<()> {
        let result = self.serve();
        let removed = self.backend.remove().context("removing the nftables table");
        info!("natwarden stopped");
        result.and(removed)
    }

    fn serve(&mut self) -> anyhow::Result<()> {
        // Larger than any message (PCP's 1100 octets), so a longer datagram, cut here,
        // still reads as too long and gets its answer (RFC 6887 section 8.2).
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            // Expiry and announcements: the core's timers come out of the same poll.
            let next = self.carry_out(now)?;
            // The control socket's deadlines wake the loop too: a stalled admin
            // connection is dropped on time, never waited for.
            let mut timeout = [next, self.control.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t.saturating_duration_since(now));
            if self.table_damaged || self.interfaces_stale {
                timeout = Some(timeout.map_or(RETRY_INTERVAL, |t| t.min(RETRY_INTERVAL)));
            }
            let sock6_fd = self.socket6.as_ref().map_or(-1, |s| s.raw_fd());
            let watch_fd = self.watch.as_ref().map_or(-1, |w| w.raw_fd());
            let [sock, sock6, sig, ctl, _mon, _watch] = poll_readable(
                [
                    self.socket.raw_fd(),
                    sock6_fd,
                    self.signals.raw_fd(),
                    self.control.raw_fd(),
                    self.monitor.raw_fd(),
                    watch_fd,
                ],
                timeout,
            )
            .context("waiting for events")?;
            if sig {
                while let Some(s) = self.signals.next() {
                    match s {
                        Signal::Terminate => {
                            info!("signal received: shutting down");
                            return Ok(());
                        }
                        Signal::Reload => self.reload()?,
                    }
                }
            }
            // Whatever woke us, the kernel's news is read first (non-blocking): a request
            // is then checked against the interfaces as they are now, and answered only
            // once the table holds what the reply acknowledges.
            self.follow_kernel()?;
            if ctl
                || self
                    .control
                    .next_deadline()
                    .is_some_and(|t| t <= Instant::now())
            {
                self.serve_control()?;
            }
            if sock || sock6 {
                self.receive_batch(&mut buf, sock, sock6)?;
            }
        }
    }

    fn receive_batch(&mut self, buf: &mut [u8], v4: bool, v6: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        // [IPv4, IPv6]: which sockets may still hold datagrams. Taking turns keeps one
        // family from starving the other.
        let mut ready = [v4, v6 && self.socket6.is_some()];
        let mut turn = 1;
        for _ in 0..BATCH {
            if ready[1 - turn] {
                turn = 1 - turn;
            } else if !ready[turn] {
                break;
            }
            let Some(socket) = self.socket_for(turn == 1) else {
                ready[turn] = false;
                continue;
            };
            let Some(rx) = socket.recv(buf).context("receiving")? else {
                ready[turn] = false;
                continue;
            };
            let Some(ingress) = rx.ingress else {
                // Without IP_PKTINFO: we cannot tell where it came from.
                self.drops.record(now, DropReason::Malformed, rx.source, 0);
                continue;
            };
            if turn == 1 {
                self.learn_host_of(&ingress);
            }
            self.gateway.handle(now, &ingress, &buf[..rx.len]);
        }
        // The whole batch's changes in one netlink batch and one fdatasync.
        self.carry_out(now)?;
        Ok(())
    }

    /// Polls the core until it waits and carries out what it handed out, in the one
    /// order that keeps replies honest: the kernel first (one netlink batch), then the
    /// disk (one fdatasync), then the datagrams. A reply goes out only if the kernel
    /// holds, and the disk records, what it acknowledges: if the kernel refused and the
    /// core was reset, or our table is damaged and cannot be rebuilt, the round's
    /// replies are dropped (clients retransmit). Returns when to poll the core again.
    fn carry_out(&mut self, now: Instant) -> anyhow::Result<Option<Instant>> {
        let mut round = Round::default();
        let next = loop {
            match self.gateway.poll(now) {
                Output::Firewall(c) => round.changes.push(c),
                Output::Journal(e) => round.events.push(e),
                Output::Transmit(t) => round.transmits.push(t),
                Output::Dropped { ingress, reason } => {
                    self.drops
                        .record(now, reason, ingress.source, ingress.interface)
                }
                Output::Wait(next) => break next,
            }
        };
        // 1. The kernel.
        if !self.apply_firewall(&round.changes)? {
            // Reset: nothing this round acknowledged exists any more, and the new
            // epoch's announcements are due at once.
            return Ok(self.gateway.poll_timeout());
        }
        // 2. The disk.
        self.journal(round.events);
        // 3. The datagrams. A table someone damaged meanwhile is rebuilt first;
        // announcements acknowledge nothing and go out regardless.
        let replies = round
            .transmits
            .iter()
            .any(|t| matches!(t, Transmit::Reply(_)));
        let table_true = !replies || self.keep_table_true();
        for t in &round.transmits {
            match t {
                Transmit::Reply(r) if table_true => self.send_reply(r),
                Transmit::Reply(_) => {}
                Transmit::Announcement(a) => self.announce(a),
            }
        }
        Ok(next)
    }

    /// A reply goes out by the socket its request came in on, from the address it was
    /// sent to, out of the interface it arrived on.
    fn send_reply(&self, r: &Reply) {
        let Some(socket) = self.socket_for(r.to.source.is_ipv6()) else {
            return;
        };
        if let Err(e) = socket.send(&r.payload, r.to.source, r.to.destination, r.to.interface) {
            warn!(to = %r.to.source, "sending reply failed: {e}");
        }
    }

    /// Reads pending interface, address and nftables news without blocking and acts on
    /// it: interfaces re-read by name, our table rebuilt when someone else changed it.
    fn follow_kernel(&mut self) -> anyhow::Result<()> {
        if self.monitor.drain() || self.interfaces_stale {
            if let Err(e) = self.follow_interfaces() {
                if !self.interfaces_stale {
                    warn!("re-reading the interfaces failed: {e:#}; retrying");
                }
                self.interfaces_stale = true;
            } else {
                self.interfaces_stale = false;
            }
        }
        self.keep_table_true();
        Ok(())
    }

    /// Rebuilds our table, in one batch from the core's mappings (the start-up install:
    /// same epoch, no mapping lost), when someone else changed it (`nft flush ruleset`,
    /// a deleted table, chain, set or element) or events about it were lost. Returns
    /// whether the kernel table can be trusted now.
    fn keep_table_true(&mut self) -> bool {
        if self.watch.as_ref().is_some_and(|w| w.drain()) {
            warn!("the nftables table {} was changed by someone else: rebuilding it from the {} mapping(s)", self.settings.table, self.gateway.mapping_count());
            self.table_damaged = true;
        }
        if self.table_damaged {
            self.rebuild_table();
        }
        !self.table_damaged
    }

    fn rebuild_table(&mut self) {
        match self.backend.install(&self.gateway.installed()) {
            Ok(()) => {
                self.table_damaged = false;
                info!(
                    mappings = self.gateway.mapping_count(),
                    "nftables table rebuilt"
                );
            }
            Err(e) => {
                if !self.table_damaged {
                    error!("rebuilding the nftables table failed: {e}; retrying");
                }
                self.table_damaged = true;
            }
        }
    }

    /// The socket of a family; IPv6 only when one is open.
    fn socket_for(&self, v6: bool) -> Option<&PktinfoSocket> {
        if v6 {
            self.socket6.as_ref()
        } else {
            Some(&self.socket)
        }
    }

    /// Applies a round's firewall changes in one batch. If the kernel refuses (e.g.
    /// someone deleted our table or an element just before), the table is rebuilt from
    /// the core's mappings, which hold the changes already. Only if that fails too can
    /// the table no longer be trusted: forget every mapping, start a new epoch (clients
    /// re-map, RFC 6886 section 3.7), reinstall an empty table and start a new journal.
    /// Returns whether the changes were applied.
    fn apply_firewall(&mut self, changes: &[FirewallChange]) -> anyhow::Result<bool> {
        if changes.is_empty() {
            return Ok(true);
        }
        let applied = match self.backend.apply(changes) {
            Ok(()) => Ok(()),
            Err(e) => {
                warn!(
                    "firewall refused {} change(s): {e}; rebuilding the table from the {} mapping(s)",
                    changes.len(),
                    self.gateway.mapping_count()
                );
                self.backend.install(&self.gateway.installed())
            }
        };
        if let Err(e) = applied {
            error!(
                "firewall refused {} change(s): {e}; resetting all mappings",
                changes.len()
            );
            let clock = Clock::now();
            self.gateway.reset(clock.mono);
            self.backend
                .install(&Default::default())
                .context("reinstalling the nftables table after a failed change")?;
            self.epoch_start_ms = clock.wall_ms;
            self.journal = Journal::create(&self.settings.state_file, self.epoch_start_ms, &[])
                .context("rewriting the state file after a failed change")?;
            return Ok(false);
        }
        self.table_damaged = false;
        log_changes(changes, self.gateway.mapping_count());
        Ok(true)
    }

    /// Journals a round's table changes with one fdatasync. A failure is logged, not
    /// fatal: the kernel and the core agree, only durability is at risk.
    fn journal(&mut self, events: Vec<StateEvent>) {
        if events.is_empty() {
            return;
        }
        let clock = Clock::now();
        let records: Vec<Record> = events.into_iter().map(|e| self.record(e, clock)).collect();
        if let Err(e) = self.journal.append(&records) {
            // Keep serving, loudly, and try a fresh snapshot (which may succeed, e.g.
            // after a rotation).
            error!(
                "writing the state journal {} failed: {e}",
                self.journal.path().display()
            );
            self.compact(clock);
        } else if self.journal.wants_compaction(self.gateway.mapping_count()) {
            self.compact(clock);
        }
    }

    fn record(&mut self, e: StateEvent, clock: Clock) -> Record {
        match e {
            StateEvent::Upsert(m) => Record::Upsert(saved(&m, clock)),
            StateEvent::Remove(k) => Record::Remove {
                client: k.client,
                protocol: k.protocol,
                internal_port: k.internal_port,
            },
            StateEvent::NewEpoch => {
                self.epoch_start_ms = clock.wall_ms;
                Record::NewEpoch {
                    epoch_start_ms: clock.wall_ms,
                }
            }
        }
    }

    /// Rewrites the journal as a snapshot of the table. A failure is logged, not
    /// fatal: the kernel and the core still agree, only durability is at risk.
    fn compact(&mut self, clock: Clock) {
        match Journal::create(
            &self.settings.state_file,
            self.epoch_start_ms,
            &snapshot(&self.gateway, clock),
        ) {
            Ok(j) => self.journal = j,
            Err(e) => error!(
                "compacting the state file {} failed: {e}",
                self.settings.state_file.display()
            ),
        }
    }

    /// Makes sure the core knows which host sent an IPv6 request that came in on an
    /// internal interface before the request is handled. The kernel hands a frame to the
    /// IPv6 stack before the tap (per-namespace packet taps come last), so the datagram
    /// can be read a moment before its frame: wait for it, at most 2 ms (then the host
    /// counts by its address).
    fn learn_host_of(&mut self, ingress: &natwarden_core::Ingress) {
        let internal = self
            .settings
            .policy
            .internal
            .iter()
            .any(|i| i.is_present() && i.index == ingress.interface);
        let Some(fd) = self
            .link_tap
            .as_ref()
            .map(LinkTap::raw_fd)
            .filter(|_| internal)
        else {
            return;
        };
        let source = ingress.source.ip();
        let deadline = Instant::now() + Duration::from_millis(2);
        loop {
            self.learn_hosts();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.gateway.knows_host(source) || left.is_zero() {
                return;
            }
            if poll_readable([fd], Some(left)).is_err() {
                return;
            }
        }
    }

    /// Tells the core the link-layer source of every IPv6 request queued so far (the tap
    /// sees a frame before the UDP socket does), for those that came in on an internal
    /// interface: the WAN side cannot push LAN hosts out of the book.
    fn learn_hosts(&mut self) {
        let Some(tap) = &self.link_tap else {
            return;
        };
        let internal = &self.settings.policy.internal;
        let gateway = &mut self.gateway;
        tap.drain(|index, ip, mac| {
            if internal.iter().any(|i| i.is_present() && i.index == index) {
                gateway.learn_host(ip, mac);
            }
        });
    }

    /// Multicasts one announcement on every internal interface that is present.
    fn announce(&self, a: &Announcement) {
        for iface in self
            .settings
            .policy
            .internal
            .iter()
            .filter(|i| i.is_present())
        {
            let sent = match a.to {
                Multicast::V4 => {
                    let to = SocketAddr::from((natpmp::ANNOUNCE_ADDR, natpmp::CLIENT_PORT));
                    let from = IpAddr::V4(iface.net.addr());
                    self.socket.send(a.payload(), to, from, iface.index)
                }
                Multicast::V6 => {
                    // From the interface's link-local address, as on-link multicast wants.
                    let from = iface
                        .nets6
                        .iter()
                        .find(|n| n.is_link_local())
                        .or(iface.nets6.first());
                    let (Some(s), Some(from)) = (self.socket_for(true), from) else {
                        continue;
                    };
                    let to = SocketAddr::from((pcp::ANNOUNCE_ADDR_V6, pcp::CLIENT_PORT));
                    s.send(a.payload(), to, IpAddr::V6(from.addr()), iface.index)
                }
            };
            if let Err(e) = sent {
                warn!(interface = %iface.name, "sending announcement failed: {e}");
            }
        }
    }

    /// Re-reads the interfaces the config names, by name, after rtnetlink said
    /// something changed: an interface deleted and created again (a PPPoE reconnect
    /// gives ppp0 a new index) is served again at once. An internal interface that is
    /// gone, or has no IPv4 address, is not served until it returns (its last subnet is
    /// kept so its hosts' mappings survive a brief outage); a new internal IPv4 address
    /// or IPv6 prefix is served at once, and pinholes in a prefix that goes are closed.
    /// A new external address starts a new epoch and announcements; no address means
    /// "network failure" answers until one returns. The forwards need no change: the
    /// nftables rules match interfaces by name and the DNAT map is keyed by port.
    fn follow_interfaces(&mut self) -> anyhow::Result<()> {
        let links = rtnl::links().context("reading interfaces")?;
        let addrs = rtnl::ipv4_addresses().context("reading IPv4 addresses")?;
        let addrs6 = rtnl::ipv6_addresses().context("reading IPv6 addresses")?;
        let index_of = |name: &str| links.iter().find(|(_, n)| n == name).map(|(i, _)| *i);
        let external = index_of(&self.settings.external_interface);

        let mut policy = self.settings.policy.clone();
        policy.external_index = external.unwrap_or(0);
        for iface in &mut policy.internal {
            let index = index_of(&iface.name);
            let nets: Vec<Ipv4Net> = addrs
                .iter()
                .filter(|a| Some(a.index) == index)
                .filter_map(|a| Ipv4Net::new(a.address, a.prefix_len))
                .collect();
            // The address in use stays while the interface holds it; else the first one.
            let net = nets
                .iter()
                .find(|n| n.addr() == iface.net.addr())
                .or(nets.first())
                .copied();
            match (index, net) {
                (Some(index), Some(net)) => {
                    iface.index = index;
                    iface.net = net;
                }
                _ => iface.index = InternalInterface::ABSENT,
            }
            iface.nets6 = addrs6
                .iter()
                .filter(|a| Some(a.index) == index)
                .filter_map(|a| Ipv6Net::new(a.address, a.prefix_len))
                .collect();
        }
        if policy != self.settings.policy {
            for (old, new) in self.settings.policy.internal.iter().zip(&policy.internal) {
                if old.is_present() && !new.is_present() {
                    warn!(interface = %new.name, "internal interface gone or without an IPv4 address: not serving it until it returns");
                } else if new.is_present()
                    && (!old.is_present() || old.net != new.net || old.index != new.index)
                {
                    info!(interface = %new.name, index = new.index, address = %new.net, "serving internal interface");
                }
                if old.nets6 != new.nets6 {
                    info!(interface = %new.name, ipv6 = ?new.nets6.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "internal IPv6 addresses changed");
                }
            }
            if policy.external_index != self.settings.policy.external_index {
                info!(interface = %self.settings.external_interface, index = policy.external_index, "external interface index changed");
            }
            self.gateway.set_policy(policy.clone());
            self.settings.policy = policy;
            self.carry_out(Instant::now())?;
        }

        if self.settings.follow_external_address {
            let current = external
                .and_then(|index| addrs.iter().find(|a| a.index == index))
                .map(|a| a.address);
            if current != self.gateway.external_address() {
                match current {
                    Some(a) => {
                        info!(interface = %self.settings.external_interface, "external address is now {a}: new epoch, announcing")
                    }
                    None => {
                        warn!(interface = %self.settings.external_interface, "external address lost: answering \"network failure\" until it returns")
                    }
                }
                self.gateway.set_external_address(Instant::now(), current);
                self.carry_out(Instant::now())?;
            }
        }
        Ok(())
    }

    /// SIGHUP: a valid config replaces the running one; anything else is refused and
    /// the running config kept.
    fn reload(&mut self) -> anyhow::Result<()> {
        let new = match config::load_settings(&self.config_path) {
            Ok(s) => s,
            Err(e) => {
                error!("reload refused, keeping the running configuration: {e:#}");
                return Ok(());
            }
        };
        let old = &self.settings;
        let fixed = [
            (
                "interfaces.external",
                old.external_interface != new.external_interface,
            ),
            ("firewall.backend", old.backend != new.backend),
            ("firewall.table", old.table != new.table),
            ("state.file", old.state_file != new.state_file),
            ("control.socket", old.control_socket != new.control_socket),
            ("control.group", old.control_group != new.control_group),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            error!("reload refused, keeping the running configuration: {key} changed; restart natwarden to apply it");
            return Ok(());
        }
        for w in &new.warnings {
            warn!("{w}");
        }
        self.gateway.set_policy(new.policy.clone());
        if !new.follow_external_address {
            self.gateway
                .set_external_address(Instant::now(), new.external_address);
        }
        self.settings = new;
        self.carry_out(Instant::now())?;
        info!(path = %self.config_path.display(), "configuration reloaded");
        Ok(())
    }

    fn serve_control(&mut self) -> anyhow::Result<()> {
        // Non-blocking throughout, a bounded number of connections with a deadline
        // each: admin queries never starve or stall the LAN.
        for (id, request) in self.control.service(Instant::now()) {
            let body = match request {
                Ok(control::Request::Status) => {
                    status::to_json(&self.gateway, &self.settings, Instant::now())
                }
                Ok(control::Request::Delete(control::DeleteTarget { client, port })) => {
                    let n = self
                        .gateway
                        .admin_delete(client, port.map(|(port, p)| (p, port)));
                    self.carry_out(Instant::now())?;
                    info!(%client, deleted = n, "admin deleted mappings");
                    serde_json::json!({ "deleted": n })
                }
                Err(e) => serde_json::json!({ "error": e }),
            };
            self.control.reply(id, &body);
        }
        Ok(())
    }
}

fn saved(m: &Mapping, clock: Clock) -> SavedMapping {
    let left = m.expires.saturating_duration_since(clock.mono);
    SavedMapping {
        client: m.key.client,
        protocol: m.key.protocol,
        internal_port: m.key.internal_port,
        external_port: m.external_port,
        expires_ms: clock.wall_ms_of(m.expires),
        written_ms: Some(clock.wall_ms),
        remaining_ms: Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
        origin: m.origin,
        nonce: m.nonce.as_ref().map(state::nonce_hex),
        inbound: m.inbound,
        outbound: m.outbound,
    }
}

fn snapshot(gateway: &Gateway, clock: Clock) -> Vec<SavedMapping> {
    gateway.mappings().map(|m| saved(&m, clock)).collect()
}

/// Restores what the state file proves; otherwise starts a new epoch and says why.
/// Returns the epoch's wall-clock start.
fn restore(gateway: &mut Gateway, settings: &Settings, clock: Clock) -> u64 {
    let path = settings.state_file.display();
    let (epoch_start_ms, saved) = match state::load(&settings.state_file) {
        Loaded::Missing => {
            info!("no state file at {path}: starting a new epoch");
            return clock.wall_ms;
        }
        Loaded::Damaged { reason, kept_at } => {
            let kept = kept_at.map_or("could not be moved".into(), |p| {
                format!("kept at {}", p.display())
            });
            warn!("state file {path} is damaged ({reason}; {kept}): starting a new epoch, clients will re-map");
            return clock.wall_ms;
        }
        Loaded::Restored {
            epoch_start_ms,
            mappings,
        } => (epoch_start_ms, mappings),
    };
    let Some(elapsed) = clock.wall_ms.checked_sub(epoch_start_ms) else {
        warn!("state file {path} starts its epoch in the future (clock moved back?): starting a new epoch");
        return clock.wall_ms;
    };
    gateway.continue_epoch(
        clock.mono,
        u32::try_from(elapsed / 1000).unwrap_or(u32::MAX),
    );
    let mut restored = 0;
    for s in saved {
        // replay() has checked the nonce; skip rather than trust otherwise.
        let Ok(nonce) = s.nonce() else {
            continue;
        };
        // Downtime counts; a wall clock that went back does not extend anything.
        let Some(left) = s.remaining_at(clock.wall_ms) else {
            continue; // expired while the daemon was down: not restored, not installed
        };
        let m = Mapping {
            key: s.key(),
            external_port: s.external_port,
            expires: clock.mono,
            origin: s.origin,
            nonce,
            inbound: s.inbound,
            outbound: s.outbound,
        };
        match gateway.restore(clock.mono, m, left) {
            Ok(()) => restored += 1,
            Err(e) => {
                warn!(client = %s.client, port = s.internal_port, "not restoring a saved mapping: {e}")
            }
        }
    }
    info!(
        "restored {restored} mapping(s) from {path}; epoch continues at {} s",
        elapsed / 1000
    );
    epoch_start_ms
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    crate::sys::group_id(name)
        .context("control.group contains a NUL byte")?
        .with_context(|| {
            format!("control.group: no group named `{name}`; create it or remove the key")
        })
}

/// Each change at `info` while batches are small (what an admin wants to read); under
/// load, one summary line per batch at `info` and the changes at `debug`, so logging
/// does not become the gateway's main cost. The status view lists every mapping.
fn log_changes(changes: &[FirewallChange], total: usize) {
    const DETAIL_UP_TO: usize = 8;
    let detailed = changes.len() <= DETAIL_UP_TO;
    if detailed || tracing::enabled!(tracing::Level::DEBUG) {
        for c in changes {
            let d = describe(c);
            if detailed {
                info!("{d}");
            } else {
                debug!("{d}");
            }
        }
    }
    if !detailed {
        let added = changes
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    FirewallChange::Add(_)
                        | FirewallChange::AddOutbound(_)
                        | FirewallChange::AddPinhole(_)
                )
            })
            .count();
        info!(
            added,
            removed = changes.len() - added,
            mappings = total,
            "firewall updated"
        );
    }
}

fn describe(c: &FirewallChange) -> String {
    match c {
        FirewallChange::Add(f) => format!(
            "mapped {} external port {} -> {}",
            f.protocol, f.external_port, f.internal
        ),
        FirewallChange::Remove(f) => format!(
            "unmapped {} external port {} -> {}",
            f.protocol, f.external_port, f.internal
        ),
        FirewallChange::AddOutbound(o) => format!(
            "pinned outbound {} {} -> source port {}",
            o.protocol, o.internal, o.external_port
        ),
        FirewallChange::RemoveOutbound(o) => format!(
            "unpinned outbound {} {} -> source port {}",
            o.protocol, o.internal, o.external_port
        ),
        FirewallChange::AddPinhole(p) => {
            format!("opened pinhole {} [{}]:{}", p.protocol, p.address, p.port)
        }
        FirewallChange::RemovePinhole(p) => {
            format!("closed pinhole {} [{}]:{}", p.protocol, p.address, p.port)
        }
    }
}
