//! One request until its answer, as a sans-IO state machine: builds the datagrams, times the
//! retransmissions, falls back from PCP to NAT-PMP, and accepts only the answer that matches.
//! The caller owns the socket and the clock: `poll(now)` says what to do, `handle(..)` feeds in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp, Protocol};

use crate::error::{Error, Refusal};
use crate::random::Random;
use crate::retransmit::Backoff;
use crate::{ExternalAddress, Mapping, ProtocolChoice, Unmapped, Version, SERVER_PORT};

/// The internal port a PCP external-address probe deletes: the "discard" port, which nobody
/// maps. PCP has no "what is my address" opcode; a MAP deletion for a mapping that does not
/// exist creates nothing, and some gateways (miniupnpd) name the external address in the
/// answer.
pub const PCP_ADDRESS_PROBE_PORT: u16 = 9;
/// When the deletion probe names no address (RFC 6887 does not ask a deletion's answer to),
/// the client maps the UDP port its own requests leave from, reads the address from the
/// answer and deletes the mapping at once; this is the lifetime asked for in between, the
/// longest the mapping can outlive a lost deletion (unless the gateway raises it).
pub const PCP_OWN_PORT_PROBE_LIFETIME: u32 = 30;

/// What is asked of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The gateway's external address (RFC 6886 section 3.2; PCP: see [`PCP_ADDRESS_PROBE_PORT`]).
    ExternalAddress,
    /// Create or renew a mapping (RFC 6886 section 3.3, RFC 6887 section 11).
    Map {
        protocol: Protocol,
        internal_port: u16,
        /// 0 for no preference.
        suggested_external_port: u16,
        /// Seconds; must not be 0 (that is a deletion).
        lifetime: u32,
    },
    /// Delete a mapping, or with `internal_port` 0 all of the client's mappings of the
    /// protocol (RFC 6886 section 3.4; RFC 6887 section 11.1: port 0 is "all ports" in a
    /// delete, and PCP limits it to the mappings of the same nonce).
    Unmap {
        protocol: Protocol,
        internal_port: u16,
    },
}

impl Operation {
    fn protocol(&self) -> Option<Protocol> {
        match self {
            Operation::ExternalAddress => None,
            Operation::Map { protocol, .. } | Operation::Unmap { protocol, .. } => Some(*protocol),
        }
    }

    fn internal_port(&self) -> u16 {
        match self {
            Operation::ExternalAddress => PCP_ADDRESS_PROBE_PORT,
            Operation::Map { internal_port, .. } | Operation::Unmap { internal_port, .. } => {
                *internal_port
            }
        }
    }
}

/// Who and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The gateway's address; its port must be [`SERVER_PORT`] (only datagrams from exactly
    /// this address and port are considered).
    pub gateway: SocketAddr,
    /// The address the requests leave from: PCP's "PCP Client's IP Address" (RFC 6887 7.1).
    pub client_address: IpAddr,
    /// The UDP port the requests leave from (see [`PCP_OWN_PORT_PROBE_LIFETIME`]); 0 if
    /// unknown, which leaves a PCP gateway that names no address in deletions unasked.
    pub client_port: u16,
    pub choice: ProtocolChoice,
    /// PCP's mapping nonce (RFC 6887 section 11.1): renewals and deletions must repeat it.
    pub nonce: pcp::Nonce,
    /// The caller's overall deadline (PCP's MRD, RFC 6887 section 8.1.1); also cuts NAT-PMP's
    /// nine tries short.
    pub deadline: Option<Instant>,
}

/// The gateway's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    ExternalAddress(ExternalAddress),
    Mapped(Mapping),
    Unmapped(Unmapped),
}

impl Answer {
    pub const fn version(&self) -> Version {
        match self {
            Answer::ExternalAddress(a) => a.version,
            Answer::Mapped(m) => m.version,
            Answer::Unmapped(u) => u.version,
        }
    }

