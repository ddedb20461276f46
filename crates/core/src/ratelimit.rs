//! Per-client request rate limit: a token bucket per LAN address, so one host cannot
//! starve the others. Idle buckets are pruned; the set of keys is bounded by the LAN.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a request, so refill needs no floating point.
    milli_tokens: u64,
    last: Instant,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: u32,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// `per_second == 0` disables the limit.
    pub(crate) fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.per_second) * 1000
    }

    /// Takes one token for `client`; `false` when the bucket is empty. The bucket holds
    /// one second's worth, so short bursts (a client starting up) pass.
    pub(crate) fn allow(&mut self, now: Instant, client: IpAddr) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let cap = self.capacity();
        let rate = u64::from(self.per_second);
        let b = self.buckets.entry(client).or_insert(Bucket {
            milli_tokens: cap,
            last: now,
        });
        let elapsed_ms = now.saturating_duration_since(b.last).as_millis();
        let refill = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(rate);
        b.milli_tokens = b.milli_tokens.saturating_add(refill).min(cap);
        b.last = now;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that have refilled completely: they hold no information.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
    }

    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_of_one_second_then_refill_at_rate() {
        let t0 = Instant::now();
        let c: IpAddr = "192.168.1.5".parse().expect("addr");
        let mut rl = RateLimiter::new(5);
        assert!((0..5).all(|_| rl.allow(t0, c)));
        assert!(!rl.allow(t0, c), "sixth request in the same instant");
        assert!(!rl.allow(t0 + Duration::from_millis(150), c));
        assert!(
            rl.allow(t0 + Duration::from_millis(200), c),
            "one token per 200 ms"
        );
        // Another client is not affected.
        assert!(rl.allow(t0, "192.168.1.6".parse().expect("addr")));
    }

    #[test]
    fn zero_means_unlimited_and_prune_forgets_idle_clients() {
        let t0 = Instant::now();
        let mut off = RateLimiter::new(0);
        assert!((0..10_000).all(|_| off.allow(t0, IpAddr::from([127, 0, 0, 1]))));
        let mut rl = RateLimiter::new(1);
        rl.allow(t0, IpAddr::from([10, 0, 0, 1]));
        rl.prune(t0 + Duration::from_millis(500));
        assert_eq!(rl.tracked(), 1);
        rl.prune(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked(), 0);
    }
}
