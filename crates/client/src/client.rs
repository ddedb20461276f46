//! The blocking driver: [`Client`] runs one [`Transaction`] at a time over a UDP socket
//! connected to the gateway, [`Lease`] drives a [`LeaseCore`] over its own sockets.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use natwarden_wire::{pcp::Nonce, Protocol};

use crate::discovery;
use crate::error::Error;
use crate::lease::{LeaseCore, LeaseEvent, LeaseOutput};
use crate::net;
use crate::random::{self, OsRandom, Random};
use crate::transaction::{Answer, Operation, Output, Params, Transaction};
use crate::{ExternalAddress, Mapping, ProtocolChoice, Unmapped, Version, SERVER_PORT};

/// How long dropping a [`Lease`] may block to delete its mapping.
pub const DEFAULT_RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a [`Client`] reaches its gateway. `Config::default()` asks the default router,
/// PCP first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The gateway; `None`: the default route's (see [`discovery::default_gateway`]).
    pub gateway: Option<IpAddr>,
    pub protocol: ProtocolChoice,
    /// Overall deadline of each request. `None`: the protocols' own limits (NAT-PMP gives up
    /// after 9 tries, about 128 s; PCP retries for ever, RFC 6887 section 8.1.1).
    pub timeout: Option<Duration>,
    /// PCP mapping nonce; `None`: a random one per client. Renewing or deleting a mapping
    /// from another process needs the nonce it was created with (RFC 6887 section 11.3).
    pub nonce: Option<Nonce>,
}

/// A blocking port-mapping client (one request at a time).
pub struct Client {
    config: Config,
    gateway: SocketAddr,
    socket: UdpSocket,
    local: SocketAddr,
    nonce: Nonce,
    random: OsRandom,
    /// Set once a NAT-PMP answer came in automatic mode: later requests skip PCP.
    natpmp_only: bool,
}

impl Client {
    /// Finds the gateway (unless configured) and opens a socket to its port 5351. Sends
    /// nothing yet.
    pub fn new(config: Config) -> Result<Client, Error> {
        let gateway = match config.gateway {
            Some(IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V4(v4), SERVER_PORT),
            Some(IpAddr::V6(v6)) => SocketAddr::new(IpAddr::V6(v6), SERVER_PORT),
            None => discovery::default_gateway()?.server(),
        };
        if config.protocol == ProtocolChoice::NatPmp && !gateway.is_ipv4() {
            return Err(Error::NatPmpNeedsIpv4(gateway.ip()));
        }
        let socket = net::request_socket(gateway)
            .map_err(|e| Error::io("opening a UDP socket to the gateway", e))?;
        let local =
            net::local_addr(&socket).map_err(|e| Error::io("reading the socket's address", e))?;
        let mut random = OsRandom::new();
        let nonce = config.nonce.unwrap_or_else(|| random::nonce(&mut random));
        Ok(Client {
            config,
            gateway,
            socket,
            local,
            nonce,
            random,
            natpmp_only: false,
        })
    }

    /// The gateway's address.
    pub fn gateway(&self) -> IpAddr {
        self.gateway.ip()
    }

    /// The address the requests leave from (the mappings' internal address).
    pub fn local_address(&self) -> IpAddr {
        self.local.ip()
    }

