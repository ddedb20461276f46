//! PCP (RFC 6887) requests: ANNOUNCE, MAP and PEER, answered from the mapping table
//! NAT-PMP shares. The ingress checks have already passed when these run.

use std::net::IpAddr;
use std::time::Instant;

use natwarden_wire::pcp::{
    self, from_wire_address, ipv4_mapped, MapData, OpData, Options, PeerData, Request, Response,
    ResultCode,
};
use natwarden_wire::Protocol;

use crate::gateway::{Ask, DropReason, Gateway, Ingress, Refusal, Verdict};
use crate::output::Answer;
use crate::table::{Mapping, MappingKey, Origin};

/// The lifetime an error response carries (RFC 6887 section 7.4): 30 s for errors
/// that may clear soon, 30 min for those that will not.
fn error_lifetime(code: ResultCode) -> u32 {
    code.recommended_lifetime()
        .unwrap_or(pcp::SHORT_ERROR_LIFETIME)
}

/// An error answer to MAP or PEER: its result code and the lifetime it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused {
    code: ResultCode,
    lifetime: u32,
}

impl From<ResultCode> for Refused {
    fn from(code: ResultCode) -> Refused {
        Refused {
            code,
            lifetime: error_lifetime(code),
        }
    }
}

fn result_of(r: Refusal) -> ResultCode {
    match r {
        Refusal::NotAuthorized | Refusal::NonceMismatch => ResultCode::NOT_AUTHORIZED,
        Refusal::Quota => ResultCode::USER_EX_QUOTA,
        Refusal::NoPorts | Refusal::TableFull => ResultCode::NO_RESOURCES,
        Refusal::NetworkFailure => ResultCode::NETWORK_FAILURE,
        Refusal::CannotProvide => ResultCode::CANNOT_PROVIDE_EXTERNAL,
    }
}

impl Gateway {
    pub(crate) fn serve_pcp(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        datagram: &[u8],
        reply: &mut [u8],
    ) -> Verdict {
        let epoch = self.epoch(now);
        let request = match Request::parse(datagram) {
            Ok(r) => r,
            Err(e) => {
                // Section 8.3: some malformed requests are answered, some dropped.
                return match e.result_code() {
                    Some(code) => Verdict::Reply(
                        pcp::emit_error_reply(datagram, code, error_lifetime(code), epoch, reply),
                        Answer::Pcp(code),
                    ),
                    None if datagram.get(1).is_some_and(|op| op & 0x80 != 0) => {
                        Verdict::Drop(DropReason::NotARequest)
                    }
                    None => Verdict::Drop(DropReason::Malformed),
                };
            }
        };
        let response = self.pcp_response(now, ingress, &request, epoch);
        Verdict::Reply(response.emit(reply), Answer::Pcp(response.result))
    }

    /// Section 9: any version but 0 and 2 is answered with UNSUPP_VERSION naming 2.
    pub(crate) fn pcp_unsupported_version(
        &mut self,
        now: Instant,
        datagram: &[u8],
        reply: &mut [u8],
    ) -> Verdict {
        let code = ResultCode::UNSUPP_VERSION;
        Verdict::Reply(
            pcp::emit_error_reply(datagram, code, error_lifetime(code), self.epoch(now), reply),
            Answer::Pcp(code),
        )
    }

    fn pcp_response(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        req: &Request,
        epoch: u32,
    ) -> Response {
        let error = |code: ResultCode| req.error_response(code, error_lifetime(code), epoch);
        let source = ingress.source.ip();
        // Section 8.3: the client's own view of its address must be the one the
        // packet came from; a NAT between client and server, or a forgery, is refused.
        if from_wire_address(&req.client_address) != source {
            return error(ResultCode::ADDRESS_MISMATCH);
        }
        // FILTER (section 13.3) is not offered: a mapping that would let in fewer
        // peers than asked must not be granted silently.
        if !req.options.filters.is_empty() {
            return error(ResultCode::UNSUPP_OPTION);
        }
        // Section 13.1: THIRD_PARTY only where the admin allowed it, for a genuine
        // host of the requester's own subnet.
        let client = match req.options.third_party {
            None => source,
            Some(other) => {
                let other = from_wire_address(&other);
                if !self.policy.third_party_clients.contains(&source)
                    || !self.host_allowed(ingress.interface, other)
                    || other.is_ipv4() != source.is_ipv4()
                {
                    return error(ResultCode::NOT_AUTHORIZED);
                }
                other
            }
        };
        match req.op {
            OpData::Announce => Response {
                result: ResultCode::SUCCESS,
                lifetime: 0,
                epoch,
                op: OpData::Announce,
                options: Options::NONE,
            },
            OpData::Map(d) => match self.pcp_map(now, client, req, d) {
                Ok((data, lifetime)) => Response {
                    result: ResultCode::SUCCESS,
                    lifetime,
                    epoch,
                    op: OpData::Map(data),
                    options: processed(&req.options),
                },
                Err(r) => req.error_response(r.code, r.lifetime, epoch),
            },
            OpData::Peer(d) => match self.pcp_peer(now, client, req, d) {
                Ok((data, lifetime)) => Response {
                    result: ResultCode::SUCCESS,
                    lifetime,
                    epoch,
                    op: OpData::Peer(data),
                    options: processed(&req.options),
                },
                Err(r) => req.error_response(r.code, r.lifetime, epoch),
            },
        }
    }

