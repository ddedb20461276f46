//! Small rtnetlink (NETLINK_ROUTE) dumps: interface indexes and names, IPv4 and IPv6
//! addresses, and which interfaces carry the IPv4 default route. Read-only.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::netlink::{
    self, Builder, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use crate::socket::NlSocket;
use crate::FirewallError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub index: u32,
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// An IPv6 address of an interface that is usable now (not tentative, not failed DAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr6 {
    pub index: u32,
    pub name: String,
    pub address: Ipv6Addr,
    pub prefix_len: u8,
}

const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// Not usable (yet): duplicate address detection is running or found a duplicate.
const IFA_UNUSABLE: u32 = libc::IFA_F_TENTATIVE | libc::IFA_F_DADFAILED;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;
const RTNEXTHOP_LEN: usize = 8;

/// A dump that keeps being interrupted by concurrent changes is retried this often.
const DUMP_ATTEMPTS: usize = 5;

/// The kernel answers a dump at once; this only bounds a wait that should never happen.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The index of interface `name`, None if there is no such interface.
pub fn interface_index(name: &str) -> Result<Option<u32>, FirewallError> {
    crate::nft::ifname_bytes(name)?;
    Ok(links()?
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(i, _)| i))
}

/// Every IPv4 address of every interface (RTM_GETADDR dump).
pub fn ipv4_addresses() -> Result<Vec<InterfaceAddr>, FirewallError> {
    let links = links()?;
    let mut out = Vec::new();
    for payload in dump(RTM_GETADDR, &ifaddrmsg(libc::AF_INET as u8), RTM_NEWADDR)? {
        if let Some((index, address, prefix_len)) = parse_addr(&payload)? {
            out.push(InterfaceAddr {
                index,
                name: link_name(&links, index),
                address,
                prefix_len,
            });
        }
    }
    Ok(out)
}

/// Every usable IPv6 address of every interface, link-local ones included (RTM_GETADDR
/// dump). Tentative addresses (duplicate address detection still running) and ones whose
/// detection failed are left out: the kernel will not send from them.
pub fn ipv6_addresses() -> Result<Vec<InterfaceAddr6>, FirewallError> {
    let links = links()?;
    let mut out = Vec::new();
    for payload in dump(RTM_GETADDR, &ifaddrmsg(libc::AF_INET6 as u8), RTM_NEWADDR)? {
        if let Some((index, address, prefix_len)) = parse_addr6(&payload)? {
            out.push(InterfaceAddr6 {
                index,
                name: link_name(&links, index),
                address,
                prefix_len,
            });
        }
    }
    Ok(out)
}

fn link_name(links: &[(u32, String)], index: u32) -> String {
    links
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, n)| n.clone())
        .unwrap_or_default()
}

/// The interface index of every IPv4 default route in the main table (each nexthop of a
/// multipath route counts), without duplicates, in dump order.
pub fn default_route_interfaces() -> Result<Vec<u32>, FirewallError> {
    let mut out = Vec::new();
    for payload in dump(RTM_GETROUTE, &rtmsg(libc::AF_INET as u8), RTM_NEWROUTE)? {
        for oif in parse_default_route(&payload)? {
            if !out.contains(&oif) {
                out.push(oif);
            }
        }
    }
    Ok(out)
}

/// Notifications of interfaces appearing, going or changing (RTMGRP_LINK) and of IPv4
/// and IPv6 address changes (RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR), so the daemon can
/// follow its interfaces by name, and their addresses, without polling. An IPv6 address
/// also notifies when it leaves the tentative state.
pub struct AddressMonitor {
    sock: NlSocket,
}

impl AddressMonitor {
    pub fn open() -> Result<AddressMonitor, FirewallError> {
        let groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        let sock = NlSocket::open_groups(libc::NETLINK_ROUTE, groups)
            .map_err(|e| FirewallError::io("opening the rtnetlink address monitor", e))?;
        Ok(AddressMonitor { sock })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.raw_fd()
    }

    /// Reads every pending notification; true when any arrived, or when the kernel
    /// dropped some (ENOBUFS): either way the caller re-reads the addresses, which is
    /// simpler and more robust than applying each notification.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut changed = false;
        for _ in 0..1024 {
            match self.sock.recv(&mut buf, true) {
                Ok(_) => changed = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    changed = true;
                    break;
                }
            }
        }
        changed
    }
}

/// (index, name) of every interface.
pub fn links() -> Result<Vec<(u32, String)>, FirewallError> {
    dump(RTM_GETLINK, &ifinfomsg(libc::AF_UNSPEC as u8), RTM_NEWLINK)?
        .iter()
        .map(|p| parse_link(p))
        .filter_map(Result::transpose)
        .collect()
}

