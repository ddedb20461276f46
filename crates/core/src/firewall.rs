//! Firewall changes as values: what the core asks the kernel side to do.
//! The core never touches the kernel; the daemon hands these to a backend.

use std::net::{Ipv6Addr, SocketAddrV4};

use natwarden_wire::Protocol;

/// One IPv4 port forward: traffic of `protocol` arriving on the external interface at
/// `external_port` is sent to `internal` (DNAT) and let through the forward hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: Protocol,
    pub external_port: u16,
    pub internal: SocketAddrV4,
}

/// An outbound-only IPv4 mapping (PCP PEER, RFC 6887 section 12): traffic from
/// `internal` leaving by the external interface keeps `external_port` as its source
/// port, so the client knows the port its peer sees. Nothing inbound is opened beyond
/// the replies conntrack already lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Outbound {
    pub protocol: Protocol,
    pub internal: SocketAddrV4,
    pub external_port: u16,
}

/// An IPv6 pinhole (PCP MAP for an IPv6 client, RFC 6887 section 11, no translation):
/// new inbound traffic of `protocol` to `address`:`port` from the external interface
/// is let through the forward hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pinhole {
    pub protocol: Protocol,
    pub address: Ipv6Addr,
    pub port: u16,
}

/// A change to the kernel's forwarding state, in the order it must be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirewallChange {
    Add(Forward),
    Remove(Forward),
    AddOutbound(Outbound),
    RemoveOutbound(Outbound),
    AddPinhole(Pinhole),
    RemovePinhole(Pinhole),
}

/// Everything the kernel should hold, for an atomic (re)install at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub forwards: Vec<Forward>,
    pub outbound: Vec<Outbound>,
    pub pinholes: Vec<Pinhole>,
}

impl Installed {
    pub fn len(&self) -> usize {
        self.forwards.len() + self.outbound.len() + self.pinholes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
