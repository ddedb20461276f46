//! The gateway's brain, without I/O: policy, mapping table, epoch and lifetimes.
//! Time and datagrams go in; replies and firewall changes come out.

pub mod firewall;
pub mod gateway;
pub mod net;
pub mod policy;
mod ratelimit;
pub mod table;

pub use firewall::{FirewallChange, Forward};
pub use gateway::{
    DropReason, Gateway, Ingress, RestoreError, StateEvent, Stats, Verdict, MAX_REPLY,
};
pub use net::Ipv4Net;
pub use policy::{Action, InternalInterface, Policy, PortRange, Rule};
pub use table::{Mapping, MappingKey, Origin};

#[cfg(test)]
mod tests;
