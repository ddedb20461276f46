//! Retransmission timers as values: NAT-PMP's fixed doubling (RFC 6886 section 3.1) and PCP's
//! jittered exponential back-off (RFC 6887 section 8.1.1). Pure: the caller owns the clock.

use std::time::Duration;

use crate::random::{jittered, Random};

/// NAT-PMP: "the client ... waits 250 ms for a response" before the first retransmission
/// (RFC 6886 section 3.1).
pub const NATPMP_INITIAL: Duration = Duration::from_millis(250);
/// NAT-PMP: "This process is repeated 9 times ... If no response is received after 9
/// attempts, the client ... should give up" (RFC 6886 section 3.1).
pub const NATPMP_MAX_SENDS: u32 = 9;
/// PCP Initial Retransmission Time (RFC 6887 section 8.1.1).
pub const PCP_IRT: Duration = Duration::from_secs(3);
/// PCP Maximum Retransmission Time (RFC 6887 section 8.1.1).
pub const PCP_MRT: Duration = Duration::from_secs(1024);

/// How long to wait after each send, and whether another send is allowed.
///
/// PCP's Maximum Retransmission Count and Duration are both 0 (no limit) in RFC 6887 section
/// 8.1.1: a PCP exchange ends only when answered or at the caller's deadline. NAT-PMP's ends
/// after the wait that follows its 9th send: sends at 0, 0.25, 0.75, 1.75 ... 63.75 s, give
/// up at 127.75 s.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    NatPmp { sends: u32 },
    Pcp { sends: u32, rt: Option<Duration> },
}

impl Backoff {
    pub const fn natpmp() -> Backoff {
        Backoff::NatPmp { sends: 0 }
    }

    pub const fn pcp() -> Backoff {
        Backoff::Pcp { sends: 0, rt: None }
    }

    /// Requests sent so far.
    pub const fn sends(&self) -> u32 {
        match self {
            Backoff::NatPmp { sends } | Backoff::Pcp { sends, .. } => *sends,
        }
    }

    /// Whether one more request may be sent once the current wait has passed unanswered.
    pub const fn may_send(&self) -> bool {
        match self {
            Backoff::NatPmp { sends } => *sends < NATPMP_MAX_SENDS,
            Backoff::Pcp { .. } => true,
        }
    }

    /// Records a send and returns how long to wait for its answer before retransmitting (or,
    /// after NAT-PMP's last send, before giving up).
    ///
    /// NAT-PMP: 250 ms, doubled after each send (RFC 6886 section 3.1).
    /// PCP: `RT = (1 + RAND) * IRT` first, then `RT = (1 + RAND) * MIN(2 * RTprev, MRT)`,
    /// RAND uniform in [-0.1, +0.1] (RFC 6887 section 8.1.1).
    pub fn on_send(&mut self, random: &mut dyn Random) -> Duration {
        match self {
            Backoff::NatPmp { sends } => {
                let wait = NATPMP_INITIAL * (1u32 << (*sends).min(NATPMP_MAX_SENDS));
                *sends += 1;
                wait
            }
            Backoff::Pcp { sends, rt } => {
                let base = match *rt {
                    None => PCP_IRT,
                    Some(prev) => (prev * 2).min(PCP_MRT),
                };
                let next = jittered(base, random);
                *rt = Some(next);
                *sends += 1;
                next
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Scripted;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn natpmp_waits_double_from_250ms_for_9_sends() {
        let mut b = Backoff::natpmp();
        let mut r = Scripted::new(vec![0]);
        let waits: Vec<Duration> = (0..9)
            .map(|_| {
                assert!(b.may_send());
                b.on_send(&mut r)
            })
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000].map(ms)
        );
        assert!(!b.may_send());
        assert_eq!(b.sends(), 9);
    }

    #[test]
    fn pcp_first_rt_is_irt_with_jitter_then_doubles_up_to_mrt() {
        // RAND = 0: exact doubling, capped at MRT.
        let mut b = Backoff::pcp();
        let mut r = Scripted::new(vec![Scripted::for_jitter(0.0)]);
        let waits: Vec<u64> = (0..12).map(|_| b.on_send(&mut r).as_secs()).collect();
        assert_eq!(
            waits,
            [3, 6, 12, 24, 48, 96, 192, 384, 768, 1024, 1024, 1024]
        );
        assert!(
            b.may_send(),
            "PCP has no retransmission count limit (MRC = 0)"
        );

        // RAND = +0.1 then -0.1: RT = 1.1 * 3 = 3.3 s, then 0.9 * min(6.6, 1024) = 5.94 s.
        let mut b = Backoff::pcp();
        let mut r = Scripted::new(vec![Scripted::for_jitter(0.1), Scripted::for_jitter(-0.1)]);
        assert_eq!(b.on_send(&mut r), ms(3300));
        assert_eq!(b.on_send(&mut r), ms(5940));
    }

    #[test]
    fn pcp_rt_past_mrt_is_mrt_with_jitter() {
        let mut b = Backoff::Pcp {
            sends: 10,
            rt: Some(Duration::from_secs(1000)),
        };
        let mut r = Scripted::new(vec![Scripted::for_jitter(0.05)]);
        assert_eq!(b.on_send(&mut r), ms(1_075_200));
    }
}
