//! Unsolicited announcements (RFC 6886 section 3.2.1, RFC 6887 section 14.1.3): ten
//! rounds after start and after every new epoch, multicast on every internal interface.

use std::time::{Duration, Instant};

use natwarden_wire::{natpmp, pcp};

use super::Gateway;
use crate::output::{Announcement, Multicast, Output, Transmit};

/// RFC 6886 section 3.2.1: 10 announcements, the first two 250 ms apart, then doubling.
const ANNOUNCE_COUNT: u8 = 10;
const ANNOUNCE_FIRST_INTERVAL: Duration = Duration::from_millis(250);

/// Where the current series of announcement rounds is.
#[derive(Debug)]
pub(super) struct Announcer {
    next: Option<Instant>,
    remaining: u8,
    interval: Duration,
}

impl Announcer {
    pub(super) fn start(now: Instant) -> Announcer {
        Announcer {
            next: Some(now),
            remaining: ANNOUNCE_COUNT,
            interval: ANNOUNCE_FIRST_INTERVAL,
        }
    }
}

impl Gateway {
    /// When the next round is due, if there is anything to announce.
    pub(super) fn next_announcement(&self) -> Option<Instant> {
        self.announcer.next.filter(|_| self.has_announcements())
    }

    /// NAT-PMP announcements need an external address; PCP ANNOUNCE does not.
    fn has_announcements(&self) -> bool {
        self.policy.pcp || (self.policy.nat_pmp && self.external_address.is_some())
    }

    /// Queues the announcements due now (RFC 6886 section 3.2.1; RFC 6887 section
    /// 14.1.3), to be multicast on every internal interface: the NAT-PMP external
    /// address and the PCP ANNOUNCE, each with the current epoch.
    pub(super) fn announce(&mut self, now: Instant) {
        if !self.has_announcements() {
            return;
        }
        let Some(due) = self.announcer.next.filter(|&t| t <= now) else {
            return;
        };
        self.announcer.remaining -= 1;
        self.announcer.next = if self.announcer.remaining == 0 {
            None
        } else {
            Some(due + self.announcer.interval)
        };
        self.announcer.interval *= 2;
        // "MUST be updated appropriately to reflect the passage of time".
        let epoch = self.epoch(now);
        let mut a = Announcement {
            to: Multicast::V4,
            len: 0,
            bytes: [0; 24],
        };
        if let (true, Some(address)) = (self.policy.nat_pmp, self.external_address) {
            let r = natpmp::Response::ExternalAddress(natpmp::ExternalAddressResponse {
                result: natpmp::ResultCode::SUCCESS,
                epoch,
                address,
            });
            a.len = r.emit(&mut a.bytes);
            self.push_announcement(a);
        }
        if self.policy.pcp {
            a.len = pcp::Response::announce(epoch).emit(&mut a.bytes);
            self.push_announcement(a);
            if self.policy.internal.iter().any(|i| !i.nets6.is_empty()) {
                self.push_announcement(Announcement {
                    to: Multicast::V6,
                    ..a
                });
            }
        }
    }

    fn push_announcement(&mut self, a: Announcement) {
        self.outputs
            .push_back(Output::Transmit(Transmit::Announcement(a)));
    }
}
