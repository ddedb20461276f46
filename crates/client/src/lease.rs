//! A mapping kept alive, as a sans-IO state machine: renews at half the granted lifetime,
//! re-maps when the gateway lost its state (epoch check or announcement), reports changes of
//! the external address or port, and deletes the mapping when released.
//! The caller owns the socket and the clock: `poll(now)` hands out one [`LeaseOutput`] at a
//! time (a datagram, an event, a wait, the end); `handle(..)` feeds datagrams in.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp};

use crate::epoch::EpochTracker;
use crate::error::Error;
use crate::random::{up_to, Random};
use crate::transaction::{same_ip, Answer, Operation, Output, Params, Transaction};
use crate::{Mapping, ProtocolChoice, Version, SERVER_PORT};

/// RFC 6887 section 14.1.1: clients answer an ANNOUNCE after a random delay of up to 5 s, so
/// that a gateway's restart does not bring every client back in the same instant.
pub const PCP_ANNOUNCE_MAX_DELAY: Duration = Duration::from_secs(5);
/// Renewals are never closer together than this (RFC 6887 section 11.2.1 says 4 s).
pub const MIN_RENEWAL_GAP: Duration = Duration::from_secs(4);
/// After the mapping expired unrenewed, the next attempt comes this much later.
pub const RETRY_AFTER_EXPIRY: Duration = Duration::from_secs(30);

/// Why a mapping was created again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemapReason {
    /// An answer's epoch showed the gateway lost its state (RFC 6886 3.6, RFC 6887 8.5).
    EpochReset,
    /// The gateway announced a restart or a new external address (RFC 6886 3.2.1, RFC 6887
    /// 14.1).
    Announcement,
    /// The mapping's lifetime ran out before a renewal got through.
    Expired,
}

impl RemapReason {
    pub const fn name(self) -> &'static str {
        match self {
            RemapReason::EpochReset => "epoch-reset",
            RemapReason::Announcement => "announcement",
            RemapReason::Expired => "expired",
        }
    }
}

/// What happened to the lease.
#[derive(Debug, Clone)]
pub enum LeaseEvent {
    /// The gateway renewed the mapping.
    Renewed(Mapping),
    /// The mapping was created again after the gateway lost it.
    Remapped {
        mapping: Mapping,
        reason: RemapReason,
    },
    /// The external address or port differs from before (reported after Renewed/Remapped).
    Changed { previous: Mapping, current: Mapping },
    /// A renewal failed; the mapping is retried at `retry_at`.
    RenewalFailed { error: Error, retry_at: Instant },
    /// The lifetime ran out unrenewed; attempts go on.
    Expired(Mapping),
    /// The gateway confirmed the deletion.
    Released,
    /// The deletion was not confirmed.
    ReleaseFailed(Error),
}

/// What the driver should do next.
#[derive(Debug, Clone)]
pub enum LeaseOutput {
    /// Send this datagram to the gateway, then poll again.
    Transmit(Vec<u8>),
    /// Something happened to the lease (in order); poll again.
    Event(LeaseEvent),
    /// Nothing to do before this instant (or a datagram arriving).
    Wait(Instant),
    /// Released, and every event handed out: nothing more to do.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Renew,
    Remap(RemapReason),
    Release,
}

#[derive(Debug)]
enum State {
    Idle {
        at: Instant,
        /// Set when the next request re-creates a lost mapping rather than renewing it.
        reason: Option<RemapReason>,
        /// A PCP ANNOUNCE asked for a re-map after a random delay still to be drawn.
        jitter: bool,
    },
    Busy {
        transaction: Box<Transaction>,
        purpose: Purpose,
    },
    Finished,
}

/// See the module documentation. Built from the first [`Mapping`] the gateway granted.
#[derive(Debug)]
pub struct LeaseCore {
    params: Params,
    protocol: natwarden_wire::Protocol,
    internal_port: u16,
    /// The lifetime asked for each time.
    lifetime: u32,
    mapping: Mapping,
    expires: Instant,
    expired_reported: bool,
    epoch: EpochTracker,
    state: State,
    events: VecDeque<LeaseEvent>,
}

impl LeaseCore {
    /// `mapping` was granted at `now` in answer to a MAP request for `lifetime` seconds with
    /// `params` (whose `choice` is used again to re-map after a gateway restart).
    pub fn new(mapping: Mapping, lifetime: u32, params: Params, now: Instant) -> LeaseCore {
        let mut epoch = EpochTracker::new();
        epoch.lost_state(mapping.version, mapping.epoch, now);
        LeaseCore {
            params: Params {
                deadline: None,
                ..params
            },
            protocol: mapping.protocol,
            internal_port: mapping.internal_port,
            lifetime: lifetime.max(1),
            mapping,
            expires: now + mapping.lifetime,
            expired_reported: false,
            epoch,
            state: State::Idle {
                at: now + renewal_delay(mapping.lifetime),
                reason: None,
                jitter: false,
            },
            events: VecDeque::new(),
        }
    }

