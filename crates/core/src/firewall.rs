//! Firewall changes as values: what the core asks the kernel side to do.
//! The core never touches the kernel; the daemon hands these to a backend.

use std::net::SocketAddrV4;

use natwarden_wire::Protocol;

/// One port forward: traffic of `protocol` arriving on the external interface at
/// `external_port` is sent to `internal` (DNAT) and let through the forward hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: Protocol,
    pub external_port: u16,
    pub internal: SocketAddrV4,
}

/// A change to the kernel's forwarding state, in the order it must be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirewallChange {
    Add(Forward),
    Remove(Forward),
}
