//! natwarden-client: open a port on the LAN's gateway, keep it open and learn the public
//! address, over PCP (RFC 6887) with fallback to NAT-PMP (RFC 6886).
//!
//! The protocol logic is sans-IO, in the shape of the gateway's core and the auditor: a
//! [`Transaction`] (one request until its answer) and a [`LeaseCore`] (a mapping kept alive)
//! take datagrams in with `handle(now, from, datagram)` and hand out one output per
//! `poll(now, random)`: a datagram to send, an event or result, or the instant to wake at, so
//! every timer is unit-tested with an injected clock. [`Client`] and [`Lease`] are the thin
//! blocking drivers over `std::net::UdpSocket`.
//!
//! ```no_run
//! use std::time::Duration;
//! use natwarden_client::{Client, Config, Protocol};
//!
//! let mut client = Client::new(Config::default())?; // gateway = the default route's
//! println!("public address: {}", client.external_address()?.address);
//! let mut lease = client.lease(Protocol::Udp, 27015, 27015, Duration::from_secs(3600))?;
//! println!("reachable at port {}", lease.mapping().external_port);
//! loop {
//!     // Renews at half the lifetime, re-maps after a gateway restart.
//!     if let Some(event) = lease.wait(Duration::from_secs(60))? {
//!         println!("{event:?}");
//!     }
//! }
//! # Ok::<(), natwarden_client::Error>(())
//! ```

// The one system call std lacks (poll) lives in `net` alone.
#![deny(unsafe_code)]

mod client;
pub mod discovery;
pub mod epoch;
mod error;
pub mod lease;
#[allow(unsafe_code)]
mod net;
pub mod random;
pub mod retransmit;
pub mod transaction;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use natwarden_wire::pcp::Nonce;
pub use natwarden_wire::Protocol;

pub use crate::client::{Client, Config, Lease};
pub use crate::error::{Error, Refusal};
pub use crate::lease::{LeaseCore, LeaseEvent, RemapReason};
pub use crate::transaction::{Answer, Operation, Output, Params, Transaction};

/// The UDP port gateways listen on for both protocols (RFC 6886 section 3.1, RFC 6887 19.1).
pub const SERVER_PORT: u16 = 5351;
/// The UDP port clients hear announcements on (RFC 6886 section 3.2.1, RFC 6887 section 14.1).
pub const ANNOUNCE_PORT: u16 = 5350;

/// Which protocol answered (or is to be spoken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// NAT-PMP, version 0 (RFC 6886).
    NatPmp,
    /// PCP, version 2 (RFC 6887).
    Pcp,
}

impl Version {
    pub const fn name(self) -> &'static str {
        match self {
            Version::NatPmp => "NAT-PMP",
            Version::Pcp => "PCP",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolChoice {
    /// PCP first, NAT-PMP when the gateway answers "unsupported version" or stays silent for
    /// PCP's first retransmission interval (RFC 6887 Appendix A). IPv6 gateways: PCP only.
    #[default]
    Auto,
    Pcp,
    NatPmp,
}

/// A port mapping the gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub version: Version,
    pub protocol: Protocol,
    pub internal_port: u16,
    /// The port the outside world reaches; may differ from the one suggested.
    pub external_port: u16,
    /// PCP returns it with every mapping; over NAT-PMP it is asked for right after mapping,
    /// and `None` if the gateway refused to tell (e.g. NETWORK_FAILURE).
    pub external_address: Option<IpAddr>,
    /// Granted lifetime: renew before it runs out (a [`Lease`] does it at half).
    pub lifetime: Duration,
    /// The gateway's epoch in its answer (RFC 6886 section 3.6, RFC 6887 section 8.5).
    pub epoch: u32,
    /// The PCP mapping nonce the mapping belongs to (RFC 6887 section 11.1).
    pub nonce: Option<Nonce>,
}

impl Mapping {
    /// Whether the outside view (address or port) differs from `other`'s.
    pub fn endpoint_differs(&self, other: &Mapping) -> bool {
        self.external_port != other.external_port || self.external_address != other.external_address
    }
}

/// The gateway's external address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalAddress {
    pub version: Version,
    pub address: IpAddr,
    pub epoch: u32,
}

/// A deletion the gateway confirmed (deleting a mapping that does not exist succeeds too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unmapped {
    pub version: Version,
    pub protocol: Protocol,
    /// 0 when all of the client's mappings of `protocol` were deleted.
    pub internal_port: u16,
    pub epoch: u32,
}
