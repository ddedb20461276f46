//! NAT-PMP (RFC 6886) requests, answered from the shared mapping table.
//! The ingress checks have already passed when these run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use natwarden_wire::natpmp::{
    self, ExternalAddressResponse, MapRequest, MapResponse, ParseError, Request, ResultCode,
};

use crate::gateway::{Ask, DropReason, Gateway, Ingress, Refusal, Verdict};
use crate::output::Answer;
use crate::table::Origin;

impl Gateway {
    pub(crate) fn serve_natpmp(
        &mut self,
        now: Instant,
        ingress: &Ingress,
        datagram: &[u8],
        reply: &mut [u8],
    ) -> Verdict {
        let epoch = self.epoch(now);
        let request = match Request::parse(datagram) {
            Ok(r) => r,
            Err(ParseError::UnsupportedVersion { .. }) => {
                return self.natpmp_unsupported_version(now, reply)
            }
            Err(ParseError::UnsupportedOpcode { .. }) => {
                // Section 3.5: the entire request returned, top bit set, result 5.
                return Verdict::Reply(
                    natpmp::emit_unsupported_opcode(datagram, reply),
                    Answer::NatPmp(ResultCode::UNSUPPORTED_OPCODE),
                );
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
            Request::Map(req) => {
                natpmp::Response::Map(self.natpmp_map(now, ingress.source.ip(), req, epoch))
            }
        };
        Verdict::Reply(response.emit(reply), Answer::NatPmp(response.result()))
    }

    /// Section 3.5: "Unsupported Version", laid out as the section's figure.
    pub(crate) fn natpmp_unsupported_version(&mut self, now: Instant, reply: &mut [u8]) -> Verdict {
        let r = natpmp::Response::UnsupportedVersion {
            epoch: self.epoch(now),
        };
        Verdict::Reply(r.emit(reply), Answer::NatPmp(r.result()))
    }

    fn natpmp_map(
        &mut self,
        now: Instant,
        client: IpAddr,
        req: MapRequest,
        epoch: u32,
    ) -> MapResponse {
        let answer = |result: ResultCode, external_port: u16, lifetime: u32| MapResponse {
            protocol: req.protocol,
            result,
            epoch,
            internal_port: req.internal_port,
            external_port,
            lifetime,
        };
        let outcome = if req.lifetime == 0 {
            // Section 3.4: deleting a mapping that does not exist succeeds too, and
            // internal port 0 deletes all of the client's mappings for the protocol.
            self.delete(client, Some(req.protocol), req.internal_port, None)
                .map(|()| (0, 0))
        } else if req.internal_port == 0 {
            Err(Refusal::NotAuthorized)
        } else {
            self.grant(
                now,
                Ask {
                    client,
                    protocol: req.protocol,
                    internal_port: req.internal_port,
                    suggested_port: req.suggested_external_port,
                    lifetime: req.lifetime,
                    origin: Origin::NatPmp,
                    nonce: None,
                    prefer_failure: false,
                    peer: false,
                },
            )
            .map(|m| {
                let left = m.expires.saturating_duration_since(now).as_secs();
                (m.external_port, u32::try_from(left).unwrap_or(u32::MAX))
            })
        };
        match outcome {
            Ok((port, lifetime)) => answer(ResultCode::SUCCESS, port, lifetime),
            Err(r) => answer(
                match r {
                    Refusal::NotAuthorized | Refusal::NonceMismatch => ResultCode::NOT_AUTHORIZED,
                    Refusal::NetworkFailure => ResultCode::NETWORK_FAILURE,
                    Refusal::Quota
                    | Refusal::TableFull
                    | Refusal::NoPorts
                    | Refusal::CannotProvide => ResultCode::OUT_OF_RESOURCES,
                },
                0,
                0,
            ),
        }
    }
}
