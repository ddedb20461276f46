//! The population's protocol core, sans I/O: one datagram in (source, destination, bytes,
//! time since start), at most one reply out (its source address and bytes); the mapping table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use natwarden_wire::{natpmp, pcp, Protocol};

use crate::mix::{splitmix64, Behaviour, Mix};
use crate::range::Range;

/// The longest lifetime granted (seconds); requests for more get this.
pub const MAX_LIFETIME: u32 = 3600;
/// The lifetime of a PCP error response (RFC 6887 section 7.2's short error lifetime).
const ERROR_LIFETIME: u32 = pcp::SHORT_ERROR_LIFETIME;

/// What one mapping is keyed by: the probed address, the transport protocol number, the
/// internal port and the client (internal) address it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    pub target: IpAddr,
    pub protocol: u8,
    pub internal_port: u16,
    pub client: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub external_port: u16,
    /// Time since start at which it expires.
    pub expires: Duration,
}

/// A reply to send: from `from` to the datagram's source, `len` bytes of the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: IpAddr,
    pub len: usize,
}

/// The whole population: who is who, and the live mappings.
pub struct Population {
    pub seed: u64,
    pub mix: Mix,
    pub v4: Option<Range>,
    pub v6: Option<Range>,
    /// Added to a target's address (IPv6: to its low 32 bits) for `other-source` replies.
    pub sibling_offset: u32,
    mappings: HashMap<MappingKey, Mapping>,
    /// Feeds the junk of `garbage` replies.
    garbage_counter: u64,
}

/// Output buffer size [`Population::handle`] needs: a full-length PCP error echo.
pub const REPLY_BUF_LEN: usize = pcp::MAX_LEN;

impl Population {
    pub fn new(
        seed: u64,
        mix: Mix,
        v4: Option<Range>,
        v6: Option<Range>,
        sibling_offset: u32,
    ) -> Population {
        Population {
            seed,
            mix,
            v4,
            v6,
            sibling_offset,
            mappings: HashMap::new(),
            garbage_counter: 0,
        }
    }

    /// The behaviour of `target`; `None` outside the population's ranges.
    pub fn behaviour(&self, target: IpAddr) -> Option<Behaviour> {
        let range = match target {
            IpAddr::V4(_) => self.v4.as_ref(),
            IpAddr::V6(_) => self.v6.as_ref(),
        }?;
        range
            .contains(target)
            .then(|| self.mix.behaviour(self.seed, target))
    }

    /// The address `other-source` replies for `target` come from.
    pub fn sibling(&self, target: IpAddr) -> IpAddr {
        sibling(target, self.sibling_offset)
    }

    /// The mappings still live at `now`, sorted.
    pub fn live_mappings(&self, now: Duration) -> Vec<(MappingKey, Mapping)> {
        let mut live: Vec<_> = self
            .mappings
            .iter()
            .filter(|(_, m)| m.expires > now)
            .map(|(k, m)| (*k, *m))
            .collect();
        live.sort_by_key(|(k, _)| *k);
        live
    }

    /// Forgets the mappings expired at `now`.
    pub fn expire(&mut self, now: Duration) {
        self.mappings.retain(|_, m| m.expires > now);
    }

