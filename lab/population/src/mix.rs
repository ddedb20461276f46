//! The kinds of gateway in the population and the seeded, weighted choice of one per address.
//! Stable: the same seed, weights and address always give the same behaviour.

use std::net::IpAddr;

/// How one address of the population behaves (see the crate's README table in `main.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Behaviour {
    Silent,
    Leak,
    Swapped,
    SwappedNofail,
    Open,
    OpenReassign,
    PcpOnly,
    OtherSource,
    Garbage,
}

impl Behaviour {
    pub const ALL: [Behaviour; 9] = [
        Behaviour::Silent,
        Behaviour::Leak,
        Behaviour::Swapped,
        Behaviour::SwappedNofail,
        Behaviour::Open,
        Behaviour::OpenReassign,
        Behaviour::PcpOnly,
        Behaviour::OtherSource,
        Behaviour::Garbage,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Behaviour::Silent => "silent",
            Behaviour::Leak => "leak",
            Behaviour::Swapped => "swapped",
            Behaviour::SwappedNofail => "swapped-nofail",
            Behaviour::Open => "open",
            Behaviour::OpenReassign => "open-reassign",
            Behaviour::PcpOnly => "pcp-only",
            Behaviour::OtherSource => "other-source",
            Behaviour::Garbage => "garbage",
        }
    }

    pub fn from_name(name: &str) -> Option<Behaviour> {
        Behaviour::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether the address gives at least one valid reply (and so has a truth line).
    pub const fn answers_validly(self) -> bool {
        !matches!(self, Behaviour::Silent | Behaviour::Garbage)
    }
}

/// The default weights, in [`Behaviour::ALL`] order.
pub const DEFAULT_WEIGHTS: [u32; 9] = [40, 15, 8, 5, 8, 5, 7, 6, 6];

/// splitmix64's finalizer (Steele, Lea, Flood 2014): a bijection on u64 whose output bits
/// each depend on every input bit.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The address hash: `h = splitmix64(seed)`, then for each 64-bit word of the address
/// `h = splitmix64(h ^ word)`. An IPv4 address is one word (its 32 bits, top bit 0..) tagged
/// with 4 << 32; an IPv6 address two words, high then low, the high one xored with 6 << 56
/// so that `::a.b.c.d` and `a.b.c.d` differ.
pub fn address_hash(seed: u64, address: IpAddr) -> u64 {
    let mut h = splitmix64(seed);
    match address {
        IpAddr::V4(v4) => h = splitmix64(h ^ (u64::from(u32::from(v4)) | 4 << 32)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            h = splitmix64(h ^ ((bits >> 64) as u64 ^ 6 << 56));
            h = splitmix64(h ^ bits as u64);
        }
    }
    h
}

/// A weighted mix of behaviours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 9],
    total: u64,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix::new(DEFAULT_WEIGHTS).expect("the default weights are not all zero")
    }
}

impl Mix {
    /// `None` if every weight is zero.
    pub fn new(weights: [u32; 9]) -> Option<Mix> {
        let total = weights.iter().map(|w| u64::from(*w)).sum();
        (total > 0).then_some(Mix { weights, total })
    }

