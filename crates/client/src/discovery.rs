//! Which gateway to ask: the default router (RFC 6887 section 8.1: "the default router list
//! ... is used"; RFC 6886 section 3), read from /proc/net/route and /proc/net/ipv6_route.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::error::Error;
use crate::SERVER_PORT;

const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;
const RTF_REJECT: u32 = 0x0200;

/// A default router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub address: IpAddr,
    /// The interface the route leaves by.
    pub interface: String,
    /// The interface index for a link-local IPv6 router (fe80::/10), else 0.
    pub scope_id: u32,
}

impl Gateway {
    /// The gateway's PCP/NAT-PMP server socket address (port 5351), scoped when link-local.
    pub fn server(&self) -> SocketAddr {
        match self.address {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), SERVER_PORT),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, SERVER_PORT, 0, self.scope_id)),
        }
    }
}

/// The default gateway: the IPv4 default route's (lowest metric) if there is one — NAT-PMP and
/// PCP both work there — else the IPv6 one's.
pub fn default_gateway() -> Result<Gateway, Error> {
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        if let Some((address, interface)) = ipv4_default_route(&text) {
            return Ok(Gateway {
                address: IpAddr::V4(address),
                interface,
                scope_id: 0,
            });
        }
    }
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        if let Some((address, interface)) = ipv6_default_route(&text) {
            let scope_id = if is_link_local(&address) {
                interface_index(&interface).unwrap_or(0)
            } else {
                0
            };
            return Ok(Gateway {
                address: IpAddr::V6(address),
                interface,
                scope_id,
            });
        }
    }
    Err(Error::NoGateway)
}

/// The gateway of the lowest-metric IPv4 default route in /proc/net/route's text.
///
/// Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses are the
/// kernel's `__be32` printed as a host-order hexadecimal number.
pub fn ipv4_default_route(text: &str) -> Option<(Ipv4Addr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let destination = u32::from_str_radix(f[1], 16).ok()?;
            let gateway = u32::from_str_radix(f[2], 16).ok()?;
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            let mask = u32::from_str_radix(f[7], 16).ok()?;
            let usable =
                flags & (RTF_UP | RTF_GATEWAY) == (RTF_UP | RTF_GATEWAY) && flags & RTF_REJECT == 0;
            (destination == 0 && mask == 0 && gateway != 0 && usable).then(|| {
                (
                    metric,
                    Ipv4Addr::from(gateway.to_ne_bytes()),
                    f[0].to_owned(),
                )
            })
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, address, interface)| (address, interface))
}

/// The next hop of the lowest-metric IPv6 default route (`::/0`) in /proc/net/ipv6_route's
/// text. Columns: destination, prefix length, source, prefix length, next hop, metric,
/// refcount, use, flags, interface; all hexadecimal.
pub fn ipv6_default_route(text: &str) -> Option<(Ipv6Addr, String)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let destination = parse_ipv6_hex(f[0])?;
            let prefix_len = u8::from_str_radix(f[1], 16).ok()?;
            let next_hop = parse_ipv6_hex(f[4])?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let usable = flags & (RTF_UP | RTF_GATEWAY) == (RTF_UP | RTF_GATEWAY)
                && flags & RTF_REJECT == 0
                && f[9] != "lo";
            (destination.is_unspecified()
                && prefix_len == 0
                && !next_hop.is_unspecified()
                && usable)
                .then(|| (metric, next_hop, f[9].to_owned()))
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, address, interface)| (address, interface))
}

fn parse_ipv6_hex(s: &str) -> Option<Ipv6Addr> {
    if s.len() != 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from)
}

fn is_link_local(address: &Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// The interface's index, from sysfs (no `unsafe` needed).
pub fn interface_index(name: &str) -> Option<u32> {
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return None;
    }
    fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth2\t00000000\t0103A8C0\t0203\t0\t0\t1\t00000000\t0\t0\t0
";

    #[test]
    fn ipv4_default_route_with_the_lowest_metric() {
        let (gw, iface) = ipv4_default_route(ROUTE).expect("a default route");
        if cfg!(target_endian = "little") {
            assert_eq!(gw, Ipv4Addr::new(192, 168, 1, 1));
        }
        assert_eq!(
            iface, "eth0",
            "metric 100 beats 200; the reject route is skipped"
        );
        assert_eq!(
            ipv4_default_route(&ROUTE.replace("0003\t0\t0\t100", "0001\t0\t0\t100")).map(|r| r.1),
            Some("eth1".into())
        );
        assert_eq!(ipv4_default_route("Iface\tDestination\n"), None);
        assert_eq!(ipv4_default_route("garbage\nx y z\n"), None);
    }

    #[test]
    fn ipv6_default_route_skips_loopback_and_unreachable() {
        let text = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
";
        let (gw, iface) = ipv6_default_route(text).expect("a default route");
        assert_eq!(gw, "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(iface, "eth0");
        assert!(is_link_local(&gw));
        assert_eq!(ipv6_default_route("short line\n"), None);
    }

    #[test]
    fn server_address_is_port_5351_scoped_when_link_local() {
        let g = Gateway {
            address: "fe80::1".parse().unwrap(),
            interface: "eth0".into(),
            scope_id: 3,
        };
        assert_eq!(g.server().to_string(), "[fe80::1%3]:5351");
        assert_eq!(interface_index("../etc"), None);
        assert_eq!(interface_index("lo"), Some(1));
    }
}
