//! Per-client request rate limit: a token bucket per LAN host (see [`HostId`]), so one
//! host cannot starve the others.
//!
//! Idle buckets are pruned, and the number of buckets is capped: when full, the
//! longest-idle client is forgotten (it then starts with a full bucket, which is all
//! forgetting can give it).

use crate::host::HostId;
use std::collections::HashMap;
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
    max_clients: usize,
    buckets: HashMap<HostId, Bucket>,
}

impl RateLimiter {
    /// `per_second == 0` disables the limit; at most `max_clients` are tracked.
    pub(crate) fn new(per_second: u32, max_clients: usize) -> RateLimiter {
        RateLimiter {
            per_second,
            max_clients: max_clients.max(1),
            buckets: HashMap::new(),
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.per_second) * 1000
    }

    /// Takes one token for `client`; `false` when the bucket is empty. The bucket holds
    /// one second's worth, so short bursts (a client starting up) pass.
    pub(crate) fn allow(&mut self, now: Instant, client: HostId) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let cap = self.capacity();
        let rate = u64::from(self.per_second);
        if !self.buckets.contains_key(&client) && self.buckets.len() >= self.max_clients {
            self.make_room(now);
        }
        let b = self.buckets.entry(client).or_insert(Bucket {
            milli_tokens: cap,
            last: now,
        });
        // `rate` per second is one thousandth of a request every 1000/rate µs. Only
        // whole thousandths are credited and `last` moves by just the time they stand
        // for, so requests closer together than that still add up: rounding each
        // interval down and restarting from `now` starved any client (or flood) sending
        // more than ~1000 requests per second of all refill.
        let elapsed_us = now.saturating_duration_since(b.last).as_micros();
        let refill = u64::try_from(elapsed_us)
            .unwrap_or(u64::MAX)
            .saturating_mul(rate)
            / 1000;
        if b.milli_tokens.saturating_add(refill) >= cap {
            b.milli_tokens = cap;
            b.last = now;
        } else if refill > 0 {
            b.milli_tokens += refill;
            // refill * 1000 / rate <= elapsed_us, so `last` never passes `now`.
            b.last += Duration::from_micros(refill.saturating_mul(1000) / rate);
        }
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Frees room: refilled buckets first, else the longest-idle eighth of the map.
    /// O(n), but at most once per n/8 new clients, so O(1) amortised under a flood.
    fn make_room(&mut self, now: Instant) {
        self.prune(now);
        if self.buckets.len() < self.max_clients {
            return;
        }
        let evict = (self.max_clients / 8).max(1);
        // The last use of the evict-th longest idle: all idler go, then as many of those
        // used at that very time as make `evict`.
        let mut last_used: Vec<Instant> = self.buckets.values().map(|b| b.last).collect();
        last_used.sort_unstable();
        let cutoff = last_used[evict - 1];
        let mut ties = evict - last_used.partition_point(|&t| t < cutoff);
        self.buckets.retain(|_, b| {
            if b.last < cutoff {
                return false;
            }
            if b.last == cutoff && ties > 0 {
                ties -= 1;
                return false;
            }
            true
        });
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
    use std::net::IpAddr;

    fn h(ip: IpAddr) -> HostId {
        HostId::Address(ip)
    }

    #[test]
    fn burst_of_one_second_then_refill_at_rate() {
        let t0 = Instant::now();
        let c = h("192.168.1.5".parse().expect("addr"));
        let mut rl = RateLimiter::new(5, 16);
        assert!((0..5).all(|_| rl.allow(t0, c)));
        assert!(!rl.allow(t0, c), "sixth request in the same instant");
        assert!(!rl.allow(t0 + Duration::from_millis(150), c));
        assert!(
            rl.allow(t0 + Duration::from_millis(200), c),
            "one token per 200 ms"
        );
        // Another client is not affected.
        assert!(rl.allow(t0, h("192.168.1.6".parse().expect("addr"))));
    }

    /// Regression: the refill was counted in whole milliseconds from the previous
    /// request, so a client sending every 500 µs never got a token back; found by the
    /// flood lab test (a flooder got far fewer answers than its limit).
    #[test]
    fn requests_closer_than_a_millisecond_still_refill_at_rate() {
        let t0 = Instant::now();
        let c = h("192.168.1.5".parse().expect("addr"));
        let mut rl = RateLimiter::new(20, 16);
        // 2000 requests 500 µs apart: one second's burst, then 20 over that second.
        let allowed = (0..2000u64)
            .filter(|i| rl.allow(t0 + Duration::from_micros(i * 500), c))
            .count();
        assert!((39..=41).contains(&allowed), "{allowed} allowed");
        // And never more than the rate, however the requests are spaced.
        let mut rl = RateLimiter::new(20, 16);
        let allowed = (0..1_000_000u64)
            .filter(|i| rl.allow(t0 + Duration::from_micros(i * 7), c))
            .count();
        assert!((159..=161).contains(&allowed), "{allowed} allowed in 7 s");
    }

    #[test]
    fn zero_means_unlimited_and_prune_forgets_idle_clients() {
        let t0 = Instant::now();
        let mut off = RateLimiter::new(0, 16);
        assert!((0..10_000).all(|_| off.allow(t0, h(IpAddr::from([127, 0, 0, 1])))));
        let mut rl = RateLimiter::new(1, 16);
        rl.allow(t0, h(IpAddr::from([10, 0, 0, 1])));
        rl.prune(t0 + Duration::from_millis(500));
        assert_eq!(rl.tracked(), 1);
        rl.prune(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn tracked_clients_are_capped_and_the_longest_idle_is_evicted() {
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([192, 168, 1, n]);
        let mut rl = RateLimiter::new(1, 3);
        for n in 1..=3 {
            assert!(rl.allow(t0 + Duration::from_millis(u64::from(n) * 10), h(ip(n))));
        }
        assert!(
            !rl.allow(t0 + Duration::from_millis(50), h(ip(2))),
            "2 is empty"
        );
        // A fourth client: the map stays at 3, and the longest idle (1) goes.
        assert!(rl.allow(t0 + Duration::from_millis(100), h(ip(4))));
        assert_eq!(rl.tracked(), 3);
        assert!(!rl.buckets.contains_key(&h(ip(1))));
        // 2 was used more recently than 3 was, so 3 goes next; 2 stays limited.
        assert!(rl.allow(t0 + Duration::from_millis(110), h(ip(5))));
        assert!(!rl.buckets.contains_key(&h(ip(3))));
        assert!(!rl.allow(t0 + Duration::from_millis(120), h(ip(2))));
        assert_eq!(rl.tracked(), 3);
        // A flood from a whole /16 never grows it beyond the cap.
        for n in 0..=u16::MAX {
            let [a, b] = n.to_be_bytes();
            rl.allow(
                t0 + Duration::from_millis(200),
                h(IpAddr::from([10, 0, a, b])),
            );
        }
        assert_eq!(rl.tracked(), 3);
    }
}
