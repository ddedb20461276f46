//! The UDP sockets of the I/O shell: every datagram comes with its ingress interface
//! and destination address (IP_PKTINFO / IPV6_RECVPKTINFO), and every reply leaves from
//! a chosen address and interface (the system calls are in `sys`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use natwarden_core::Ingress;

use crate::sys;

const RECEIVE_BUFFER: libc::c_int = 1 << 20;

pub struct PktinfoSocket {
    fd: OwnedFd,
    v6: bool,
}

impl PktinfoSocket {
    /// A non-blocking UDP socket on 0.0.0.0:`port` (or [::]:`port`, IPv6 only)
    /// reporting pktinfo. Binding the wildcard is deliberate: the ingress checks look at
    /// every datagram's interface and destination, never at the bind address (RFC 6886
    /// section 3.3).
    pub fn bind(port: u16, v6: bool) -> io::Result<PktinfoSocket> {
        let family = if v6 { sys::AF_INET6 } else { sys::AF_INET };
        let fd = sys::socket(family, libc::SOCK_DGRAM, 0)?;
        let s = fd.as_fd();
        let local = if v6 {
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            // Announcements go to ff02::1 (link-local scope): one hop, not looped back.
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 1)?;
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
        } else {
            sys::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
            // Announcements go to 224.0.0.1 (link-local): never routed, not looped back.
            sys::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 1)?;
            sys::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 0)?;
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        };
        // A burst (every host of a LAN re-mapping after an epoch reset) must queue,
        // not overflow the default ~208 KiB: room for about 4,000 requests. FORCE passes
        // rmem_max with CAP_NET_ADMIN, which the daemon has at start-up.
        sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER).or_else(
            |_| sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER),
        )?;
        sys::bind(s, local)?;
        Ok(PktinfoSocket { fd, v6 })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// One datagram, or `None` when none is waiting. A datagram larger than `buf` comes
    /// back cut at `buf.len()`: with a buffer larger than any message (PCP's 1100
    /// octets) the cut one is still recognisably too long, and RFC 6887 section 8.2
    /// answers it (MALFORMED_REQUEST) from its first 1100 octets alone. Datagrams
    /// without pktinfo come back with `ingress: None` so the caller can count and drop
    /// them.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let Some(d) = sys::recv_with_pktinfo(self.fd.as_fd(), self.v6, buf)? else {
            return Ok(None);
        };
        let ingress = d.info.map(|info| Ingress {
            interface: info.ifindex,
            source: d.source,
            destination: info.destination,
        });
        Ok(Some(Received {
            len: d.len,
            source: d.source,
            ingress,
        }))
    }

    /// Sends `data` to `to`, from address `from`, out of interface `ifindex`.
    pub fn send(&self, data: &[u8], to: SocketAddr, from: IpAddr, ifindex: u32) -> io::Result<()> {
        sys::send_with_pktinfo(self.fd.as_fd(), data, to, from, ifindex)
    }
}

/// A received datagram: its length in the caller's buffer, its source, and the
/// ingress facts when the kernel supplied them.
pub struct Received {
    pub len: usize,
    pub source: SocketAddr,
    pub ingress: Option<Ingress>,
}
