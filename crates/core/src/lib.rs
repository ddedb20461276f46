//! The gateway's brain, without I/O: policy, mapping table, epoch and lifetimes.
//! Time and datagrams go in; replies and firewall changes come out.

#![forbid(unsafe_code)]

pub mod firewall;
pub mod gateway;
pub mod net;
pub mod policy;
mod ratelimit;
mod serve_natpmp;
mod serve_pcp;
pub mod table;

pub use firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};
pub use gateway::{
    Announcement, DropReason, Gateway, Ingress, Multicast, RestoreError, StateEvent, Stats,
    Verdict, MAX_REPLY,
};
pub use net::{IpNet, Ipv4Net, Ipv6Net};
pub use policy::{Action, InternalInterface, Policy, PortRange, Rule};
pub use table::{Mapping, MappingKey, Nonce, Origin};

#[cfg(test)]
mod tests;