fn malformed(what: netlink::Malformed) -> FirewallError {
    FirewallError::Malformed(format!("rtnetlink: {what}"))
}

/// Runs one dump request and returns the payload of each reply of type `want`.
fn dump(request: u16, header: &[u8], want: u16) -> Result<Vec<Vec<u8>>, FirewallError> {
    let sock = NlSocket::open(libc::NETLINK_ROUTE)
        .map_err(|e| FirewallError::io("opening rtnetlink socket", e))?;
    sock.set_receive_timeout(REPLY_TIMEOUT)
        .map_err(|e| FirewallError::io("setting rtnetlink receive timeout", e))?;
    for attempt in 0..DUMP_ATTEMPTS {
        let seq = attempt as u32 + 1;
        let mut b = Builder::new();
        b.message(request, NLM_F_REQUEST | NLM_F_DUMP, seq, |b| b.raw(header));
        let req = b
            .finish()
            .map_err(|_| malformed(netlink::Malformed("request too long")))?;
        sock.send(&req)
            .map_err(|e| FirewallError::io("sending rtnetlink dump request", e))?;
        match collect(&sock, seq, want)? {
            Some(out) => return Ok(out),
            None => continue, // interrupted: the kernel's view changed mid-dump
        }
    }
    Err(FirewallError::Malformed(
        "rtnetlink dump interrupted repeatedly".into(),
    ))
}

/// Reads one dump to NLMSG_DONE. None if the kernel flagged it as inconsistent.
fn collect(sock: &NlSocket, seq: u32, want: u16) -> Result<Option<Vec<Vec<u8>>>, FirewallError> {
    let mut out = Vec::new();
    let mut interrupted = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock
            .recv(&mut buf, false)
            .map_err(|e| FirewallError::io("reading rtnetlink dump", e))?;
        for m in netlink::messages(&buf[..n]) {
            let m = m.map_err(malformed)?;
            if m.seq != seq {
                continue;
            }
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match m.ty {
                NLMSG_DONE => return Ok((!interrupted).then_some(out)),
                NLMSG_ERROR => {
                    let ack = netlink::parse_ack(&m).map_err(malformed)?;
                    if ack.errno != 0 {
                        return Err(FirewallError::io(
                            "rtnetlink dump",
                            std::io::Error::from_raw_os_error(ack.errno),
                        ));
                    }
                }
                NLMSG_NOOP | NLMSG_OVERRUN => {}
                t if t == want => out.push(m.payload.to_vec()),
                _ => {}
            }
        }
    }
}

fn ifinfomsg(family: u8) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0u8; IFINFOMSG_LEN];
    h[0] = family;
    h
}

fn ifaddrmsg(family: u8) -> [u8; IFADDRMSG_LEN] {
    let mut h = [0u8; IFADDRMSG_LEN];
    h[0] = family;
    h
}

fn rtmsg(family: u8) -> [u8; RTMSG_LEN] {
    let mut h = [0u8; RTMSG_LEN];
    h[0] = family;
    h
}

/// RTM_NEWLINK: ifinfomsg { family, pad, type: u16, index: i32, flags, change } + attrs.
fn parse_link(p: &[u8]) -> Result<Option<(u32, String)>, FirewallError> {
    let Some(h) = p.get(..IFINFOMSG_LEN) else {
        return Err(malformed(netlink::Malformed("short ifinfomsg")));
    };
    let index = netlink::u32_ne(&h[4..8]);
    for a in netlink::attrs(&p[IFINFOMSG_LEN..]) {
        let (ty, v) = a.map_err(malformed)?;
        if ty == IFLA_IFNAME {
            let name = v.split(|&b| b == 0).next().unwrap_or(&[]);
            return Ok(Some((index, String::from_utf8_lossy(name).into_owned())));
        }
    }
    Ok(None)
}

/// One RTM_NEWADDR, whatever its family.
struct IfAddr<'a> {
    family: u8,
    prefix_len: u8,
    index: u32,
    /// IFA_FLAGS when present (it holds all 32 bits), else the header's 8.
    flags: u32,
    /// IFA_LOCAL, else IFA_ADDRESS: IFA_LOCAL is the interface's own address, IFA_ADDRESS
    /// the peer on point-to-point links (and the own address elsewhere).
    address: Option<&'a [u8]>,
}