    /// The PCP mapping nonce of this client's requests.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// The gateway's external address.
    pub fn external_address(&mut self) -> Result<ExternalAddress, Error> {
        match self.run(Operation::ExternalAddress)? {
            Answer::ExternalAddress(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    /// Asks for (or renews) a mapping of `internal_port` on this host. `suggested_external_port`
    /// 0 leaves the choice to the gateway; the granted port and lifetime may differ.
    pub fn map(
        &mut self,
        protocol: Protocol,
        internal_port: u16,
        suggested_external_port: u16,
        lifetime: Duration,
    ) -> Result<Mapping, Error> {
        let op = Operation::Map {
            protocol,
            internal_port,
            suggested_external_port,
            lifetime: lifetime_secs(lifetime)?,
        };
        match self.run(op)? {
            Answer::Mapped(m) => Ok(m),
            _ => Err(unexpected()),
        }
    }

    /// Deletes the mapping of `internal_port` (succeeds if there is none).
    pub fn unmap(&mut self, protocol: Protocol, internal_port: u16) -> Result<Unmapped, Error> {
        if internal_port == 0 {
            return Err(Error::InvalidArgument(
                "internal port 0 means all ports: use unmap_all",
            ));
        }
        self.unmap_port(protocol, internal_port)
    }

    /// Deletes all of this host's mappings of `protocol` (RFC 6886 section 3.4; over PCP,
    /// those made with this client's nonce).
    pub fn unmap_all(&mut self, protocol: Protocol) -> Result<Unmapped, Error> {
        self.unmap_port(protocol, 0)
    }

    fn unmap_port(&mut self, protocol: Protocol, internal_port: u16) -> Result<Unmapped, Error> {
        match self.run(Operation::Unmap {
            protocol,
            internal_port,
        })? {
            Answer::Unmapped(u) => Ok(u),
            _ => Err(unexpected()),
        }
    }

    /// Maps the port and keeps it mapped: see [`Lease`].
    pub fn lease(
        &mut self,
        protocol: Protocol,
        internal_port: u16,
        suggested_external_port: u16,
        lifetime: Duration,
    ) -> Result<Lease, Error> {
        let lifetime = lifetime_secs(lifetime)?;
        let socket = net::request_socket(self.gateway)
            .map_err(|e| Error::io("opening a UDP socket to the gateway", e))?;
        let local =
            net::local_addr(&socket).map_err(|e| Error::io("reading the socket's address", e))?;
        // Listen before mapping, so that no announcement is missed meanwhile.
        let announce = net::announcement_socket(self.gateway, local).ok();
        let op = Operation::Map {
            protocol,
            internal_port,
            suggested_external_port,
            lifetime,
        };
        let now = Instant::now();
        let params = Params {
            client_address: local.ip(),
            client_port: local.port(),
            ..self.params(now)
        };
        let mut transaction = Transaction::new(op, params, now);
        let mapping = match drive(&socket, &mut transaction, &mut self.random)? {
            Answer::Mapped(m) => m,
            _ => return Err(unexpected()),
        };
        self.learn(mapping.version);
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the lease's socket", e))?;
        Ok(Lease {
            core: LeaseCore::new(
                mapping,
                lifetime,
                Params {
                    choice: self.config.protocol,
                    ..params
                },
                Instant::now(),
            ),
            socket,
            announce,
            random: OsRandom::new(),
            release_timeout: DEFAULT_RELEASE_TIMEOUT,
            released: false,
        })
    }

    /// Runs one exchange to its end.
    pub fn run(&mut self, op: Operation) -> Result<Answer, Error> {
        let now = Instant::now();
        let mut transaction = Transaction::new(op, self.params(now), now);
        let answer = drive(&self.socket, &mut transaction, &mut self.random)?;
        self.learn(answer.version());
        Ok(answer)
    }

    fn params(&self, now: Instant) -> Params {
        let choice = match self.config.protocol {
            ProtocolChoice::Auto if self.natpmp_only => ProtocolChoice::NatPmp,
            other => other,
        };
        Params {
            gateway: self.gateway,
            client_address: self.local.ip(),
            client_port: self.local.port(),
            choice,
            nonce: self.nonce,
            deadline: self.config.timeout.map(|t| now + t),
        }
    }

    fn learn(&mut self, version: Version) {
        if self.config.protocol == ProtocolChoice::Auto && version == Version::NatPmp {
            self.natpmp_only = true;
        }
    }
}

/// Sends, waits and receives until the transaction is done.
fn drive(
    socket: &UdpSocket,
    transaction: &mut Transaction,
    random: &mut dyn Random,
) -> Result<Answer, Error> {
    let mut buf = [0u8; 1100];
    loop {
        let now = Instant::now();
        match transaction.poll(now, random) {
            Output::Done(result) => return result,
            Output::Transmit(bytes) => {
                if let Err(e) = socket.send(&bytes) {
                    if !net::is_transient(&e) {
                        return Err(Error::io("sending to the gateway", e));
                    }
                }
            }
            Output::Wait(until) => {
                let wait = until.saturating_duration_since(now);
                if wait.is_zero() {
                    continue;
                }
                socket
                    .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                    .map_err(|e| Error::io("setting the socket timeout", e))?;
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        transaction.handle(Instant::now(), from, &buf[..n]);
                    }
                    Err(e) if net::is_transient(&e) => {}
                    Err(e) => return Err(Error::io("receiving from the gateway", e)),
                }
            }
        }
    }
}

/// A mapping kept alive: renewed at half its lifetime, re-created when the gateway lost it,
/// deleted when released or dropped.
///
/// Blocking and single-threaded: call [`Lease::wait`] in a loop (from a thread of its own if
/// the program has other work); nothing happens between calls, so call it again well within
/// half the lifetime.
pub struct Lease {
    core: LeaseCore,
    socket: UdpSocket,
    announce: Option<UdpSocket>,
    random: OsRandom,
    release_timeout: Duration,
    released: bool,
}

impl Lease {
    /// The mapping as last granted.
    pub fn mapping(&self) -> &Mapping {
        self.core.mapping()
    }