    /// Handles one datagram from `source` to `target`; writes the reply, if any, into `out`
    /// (at least [`REPLY_BUF_LEN`] bytes).
    pub fn handle(
        &mut self,
        now: Duration,
        source: SocketAddr,
        target: IpAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<Reply> {
        let behaviour = self.behaviour(target)?;
        let epoch = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        let from = match behaviour {
            Behaviour::OtherSource => self.sibling(target),
            _ => target,
        };
        let len = match behaviour {
            Behaviour::Silent => None,
            Behaviour::Garbage => Some(self.garbage(data, out)),
            _ => match data.first() {
                Some(&natpmp::VERSION) => {
                    self.natpmp(behaviour, now, epoch, source, target, data, out)
                }
                Some(&pcp::VERSION) => self.pcp(behaviour, now, epoch, source, target, data, out),
                // Neither: a NAT-PMP server names its version (RFC 6886 section 3.5), a
                // PCP-only one PCP's (RFC 6887 section 9).
                Some(_) if behaviour == Behaviour::PcpOnly || target.is_ipv6() => {
                    pcp_parse_error(data, epoch, out)
                }
                Some(_) => Some(natpmp::Response::UnsupportedVersion { epoch }.emit(out)),
                None => None,
            },
        }?;
        Some(Reply { from, len })
    }

    #[allow(clippy::too_many_arguments)]
    fn natpmp(
        &mut self,
        behaviour: Behaviour,
        now: Duration,
        epoch: u32,
        source: SocketAddr,
        target: IpAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        // NAT-PMP is IPv4 only (RFC 6886); a PCP-only gateway does not speak it at all.
        let IpAddr::V4(target4) = target else {
            return None;
        };
        if behaviour == Behaviour::PcpOnly {
            return None;
        }
        let request = match natpmp::Request::parse(lenient_natpmp(data)) {
            Ok(request) => request,
            Err(natpmp::ParseError::UnsupportedOpcode { .. }) => {
                return Some(natpmp::emit_unsupported_opcode(data, out));
            }
            Err(_) => return None,
        };
        let response = match request {
            natpmp::Request::ExternalAddress => {
                let (result, address) = match behaviour {
                    Behaviour::SwappedNofail => {
                        (natpmp::ResultCode::NETWORK_FAILURE, Ipv4Addr::UNSPECIFIED)
                    }
                    Behaviour::Swapped => (natpmp::ResultCode::SUCCESS, private_v4(target4)),
                    _ => (natpmp::ResultCode::SUCCESS, target4),
                };
                natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                    result,
                    epoch,
                    address,
                })
            }
            natpmp::Request::Map(map) => {
                let refuse = |result| natpmp::MapResponse {
                    protocol: map.protocol,
                    result,
                    epoch,
                    internal_port: map.internal_port,
                    external_port: 0,
                    lifetime: 0,
                };
                natpmp::Response::Map(match behaviour {
                    Behaviour::Leak | Behaviour::OtherSource => {
                        refuse(natpmp::ResultCode::NOT_AUTHORIZED)
                    }
                    Behaviour::SwappedNofail => refuse(natpmp::ResultCode::NETWORK_FAILURE),
                    _ => {
                        let client = source.ip();
                        let protocol = map.protocol.ip_number();
                        if map.is_deletion() {
                            self.delete(target, protocol, map.internal_port, client);
                            natpmp::MapResponse {
                                external_port: 0,
                                lifetime: 0,
                                ..refuse(natpmp::ResultCode::SUCCESS)
                            }
                        } else {
                            let external_port = granted_port(
                                behaviour,
                                map.internal_port,
                                map.suggested_external_port,
                            );
                            let lifetime = map.lifetime.min(MAX_LIFETIME);
                            self.grant(
                                now,
                                target,
                                protocol,
                                map.internal_port,
                                client,
                                external_port,
                                lifetime,
                            );
                            natpmp::MapResponse {
                                external_port,
                                lifetime,
                                ..refuse(natpmp::ResultCode::SUCCESS)
                            }
                        }
                    }
                })
            }
        };
        Some(response.emit(out))
    }

    #[allow(clippy::too_many_arguments)]
    fn pcp(
        &mut self,
        behaviour: Behaviour,
        now: Duration,
        epoch: u32,
        source: SocketAddr,
        target: IpAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let request = match pcp::Request::parse(data) {
            Ok(request) => request,
            Err(_) => return pcp_parse_error(data, epoch, out),
        };
        let error = |result| request.error_response(result, ERROR_LIFETIME, epoch);
        let map = match request.op {
            pcp::OpData::Announce => return Some(pcp::Response::announce(epoch).emit(out)),
            pcp::OpData::Peer(_) => {
                return Some(error(pcp::ResultCode::UNSUPP_OPCODE).emit(out));
            }
            pcp::OpData::Map(map) => map,
        };
        let response = match behaviour {
            Behaviour::Leak | Behaviour::OtherSource | Behaviour::PcpOnly => {
                error(pcp::ResultCode::NOT_AUTHORIZED)
            }
            Behaviour::SwappedNofail => error(pcp::ResultCode::NETWORK_FAILURE),
            _ => {
                let source_wire = pcp::to_wire_address(source.ip());
                let checked = behaviour == Behaviour::Swapped;
                // Section 8.2: the client address must be the datagram's source.
                if checked && request.client_address != source_wire {
                    error(pcp::ResultCode::ADDRESS_MISMATCH)
                } else if checked && request.options.third_party.is_some() {
                    // Section 13.1: a server that does not allow third-party mappings.
                    error(pcp::ResultCode::NOT_AUTHORIZED)
                } else {
                    // An open gateway maps for whoever the request names.
                    let client = pcp::from_wire_address(
                        &request
                            .options
                            .third_party
                            .unwrap_or(request.client_address),
                    );
                    let external_address = match behaviour {
                        Behaviour::Swapped => private_address(target),
                        _ => pcp::to_wire_address(target),
                    };
                    let (external_port, lifetime) = if request.lifetime == 0 {
                        self.delete(target, map.protocol, map.internal_port, client);
                        (map.external_port, 0)
                    } else {
                        let port = granted_port(behaviour, map.internal_port, map.external_port);
                        let lifetime = request.lifetime.min(MAX_LIFETIME);
                        self.grant(
                            now,
                            target,
                            map.protocol,
                            map.internal_port,
                            client,
                            port,
                            lifetime,
                        );
                        (port, lifetime)
                    };
                    pcp::Response {
                        result: pcp::ResultCode::SUCCESS,
                        lifetime,
                        epoch,
                        op: pcp::OpData::Map(pcp::MapData {
                            external_port,
                            external_address,
                            ..map
                        }),
                        // Section 7.3: the options the server processed are in the response.
                        options: request.options,
                    }
                }
            }
        };
        Some(response.emit(out))
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        now: Duration,
        target: IpAddr,
        protocol: u8,
        internal_port: u16,
        client: IpAddr,
        external_port: u16,
        lifetime: u32,
    ) {
        let key = MappingKey {
            target,
            protocol,
            internal_port,
            client,
        };
        let expires = now + Duration::from_secs(u64::from(lifetime));
        self.mappings.insert(
            key,
            Mapping {
                external_port,
                expires,
            },
        );
    }

    /// Deletes one mapping; internal port 0 deletes all of the client's for the protocol
    /// (RFC 6886 section 3.4).
    fn delete(&mut self, target: IpAddr, protocol: u8, internal_port: u16, client: IpAddr) {
        if internal_port == 0 {
            self.mappings.retain(|k, _| {
                !(k.target == target && k.protocol == protocol && k.client == client)
            });
        } else {
            self.mappings.remove(&MappingKey {
                target,
                protocol,
                internal_port,
                client,
            });
        }
    }

    /// Junk no strict parser accepts, varying by request: random bytes (1 to 40, first byte
    /// neither 0 nor 2 so neither protocol's version), a 12-byte response claiming version 1,
    /// a NAT-PMP external-address response cut to 7 bytes, or a PCP response of 23 bytes.
    fn garbage(&mut self, data: &[u8], out: &mut [u8]) -> usize {
        self.garbage_counter += 1;
        let mut state = splitmix64(self.seed ^ self.garbage_counter);
        for chunk in data.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            state = splitmix64(state ^ u64::from_le_bytes(word));
        }
        let mut next = || {
            state = splitmix64(state);
            state
        };
        let kind = next() % 4;
        let len = match kind {
            0 => {
                let len = 1 + (next() % 40) as usize;
                for b in out[..len].iter_mut() {
                    *b = next() as u8;
                }
                if out[0] == natpmp::VERSION || out[0] == pcp::VERSION {
                    out[0] = 0xff;
                }
                len
            }
            1 => {
                out[..12].fill(0);
                out[0] = 1;
                out[1] = 0x80;
                12
            }
            2 => {
                out[..7].fill(0);
                out[1] = 0x80;
                7
            }
            _ => {
                out[..23].fill(0);
                out[0] = pcp::VERSION;
                out[1] = 0x80;
                23
            }
        };
        len
    }
}