/// RTM_NEWADDR: ifaddrmsg { family, prefixlen, flags, scope, index: u32 } + attrs.
fn parse_ifaddr(p: &[u8]) -> Result<IfAddr<'_>, FirewallError> {
    let Some(h) = p.get(..IFADDRMSG_LEN) else {
        return Err(malformed(netlink::Malformed("short ifaddrmsg")));
    };
    let (mut local, mut address, mut flags) = (None, None, u32::from(h[2]));
    for a in netlink::attrs(&p[IFADDRMSG_LEN..]) {
        let (ty, v) = a.map_err(malformed)?;
        match ty {
            IFA_LOCAL => local = Some(v),
            IFA_ADDRESS => address = Some(v),
            IFA_FLAGS => flags = netlink::attr_u32(v).unwrap_or(flags),
            _ => {}
        }
    }
    Ok(IfAddr {
        family: h[0],
        prefix_len: h[1],
        index: netlink::u32_ne(&h[4..8]),
        flags,
        address: local.or(address),
    })
}

fn parse_addr(p: &[u8]) -> Result<Option<(u32, Ipv4Addr, u8)>, FirewallError> {
    let a = parse_ifaddr(p)?;
    if a.family != libc::AF_INET as u8 {
        return Ok(None);
    }
    let ip = a.address.and_then(|v| <[u8; 4]>::try_from(v).ok());
    Ok(ip.map(|ip| (a.index, Ipv4Addr::from(ip), a.prefix_len)))
}

fn parse_addr6(p: &[u8]) -> Result<Option<(u32, Ipv6Addr, u8)>, FirewallError> {
    let a = parse_ifaddr(p)?;
    if a.family != libc::AF_INET6 as u8 || a.flags & IFA_UNUSABLE != 0 {
        return Ok(None);
    }
    let ip = a.address.and_then(|v| <[u8; 16]>::try_from(v).ok());
    Ok(ip.map(|ip| (a.index, Ipv6Addr::from(ip), a.prefix_len)))
}

/// RTM_NEWROUTE: rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type,
/// flags: u32 } + attrs. Returns the output interfaces if this is an IPv4 unicast
/// default route of the main table.
fn parse_default_route(p: &[u8]) -> Result<Vec<u32>, FirewallError> {
    let Some(h) = p.get(..RTMSG_LEN) else {
        return Err(malformed(netlink::Malformed("short rtmsg")));
    };
    if h[0] != libc::AF_INET as u8 || h[1] != 0 || h[7] != RTN_UNICAST {
        return Ok(Vec::new());
    }
    // rtm_table holds only 8 bits; RTA_TABLE, when present, is authoritative.
    let mut table = u32::from(h[4]);
    let mut oifs = Vec::new();
    for a in netlink::attrs(&p[RTMSG_LEN..]) {
        let (ty, v) = a.map_err(malformed)?;
        match ty {
            RTA_TABLE => table = netlink::attr_u32(v).unwrap_or(table),
            RTA_OIF => oifs.extend(netlink::attr_u32(v)),
            RTA_MULTIPATH => oifs.extend(multipath_oifs(v)?),
            _ => {}
        }
    }
    Ok(if table == RT_TABLE_MAIN {
        oifs
    } else {
        Vec::new()
    })
}

