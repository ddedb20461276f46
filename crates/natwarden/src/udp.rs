//! The UDP sockets of the I/O shell: every datagram comes with its ingress interface
//! and destination address (IP_PKTINFO / IPV6_RECVPKTINFO), and every reply leaves from
//! a chosen address and interface. This is the only place the daemon needs `unsafe`
//! for sockets.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use natwarden_core::Ingress;

const RECEIVE_BUFFER: libc::c_int = 1 << 20;

pub struct PktinfoSocket {
    fd: OwnedFd,
    v6: bool,
}

/// Control buffer for one pktinfo, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 128]);

/// Room for either address family.
#[repr(C)]
pub(crate) union SockAddr {
    pub(crate) v4: libc::sockaddr_in,
    pub(crate) v6: libc::sockaddr_in6,
}

pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub(crate) fn sockaddr(addr: SocketAddr) -> (SockAddr, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (
                SockAddr { v4: sa },
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            (
                SockAddr { v6: sa },
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

impl PktinfoSocket {
    /// A non-blocking UDP socket on 0.0.0.0:`port` (or [::]:`port`, IPv6 only)
    /// reporting pktinfo. Binding the wildcard is deliberate: the ingress checks look at
    /// every datagram's interface and destination, never at the bind address (RFC 6886
    /// section 3.3).
    pub fn bind(port: u16, v6: bool) -> io::Result<PktinfoSocket> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = check(unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let local = if v6 {
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            // Announcements go to ff02::1 (link-local scope): one hop, not looped back.
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 1)?;
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
        } else {
            setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
            // Announcements go to 224.0.0.1 (link-local): never routed, not looped back.
            setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 1)?;
            setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 0)?;
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        };
        // A burst (every host of a LAN re-mapping after an epoch reset) must queue,
        // not overflow the default ~208 KiB: room for about 4,000 requests. FORCE passes
        // rmem_max with CAP_NET_ADMIN, which the daemon has at start-up.
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)
            .or_else(|_| setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER))?;
        let (sa, len) = sockaddr(local);
        // SAFETY: `sa` holds a valid sockaddr of the length passed.
        check(unsafe { libc::bind(raw, (&sa as *const SockAddr).cast(), len) })?;
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
        // SAFETY: all-zero is valid for these plain C structs.
        let mut name: SockAddr = unsafe { zeroed() };
        let mut control = Control([0; 128]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut name as *mut SockAddr).cast();
        msg.msg_namelen = size_of::<SockAddr>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let len = n as usize;
        // SAFETY: the kernel wrote a sockaddr of our socket's family into `name`.
        let source = unsafe {
            if self.v6 {
                let a = name.v6;
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    0,
                    a.sin6_scope_id,
                ))
            } else {
                let a = name.v4;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
        };
        let mut ingress = None;
        // SAFETY: the CMSG_* helpers walk `control`, which the kernel filled and whose
        // length it set in msg_controllen; each header's length is checked before its
        // data is read (unaligned).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let h = &*cmsg;
                let data_len = h.cmsg_len as usize;
                if !self.v6
                    && h.cmsg_level == libc::IPPROTO_IP
                    && h.cmsg_type == libc::IP_PKTINFO
                    && data_len >= libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize
                {
                    let info: libc::in_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    ingress = Some(Ingress {
                        interface: u32::try_from(info.ipi_ifindex).unwrap_or(0),
                        source,
                        // ipi_addr is the destination in the IP header; ipi_spec_dst
                        // would be the local address the kernel chose to answer from.
                        destination: IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))),
                    });
                }
                if self.v6
                    && h.cmsg_level == libc::IPPROTO_IPV6
                    && h.cmsg_type == libc::IPV6_PKTINFO
                    && data_len >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize
                {
                    let info: libc::in6_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    ingress = Some(Ingress {
                        interface: info.ipi6_ifindex,
                        source,
                        destination: IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)),
                    });
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Some(Received {
            len,
            source,
            ingress,
        }))
    }

    /// Sends `data` to `to`, from address `from`, out of interface `ifindex`.
    pub fn send(&self, data: &[u8], to: SocketAddr, from: IpAddr, ifindex: u32) -> io::Result<()> {
        let mut control = Control([0; 128]);
        let (mut sa, sa_len) = sockaddr(to);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: all-zero is valid for these plain C structs.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut sa as *mut SockAddr).cast();
        msg.msg_namelen = sa_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA compute positions inside `control`,
        // which is large enough for one pktinfo of either family; writes are unaligned-safe.
        unsafe {
            match from {
                IpAddr::V4(from) => {
                    msg.msg_controllen =
                        libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    (*cmsg).cmsg_len =
                        libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: ifindex as libc::c_int,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(from).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                }
                IpAddr::V6(from) => {
                    msg.msg_controllen =
                        libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
                    let cmsg = libc::CMSG_FIRSTHDR(&msg);
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    (*cmsg).cmsg_len =
                        libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: from.octets(),
                        },
                        ipi6_ifindex: ifindex,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                }
            }
        }
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A received datagram: its length in the caller's buffer, its source, and the
/// ingress facts when the kernel supplied them.
pub struct Received {
    pub len: usize,
    pub source: SocketAddr,
    pub ingress: Option<Ingress>,
}