    /// Parses `silent=40,leak=15,...`; behaviours not named keep their default weight.
    pub fn parse(spec: &str) -> Result<Mix, String> {
        let mut weights = DEFAULT_WEIGHTS;
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("--mix: `{item}` is not NAME=WEIGHT"))?;
            let behaviour = Behaviour::from_name(name.trim())
                .ok_or_else(|| format!("--mix: unknown behaviour `{name}`"))?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("--mix: weight of `{name}` is not a number: `{weight}`"))?;
            weights[behaviour as usize] = weight;
        }
        Mix::new(weights).ok_or_else(|| "--mix: every weight is zero".to_string())
    }

    #[cfg(test)]
    pub fn weight(&self, behaviour: Behaviour) -> u32 {
        self.weights[behaviour as usize]
    }

    /// The behaviour of `address`: `address_hash(seed, address) % total` picks a slot in the
    /// weights laid end to end in [`Behaviour::ALL`] order.
    pub fn behaviour(&self, seed: u64, address: IpAddr) -> Behaviour {
        let mut slot = address_hash(seed, address) % self.total;
        for (behaviour, weight) in Behaviour::ALL.into_iter().zip(self.weights) {
            let weight = u64::from(weight);
            if slot < weight {
                return behaviour;
            }
            slot -= weight;
        }
        unreachable!("slot < total, the sum of the weights")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn names_round_trip() {
        for b in Behaviour::ALL {
            assert_eq!(Behaviour::from_name(b.name()), Some(b));
        }
        assert_eq!(Behaviour::from_name("nope"), None);
    }

    #[test]
    fn mix_parses_and_keeps_defaults() {
        let mix = Mix::parse("open=100,silent=0").expect("valid mix");
        assert_eq!(mix.weight(Behaviour::Open), 100);
        assert_eq!(mix.weight(Behaviour::Silent), 0);
        assert_eq!(mix.weight(Behaviour::Leak), 15);
        assert_eq!(
            Mix::parse("").expect("empty is the default"),
            Mix::default()
        );
        assert!(Mix::parse("bogus=1").is_err());
        assert!(Mix::parse("open").is_err());
        assert!(Mix::parse("open=x").is_err());
        let all_zero: Vec<String> = Behaviour::ALL
            .iter()
            .map(|b| format!("{}=0", b.name()))
            .collect();
        assert!(Mix::parse(&all_zero.join(",")).is_err());
    }

    /// Pinned values: changing the hash changes every lab's truth, so it must be on purpose.
    #[test]
    fn seeded_mix_is_stable() {
        let mix = Mix::default();
        let a = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 5));
        assert_eq!(mix.behaviour(1, a), mix.behaviour(1, a));
        assert_eq!(address_hash(1, a), address_hash(1, a));
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let v4 = IpAddr::V4(Ipv4Addr::new(0, 0, 0, 1));
        let v6 = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1));
        assert_ne!(address_hash(7, v4), address_hash(7, v6));
        let seq: Vec<&str> = (0..8u8)
            .map(|i| {
                mix.behaviour(42, IpAddr::V4(Ipv4Addr::new(100, 64, 0, i)))
                    .name()
            })
            .collect();
        let again: Vec<&str> = (0..8u8)
            .map(|i| {
                mix.behaviour(42, IpAddr::V4(Ipv4Addr::new(100, 64, 0, i)))
                    .name()
            })
            .collect();
        assert_eq!(seq, again);
        let other_seed: Vec<&str> = (0..64u8)
            .map(|i| {
                mix.behaviour(43, IpAddr::V4(Ipv4Addr::new(100, 64, 0, i)))
                    .name()
            })
            .collect();
        let same_seed: Vec<&str> = (0..64u8)
            .map(|i| {
                mix.behaviour(42, IpAddr::V4(Ipv4Addr::new(100, 64, 0, i)))
                    .name()
            })
            .collect();
        assert_ne!(other_seed, same_seed, "the seed matters");
    }

    #[test]
    fn mix_roughly_matches_weights() {
        let mix = Mix::default();
        let n = 65_536u32;
        let mut counts = [0u32; 9];
        for i in 0..n {
            let a = IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i));
            counts[mix.behaviour(9, a) as usize] += 1;
        }
        let total: u32 = DEFAULT_WEIGHTS.iter().sum();
        for (b, (count, weight)) in Behaviour::ALL
            .iter()
            .zip(counts.iter().zip(DEFAULT_WEIGHTS))
        {
            let expected = f64::from(n) * f64::from(weight) / f64::from(total);
            let got = f64::from(*count);
            assert!(
                (got - expected).abs() < expected * 0.1 + 50.0,
                "{}: {got} vs {expected}",
                b.name()
            );
        }
        // A zero weight never comes up; a single weight always does.
        let only_open = Mix::parse("silent=0,leak=0,swapped=0,swapped-nofail=0,open=1,open-reassign=0,pcp-only=0,other-source=0,garbage=0")
            .expect("valid mix");
        for i in 0..1000u32 {
            assert_eq!(
                only_open.behaviour(3, IpAddr::V4(Ipv4Addr::from(i))),
                Behaviour::Open
            );
        }
    }
}
