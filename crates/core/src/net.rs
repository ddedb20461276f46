//! IP prefixes (address/length) as used by interfaces, permission rules and checks.
//! Parsing accepts "ADDR/LEN" and a bare address (a host prefix).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix. The address keeps its host bits (an interface's own address and
/// its subnet are one value); [`Ipv4Net::network`] clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("`{text}` is not an {family} address")]
    BadAddress { text: String, family: &'static str },
    #[error("prefix length `{text}` is not a number from 0 to {max}")]
    BadPrefix { text: String, max: u8 },
}

/// "ADDR/LEN" or a bare "ADDR" (a host prefix of `max` bits), for either family.
fn parse_prefix<A: FromStr>(
    s: &str,
    family: &'static str,
    max: u8,
) -> Result<(A, u8), NetParseError> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = addr.parse::<A>().map_err(|_| NetParseError::BadAddress {
        text: addr.to_string(),
        family,
    })?;
    let prefix_len =
        match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                NetParseError::BadPrefix {
                    text: l.to_string(),
                    max,
                }
            })?,
        };
    Ok((addr, prefix_len))
}

impl Ipv4Net {
    /// `None` when `prefix_len > 32`.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Net> {
        if prefix_len > 32 {
            None
        } else {
            Some(Ipv4Net { addr, prefix_len })
        }
    }

    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        // A shift by 32 overflows, so /0 is spelled out.
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == (u32::from(self.addr) & self.mask())
    }

    /// Two prefixes overlap when one contains the other's network.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parse_prefix(s, "IPv4", 32)?;
        Ok(Ipv4Net { addr, prefix_len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid prefix")
    }

    #[test]
    fn contains_respects_the_prefix() {
        let n = net("192.168.1.1/24");
        assert!(n.contains(Ipv4Addr::new(192, 168, 1, 200)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 2, 1)));
        assert_eq!(n.network(), Ipv4Addr::new(192, 168, 1, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(192, 168, 1, 255));
    }

    #[test]
    fn zero_prefix_contains_everything_and_bare_address_is_host() {
        assert!(net("0.0.0.0/0").contains(Ipv4Addr::new(203, 0, 113, 9)));
        let host = net("10.0.0.5");
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(Ipv4Addr::new(10, 0, 0, 5)));
        assert!(!host.contains(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(net("10.0.0.0/8").overlaps(&net("10.1.2.0/24")));
        assert!(net("10.1.2.0/24").overlaps(&net("10.0.0.0/8")));
        assert!(!net("10.1.2.0/24").overlaps(&net("10.1.3.0/24")));
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(
            "10.0.0.0/33".parse::<Ipv4Net>(),
            Err(NetParseError::BadPrefix {
                text: "33".into(),
                max: 32
            })
        );
        assert_eq!(
            "10.0.0/8".parse::<Ipv4Net>(),
            Err(NetParseError::BadAddress {
                text: "10.0.0".into(),
                family: "IPv4"
            })
        );
    }
}

/// An IPv6 prefix; like [`Ipv4Net`], the address keeps its host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Net {
    addr: std::net::Ipv6Addr,
    prefix_len: u8,
}

impl Ipv6Net {
    pub const fn new(addr: std::net::Ipv6Addr, prefix_len: u8) -> Option<Ipv6Net> {
        if prefix_len > 128 {
            None
        } else {
            Some(Ipv6Net { addr, prefix_len })
        }
    }

    pub const fn addr(&self) -> std::net::Ipv6Addr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u128 {
        if self.prefix_len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix_len))
        }
    }

    pub fn contains(&self, ip: std::net::Ipv6Addr) -> bool {
        (u128::from(ip) & self.mask()) == (u128::from(self.addr) & self.mask())
    }

    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let a = Ipv6Net {
            addr: self.addr,
            prefix_len: shorter,
        };
        a.contains(other.addr)
    }

    /// fe80::/10: on-link only, never a pinhole's address.
    pub fn is_link_local(&self) -> bool {
        (self.addr.segments()[0] & 0xffc0) == 0xfe80
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An IPv4 or IPv6 prefix, as permission rules and allowed ranges take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpNet {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self, ip) {
            (IpNet::V4(n), std::net::IpAddr::V4(a)) => n.contains(a),
            (IpNet::V6(n), std::net::IpAddr::V6(a)) => n.contains(a),
            _ => false,
        }
    }
}

impl From<Ipv4Net> for IpNet {
    fn from(n: Ipv4Net) -> IpNet {
        IpNet::V4(n)
    }
}

impl From<Ipv6Net> for IpNet {
    fn from(n: Ipv6Net) -> IpNet {
        IpNet::V6(n)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4(n) => n.fmt(f),
            IpNet::V6(n) => n.fmt(f),
        }
    }
}

impl FromStr for IpNet {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            let (addr, prefix_len) = parse_prefix(s, "IPv6", 128)?;
            Ok(IpNet::V6(Ipv6Net { addr, prefix_len }))
        } else {
            s.parse::<Ipv4Net>().map(IpNet::V4)
        }
    }
}

#[cfg(test)]
mod tests6 {
    use super::*;

    #[test]
    fn ipv6_prefixes_contain_overlap_and_parse() {
        let n: IpNet = "2001:db8:1::1/64".parse().expect("prefix");
        assert!(n.contains("2001:db8:1::10".parse().expect("addr")));
        assert!(!n.contains("2001:db8:2::10".parse().expect("addr")));
        assert!(
            !n.contains("192.168.1.1".parse().expect("addr")),
            "families never mix"
        );
        let IpNet::V6(v6) = n else { panic!("v6") };
        assert!(v6.overlaps(&Ipv6Net::new("2001:db8::".parse().expect("a"), 32).expect("net")));
        assert!(Ipv6Net::new("fe80::1".parse().expect("a"), 64)
            .expect("net")
            .is_link_local());
        assert_eq!(
            "2001:db8::/129".parse::<IpNet>(),
            Err(NetParseError::BadPrefix {
                text: "129".into(),
                max: 128
            })
        );
        assert_eq!(
            "2001:db8::/129".parse::<IpNet>().map_err(|e| e.to_string()),
            Err("prefix length `129` is not a number from 0 to 128".into())
        );
        assert_eq!(
            "10.0.0.0/8".parse::<IpNet>(),
            Ok(IpNet::V4("10.0.0.0/8".parse().expect("v4")))
        );
    }
}
