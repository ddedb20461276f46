//! The I/O shell around the gateway core: moves datagrams between the socket and the
//! core, firewall changes from the core to the backend, signals and timers into both.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::Context;
use natwarden_core::{DropReason, FirewallChange, Gateway, Verdict, MAX_REPLY};
use natwarden_firewall::Backend;
use natwarden_wire::natpmp;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::signals::{poll_readable, Signal, Signals};
use crate::udp::PktinfoSocket;

/// Datagrams handled per wake-up before their firewall changes are committed in one
/// netlink batch: large enough to amortise the batch, small enough to keep latency low.
const BATCH: usize = 256;
/// Drops are logged at most this often, with a count of those not logged.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

struct Reply {
    to: SocketAddrV4,
    from: std::net::Ipv4Addr,
    interface: u32,
    len: usize,
    bytes: [u8; MAX_REPLY],
}

struct DropLog {
    next: Instant,
    suppressed: u64,
}

impl DropLog {
    fn record(&mut self, now: Instant, reason: DropReason, source: SocketAddrV4, interface: u32) {
        if now < self.next {
            self.suppressed += 1;
            return;
        }
        let (level_warn, what) = match reason {
            DropReason::ExternalInterface => (true, "from the external interface"),
            DropReason::NotToInternalAddress => (true, "not addressed to an internal address"),
            DropReason::ClientNotAllowed => (true, "from a source outside the internal subnets"),
            _ => (false, reason.name()),
        };
        if level_warn {
            warn!(%source, interface, reason = reason.name(), suppressed = self.suppressed, "dropped request {what}");
        } else {
            info!(%source, interface, reason = reason.name(), suppressed = self.suppressed, "dropped request");
        }
        self.suppressed = 0;
        self.next = now + DROP_LOG_INTERVAL;
    }
}

pub struct Daemon {
    settings: Settings,
    gateway: Gateway,
    backend: Box<dyn Backend>,
    socket: PktinfoSocket,
    signals: Signals,
    changes: Vec<FirewallChange>,
    replies: Vec<Reply>,
    drops: DropLog,
}

impl Daemon {
    /// Opens the socket and installs an empty table, replacing any leftover.
    pub fn start(
        settings: Settings,
        mut backend: Box<dyn Backend>,
        seed: u64,
    ) -> anyhow::Result<Daemon> {
        let signals = Signals::new().context("setting up signal handling")?;
        let socket = PktinfoSocket::bind(natpmp::SERVER_PORT)
            .with_context(|| format!("binding UDP port {}", natpmp::SERVER_PORT))?;
        backend
            .install(&[])
            .context("installing the nftables table")?;
        let now = Instant::now();
        let gateway = Gateway::new(
            settings.policy.clone(),
            now,
            settings.external_address,
            seed,
        );
        info!(
            external = %settings.external_interface,
            address = ?settings.external_address,
            internal = ?settings.policy.internal.iter().map(|i| format!("{} {}", i.name, i.net)).collect::<Vec<_>>(),
            "natwarden serving NAT-PMP on port {}",
            natpmp::SERVER_PORT
        );
        Ok(Daemon {
            settings,
            gateway,
            backend,
            socket,
            signals,
            changes: Vec::new(),
            replies: Vec::new(),
            drops: DropLog {
                next: now,
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
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            self.gateway.handle_timeout(now, &mut self.changes);
            self.commit(now)?;
            self.announce(now);
            let timeout = self
                .gateway
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now));
            let [sock_ready, sig_ready] =
                poll_readable([self.socket.raw_fd(), self.signals.raw_fd()], timeout)
                    .context("waiting for events")?;
            if sig_ready {
                while let Some(sig) = self.signals.next() {
                    match sig {
                        Signal::Terminate => {
                            info!("signal received: shutting down");
                            return Ok(());
                        }
                        Signal::Reload => warn!("SIGHUP: configuration reload is not supported yet; restart to apply changes"),
                    }
                }
            }
            if sock_ready {
                self.receive_batch(&mut buf)?;
            }
        }
    }

    fn receive_batch(&mut self, buf: &mut [u8]) -> anyhow::Result<()> {
        let now = Instant::now();
        for _ in 0..BATCH {
            let Some(rx) = self.socket.recv(buf).context("receiving")? else {
                break;
            };
            let Some(ingress) = rx.ingress else {
                // Truncated or without IP_PKTINFO: we cannot tell where it came from.
                self.drops.record(now, DropReason::Malformed, rx.source, 0);
                continue;
            };
            let mut reply = Reply {
                to: ingress.source,
                from: ingress.destination,
                interface: ingress.interface,
                len: 0,
                bytes: [0; MAX_REPLY],
            };
            match self.gateway.handle(
                now,
                &ingress,
                &buf[..rx.len],
                &mut reply.bytes,
                &mut self.changes,
            ) {
                Verdict::Reply(n) => {
                    reply.len = n;
                    self.replies.push(reply);
                }
                Verdict::Drop(reason) => {
                    self.drops
                        .record(now, reason, ingress.source, ingress.interface)
                }
            }
        }
        // Replies go out only after the kernel holds what they acknowledge.
        let committed = self.commit(now)?;
        for r in self.replies.drain(..) {
            if !committed {
                continue;
            }
            if let Err(e) = self
                .socket
                .send(&r.bytes[..r.len], r.to, r.from, r.interface)
            {
                warn!(to = %r.to, "sending reply failed: {e}");
            }
        }
        Ok(())
    }

    /// Applies pending changes in one batch. If the kernel refuses, the table can no
    /// longer be trusted to match it: forget every mapping, start a new epoch (clients
    /// re-map, RFC 6886 section 3.7) and reinstall an empty table. Returns whether the
    /// changes were committed.
    fn commit(&mut self, now: Instant) -> anyhow::Result<bool> {
        if self.changes.is_empty() {
            return Ok(true);
        }
        match self.backend.apply(&self.changes) {
            Ok(()) => {
                for c in &self.changes {
                    log_change(c);
                }
                self.changes.clear();
                Ok(true)
            }
            Err(e) => {
                error!(
                    "firewall refused {} change(s): {e}; resetting all mappings",
                    self.changes.len()
                );
                self.changes.clear();
                self.gateway.reset(now);
                self.backend
                    .install(&[])
                    .context("reinstalling the nftables table after a failed change")?;
                Ok(false)
            }
        }
    }

    fn announce(&mut self, now: Instant) {
        let mut buf = [0u8; 16];
        while let Some(n) = self.gateway.poll_announcement(now, &mut buf) {
            let to = SocketAddrV4::new(natpmp::ANNOUNCE_ADDR, natpmp::CLIENT_PORT);
            for iface in &self.settings.policy.internal {
                if let Err(e) = self
                    .socket
                    .send(&buf[..n], to, iface.net.addr(), iface.index)
                {
                    warn!(interface = %iface.name, "sending announcement failed: {e}");
                }
            }
        }
    }
}

fn log_change(c: &FirewallChange) {
    match c {
        FirewallChange::Add(f) => info!(
            "mapped {} external port {} -> {}",
            f.protocol, f.external_port, f.internal
        ),
        FirewallChange::Remove(f) => info!(
            "unmapped {} external port {} -> {}",
            f.protocol, f.external_port, f.internal
        ),
    }
}