    /// Section 11.3 (server processing of MAP).
    fn pcp_map(
        &mut self,
        now: Instant,
        client: IpAddr,
        req: &Request,
        d: MapData,
    ) -> Result<(MapData, u32), Refused> {
        let protocol = match (d.protocol, d.transport()) {
            (_, Some(p)) => Some(p),
            // Protocol 0 means "all protocols": only meaningful to delete everything.
            (0, None) if req.lifetime == 0 && d.internal_port == 0 => None,
            _ => return Err(ResultCode::UNSUPP_PROTOCOL.into()),
        };
        if req.lifetime == 0 {
            self.delete(client, protocol, d.internal_port, Some(d.nonce.0))
                .map_err(|r| self.refused(now, r, client, protocol, d.internal_port))?;
            return Ok((d, 0));
        }
        let (Some(protocol), true) = (protocol, d.internal_port != 0) else {
            return Err(ResultCode::MALFORMED_REQUEST.into());
        };
        // A suggested external address other than ours cannot be honoured.
        let wrong_address = !pcp::is_all_zeros(&d.external_address)
            && from_wire_address(&d.external_address) != self.external_view(client);
        if wrong_address && req.options.prefer_failure {
            return Err(ResultCode::CANNOT_PROVIDE_EXTERNAL.into());
        }
        let ask = Ask {
            client,
            protocol,
            internal_port: d.internal_port,
            suggested_port: d.external_port,
            lifetime: req.lifetime,
            origin: Origin::Pcp,
            nonce: Some(d.nonce.0),
            prefer_failure: req.options.prefer_failure,
            peer: false,
        };
        let m = self
            .grant(now, ask)
            .map_err(|r| self.refused(now, r, client, Some(protocol), d.internal_port))?;
        Ok((self.assigned(m, d), lifetime_left(&m, now)))
    }

    /// Section 12.3 (server processing of PEER): creates or extends the outbound
    /// mapping the client's traffic to the remote peer uses.
    fn pcp_peer(
        &mut self,
        now: Instant,
        client: IpAddr,
        req: &Request,
        d: PeerData,
    ) -> Result<(PeerData, u32), Refused> {
        let Some(protocol) = d.transport() else {
            return Err(ResultCode::UNSUPP_PROTOCOL.into());
        };
        if req.lifetime == 0 {
            // A PEER cannot delete the mapping; it only stops asking for more time.
            return match self.table.get(&crate::table::MappingKey {
                client,
                protocol,
                internal_port: d.internal_port,
            }) {
                Some(m) => Ok((self.assigned_peer(m, d), lifetime_left(&m, now))),
                None => Ok((d, 0)),
            };
        }
        let ask = Ask {
            client,
            protocol,
            internal_port: d.internal_port,
            suggested_port: d.external_port,
            lifetime: req.lifetime,
            origin: Origin::Pcp,
            nonce: Some(d.nonce.0),
            // Section 12.1: PEER behaves as if PREFER_FAILURE were always present
            // (when it suggests a port at all).
            prefer_failure: d.external_port != 0,
            peer: true,
        };
        let m = self
            .grant(now, ask)
            .map_err(|r| self.refused(now, r, client, Some(protocol), d.internal_port))?;
        Ok((self.assigned_peer(m, d), lifetime_left(&m, now)))
    }

    /// The error answer to a refused MAP or PEER. Section 11.3: a request whose nonce
    /// does not match the existing mapping's "MUST be rejected with a NOT_AUTHORIZED
    /// error with the lifetime of the error indicating duration of that existing
    /// mapping" (for a set of mappings, the longest); section 7.4's lifetimes otherwise.
    fn refused(
        &self,
        now: Instant,
        r: Refusal,
        client: IpAddr,
        protocol: Option<Protocol>,
        internal_port: u16,
    ) -> Refused {
        let mut out = Refused::from(result_of(r));
        if r == Refusal::NonceMismatch {
            let keys = match (protocol, internal_port) {
                (Some(protocol), port) if port != 0 => vec![MappingKey {
                    client,
                    protocol,
                    internal_port: port,
                }],
                (p, _) => self.table.keys_of(client, p),
            };
            if let Some(left) = keys
                .iter()
                .filter_map(|k| self.table.get(k))
                .map(|m| lifetime_left(&m, now))
                .max()
            {
                out.lifetime = left;
            }
        }
        out
    }

    /// The address the outside sees for `client`: ours for IPv4 (NAT), its own for
    /// IPv6 (a pinhole translates nothing).
    fn external_view(&self, client: IpAddr) -> IpAddr {
        match client {
            IpAddr::V4(_) => self
                .external_address
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            IpAddr::V6(_) => client,
        }
    }

    fn assigned(&self, m: Mapping, d: MapData) -> MapData {
        MapData {
            external_port: m.external_port,
            external_address: wire(self.external_view(m.key.client)),
            ..d
        }
    }

    fn assigned_peer(&self, m: Mapping, d: PeerData) -> PeerData {
        PeerData {
            external_port: m.external_port,
            external_address: wire(self.external_view(m.key.client)),
            ..d
        }
    }
}

fn wire(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(v4) => ipv4_mapped(v4),
        IpAddr::V6(v6) => v6,
    }
}

fn lifetime_left(m: &Mapping, now: Instant) -> u32 {
    u32::try_from(m.expires.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX)
}

/// The options a success response carries back: those the server processed
/// (section 7.3): THIRD_PARTY and PREFER_FAILURE.
fn processed(o: &Options) -> Options {
    Options {
        third_party: o.third_party,
        prefer_failure: o.prefer_failure,
        ..Options::NONE
    }
}
