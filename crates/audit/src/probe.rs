//! The bytes the audit sends and how it reads what comes back, all through the wire crate:
//! a probe is a NAT-PMP or PCP request built as a typed repr, a reply is parsed strictly, and
//! anything that does not parse is garbage, never evidence.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use natwarden_wire::{natpmp, pcp, Protocol};

/// Room for the largest probe: a PCP MAP with a THIRD_PARTY option (24 + 36 + 20 bytes).
pub const MAX_PROBE_LEN: usize = 80;

/// The UDP port gateways listen on (RFC 6886 section 3, RFC 6887 section 19.1).
pub const SERVER_PORT: u16 = natpmp::SERVER_PORT;

/// One request the audit may send. Nothing else is ever sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// NAT-PMP external-address request: version 0, opcode 0 (RFC 6886 section 3.2).
    NatPmpAddress,
    /// PCP ANNOUNCE: version 2, opcode 0, lifetime 0 (RFC 6887 section 14.1).
    PcpAnnounce { client: Ipv6Addr },
    /// NAT-PMP MAP (RFC 6886 section 3.3); lifetime 0 deletes it (section 3.4).
    NatPmpMap {
        transport: Protocol,
        internal_port: u16,
        suggested_port: u16,
        lifetime: u32,
    },
    /// PCP MAP (RFC 6887 section 11.1), optionally THIRD_PARTY (section 13.1); lifetime 0
    /// deletes it (section 15).
    PcpMap {
        client: Ipv6Addr,
        nonce: pcp::Nonce,
        transport: Protocol,
        internal_port: u16,
        suggested_port: u16,
        /// The family's all-zeros address: no preference (section 11.1).
        any_address: Ipv6Addr,
        third_party: Option<Ipv6Addr>,
        lifetime: u32,
    },
}

impl Probe {
    /// Writes the request into `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8; MAX_PROBE_LEN]) -> usize {
        match *self {
            Probe::NatPmpAddress => natpmp::Request::ExternalAddress.emit(buf),
            Probe::NatPmpMap {
                transport,
                internal_port,
                suggested_port,
                lifetime,
            } => natpmp::Request::Map(natpmp::MapRequest {
                protocol: transport,
                internal_port,
                suggested_external_port: suggested_port,
                lifetime,
            })
            .emit(buf),
            Probe::PcpAnnounce { client } => pcp::Request {
                lifetime: 0,
                client_address: client,
                op: pcp::OpData::Announce,
                options: pcp::Options::NONE,
            }
            .emit(buf),
            Probe::PcpMap {
                client,
                nonce,
                transport,
                internal_port,
                suggested_port,
                any_address,
                third_party,
                lifetime,
            } => pcp::Request {
                lifetime,
                client_address: client,
                op: pcp::OpData::Map(pcp::MapData {
                    nonce,
                    protocol: transport.ip_number(),
                    internal_port,
                    external_port: suggested_port,
                    external_address: any_address,
                }),
                options: pcp::Options {
                    third_party,
                    ..pcp::Options::NONE
                },
            }
            .emit(buf),
        }
    }
}

impl Probe {
    /// The same mapping request with lifetime 0: its deletion (RFC 6886 3.4, RFC 6887 15).
    pub fn deletion(mut self) -> Probe {
        match &mut self {
            Probe::NatPmpMap {
                suggested_port,
                lifetime,
                ..
            } => {
                // "The Suggested External Port MUST be set to zero by the client on sending".
                *suggested_port = 0;
                *lifetime = 0;
            }
            Probe::PcpMap { lifetime, .. } => *lifetime = 0,
            Probe::NatPmpAddress | Probe::PcpAnnounce { .. } => {}
        }
        self
    }
}

/// A reply that parsed strictly as one of the two protocols. Short-lived (parsed, read and
/// dropped per datagram), so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    NatPmp(natpmp::Response),
    Pcp(pcp::Response),
}

