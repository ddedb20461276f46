//! What the user named: addresses and CIDR ranges of both families, minus exclusions, as one
//! index space `0..len()` that the permutation walks. Only what was named is ever probed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::permutation::Permutation;

/// One family's address as a number, so ranges of either family share code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Block {
    v6: bool,
    first: u128,
    /// Inclusive: a /0 of IPv6 does not fit an exclusive end.
    last: u128,
}

impl Block {
    fn len(&self) -> u128 {
        self.last - self.first + 1
    }

    fn contains(&self, v6: bool, n: u128) -> bool {
        self.v6 == v6 && self.first <= n && n <= self.last
    }
}

fn number(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn address(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

/// Why a target or exclusion could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is neither an IPv4/IPv6 address nor a CIDR range (e.g. 192.0.2.0/24)")]
    Syntax(String),
    #[error("`{spec}`: prefix length {len} is longer than {max}")]
    PrefixLength { spec: String, len: u32, max: u32 },
    #[error(
        "`{spec}`: address has bits set beyond the /{len} prefix (did you mean {network}/{len}?)"
    )]
    HostBits {
        spec: String,
        len: u32,
        network: IpAddr,
    },
    #[error("the targets hold {count} addresses; at most {max} can be audited in one run (split the range, or use --shards)")]
    TooMany { count: u128, max: u64 },
}

/// An address or a CIDR range, as written on the command line or in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix_len: u32,
}

impl FromStr for Cidr {
    type Err = TargetError;

    fn from_str(spec: &str) -> Result<Cidr, TargetError> {
        let spec = spec.trim();
        let (addr, len) = match spec.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (spec, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| TargetError::Syntax(spec.to_string()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u32>()
                .map_err(|_| TargetError::Syntax(spec.to_string()))?,
        };
        if prefix_len > max {
            return Err(TargetError::PrefixLength {
                spec: spec.to_string(),
                len: prefix_len,
                max,
            });
        }
        let cidr = Cidr {
            network,
            prefix_len,
        };
        let block = cidr.block();
        let (_, n) = number(network);
        if n != block.first {
            return Err(TargetError::HostBits {
                spec: spec.to_string(),
                len: prefix_len,
                network: address(block.v6, block.first),
            });
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn block(&self) -> Block {
        let (v6, n) = number(self.network);
        let bits = if v6 { 128 } else { 32 };
        let host_bits = bits - self.prefix_len;
        let mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Block {
            v6,
            first: n & !mask,
            last: (n & !mask) | mask,
        }
    }
}

/// Reads a list file: one address or CIDR a line; blank lines and `#` comments are skipped.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, TargetError> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// The targets of one audit: the named ranges merged, minus the exclusions.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Sorted, disjoint; `offsets[i]` is the index of `blocks[i].first`.
    blocks: Vec<Block>,
    offsets: Vec<u64>,
    excluded: Vec<Block>,
    len: u64,
}

impl Targets {
    pub fn new(include: &[Cidr], exclude: &[Cidr]) -> Result<Targets, TargetError> {
        let blocks = merge(include.iter().map(Cidr::block).collect());
        let excluded = merge(exclude.iter().map(Cidr::block).collect());
        let count: u128 = blocks.iter().map(Block::len).sum();
        if count > Permutation::MAX_N as u128 {
            return Err(TargetError::TooMany {
                count,
                max: Permutation::MAX_N,
            });
        }
        let mut offsets = Vec::with_capacity(blocks.len());
        let mut at = 0u64;
        for b in &blocks {
            offsets.push(at);
            at += b.len() as u64;
        }
        Ok(Targets {
            blocks,
            offsets,
            excluded,
            len: at,
        })
    }

    /// Addresses in the index space, exclusions included (they are skipped when walked).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address at `index` (`< len()`), or `None` where it is excluded.
    pub fn get(&self, index: u64) -> Option<IpAddr> {
        let i = self
            .offsets
            .partition_point(|&o| o <= index)
            .checked_sub(1)?;
        let block = self.blocks.get(i)?;
        let n = block.first + (index - self.offsets[i]) as u128;
        if n > block.last || self.is_excluded(block.v6, n) {
            return None;
        }
        Some(address(block.v6, n))
    }

    /// Whether `addr` was named and is not excluded: only such an address is probed, and only
    /// such a reply source can be a target answering for itself.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (v6, n) = number(addr);
        let i = self.blocks.partition_point(|b| (b.v6, b.first) <= (v6, n));
        i > 0 && self.blocks[i - 1].contains(v6, n) && !self.is_excluded(v6, n)
    }

    /// How many addresses will be probed: the index space less what the exclusions remove.
    pub fn probed_count(&self) -> u64 {
        let mut removed = 0u128;
        for b in &self.blocks {
            for e in &self.excluded {
                if e.v6 == b.v6 && e.first <= b.last && b.first <= e.last {
                    removed += e.last.min(b.last) - e.first.max(b.first) + 1;
                }
            }
        }
        self.len - removed as u64
    }

    fn is_excluded(&self, v6: bool, n: u128) -> bool {
        let i = self
            .excluded
            .partition_point(|b| (b.v6, b.first) <= (v6, n));
        i > 0 && self.excluded[i - 1].contains(v6, n)
    }
}

/// Sorts and merges overlapping or adjacent blocks, so no address is probed twice.
fn merge(mut blocks: Vec<Block>) -> Vec<Block> {
    blocks.sort();
    let mut out: Vec<Block> = Vec::with_capacity(blocks.len());
    for b in blocks {
        match out.last_mut() {
            Some(last) if last.v6 == b.v6 && b.first <= last.last.saturating_add(1) => {
                last.last = last.last.max(b.last);
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(specs: &[&str]) -> Vec<Cidr> {
        specs.iter().map(|s| s.parse().expect(s)).collect()
    }

    #[test]
    fn addresses_ranges_and_exclusions() {
        let t = Targets::new(
            &cidrs(&["192.0.2.0/30", "198.51.100.9", "2001:db8::/126"]),
            &cidrs(&["192.0.2.1"]),
        )
        .expect("valid");
        assert_eq!(t.len(), 9);
        assert_eq!(t.probed_count(), 8);
        let all: Vec<IpAddr> = (0..t.len()).filter_map(|i| t.get(i)).collect();
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "192.0.2.0",
                "192.0.2.2",
                "192.0.2.3",
                "198.51.100.9",
                "2001:db8::",
                "2001:db8::1",
                "2001:db8::2",
                "2001:db8::3"
            ]
        );
        assert!(t.contains("192.0.2.3".parse().unwrap()));
        assert!(!t.contains("192.0.2.1".parse().unwrap()));
        assert!(!t.contains("192.0.2.4".parse().unwrap()));
        assert!(!t.contains("::ffff:192.0.2.3".parse().unwrap()));
    }

    #[test]
    fn overlapping_ranges_are_probed_once() {
        let t = Targets::new(
            &cidrs(&["10.0.0.0/24", "10.0.0.128/25", "10.0.1.0/24"]),
            &[],
        )
        .expect("valid");
        assert_eq!(t.len(), 512);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(matches!(
            "10.0.0.1/24".parse::<Cidr>(),
            Err(TargetError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(TargetError::PrefixLength { .. })
        ));
        assert!(matches!(
            "gateway".parse::<Cidr>(),
            Err(TargetError::Syntax(_))
        ));
        let err = Targets::new(&cidrs(&["2001:db8::/64"]), &[]).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        let list = parse_list("# lab\n192.0.2.0/31  # two\n\n198.51.100.1\n").expect("list");
        assert_eq!(list.len(), 2);
    }
}