    /// The mapping as last granted.
    pub const fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// When the mapping runs out unless renewed.
    pub const fn expires(&self) -> Instant {
        self.expires
    }

    /// When the next renewal is due, if the lease is idle.
    pub fn next_renewal(&self) -> Option<Instant> {
        match self.state {
            State::Idle { at, .. } => Some(at),
            _ => None,
        }
    }

    pub const fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Deletes the mapping: from now on only the deletion is sent, bounded by `deadline`.
    pub fn release(&mut self, now: Instant, deadline: Option<Instant>) {
        if matches!(
            self.state,
            State::Finished
                | State::Busy {
                    purpose: Purpose::Release,
                    ..
                }
        ) {
            return;
        }
        let op = Operation::Unmap {
            protocol: self.protocol,
            internal_port: self.internal_port,
        };
        let params = Params {
            choice: self.learned_choice(),
            deadline,
            ..self.params
        };
        self.state = State::Busy {
            transaction: Box::new(Transaction::new(op, params, now)),
            purpose: Purpose::Release,
        };
    }

    /// What to do at `now`: events first, in the order they happened; then send, wait,
    /// or the end.
    pub fn poll(&mut self, now: Instant, random: &mut dyn Random) -> LeaseOutput {
        // Bounded: each pass either returns or moves the state forward once.
        for _ in 0..4 {
            self.check_expiry(now);
            if let Some(event) = self.events.pop_front() {
                return LeaseOutput::Event(event);
            }
            match &mut self.state {
                State::Finished => return LeaseOutput::Finished,
                State::Idle { at, reason, jitter } => {
                    if *jitter {
                        // `at` is when the ANNOUNCE came.
                        *jitter = false;
                        *at += up_to(random, PCP_ANNOUNCE_MAX_DELAY);
                    }
                    if now < *at {
                        return LeaseOutput::Wait(*at);
                    }
                    let purpose = match reason {
                        Some(r) => Purpose::Remap(*r),
                        None => Purpose::Renew,
                    };
                    self.start(purpose, now);
                }
                State::Busy { transaction, .. } => match transaction.poll(now, random) {
                    Output::Transmit(bytes) => return LeaseOutput::Transmit(bytes),
                    Output::Wait(at) => return LeaseOutput::Wait(at.min(self.expiry_check_at())),
                    Output::Done(result) => self.finish(now, result),
                },
            }
        }
        LeaseOutput::Wait(now)
    }

