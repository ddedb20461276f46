//! Randomness as an injected dependency: PCP's retransmission jitter (RFC 6887 section
//! 8.1.1), mapping nonces (section 11.1) and announcement back-off, all drawn through [`Random`].

use std::time::{SystemTime, UNIX_EPOCH};

use natwarden_wire::pcp::Nonce;

/// A source of random numbers. The blocking driver uses [`OsRandom`]; tests pass a scripted
/// one so that every timer is known in advance.
pub trait Random {
    fn next_u64(&mut self) -> u64;
}

/// RFC 6887 section 8.1.1's RAND, "a randomization factor between -0.1 and +0.1", drawn
/// uniformly in steps of 0.0001.
pub fn jitter(random: &mut dyn Random) -> f64 {
    f64::from(jitter_permyriad(random)) / 10_000.0
}

/// [`jitter`] in ten-thousandths, -1000..=1000, for exact integer arithmetic on durations.
pub fn jitter_permyriad(random: &mut dyn Random) -> i32 {
    (random.next_u64() % 2001) as i32 - 1000
}

/// `base * (1 + RAND)` with RAND drawn by [`jitter_permyriad`], exact to the nanosecond.
pub fn jittered(base: std::time::Duration, random: &mut dyn Random) -> std::time::Duration {
    let factor = (10_000 + jitter_permyriad(random)) as u128; // 9000..=11000
    let nanos = base.as_nanos() * factor / 10_000;
    std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A fresh 96-bit mapping nonce (RFC 6887 section 11.1: "Random value chosen by the PCP client").
pub fn nonce(random: &mut dyn Random) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&random.next_u64().to_be_bytes());
    bytes[8..].copy_from_slice(&random.next_u64().to_be_bytes()[..4]);
    Nonce(bytes)
}

/// A uniformly drawn duration in `[0, max]` at millisecond resolution.
pub fn up_to(random: &mut dyn Random, max: std::time::Duration) -> std::time::Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(random.next_u64() % ms.saturating_add(1))
}

/// The kernel's random numbers (the getrandom system call, as the natwarden binary draws
/// them: no device file to open, so a chroot without /dev is no matter), with a xorshift
/// generator as fallback should the kernel refuse (a seccomp filter, a kernel older than
/// 3.17): a nonce then stays unpredictable enough to tell this client's mappings apart,
/// which is all PCP asks of it on a LAN.
pub struct OsRandom {
    state: u64,
}

impl OsRandom {
    pub fn new() -> OsRandom {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let state = (time ^ (u64::from(std::process::id()) << 32)) | 1;
        OsRandom { state }
    }
}

impl Default for OsRandom {
    fn default() -> Self {
        OsRandom::new()
    }
}

impl Random for OsRandom {
    fn next_u64(&mut self) -> u64 {
        if let Some(x) = crate::net::random_u64() {
            return x;
        }
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Replays a fixed list of values, cycling; for tests and for callers that want no jitter
/// (`Scripted::new(vec![1000])` makes RAND exactly 0).
#[derive(Debug, Clone)]
pub struct Scripted {
    values: Vec<u64>,
    at: usize,
}

impl Scripted {
    /// # Panics
    ///
    /// If `values` is empty.
    pub fn new(values: Vec<u64>) -> Scripted {
        assert!(!values.is_empty(), "Scripted needs at least one value");
        Scripted { values, at: 0 }
    }

    /// The value that makes [`jitter`] return `rand` (rounded to 0.0001, clamped to ±0.1).
    pub fn for_jitter(rand: f64) -> u64 {
        let step = (rand.clamp(-0.1, 0.1) * 10_000.0).round() + 1000.0;
        step as u64
    }
}

impl Random for Scripted {
    fn next_u64(&mut self) -> u64 {
        let v = self.values[self.at % self.values.len()];
        self.at += 1;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spans_minus_to_plus_a_tenth() {
        let mut r = Scripted::new(vec![0, 1000, 2000, 2001, 3000]);
        assert_eq!(jitter(&mut r), -0.1);
        assert_eq!(jitter(&mut r), 0.0);
        assert_eq!(jitter(&mut r), 0.1);
        assert_eq!(jitter(&mut r), -0.1); // wraps modulo 2001
        assert!(
            (jitter(&mut r) - (-0.0001)).abs() < 1e-12,
            "3000 % 2001 = 999"
        );
        for rand in [-0.1, -0.05, 0.0, 0.0731, 0.1] {
            let mut r = Scripted::new(vec![Scripted::for_jitter(rand)]);
            assert!((jitter(&mut r) - rand).abs() < 1e-9, "{rand}");
        }
    }

    #[test]
    fn os_random_draws_differ_and_stay_in_range() {
        let mut r = OsRandom::new();
        let a = nonce(&mut r);
        let b = nonce(&mut r);
        assert_ne!(a, b);
        for _ in 0..1000 {
            let j = jitter(&mut r);
            assert!((-0.1..=0.1).contains(&j), "{j}");
        }
        for _ in 0..100 {
            assert!(
                up_to(&mut r, std::time::Duration::from_secs(5))
                    <= std::time::Duration::from_secs(5)
            );
        }
    }
}