impl Reply {
    /// Parses a datagram from a gateway's port 5351; `None` for anything that is not a valid
    /// NAT-PMP or PCP response (requests, other versions, bad lengths, junk).
    pub fn parse(bytes: &[u8]) -> Option<Reply> {
        match natwarden_wire::version_of(bytes)? {
            natpmp::VERSION => natpmp::Response::parse(bytes).ok().map(Reply::NatPmp),
            pcp::VERSION => pcp::Response::parse(bytes).ok().map(Reply::Pcp),
            _ => None,
        }
    }

    pub const fn epoch(&self) -> u32 {
        match self {
            Reply::NatPmp(r) => r.epoch(),
            Reply::Pcp(r) => r.epoch,
        }
    }
}

/// PCP's form of an address (IPv4-mapped for IPv4, RFC 6887 section 5).
pub fn pcp_address(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(a) => pcp::ipv4_mapped(a),
        IpAddr::V6(a) => a,
    }
}

/// The plain address behind PCP's form of it.
pub fn plain_address(addr: Ipv6Addr) -> IpAddr {
    match pcp::as_ipv4(&addr) {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(addr),
    }
}

/// "No preference" for the suggested external address of a MAP to a gateway of this family.
pub fn any_address(target: IpAddr) -> Ipv6Addr {
    match target {
        IpAddr::V4(_) => pcp::ipv4_mapped(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe bytes, written out from the RFC figures rather than from the codec.
    #[test]
    fn probe_bytes_are_the_rfc_messages() {
        let mut buf = [0; MAX_PROBE_LEN];
        let n = Probe::NatPmpAddress.emit(&mut buf);
        assert_eq!(&buf[..n], &[0, 0], "RFC 6886 3.2: version 0, opcode 0");

        let client = pcp::ipv4_mapped(Ipv4Addr::new(203, 0, 113, 1));
        let n = Probe::PcpAnnounce { client }.emit(&mut buf);
        let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&client.octets());
        assert_eq!(
            &buf[..n],
            &want[..],
            "RFC 6887 7.1 + 14.1: 24-byte header, opcode 0"
        );

        let n = Probe::NatPmpMap {
            transport: Protocol::Udp,
            internal_port: 50000,
            suggested_port: 50000,
            lifetime: 60,
        }
        .emit(&mut buf);
        assert_eq!(
            &buf[..n],
            &[0, 1, 0, 0, 0xc3, 0x50, 0xc3, 0x50, 0, 0, 0, 60]
        );

        let n = Probe::PcpMap {
            client,
            nonce: pcp::Nonce([7; 12]),
            transport: Protocol::Tcp,
            internal_port: 50001,
            suggested_port: 50001,
            any_address: any_address(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            third_party: Some(pcp::ipv4_mapped(Ipv4Addr::new(192, 0, 2, 1))),
            lifetime: 60,
        }
        .emit(&mut buf);
        assert_eq!(n, 24 + 36 + 20);
        assert_eq!(buf[1], 1, "MAP opcode");
        assert_eq!(&buf[4..8], &[0, 0, 0, 60]);
        assert_eq!(&buf[24..36], &[7; 12], "nonce");
        assert_eq!(buf[36], 6, "TCP");
        assert_eq!(&buf[40..44], &[0xc3, 0x51, 0xc3, 0x51]);
        assert_eq!(
            &buf[44..60],
            &any_address(IpAddr::V4(Ipv4Addr::LOCALHOST)).octets()
        );
        assert_eq!(&buf[60..64], &[1, 0, 0, 16], "THIRD_PARTY, 16 bytes");
    }

    #[test]
    fn garbage_is_not_a_reply() {
        for junk in [
            &[][..],
            &[0][..],
            &[1, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[0, 128, 0, 0, 0, 0, 0][..],
            &[2, 128, 0][..],
            &[0, 0][..],
        ] {
            assert_eq!(Reply::parse(junk), None, "{junk:?}");
        }
        let mut ok = [0u8; 12];
        ok[1] = 128;
        ok[8..12].copy_from_slice(&[198, 51, 100, 7]);
        assert!(matches!(Reply::parse(&ok), Some(Reply::NatPmp(_))));
    }
}