/// A NAT-PMP request cut to its message length: like common gateways (and unlike the
/// strict wire parser) the population ignores trailing bytes, so zmap's 4-byte probe
/// (`00 00 00 00`, zmap's `natpmp_5351.pkt`) counts as an external-address request.
fn lenient_natpmp(data: &[u8]) -> &[u8] {
    let len = match data.get(1) {
        Some(&natpmp::opcode::EXTERNAL_ADDRESS) => 2,
        Some(&natpmp::opcode::MAP_UDP | &natpmp::opcode::MAP_TCP) => natpmp::Request::MAX_LEN,
        _ => data.len(),
    };
    &data[..len.min(data.len())]
}

/// The answer to a PCP request that did not parse (RFC 6887 section 8.2), if one is due.
fn pcp_parse_error(data: &[u8], epoch: u32, out: &mut [u8]) -> Option<usize> {
    let result = match pcp::Request::parse(data) {
        Err(e) => e.result_code()?,
        Ok(_) => pcp::ResultCode::UNSUPP_VERSION,
    };
    Some(pcp::emit_error_reply(
        data,
        result,
        ERROR_LIFETIME,
        epoch,
        out,
    ))
}

/// The external port a granting gateway gives: the suggested one (or the internal port if
/// none was suggested), except `open-reassign`, which never gives the suggested port.
fn granted_port(behaviour: Behaviour, internal_port: u16, suggested: u16) -> u16 {
    let wanted = if suggested == 0 {
        internal_port
    } else {
        suggested
    };
    if behaviour != Behaviour::OpenReassign {
        return wanted;
    }
    // wanted ^ 1 differs from wanted; lifted above 1023 it still differs from a suggestion
    // below 1024 (and from a zero one).
    let other = wanted ^ 1;
    if other < 1024 {
        other + 1024
    } else {
        other
    }
}