    /// A datagram from the request socket: the answer, or a unicast PCP ANNOUNCE.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        if let State::Busy { transaction, .. } = &mut self.state {
            if transaction.handle(now, from, datagram) {
                return true;
            }
        }
        self.handle_announcement(now, from, datagram)
    }

    /// A datagram from the announcement socket (224.0.0.1:5350 or ff02::1:5350): a NAT-PMP
    /// external-address announcement (RFC 6886 3.2.1) or a PCP ANNOUNCE (RFC 6887 14.1).
    /// Only the gateway's, from port 5351, count. Returns whether it asked for a re-map.
    pub fn handle_announcement(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        if from.port() != SERVER_PORT || !same_ip(from.ip(), self.params.gateway.ip()) {
            return false;
        }
        let (version, epoch, address) = match datagram.first() {
            Some(&natpmp::VERSION) => match natpmp::Response::parse(datagram) {
                Ok(natpmp::Response::ExternalAddress(r)) if r.result.is_success() => {
                    (Version::NatPmp, r.epoch, Some(IpAddr::V4(r.address)))
                }
                _ => return false,
            },
            Some(&pcp::VERSION) => match pcp::Response::parse(datagram) {
                Ok(r) if r.op == pcp::OpData::Announce && r.result.is_success() => {
                    (Version::Pcp, r.epoch, None)
                }
                _ => return false,
            },
            _ => return false,
        };
        if version != self.mapping.version {
            // The other protocol's epoch says nothing about this mapping's.
            return false;
        }
        let lost = self.epoch.lost_state(version, epoch, now);
        let moved = matches!((address, self.mapping.external_address), (Some(new), Some(old)) if new != old);
        if !lost && !moved {
            return false;
        }
        let jitter = version == Version::Pcp;
        match &mut self.state {
            State::Idle { at, reason, .. } => {
                *reason = Some(RemapReason::Announcement);
                *at = now;
            }
            // A renewal may be deep in its back-off (PCP's reaches 1024 s): start afresh.
            State::Busy {
                purpose: Purpose::Renew | Purpose::Remap(_),
                ..
            } => {}
            State::Busy { .. } | State::Finished => return false,
        }
        self.state = State::Idle {
            at: now,
            reason: Some(RemapReason::Announcement),
            jitter,
        };
        true
    }

    fn learned_choice(&self) -> ProtocolChoice {
        match self.mapping.version {
            Version::Pcp => ProtocolChoice::Pcp,
            Version::NatPmp => ProtocolChoice::NatPmp,
        }
    }

    fn start(&mut self, purpose: Purpose, now: Instant) {
        // Renewals speak the protocol that granted the mapping; re-creating a lost mapping
        // starts over as configured (a restarted gateway may speak PCP now).
        let choice = match purpose {
            Purpose::Renew => self.learned_choice(),
            _ => self.params.choice,
        };
        let op = Operation::Map {
            protocol: self.protocol,
            internal_port: self.internal_port,
            suggested_external_port: self.mapping.external_port,
            lifetime: self.lifetime,
        };
        let params = Params {
            choice,
            ..self.params
        };
        self.state = State::Busy {
            transaction: Box::new(Transaction::new(op, params, now)),
            purpose,
        };
    }

    fn finish(&mut self, now: Instant, result: Result<Answer, Error>) {
        let State::Busy { purpose, .. } = self.state else {
            return;
        };
        if purpose == Purpose::Release {
            self.events.push_back(match result {
                Ok(_) => LeaseEvent::Released,
                Err(e) => LeaseEvent::ReleaseFailed(e),
            });
            self.state = State::Finished;
            return;
        }
        let result = match result {
            Ok(Answer::Mapped(mapping)) => Ok(mapping),
            // A MAP exchange answers nothing else; never trust anything else as a mapping.
            Ok(_) => Err(Error::InvalidArgument(
                "the gateway's answer was not a mapping",
            )),
            Err(e) => Err(e),
        };
        match result {
            Ok(mapping) => {
                if mapping.version != self.mapping.version {
                    self.epoch.reset();
                }
                let lost = self.epoch.lost_state(mapping.version, mapping.epoch, now);
                let previous = self.mapping;
                self.mapping = mapping;
                self.expires = now + mapping.lifetime;
                self.expired_reported = false;
                self.events.push_back(match purpose {
                    Purpose::Remap(reason) => LeaseEvent::Remapped { mapping, reason },
                    _ if lost => LeaseEvent::Remapped {
                        mapping,
                        reason: RemapReason::EpochReset,
                    },
                    _ => LeaseEvent::Renewed(mapping),
                });
                if mapping.endpoint_differs(&previous) {
                    self.events.push_back(LeaseEvent::Changed {
                        previous,
                        current: mapping,
                    });
                }
                self.state = State::Idle {
                    at: now + renewal_delay(mapping.lifetime),
                    reason: None,
                    jitter: false,
                };
            }
            Err(error) => {
                let remaining = self.expires.saturating_duration_since(now);
                let retry_at = if remaining.is_zero() {
                    now + RETRY_AFTER_EXPIRY
                } else {
                    // RFC 6887 11.2.1: again at 3/4, 7/8 ... of the lifetime, 4 s apart at least.
                    now + (remaining / 2).max(MIN_RENEWAL_GAP)
                };
                let reason = match purpose {
                    Purpose::Remap(r) => Some(r),
                    _ if remaining.is_zero() => Some(RemapReason::Expired),
                    _ => None,
                };
                self.events
                    .push_back(LeaseEvent::RenewalFailed { error, retry_at });
                self.state = State::Idle {
                    at: retry_at,
                    reason,
                    jitter: false,
                };
            }
        }
    }

    fn check_expiry(&mut self, now: Instant) {
        if now >= self.expires
            && !self.expired_reported
            && !matches!(
                self.state,
                State::Finished
                    | State::Busy {
                        purpose: Purpose::Release,
                        ..
                    }
            )
        {
            self.expired_reported = true;
            self.events.push_back(LeaseEvent::Expired(self.mapping));
            if let State::Idle { reason, .. } = &mut self.state {
                reason.get_or_insert(RemapReason::Expired);
            }
        }
    }

    fn expiry_check_at(&self) -> Instant {
        if self.expired_reported {
            // Far enough; only the transaction's own timers matter then.
            self.expires + Duration::from_secs(86400 * 365)
        } else {
            self.expires
        }
    }
}

/// Renew at half the granted lifetime (RFC 6886 section 3.3: "The client SHOULD begin trying
/// to renew the mapping halfway to expiry time"; RFC 6887 section 11.2.1), at least 1 s on.
fn renewal_delay(lifetime: Duration) -> Duration {
    (lifetime / 2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