/// rtnexthop { len: u16, flags: u8, hops: u8, ifindex: i32 } + attrs, repeated.
fn multipath_oifs(mut v: &[u8]) -> Result<Vec<u32>, FirewallError> {
    let mut out = Vec::new();
    while v.len() >= RTNEXTHOP_LEN {
        let len = usize::from(netlink::u16_ne(&v[0..2]));
        if len < RTNEXTHOP_LEN || len > v.len() {
            return Err(malformed(netlink::Malformed("bad rtnexthop length")));
        }
        out.push(netlink::u32_ne(&v[4..8]));
        v = v.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut b = Builder::new();
        b.message(0, 0, 0, |b| b.attr(ty, v));
        b.finish().unwrap()[netlink::NLMSG_HDRLEN..].to_vec()
    }

    #[test]
    fn link_name_and_index() {
        let mut p = ifinfomsg(0).to_vec();
        p[4..8].copy_from_slice(&7u32.to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"wan0\0"));
        assert_eq!(parse_link(&p).unwrap(), Some((7, "wan0".into())));
        assert!(parse_link(&p[..10]).is_err());
    }

    #[test]
    fn address_prefers_local_over_peer() {
        let mut p = ifaddrmsg(libc::AF_INET as u8).to_vec();
        p[1] = 24;
        p[4..8].copy_from_slice(&3u32.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &[198, 51, 100, 1]));
        p.extend(attr(IFA_LOCAL, &[192, 0, 2, 5]));
        assert_eq!(
            parse_addr(&p).unwrap(),
            Some((3, Ipv4Addr::new(192, 0, 2, 5), 24))
        );
        let mut bad = p.clone();
        bad.extend([200, 0, 1, 0]); // attribute claiming 200 bytes
        assert!(parse_addr(&bad).is_err());
    }

    fn ifaddr6(prefix_len: u8, header_flags: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = ifaddrmsg(libc::AF_INET6 as u8).to_vec();
        p[1] = prefix_len;
        p[2] = header_flags;
        p[4..8].copy_from_slice(&4u32.to_ne_bytes());
        for (ty, v) in attrs {
            p.extend(attr(*ty, v));
        }
        p
    }

    #[test]
    fn ipv6_address_with_usable_flags() {
        let a: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        // IFA_F_PERMANENT (0x80) and IFA_F_NOPREFIXROUTE (0x200) do not matter.
        let p = ifaddr6(
            64,
            0x80,
            &[
                (IFA_ADDRESS, &a.octets()),
                (IFA_FLAGS, &0x280u32.to_ne_bytes()),
            ],
        );
        assert_eq!(parse_addr6(&p).unwrap(), Some((4, a, 64)));
        let p = ifaddr6(64, 0x80, &[(IFA_ADDRESS, &ll.octets())]);
        assert_eq!(parse_addr6(&p).unwrap(), Some((4, ll, 64)));
        // An IPv4 message is not an IPv6 address, nor the other way round.
        assert_eq!(parse_addr(&p).unwrap(), None);
        let mut v4 = ifaddrmsg(libc::AF_INET as u8).to_vec();
        v4.extend(attr(IFA_LOCAL, &[192, 0, 2, 1]));
        assert_eq!(parse_addr6(&v4).unwrap(), None);
    }

    #[test]
    fn tentative_and_dadfailed_ipv6_addresses_are_skipped() {
        let a: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        for flags in [
            libc::IFA_F_TENTATIVE,
            libc::IFA_F_DADFAILED | libc::IFA_F_TENTATIVE,
        ] {
            // In the header's 8 bits ...
            let p = ifaddr6(64, flags as u8, &[(IFA_ADDRESS, &a.octets())]);
            assert_eq!(parse_addr6(&p).unwrap(), None, "{flags:#x}");
            // ... and in IFA_FLAGS, which wins over the header.
            let p = ifaddr6(
                64,
                0,
                &[
                    (IFA_ADDRESS, &a.octets()),
                    (IFA_FLAGS, &flags.to_ne_bytes()),
                ],
            );
            assert_eq!(parse_addr6(&p).unwrap(), None, "{flags:#x}");
        }
        let p = ifaddr6(
            64,
            libc::IFA_F_TENTATIVE as u8,
            &[(IFA_ADDRESS, &a.octets()), (IFA_FLAGS, &0u32.to_ne_bytes())],
        );
        assert_eq!(parse_addr6(&p).unwrap(), Some((4, a, 64)));
        // A point-to-point address: IFA_LOCAL is ours, IFA_ADDRESS the peer.
        let peer: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let p = ifaddr6(
            128,
            0,
            &[(IFA_ADDRESS, &peer.octets()), (IFA_LOCAL, &a.octets())],
        );
        assert_eq!(parse_addr6(&p).unwrap(), Some((4, a, 128)));
    }

    #[test]
    fn default_routes_main_table_only_with_multipath() {
        let mut p = rtmsg(libc::AF_INET as u8).to_vec();
        p[4] = 254;
        p[7] = RTN_UNICAST;
        p.extend(attr(RTA_TABLE, &254u32.to_ne_bytes()));
        p.extend(attr(RTA_OIF, &5u32.to_ne_bytes()));
        assert_eq!(parse_default_route(&p).unwrap(), vec![5]);

        let mut nh = Vec::new();
        for ifindex in [8u32, 9] {
            nh.extend(8u16.to_ne_bytes());
            nh.extend([0, 0]);
            nh.extend(ifindex.to_ne_bytes());
        }
        let mut mp = rtmsg(libc::AF_INET as u8).to_vec();
        mp[4] = 254;
        mp[7] = RTN_UNICAST;
        mp.extend(attr(RTA_MULTIPATH, &nh));
        assert_eq!(parse_default_route(&mp).unwrap(), vec![8, 9]);

        let mut other = p.clone();
        other[1] = 24; // not a default route
        assert!(parse_default_route(&other).unwrap().is_empty());
        let mut local = rtmsg(libc::AF_INET as u8).to_vec();
        local[4] = 255;
        local[7] = RTN_UNICAST;
        local.extend(attr(RTA_OIF, &5u32.to_ne_bytes()));
        assert!(parse_default_route(&local).unwrap().is_empty());
    }
}
