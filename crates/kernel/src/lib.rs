//! The Linux kernel interfaces natwarden drives over netlink: the firewall (the Backend
//! trait, nftables batches, the table watch, the none backend) and the links and
//! addresses (rtnetlink queries and monitor in [`rtnl`]), over one netlink socket layer.

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

pub use nft::Set;
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
    /// The kernel refused a batch; nothing of it was applied.
    #[error(
        "kernel rejected {}: {}",
        Rejected(message, element, reason),
        std::io::Error::from_raw_os_error(*errno)
    )]
    Kernel {
        errno: i32,
        /// The message that failed (DELSETELEM fwd4, NEWSETELEM snat4...); `None` when
        /// the batch as a whole failed.
        message: Option<NftMessage>,
        /// The element the kernel pointed at, described ("udp 6000 -> 10.0.0.6:6000").
        element: Option<String>,
        /// The kernel's own words (extended ack), when it gave any.
        reason: Option<String>,
    },
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

/// One nf_tables message of a batch, as a refusal names it; its Display is the `nft`
/// spelling ("NEWSETELEM snat4").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftMessage {
    NewTable(String),
    DelTable(String),
    NewChain(&'static str),
    NewSet(Set),
    /// The anonymous constant set `{ tcp, udp }` a rule looks up, and its elements.
    NewProtocolSet,
    NewProtocolSetElements,
    NewRule(&'static str),
    NewSetElem(Set),
    DelSetElem(Set),
}

impl std::fmt::Display for NftMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NftMessage::NewTable(t) => write!(f, "NEWTABLE {t}"),
            NftMessage::DelTable(t) => write!(f, "DELTABLE {t}"),
            NftMessage::NewChain(c) => write!(f, "NEWCHAIN {c}"),
            NftMessage::NewSet(s) => write!(f, "NEWSET {}", s.name()),
            NftMessage::NewProtocolSet => f.write_str("NEWSET { tcp, udp }"),
            NftMessage::NewProtocolSetElements => f.write_str("NEWSETELEM { tcp, udp }"),
            NftMessage::NewRule(c) => write!(f, "NEWRULE {c}"),
            NftMessage::NewSetElem(s) => write!(f, "NEWSETELEM {}", s.name()),
            NftMessage::DelSetElem(s) => write!(f, "DELSETELEM {}", s.name()),
        }
    }
}

/// "DELSETELEM fwd4 (element udp 6000 -> 10.0.0.6:6000) [reason]", or "batch".
struct Rejected<'a>(
    &'a Option<NftMessage>,
    &'a Option<String>,
    &'a Option<String>,
);

impl std::fmt::Display for Rejected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(m) => m.fmt(f)?,
            None => f.write_str("batch")?,
        }
        if let Some(e) = self.1 {
            write!(f, " (element {e})")?;
        }
        if let Some(r) = self.2 {
            write!(f, " [{r}]")?;
        }
        Ok(())
    }
}

impl FirewallError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FirewallError::Io {
            context: context.into(),
            source,
        }
    }
}
