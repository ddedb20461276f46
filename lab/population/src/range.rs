//! An address range given as CIDR (`100.64.0.0/16`, `2001:db8:64::/112`): parsing,
//! membership and walking its addresses in order.

use std::net::IpAddr;

/// The most addresses a range may hold: the truth file has a line per answering address.
pub const MAX_ADDRESSES: u128 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first address (host bits cleared).
    pub base: IpAddr,
    pub prefix_len: u8,
}

impl Range {
    /// Parses `ADDRESS/LEN`; the family must be `v6` or not, and the range at most
    /// [`MAX_ADDRESSES`] long. Host bits are cleared.
    pub fn parse(text: &str, v6: bool) -> Result<Range, String> {
        let (address, len) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not ADDRESS/PREFIX-LENGTH"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IP address"))?;
        if address.is_ipv6() != v6 {
            let want = if v6 { "IPv6" } else { "IPv4" };
            return Err(format!("`{text}` is not an {want} range"));
        }
        let bits = if v6 { 128 } else { 32 };
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| u32::from(*l) <= bits)
            .ok_or_else(|| format!("`{len}` is not a prefix length 0..={bits}"))?;
        let host_bits = bits - u32::from(prefix_len);
        if host_bits > MAX_ADDRESSES.trailing_zeros() {
            return Err(format!(
                "`{text}` holds 2^{host_bits} addresses; at most 2^24 are served"
            ));
        }
        let mask = !((1u128 << host_bits) - 1);
        let base = match address {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask).into()),
        };
        Ok(Range { base, prefix_len })
    }

    fn bits(&self) -> u32 {
        if self.base.is_ipv6() {
            128
        } else {
            32
        }
    }

    pub fn len(&self) -> u128 {
        1u128 << (self.bits() - u32::from(self.prefix_len))
    }

    fn base_bits(&self) -> u128 {
        match self.base {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let bits = match (address, self.base) {
            (IpAddr::V4(a), IpAddr::V4(_)) => u128::from(u32::from(a)),
            (IpAddr::V6(a), IpAddr::V6(_)) => u128::from(a),
            _ => return false,
        };
        bits.wrapping_sub(self.base_bits()) < self.len()
    }

    /// The addresses in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        let base = self.base_bits();
        let v6 = self.base.is_ipv6();
        (0..self.len()).map(move |i| {
            let bits = base + i;
            if v6 {
                IpAddr::V6(bits.into())
            } else {
                IpAddr::V4((bits as u32).into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_walks() {
        let r = Range::parse("100.64.0.7/30", false).expect("valid");
        assert_eq!(r.base, "100.64.0.4".parse::<IpAddr>().expect("address"));
        let all: Vec<String> = r.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            ["100.64.0.4", "100.64.0.5", "100.64.0.6", "100.64.0.7"]
        );
        assert!(r.contains("100.64.0.6".parse().expect("address")));
        assert!(!r.contains("100.64.0.8".parse().expect("address")));
        assert!(!r.contains("100.64.0.3".parse().expect("address")));
        assert!(!r.contains("::1".parse().expect("address")));
        let r6 = Range::parse("2001:db8:64::/126", true).expect("valid");
        assert_eq!(r6.len(), 4);
        assert!(r6.contains("2001:db8:64::3".parse().expect("address")));
        assert!(!r6.contains("2001:db8:64::4".parse().expect("address")));
        assert_eq!(
            Range::parse("100.64.0.0/16", false).expect("valid").len(),
            65536
        );
    }

    #[test]
    fn refuses_bad_ranges() {
        assert!(Range::parse("100.64.0.0", false).is_err());
        assert!(Range::parse("100.64.0.0/33", false).is_err());
        assert!(Range::parse("100.64.0.0/7", false).is_err());
        assert!(Range::parse("2001:db8::/64", true).is_err());
        assert!(Range::parse("2001:db8::/120", false).is_err());
        assert!(Range::parse("100.64.0.0/24", true).is_err());
    }
}