    pub const fn epoch(&self) -> u32 {
        match self {
            Answer::ExternalAddress(a) => a.epoch,
            Answer::Mapped(m) => m.epoch,
            Answer::Unmapped(u) => u.epoch,
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send this datagram to the gateway, then poll again.
    Transmit(Vec<u8>),
    /// Nothing to do before this instant (or a datagram arriving).
    Wait(Instant),
    /// Finished; polling again returns the same.
    Done(Result<Answer, Error>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The request itself over PCP (for the external address: the deletion probe).
    Pcp,
    /// External address over PCP, second try: mapping the client's own request port.
    PcpOwnPort,
    /// ... and deleting that mapping again; the address is known by then.
    PcpOwnPortDelete(ExternalAddress),
    /// The request itself over NAT-PMP.
    NatPmp,
    /// NAT-PMP mapped; now asking the external address the mapping response does not carry.
    NatPmpAddress(natpmp::MapResponse),
}

/// One exchange with the gateway. See the module documentation.
#[derive(Debug, Clone)]
pub struct Transaction {
    op: Operation,
    params: Params,
    started: Instant,
    phase: Phase,
    backoff: Backoff,
    /// End of the current wait; `None`: send now.
    next: Option<Instant>,
    pcp_sends: u32,
    /// Protocol number and internal port of the last PCP request sent: what answers match.
    pcp_sent: Option<(u8, u16)>,
    sends: u32,
    result: Option<Result<Answer, Error>>,
}

impl Transaction {
    pub fn new(op: Operation, params: Params, now: Instant) -> Transaction {
        let gateway_v4 = params.gateway.is_ipv4();
        let (phase, backoff) = match params.choice {
            ProtocolChoice::NatPmp => (Phase::NatPmp, Backoff::natpmp()),
            ProtocolChoice::Pcp | ProtocolChoice::Auto => (Phase::Pcp, Backoff::pcp()),
        };
        let mut t = Transaction {
            op,
            params,
            started: now,
            phase,
            backoff,
            next: None,
            pcp_sends: 0,
            pcp_sent: None,
            sends: 0,
            result: None,
        };
        if params.choice == ProtocolChoice::NatPmp && !gateway_v4 {
            t.result = Some(Err(Error::NatPmpNeedsIpv4(params.gateway.ip())));
        } else if let Operation::Map { lifetime: 0, .. } = op {
            t.result = Some(Err(Error::InvalidArgument(
                "a mapping's lifetime must be at least 1 s (0 deletes)",
            )));
        } else if params.gateway.port() != SERVER_PORT {
            t.result = Some(Err(Error::InvalidArgument(
                "the gateway's port must be 5351",
            )));
        }
        t
    }

    pub const fn operation(&self) -> &Operation {
        &self.op
    }

    /// Requests sent so far, both protocols.
    pub const fn sends(&self) -> u32 {
        self.sends
    }

    /// The protocol being spoken now.
    pub const fn version(&self) -> Version {
        match self.phase {
            Phase::Pcp | Phase::PcpOwnPort | Phase::PcpOwnPortDelete(_) => Version::Pcp,
            Phase::NatPmp | Phase::NatPmpAddress(_) => Version::NatPmp,
        }
    }

    pub fn is_done(&self) -> bool {
        self.result.is_some()
    }

    /// What to do at `now`: send, wait, or the result.
    pub fn poll(&mut self, now: Instant, random: &mut dyn Random) -> Output {
        if let Some(result) = &self.result {
            return Output::Done(result.clone());
        }
        if let Some(deadline) = self.params.deadline {
            if now >= deadline {
                return self.give_up(now);
            }
        }
        if let Some(next) = self.next {
            if now < next {
                let until = match self.params.deadline {
                    Some(deadline) => next.min(deadline),
                    None => next,
                };
                return Output::Wait(until);
            }
            // The wait ran out unanswered.
            if self.phase == Phase::Pcp && self.may_fall_back() {
                // RFC 6887 Appendix A: a NAT-PMP-only gateway may ignore PCP entirely.
                self.switch_to_natpmp();
            } else if !self.backoff.may_send() {
                return self.give_up(now);
            }
        }
        let datagram = self.datagram();
        let wait = self.backoff.on_send(random);
        self.next = Some(now + wait);
        self.sends += 1;
        if self.version() == Version::Pcp {
            self.pcp_sends += 1;
            let (protocol, internal_port, _, _) = self.pcp_target();
            self.pcp_sent = Some((protocol.ip_number(), internal_port));
        }
        Output::Transmit(datagram)
    }

    /// Feeds in a datagram received at `now` from `from`. Returns whether it was taken as
    /// (part of) the answer; anything else is ignored, never trusted.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let _ = now;
        if self.result.is_some() || !self.is_gateway(from) {
            return false;
        }
        match datagram.first() {
            Some(&natpmp::VERSION) => self.handle_natpmp(datagram),
            Some(&pcp::VERSION) => self.handle_pcp(datagram),
            Some(_) => self.handle_other_version(datagram),
            None => false,
        }
    }

    fn is_gateway(&self, from: SocketAddr) -> bool {
        from.port() == SERVER_PORT && same_ip(from.ip(), self.params.gateway.ip())
    }

    fn may_fall_back(&self) -> bool {
        self.params.choice == ProtocolChoice::Auto && self.params.gateway.is_ipv4()
    }

    fn switch_to_natpmp(&mut self) {
        self.phase = Phase::NatPmp;
        self.backoff = Backoff::natpmp();
        self.next = None;
    }

    fn give_up(&mut self, now: Instant) -> Output {
        if let Phase::PcpOwnPortDelete(address) = self.phase {
            // The address is known; the probe mapping expires by itself.
            return self.finish(Ok(Answer::ExternalAddress(address)));
        }
        let error = Error::NoResponse {
            gateway: self.params.gateway.ip(),
            sends: self.sends,
            elapsed: now.saturating_duration_since(self.started),
        };
        self.finish(Err(error))
    }

    fn finish(&mut self, result: Result<Answer, Error>) -> Output {
        self.result = Some(result.clone());
        Output::Done(result)
    }

    // ---- requests ----

    fn datagram(&self) -> Vec<u8> {
        match self.phase {
            Phase::Pcp | Phase::PcpOwnPort | Phase::PcpOwnPortDelete(_) => self.pcp_request(),
            Phase::NatPmp => self.natpmp_request(),
            Phase::NatPmpAddress(_) => emit_natpmp(natpmp::Request::ExternalAddress),
        }
    }

    fn natpmp_request(&self) -> Vec<u8> {
        let request = match self.op {
            Operation::ExternalAddress => natpmp::Request::ExternalAddress,
            Operation::Map {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => natpmp::Request::Map(natpmp::MapRequest {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            }),
            Operation::Unmap {
                protocol,
                internal_port,
            } => natpmp::Request::Map(natpmp::MapRequest {
                protocol,
                internal_port,
                suggested_external_port: 0,
                lifetime: 0,
            }),
        };
        emit_natpmp(request)
    }

    /// Protocol, internal port, lifetime and suggested external port of the PCP MAP request
    /// of the current phase.
    fn pcp_target(&self) -> (Protocol, u16, u32, u16) {
        let own = self.params.client_port;
        match (self.phase, self.op) {
            (Phase::PcpOwnPort, _) => (Protocol::Udp, own, PCP_OWN_PORT_PROBE_LIFETIME, own),
            (Phase::PcpOwnPortDelete(_), _) => (Protocol::Udp, own, 0, 0),
            (_, Operation::ExternalAddress) => (Protocol::Udp, PCP_ADDRESS_PROBE_PORT, 0, 0),
            (
                _,
                Operation::Map {
                    protocol,
                    internal_port,
                    suggested_external_port,
                    lifetime,
                },
            ) => (protocol, internal_port, lifetime, suggested_external_port),
            (
                _,
                Operation::Unmap {
                    protocol,
                    internal_port,
                },
            ) => (protocol, internal_port, 0, 0),
        }
    }

    fn pcp_request(&self) -> Vec<u8> {
        let (protocol, internal_port, lifetime, suggested_port) = self.pcp_target();
        // "No preference" is the all-zeros address of the client's family (section 11.1).
        let any = match self.params.client_address {
            IpAddr::V4(_) => pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED,
        };
        let request = pcp::Request {
            lifetime,
            client_address: pcp::to_wire_address(self.params.client_address),
            op: pcp::OpData::Map(pcp::MapData {
                nonce: self.params.nonce,
                protocol: protocol.ip_number(),
                internal_port,
                external_port: suggested_port,
                external_address: any,
            }),
            options: pcp::Options::NONE,
        };
        let mut buf = vec![0u8; request.buffer_len()];
        let n = request.emit(&mut buf);
        buf.truncate(n);
        buf
    }

    // ---- answers ----

    fn handle_natpmp(&mut self, datagram: &[u8]) -> bool {
        let Ok(response) = natpmp::Response::parse(datagram) else {
            return self.handle_natpmp_echo(datagram);
        };
        match (self.phase, response) {
            // RFC 6887 Appendix A / RFC 6886 section 3.5: a NAT-PMP gateway answers a version-2
            // request with "unsupported version".
            (Phase::Pcp, natpmp::Response::UnsupportedVersion { .. }) => self.pcp_unsupported(),
            // Only if no PCP request is outstanding: otherwise it is a late answer to one.
            (Phase::NatPmp, natpmp::Response::UnsupportedVersion { .. }) => {
                if self.pcp_sends > 0 {
                    return false;
                }
                let gateway = self.params.gateway.ip();
                self.finish(Err(Error::VersionNotSupported {
                    gateway,
                    version: Version::NatPmp,
                }));
                true
            }
            (Phase::NatPmp, natpmp::Response::ExternalAddress(r))
                if self.op == Operation::ExternalAddress =>
            {
                let result = if r.result.is_success() {
                    Ok(Answer::ExternalAddress(ExternalAddress {
                        version: Version::NatPmp,
                        address: IpAddr::V4(r.address),
                        epoch: r.epoch,
                    }))
                } else {
                    Err(Error::Refused(Refusal::NatPmp(r.result)))
                };
                self.finish(result);
                true
            }
            (Phase::NatPmp, natpmp::Response::Map(r)) => {
                if Some(r.protocol) != self.op.protocol()
                    || r.internal_port != self.op.internal_port()
                {
                    return false;
                }
                if !r.result.is_success() {
                    self.finish(Err(Error::Refused(Refusal::NatPmp(r.result))));
                    return true;
                }
                match self.op {
                    Operation::Map { .. } => {
                        // The mapping exists; its answer has no address: ask for it next.
                        self.phase = Phase::NatPmpAddress(r);
                        self.backoff = Backoff::natpmp();
                        self.next = None;
                    }
                    _ => {
                        self.finish(Ok(Answer::Unmapped(Unmapped {
                            version: Version::NatPmp,
                            protocol: r.protocol,
                            internal_port: r.internal_port,
                            epoch: r.epoch,
                        })));
                    }
                }
                true
            }
            (Phase::NatPmpAddress(map), natpmp::Response::ExternalAddress(r)) => {
                // A refusal to tell the address does not undo the mapping.
                let address = r.result.is_success().then_some(IpAddr::V4(r.address));
                self.finish(Ok(Answer::Mapped(natpmp_mapping(map, address, r.epoch))));
                true
            }
            _ => false,
        }
    }

    /// RFC 6886 section 3.5: a gateway that does not support an opcode returns "the entire
    /// request ... with the top bit of the opcode set" and result 5, which is not the length
    /// of a response: recognised by its header, so that the refusal is reported rather than
    /// retried until silence.
    fn handle_natpmp_echo(&mut self, datagram: &[u8]) -> bool {
        if self.phase != Phase::NatPmp {
            return false;
        }
        let request = self.natpmp_request();
        let [_, opcode, hi, lo, ..] = *datagram else {
            return false;
        };
        let code = u16::from_be_bytes([hi, lo]);
        let echoes = opcode == request[1] | natpmp::opcode::RESPONSE_BIT
            && code != 0
            && datagram.len() == request.len().max(4)
            && datagram.get(4..) == Some(request.get(4..).unwrap_or(&[]));
        if !echoes {
            return false;
        }
        self.finish(Err(Error::Refused(Refusal::NatPmp(natpmp::ResultCode(
            code,
        )))));
        true
    }

    fn handle_pcp(&mut self, datagram: &[u8]) -> bool {
        if self.pcp_sends == 0 {
            return false;
        }
        let response = match pcp::Response::parse(datagram) {
            Ok(r) => r,
            // An error answer cut to the header still says "unsupported version".
            Err(_) if is_pcp_unsupp_version(datagram) => return self.pcp_unsupported(),
            Err(_) => return false,
        };
        if response.result == pcp::ResultCode::UNSUPP_VERSION {
            return self.pcp_unsupported();
        }
        let pcp::OpData::Map(map) = response.op else {
            // ANNOUNCE (unsolicited) or PEER: not an answer to this request.
            return false;
        };
        if map.nonce != self.params.nonce
            || Some((map.protocol, map.internal_port)) != self.pcp_sent
        {
            return false;
        }
        let protocol = self.op.protocol().unwrap_or(Protocol::Udp);
        let refusal = || {
            Error::Refused(Refusal::Pcp {
                code: response.result,
                lifetime: response.lifetime,
            })
        };
        let address = pcp::from_wire_address(&map.external_address);
        let named = (!pcp::is_all_zeros(&map.external_address)).then_some(ExternalAddress {
            version: Version::Pcp,
            address,
            epoch: response.epoch,
        });
        let result = match self.op {
            Operation::ExternalAddress => match (self.phase, named) {
                (Phase::PcpOwnPortDelete(known), _) => Ok(Answer::ExternalAddress(known)),
                (Phase::PcpOwnPort, Some(a)) if response.result.is_success() => {
                    self.phase = Phase::PcpOwnPortDelete(a);
                    self.backoff = Backoff::pcp();
                    self.next = None;
                    return true;
                }
                (Phase::Pcp | Phase::NatPmp, Some(a)) => Ok(Answer::ExternalAddress(a)),
                // A late answer to the probe while NAT-PMP is being asked: not needed.
                (Phase::NatPmp | Phase::NatPmpAddress(_), None) => return false,
                (Phase::Pcp, None) if self.params.client_port != 0 => {
                    self.phase = Phase::PcpOwnPort;
                    self.backoff = Backoff::pcp();
                    self.next = None;
                    return true;
                }
                _ if self.may_fall_back() => {
                    // PCP worked but would not tell; NAT-PMP has the question built in.
                    self.switch_to_natpmp();
                    return true;
                }
                _ if response.result.is_success() => {
                    Err(Error::NoExternalAddress(self.params.gateway.ip()))
                }
                _ => Err(refusal()),
            },
            _ if !response.result.is_success() => Err(refusal()),
            Operation::Map { .. } => Ok(Answer::Mapped(Mapping {
                version: Version::Pcp,
                protocol,
                internal_port: map.internal_port,
                external_port: map.external_port,
                external_address: (!pcp::is_all_zeros(&map.external_address)).then_some(address),
                lifetime: Duration::from_secs(response.lifetime.into()),
                epoch: response.epoch,
                nonce: Some(map.nonce),
            })),
            Operation::Unmap { .. } => Ok(Answer::Unmapped(Unmapped {
                version: Version::Pcp,
                protocol,
                internal_port: map.internal_port,
                epoch: response.epoch,
            })),
        };
        self.finish(result);
        true
    }

    /// A PCP server of another version answers UNSUPP_VERSION with its own version in the
    /// header (RFC 6887 section 9); this client speaks only version 2.
    fn handle_other_version(&mut self, datagram: &[u8]) -> bool {
        if self.pcp_sends == 0 || !is_pcp_unsupp_version(datagram) {
            return false;
        }
        self.pcp_unsupported()
    }

    fn pcp_unsupported(&mut self) -> bool {
        if self.phase != Phase::Pcp {
            // Already fell back: a duplicate.
            return false;
        }
        if self.may_fall_back() {
            self.switch_to_natpmp();
        } else {
            let gateway = self.params.gateway.ip();
            self.finish(Err(Error::VersionNotSupported {
                gateway,
                version: Version::Pcp,
            }));
        }
        true
    }
}

fn natpmp_mapping(map: natpmp::MapResponse, address: Option<IpAddr>, epoch: u32) -> Mapping {
    Mapping {
        version: Version::NatPmp,
        protocol: map.protocol,
        internal_port: map.internal_port,
        external_port: map.external_port,
        external_address: address,
        lifetime: Duration::from_secs(map.lifetime.into()),
        epoch,
        nonce: None,
    }
}

fn emit_natpmp(request: natpmp::Request) -> Vec<u8> {
    let mut buf = vec![0u8; request.buffer_len()];
    let n = request.emit(&mut buf);
    buf.truncate(n);
    buf
}

/// A PCP response header (R bit set, any version but 0) with result UNSUPP_VERSION.
fn is_pcp_unsupp_version(datagram: &[u8]) -> bool {
    matches!(datagram, [version, r_opcode, _, result, ..]
        if *version != natpmp::VERSION
            && r_opcode & 0x80 != 0
            && *result == pcp::ResultCode::UNSUPP_VERSION.0)
}

/// Equal addresses, an IPv4 address and its IPv4-mapped form being the same.
pub(crate) fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => match pcp::as_ipv4(&v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests;
