//! Numbers of a run: the retransmission timeout estimate, latency percentiles and the
//! one JSON line the run prints.

use std::fmt::Write as _;
use std::time::Duration;

/// Above this the gateway is treated as lost, not slow.
const MAX_RTO: Duration = Duration::from_secs(10);
/// Longest queue a slow but answering gateway is allowed to work through.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// Before any reply has been timed (RFC 6298's initial RTO).
const INITIAL_RTO: Duration = Duration::from_secs(1);

/// RFC 6298's smoothed round trip (Karn: only replies to first transmissions are
/// samples), and an allowance for a draining queue: with W requests queued in a serial
/// gateway the last one waits W / rate, and resending it earlier only adds work to the
/// gateway being measured. The allowance applies only while replies keep coming
/// (see [`RtoEstimator::limit`]); a silent gateway gets the plain timeout.
#[derive(Debug, Clone)]
pub struct RtoEstimator {
    srtt: Option<f64>,
    rttvar: f64,
    min: Duration,
}

impl RtoEstimator {
    pub fn new(min: Duration) -> RtoEstimator {
        RtoEstimator {
            srtt: None,
            rttvar: 0.0,
            min,
        }
    }

    pub fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - r).abs();
                self.srtt = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    /// The plain retransmission timeout: srtt + 4 rttvar, at least the floor.
    pub fn base(&self) -> Duration {
        let Some(srtt) = self.srtt else {
            return INITIAL_RTO.max(self.min);
        };
        let secs = (srtt + 4.0 * self.rttvar).min(MAX_RTO.as_secs_f64());
        Duration::from_secs_f64(secs).max(self.min)
    }

    /// How long a request may wait before it is resent. `rate`: replies per second so
    /// far (0 if none yet); `window`: requests in flight; `answering`: whether the
    /// gateway has answered anything within the last [`RtoEstimator::base`].
    pub fn limit(&self, rate: f64, window: u32, answering: bool) -> Duration {
        let base = self.base();
        if !answering || rate <= 0.0 {
            return base;
        }
        let drain = (2.0 * f64::from(window) / rate).min(MAX_DRAIN.as_secs_f64());
        base.max(Duration::from_secs_f64(drain))
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[i].as_secs_f64() * 1000.0)
}

#[derive(Debug, Default)]
pub struct Report {
    pub requested: u32,
    pub acknowledged: u32,
    /// Answered with a result other than success.
    pub errors: u32,
    pub seconds: f64,
    pub retransmits: u64,
    pub socket_errors: u64,
    /// Replies that matched no request (late duplicates excluded) or did not parse.
    pub stray_replies: u64,
    /// Round trips of requests answered on their first transmission.
    pub latencies: Vec<Duration>,
    /// The first non-success result or socket error, for the operator.
    pub first_error: Option<String>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            f64::from(self.acknowledged) / self.seconds
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> String {
        let mut latencies = self.latencies.clone();
        latencies.sort_unstable();
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"requested\":{},\"acknowledged\":{},\"seconds\":{:.6},\"per_second\":{:.1},\"errors\":{}",
            self.requested,
            self.acknowledged,
            self.seconds,
            self.per_second(),
            self.errors
        );
        let _ = write!(
            s,
            ",\"unanswered\":{},\"retransmits\":{},\"socket_errors\":{},\"stray_replies\":{}",
            self.requested - self.acknowledged - self.errors,
            self.retransmits,
            self.socket_errors,
            self.stray_replies
        );
        s.push_str(",\"latency_ms\":{");
        let _ = write!(s, "\"samples\":{}", latencies.len());
        for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
            match percentile_ms(&latencies, p) {
                Some(v) => {
                    let _ = write!(s, ",\"{name}\":{v:.3}");
                }
                None => {
                    let _ = write!(s, ",\"{name}\":null");
                }
            }
        }
        s.push('}');
        match &self.first_error {
            Some(e) => {
                let _ = write!(s, ",\"first_error\":\"{}\"", json_escape(e));
            }
            None => s.push_str(",\"first_error\":null"),
        }
        s.push('}');
        s
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_starts_at_one_second_and_covers_a_draining_window_while_answers_come() {
        let mut e = RtoEstimator::new(Duration::from_millis(200));
        assert_eq!(e.base(), Duration::from_secs(1));
        assert_eq!(e.limit(0.0, 64, true), Duration::from_secs(1));
        e.sample(Duration::from_millis(2));
        // A fast gateway: the floor.
        assert_eq!(e.limit(20_000.0, 64, true), Duration::from_millis(200));
        // A serial gateway at 20 replies/s with 64 queued: 6.4 s before resending...
        assert_eq!(e.limit(20.0, 64, true), Duration::from_secs_f64(6.4));
        assert_eq!(e.limit(1.0, 64, true), MAX_DRAIN);
        // ...but not once it has gone quiet (the requests were lost).
        assert_eq!(e.limit(20.0, 64, false), Duration::from_millis(200));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&v, 100.0), Some(100.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn the_report_is_one_json_line() {
        let r = Report {
            requested: 10,
            acknowledged: 8,
            errors: 1,
            seconds: 0.5,
            first_error: Some("result 2 \"x\"".into()),
            latencies: vec![Duration::from_millis(3), Duration::from_millis(1)],
            ..Report::default()
        };
        let j = r.to_json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with(
            "{\"requested\":10,\"acknowledged\":8,\"seconds\":0.500000,\"per_second\":16.0,\"errors\":1,\"unanswered\":1,"
        ), "{j}");
        assert!(j.contains("\"p50\":1.000"), "{j}");
        assert!(
            j.ends_with("\"first_error\":\"result 2 \\\"x\\\"\"}"),
            "{j}"
        );
    }
}