    /// When the mapping runs out unless renewed.
    pub fn expires(&self) -> Instant {
        self.core.expires()
    }

    /// Whether the gateway's announcements are heard (port 5350 could be bound). Without
    /// them a gateway restart is noticed at the next renewal.
    pub fn hears_announcements(&self) -> bool {
        self.announce.is_some()
    }

    /// How long dropping the lease may block to delete the mapping (default 3 s).
    pub fn set_release_timeout(&mut self, timeout: Duration) {
        self.release_timeout = timeout;
    }

    /// Renews, re-maps and listens for up to `timeout`; returns at the first event, or
    /// `None` when the time is up or a signal interrupted the wait.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<LeaseEvent>, Error> {
        self.wait_until_readable(timeout, -1)
    }

    /// [`Lease::wait`] that also returns `None` as soon as `interrupt` is readable (a
    /// signalfd, say: the caller then reads it), without reading it.
    pub fn wait_or_readable(
        &mut self,
        timeout: Duration,
        interrupt: BorrowedFd<'_>,
    ) -> Result<Option<LeaseEvent>, Error> {
        self.wait_until_readable(timeout, interrupt.as_raw_fd())
    }

    fn wait_until_readable(
        &mut self,
        timeout: Duration,
        interrupt: RawFd,
    ) -> Result<Option<LeaseEvent>, Error> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 1100];
        loop {
            let now = Instant::now();
            match self.core.poll(now, &mut self.random) {
                LeaseOutput::Event(event) => return Ok(Some(event)),
                LeaseOutput::Finished => return Ok(None),
                LeaseOutput::Transmit(bytes) => {
                    // A lease outlives network outages: silence is handled by retransmission.
                    let _ = self.socket.send(&bytes);
                }
                LeaseOutput::Wait(at) => {
                    if now >= end {
                        return Ok(None);
                    }
                    let until = at.min(end);
                    let fds = [
                        self.socket.as_raw_fd(),
                        net::fd_of(self.announce.as_ref()),
                        interrupt,
                    ];
                    let ready = net::wait_readable(fds, until.saturating_duration_since(now))
                        .map_err(|e| Error::io("waiting for the gateway", e))?;
                    let Some([request, announcement, interrupted]) = ready else {
                        return Ok(None);
                    };
                    if interrupted {
                        return Ok(None);
                    }
                    if request {
                        self.drain(&mut buf, false);
                    }
                    if announcement {
                        self.drain(&mut buf, true);
                    }
                }
            }
        }
    }

    fn drain(&mut self, buf: &mut [u8], announcements: bool) {
        // Bounded: a flood cannot keep the lease from its timers.
        for _ in 0..64 {
            let socket = if announcements {
                match &self.announce {
                    Some(s) => s,
                    None => return,
                }
            } else {
                &self.socket
            };
            let (n, from) = match socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let now = Instant::now();
            if announcements {
                self.core.handle_announcement(now, from, &buf[..n]);
            } else {
                self.core.handle(now, from, &buf[..n]);
            }
        }
    }

    /// Deletes the mapping, waiting at most the release timeout for the gateway's answer.
    pub fn release(mut self) -> Result<(), Error> {
        self.release_now()
    }

    fn release_now(&mut self) -> Result<(), Error> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let now = Instant::now();
        self.core.release(now, Some(now + self.release_timeout));
        // The deletion's own deadline bounds this; the count is a backstop.
        for _ in 0..10_000 {
            match self.wait(self.release_timeout + Duration::from_secs(1))? {
                Some(LeaseEvent::Released) => return Ok(()),
                Some(LeaseEvent::ReleaseFailed(e)) => return Err(e),
                Some(_) => continue,
                None if self.core.is_finished() => return Ok(()),
                None => continue,
            }
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.release_now();
    }
}

fn lifetime_secs(lifetime: Duration) -> Result<u32, Error> {
    let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    if secs == 0 {
        return Err(Error::InvalidArgument(
            "a mapping's lifetime must be at least 1 s (0 deletes)",
        ));
    }
    Ok(secs)
}

fn unexpected() -> Error {
    Error::InvalidArgument("the gateway's answer does not fit the request")
}
