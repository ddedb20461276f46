//! The order targets are probed in: a walk of the multiplicative group of integers modulo a
//! prime `p > n`, as zmap does, so a range is covered once, in a pseudo-random order, with
//! O(1) memory, and can be split into shards that together cover it exactly once.

/// A seeded permutation of `0..n`, walked shard by shard.
///
/// The group Z*_p is cyclic of order `p - 1`; with a generator `g` the sequence
/// `x0 * g^i mod p` for `i in 0..p-1` visits every element of `1..p` once. Element `x` stands
/// for index `x - 1`; indexes `>= n` are skipped (fewer than `n` of them on average, since
/// `p < 2n` for the smallest prime above `n`). Shard `s` of `S` takes the positions
/// `i = s, s + S, s + 2S, ...` of that one cycle: the same seed and `n` on every machine give
/// disjoint shards whose union is the whole range.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    prime: u64,
    /// `g^S mod p`: one step within a shard.
    step: u64,
    /// Current element of the cycle.
    current: u64,
    /// Positions of the cycle this shard still has to visit.
    remaining: u64,
}

impl Permutation {
    /// Largest range this permutation walks (the group arithmetic is done in u128).
    pub const MAX_N: u64 = 1 << 48;

    /// The permutation of `0..n` for `seed`, restricted to shard `shard` of `shards`.
    ///
    /// # Panics
    /// If `n > MAX_N`, `shards == 0` or `shard >= shards` (callers validate user input).
    pub fn new(n: u64, seed: u64, shard: u64, shards: u64) -> Permutation {
        assert!(n <= Self::MAX_N && shards > 0 && shard < shards);
        if n == 0 {
            return Permutation {
                n,
                prime: 2,
                step: 1,
                current: 1,
                remaining: 0,
            };
        }
        // p - 1 >= n and p >= 3, so the cycle has room for every index.
        let prime = next_prime(n.max(2) + 1);
        let order = prime - 1;
        let root = primitive_root(prime);
        let mut rng = SplitMix64(seed);
        // g = root^k with gcd(k, p-1) = 1 is again a generator: the seed picks which.
        let generator = loop {
            let k = 1 + rng.next_u64() % order;
            if gcd(k, order) == 1 {
                break pow_mod(root, k, prime);
            }
        };
        let start = 1 + rng.next_u64() % order;
        let current = mul_mod(start, pow_mod(generator, shard, prime), prime);
        let step = pow_mod(generator, shards, prime);
        let remaining = order.saturating_sub(shard).div_ceil(shards);
        Permutation {
            n,
            prime,
            step,
            current,
            remaining,
        }
    }

    /// How many indexes of `0..n` the whole permutation holds (all shards).
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Iterator for Permutation {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.remaining > 0 {
            let x = self.current;
            self.current = mul_mod(self.current, self.step, self.prime);
            self.remaining -= 1;
            if x - 1 < self.n {
                return Some(x - 1);
            }
        }
        None
    }
}

/// A small, well-mixed generator for seeding (Steele, Lea and Flood's SplitMix64); also the
/// keyed hash the audit uses for source ports and probe fields.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// SplitMix64's finaliser: a bijection of u64 with full avalanche.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Deterministic Miller-Rabin for every u64 (these witnesses suffice below 3.3 * 10^24).
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let (mut d, mut r) = (n - 1, 0);
    while d.is_multiple_of(2) {
        d /= 2;
        r += 1;
    }
    'witness: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..r {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn next_prime(mut n: u64) -> u64 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// The distinct prime factors of `n` by trial division (n <= 2^48: at most 2^24 divisions).
fn prime_factors(mut n: u64) -> Vec<u64> {
    let mut factors = Vec::new();
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            factors.push(d);
            while n.is_multiple_of(d) {
                n /= d;
            }
        }
        d += if d == 2 { 1 } else { 2 };
    }
    if n > 1 {
        factors.push(n);
    }
    factors
}

/// The smallest primitive root of the prime `p`: g such that g^((p-1)/q) != 1 for every prime
/// factor q of p - 1.
fn primitive_root(p: u64) -> u64 {
    if p == 2 {
        return 1;
    }
    let factors = prime_factors(p - 1);
    (2..p)
        .find(|&g| factors.iter().all(|&q| pow_mod(g, (p - 1) / q, p) != 1))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_index_exactly_once() {
        for n in [0u64, 1, 2, 3, 7, 100, 256, 1000, 65536] {
            let seen: Vec<u64> = Permutation::new(n, 42, 0, 1).collect();
            assert_eq!(seen.len() as u64, n, "n = {n}");
            let set: HashSet<u64> = seen.iter().copied().collect();
            assert_eq!(set.len() as u64, n);
            assert!(seen.iter().all(|&i| i < n));
        }
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_range() {
        let n = 5000;
        let mut all = HashSet::new();
        let mut total = 0;
        for shard in 0..7 {
            for i in Permutation::new(n, 9, shard, 7) {
                assert!(all.insert(i), "index {i} in two shards");
                total += 1;
            }
        }
        assert_eq!(total, n);
    }

    #[test]
    fn the_seed_changes_the_order_and_the_same_seed_repeats_it() {
        let a: Vec<u64> = Permutation::new(1000, 1, 0, 1).collect();
        let b: Vec<u64> = Permutation::new(1000, 2, 0, 1).collect();
        let a2: Vec<u64> = Permutation::new(1000, 1, 0, 1).collect();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        // Not the identity nor a plain stride: neighbours are spread out.
        let sequential = a.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(sequential < 20, "{sequential} sequential steps");
    }

    #[test]
    fn primes_and_roots() {
        assert!(is_prime(65537) && is_prime(4_294_967_311) && !is_prime(4_294_967_297));
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(primitive_root(7), 3);
        assert_eq!(primitive_root(65537), 3);
    }
}
