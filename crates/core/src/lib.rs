//! The gateway's brain, without I/O: policy, mapping table, epoch and lifetimes.
//! Datagrams go in (`Gateway::handle`); one queue of `Output`s comes out (`Gateway::poll`).
//!
//! - [`gateway`]: the state machine (inputs, the output queue, timers, epoch), with
//!   `gateway/ingress.rs` (the CERT VU#184540 boundary), `gateway/mappings.rs` (grant,
//!   delete, allocate, restore) and `gateway/announce.rs` (unsolicited announcements);
//! - `serve_natpmp`, `serve_pcp`: requests turned into answers from the shared table;
//! - [`output`]: what comes out: firewall changes, journal records, replies with their
//!   result code, announcements, drops, and when to poll again;
//! - [`firewall`], [`table`], [`policy`], [`net`], `ratelimit`: the values they work on.

#![forbid(unsafe_code)]

pub mod firewall;
pub mod gateway;
mod host;
pub mod net;
pub mod output;
pub mod policy;
mod ratelimit;
mod serve_natpmp;
mod serve_pcp;
pub mod table;

pub use firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};
pub use gateway::{DropReason, Gateway, Ingress, RestoreError, Stats};
pub use host::HostId;
pub use net::{IpNet, Ipv4Net, Ipv6Net};
pub use output::{Announcement, Answer, Multicast, Output, Reply, StateEvent, Transmit, MAX_REPLY};
pub use policy::{Action, InternalInterface, Policy, PortRange, Rule};
pub use table::{Mapping, MappingKey, Nonce, Origin};

#[cfg(test)]
mod tests;