/// `swapped`'s private external address for an IPv4 target a.b.c.d: 10.b.c.d.
pub fn private_v4(target: Ipv4Addr) -> Ipv4Addr {
    let [_, b, c, d] = target.octets();
    Ipv4Addr::new(10, b, c, d)
}

/// `swapped`'s external address as PCP carries it: 10.b.c.d (IPv4-mapped), or for an IPv6
/// target the ULA fd00::/64 with the target's low 64 bits.
pub fn private_address(target: IpAddr) -> Ipv6Addr {
    match target {
        IpAddr::V4(v4) => pcp::ipv4_mapped(private_v4(v4)),
        IpAddr::V6(v6) => {
            let low = u128::from(v6) & u128::from(u64::MAX);
            Ipv6Addr::from(0xfd00u128 << 112 | low)
        }
    }
}

/// `target` + `offset` (IPv6: in the low 32 bits, wrapping there).
pub fn sibling(target: IpAddr, offset: u32) -> IpAddr {
    match target {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(offset))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let low = (bits as u32).wrapping_add(offset);
            IpAddr::V6(Ipv6Addr::from(
                bits & !u128::from(u32::MAX) | u128::from(low),
            ))
        }
    }
}

/// The transport name of a protocol number, for the leftover file.
pub fn protocol_name(protocol: u8) -> String {
    match Protocol::from_ip_number(protocol) {
        Some(p) => p.name().to_string(),
        None if protocol == 0 => "all".to_string(),
        None => protocol.to_string(),
    }
}

#[cfg(test)]
mod tests;
