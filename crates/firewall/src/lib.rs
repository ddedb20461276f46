//! Kernel side of natwarden: the Backend trait the daemon drives, its error type, and the
//! backends (nftables over raw netlink, none); plus small rtnetlink queries in [`rtnl`].

// System calls live in `socket` alone.
#![deny(unsafe_code)]

mod batch;
mod netlink;
mod nft;
mod nftables;
mod none;
pub mod rtnl;
#[allow(unsafe_code)]
mod socket;
mod watch;

use natwarden_core::firewall::{FirewallChange, Installed};

pub use nftables::{NftConfig, Nftables};
pub use none::NoneBackend;
pub use watch::TableWatch;

/// Where forwards, outbound mappings and pinholes live in the kernel.
pub trait Backend {
    /// Atomically (one netlink batch) replace our table with a fresh one holding exactly
    /// `state`; any leftover from a previous run disappears in the same transaction.
    fn install(&mut self, state: &Installed) -> Result<(), FirewallError>;
    /// Apply changes in order, all in one netlink batch (all or nothing).
    fn apply(&mut self, changes: &[FirewallChange]) -> Result<(), FirewallError>;
    /// Delete our table (clean exit). Not an error if it does not exist.
    fn remove(&mut self) -> Result<(), FirewallError>;
    /// A subscription to changes of our table made by anyone but this backend, so the
    /// daemon can rebuild it; None for backends with nothing in the kernel.
    fn watch(&self) -> Result<Option<TableWatch>, FirewallError> {
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A local system call failed (socket, send, receive); nothing was applied.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a batch; nothing of it was applied. `message` names the
    /// message that failed ("DELSETELEM fwd4", "NEWSETELEM snat4", "DELSETELEM pinhole6"),
    /// with the element when the kernel says which.
    #[error("kernel rejected {message}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32, message: String },
    /// A table or interface name the kernel or nft would not accept.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A netlink reply that does not parse (read-only queries).
    #[error("malformed netlink reply: {0}")]
    Malformed(String),
    /// The kernel's answer was lost or malformed: the batch may or may not have been
    /// applied. Recover with a full `install`.
    #[error("outcome unknown: {0}")]
    Unconfirmed(String),
}

impl FirewallError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FirewallError::Io {
            context: context.into(),
            source,
        }
    }
}
