//! What the core hands out: one queue of [`Output`]s, polled with `Gateway::poll(now)`
//! after every input. Firewall changes, journal records and datagrams, in causal order.

use std::time::Instant;

use natwarden_wire::{natpmp, pcp};

use crate::firewall::FirewallChange;
use crate::gateway::{DropReason, Ingress};
use crate::table::{Mapping, MappingKey};

/// Largest reply the core writes (PCP's maximum message size, RFC 6887 section 7; an
/// "unsupported opcode" echo of a NAT-PMP request is capped here too).
pub const MAX_REPLY: usize = 1100;

/// One thing for the daemon to do, or the time to come back.
///
/// A `Firewall` change or `Journal` record is always polled before the `Transmit` that
/// acknowledges it. The daemon applies a round's changes to the kernel, then writes its
/// records to disk, then sends its datagrams: nothing is acknowledged that the kernel
/// does not hold or a crash could lose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A change to the kernel's forwarding state, in the order it must be applied.
    Firewall(FirewallChange),
    /// A change to the mapping table, for the state journal.
    Journal(StateEvent),
    /// A datagram to send: a reply or an announcement.
    Transmit(Transmit),
    /// A datagram got no answer (already counted in `Stats`), for the logs.
    Dropped {
        ingress: Ingress,
        reason: DropReason,
    },
    /// Nothing more to do now: poll again at this time (or when an input arrives).
    Wait(Option<Instant>),
}

/// A change to the mapping table, for the daemon's state journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// Created or renewed (the expiry moved).
    Upsert(Mapping),
    Remove(MappingKey),
    /// State was lost or the external address changed: the epoch restarts at zero.
    NewEpoch,
}

/// A datagram the core wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Reply(Reply),
    Announcement(Announcement),
}

impl Transmit {
    pub fn payload(&self) -> &[u8] {
        match self {
            Transmit::Reply(r) => &r.payload,
            Transmit::Announcement(a) => a.payload(),
        }
    }
}

/// An answer to a request: back to `to.source`, from `to.destination`, out of
/// `to.interface` (the request's own ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub to: Ingress,
    /// The result code the payload carries, for counters and logs.
    pub result: Answer,
    /// At most [`MAX_REPLY`] bytes.
    pub payload: Vec<u8>,
}

/// The result code of a reply, in the protocol it was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    NatPmp(natpmp::ResultCode),
    Pcp(pcp::ResultCode),
}

/// Where an unsolicited announcement goes: `224.0.0.1:5350` or `[ff02::1]:5350`, on
/// every internal interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multicast {
    V4,
    V6,
}

/// One unsolicited announcement (RFC 6886 section 3.2.1, RFC 6887 section 14.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub to: Multicast,
    pub len: usize,
    pub bytes: [u8; 24],
}

impl Announcement {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
