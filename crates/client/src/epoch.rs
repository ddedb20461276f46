//! Has the gateway lost its mappings? The epoch checks of RFC 6886 section 3.6 (NAT-PMP) and
//! RFC 6887 section 8.5 (PCP), fed with each response's epoch and the local receive time.

use std::time::Instant;

use crate::Version;

/// The last epoch seen from one gateway, and when.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochTracker {
    last: Option<(u32, Instant)>,
}

impl EpochTracker {
    pub const fn new() -> EpochTracker {
        EpochTracker { last: None }
    }

    /// Forgets the history: the next epoch is taken as valid (e.g. after switching protocol,
    /// whose epochs need not agree).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Records `epoch`, received `now`, and says whether it shows that the gateway lost its
    /// state since the previous one (reboot, reset, address change). The first epoch is valid.
    pub fn lost_state(&mut self, version: Version, epoch: u32, now: Instant) -> bool {
        let lost = match self.last {
            None => false,
            Some((prev, at)) => {
                let client_ms = i64::try_from(now.saturating_duration_since(at).as_millis())
                    .unwrap_or(i64::MAX / 2);
                match version {
                    Version::NatPmp => natpmp_lost(prev, epoch, client_ms),
                    Version::Pcp => pcp_lost(prev, epoch, client_ms),
                }
            }
        };
        self.last = Some((epoch, now));
        lost
    }
}

/// RFC 6886 section 3.6: the client's conservative estimate of the gateway's epoch is the last
/// one plus 7/8 of the time elapsed locally; "If the [received value] is less than the
/// client's conservative estimate by more than 2 seconds", the gateway lost its state.
fn natpmp_lost(prev: u32, epoch: u32, client_ms: i64) -> bool {
    let expected_ms = i64::from(prev) * 1000 + client_ms * 7 / 8;
    i64::from(epoch) * 1000 + 2000 < expected_ms
}

/// RFC 6887 section 8.5: invalid if the server's time went back by more than one second, or
/// if `client_delta + 2 < server_delta - server_delta/16` or
/// `server_delta + 2 < client_delta - client_delta/16`.
fn pcp_lost(prev: u32, epoch: u32, client_ms: i64) -> bool {
    if i64::from(epoch) < i64::from(prev) - 1 {
        return true;
    }
    let server_ms = (i64::from(epoch) - i64::from(prev)) * 1000;
    client_ms + 2000 < server_ms - server_ms / 16 || server_ms + 2000 < client_ms - client_ms / 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn natpmp_seven_eighths_rule_with_two_seconds_of_slack() {
        let t0 = Instant::now();
        let mut e = EpochTracker::new();
        assert!(!e.lost_state(Version::NatPmp, 1000, t0), "first is valid");
        // 80 s later the estimate is 1000 + 70 = 1070; 1068 is within the 2 s slack.
        assert!(!e.lost_state(Version::NatPmp, 1080, at(t0, 80)));
        let mut e = EpochTracker::new();
        e.lost_state(Version::NatPmp, 1000, t0);
        assert!(!e.lost_state(Version::NatPmp, 1068, at(t0, 80)));
        let mut e = EpochTracker::new();
        e.lost_state(Version::NatPmp, 1000, t0);
        assert!(e.lost_state(Version::NatPmp, 1067, at(t0, 80)));
        // A restarted gateway: epoch back near zero.
        let mut e = EpochTracker::new();
        e.lost_state(Version::NatPmp, 5, t0);
        assert!(e.lost_state(Version::NatPmp, 0, at(t0, 3)));
        // The same epoch seconds later is fine: the gateway clock may run slow.
        let mut e = EpochTracker::new();
        e.lost_state(Version::NatPmp, 5, t0);
        assert!(!e.lost_state(Version::NatPmp, 5, at(t0, 2)));
        // After a reset is detected, the new epoch is the reference.
        assert!(e.lost_state(Version::NatPmp, 0, at(t0, 20)));
        assert!(!e.lost_state(Version::NatPmp, 10, at(t0, 30)));
    }

    #[test]
    fn pcp_section_8_5_rule() {
        let t0 = Instant::now();
        let check = |prev: u32, curr: u32, secs: u64| {
            let mut e = EpochTracker::new();
            e.lost_state(Version::Pcp, prev, t0);
            e.lost_state(Version::Pcp, curr, at(t0, secs))
        };
        // Back by up to one second is reordering, not a reset.
        assert!(!check(100, 99, 0));
        assert!(check(100, 98, 0));
        // 160 s locally: server_delta 160 fine; client_delta + 2 < server_delta - delta/16?
        assert!(!check(100, 260, 160));
        // The server moved on much faster than the client's clock: invalid.
        assert!(check(100, 400, 160));
        // Much slower: invalid (160 s locally, 100 s on the server: 102 < 150).
        assert!(check(100, 200, 160));
        // Within 1/16 plus 2 s: valid.
        assert!(!check(100, 252, 160));
    }
}
