//! Ingress checks, the CERT VU#184540 boundary: a datagram is served only if it came
//! in on an internal interface, to that interface's own address, from a host of its subnet.

use std::net::{IpAddr, SocketAddr};

use super::Gateway;

/// What the socket layer knows about a datagram (from IP_PKTINFO/IPV6_PKTINFO): the
/// interface it came in on, who sent it, and which of our addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    pub interface: u32,
    pub source: SocketAddr,
    pub destination: IpAddr,
}

/// Why a datagram got no answer. Silence is the answer to anything from outside
/// (CERT VU#184540): a reply would leak the gateway's existence and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Arrived on the external interface.
    ExternalInterface,
    /// Arrived on an interface that is neither internal nor external.
    NotInternalInterface,
    /// Arrived on an internal interface but was addressed elsewhere (the external
    /// address, another interface's address, broadcast or multicast).
    NotToInternalAddress,
    /// The source is not a host of the internal subnet it arrived from (spoofed, the
    /// gateway itself, the subnet's network or broadcast address, link-local).
    ClientNotAllowed,
    RateLimited,
    /// Too short, too long, or otherwise not a request we can answer.
    Malformed,
    /// A response sent to the server: RFC 6886 section 3.5 and RFC 6887 section 8.3
    /// say ignore.
    NotARequest,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::ExternalInterface,
        DropReason::NotInternalInterface,
        DropReason::NotToInternalAddress,
        DropReason::ClientNotAllowed,
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::NotARequest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::ExternalInterface => "external-interface",
            DropReason::NotInternalInterface => "not-internal-interface",
            DropReason::NotToInternalAddress => "not-to-internal-address",
            DropReason::ClientNotAllowed => "client-not-allowed",
            DropReason::RateLimited => "rate-limited",
            DropReason::Malformed => "malformed",
            DropReason::NotARequest => "not-a-request",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl Gateway {
    /// RFC 6886 section 3.3: "Only packets received on the internal interface(s) with
    /// a destination address matching the internal address(es) of the NAT gateway
    /// should be allowed", and the mapping goes to the source address, which must
    /// therefore be a genuine host of that interface's subnet. RFC 6887 section 8.3
    /// applies the same to PCP.
    pub(super) fn check_ingress(&self, ingress: &Ingress) -> Result<(), DropReason> {
        if ingress.interface == self.policy.external_index {
            return Err(DropReason::ExternalInterface);
        }
        let iface = self
            .policy
            .internal
            .iter()
            .find(|i| i.is_present() && i.index == ingress.interface)
            .ok_or(DropReason::NotInternalInterface)?;
        if !iface.owns(ingress.destination) {
            return Err(DropReason::NotToInternalAddress);
        }
        if self.host_allowed(ingress.interface, ingress.source.ip()) {
            Ok(())
        } else {
            Err(DropReason::ClientNotAllowed)
        }
    }

    /// Whether `client` is a genuine host of interface `interface`'s subnets (or of an
    /// allowed range): never the gateway itself, a network or broadcast address, or a
    /// multicast, loopback, unspecified or link-local address.
    pub(crate) fn host_allowed(&self, interface: u32, client: IpAddr) -> bool {
        let Some(iface) = self
            .policy
            .internal
            .iter()
            .find(|i| i.is_present() && i.index == interface)
        else {
            return false;
        };
        let in_subnet = iface.subnet_contains(client) || self.in_extra_range(client);
        let is_gateway = self.policy.internal.iter().any(|i| i.owns(client))
            || Some(client) == self.external_address.map(IpAddr::V4);
        let special = match client {
            // On a /31 or /32 both addresses are hosts (RFC 3021).
            IpAddr::V4(a) => {
                (iface.net.prefix_len() < 31
                    && (a == iface.net.network() || a == iface.net.broadcast()))
                    || a.is_broadcast()
                    || a.is_link_local()
            }
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        in_subnet
            && !is_gateway
            && !special
            && !client.is_unspecified()
            && !client.is_loopback()
            && !client.is_multicast()
    }

    /// Whether `client` lies in a configured extra client range (IPv4 only).
    pub(super) fn in_extra_range(&self, client: IpAddr) -> bool {
        match client {
            IpAddr::V4(a) => self
                .policy
                .extra_client_ranges
                .iter()
                .any(|r| r.contains(a)),
            IpAddr::V6(_) => false,
        }
    }
}
