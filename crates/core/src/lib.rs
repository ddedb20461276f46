//! The gateway's brain, without I/O: policy, mapping table, epoch and lifetimes.
//! Time and datagrams go in (`Gateway::handle`); one queue of `Output`s comes out
//! (`Gateway::poll(now)`): firewall changes, journal records, replies, announcements.

pub mod firewall;
pub mod gateway;
pub mod net;
pub mod output;
pub mod policy;
mod ratelimit;
mod serve_natpmp;
mod serve_pcp;
pub mod table;

pub use firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};
pub use gateway::{DropReason, Gateway, Ingress, RestoreError, Stats};
pub use net::{IpNet, Ipv4Net, Ipv6Net};
pub use output::{Announcement, Answer, Multicast, Output, Reply, StateEvent, Transmit, MAX_REPLY};
pub use policy::{Action, InternalInterface, Policy, PortRange, Rule};
pub use table::{Mapping, MappingKey, Nonce, Origin};

#[cfg(test)]
mod tests;
