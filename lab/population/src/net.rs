//! The population's UDP sockets: one per family on the wildcard address, port 5351, reading
//! and answering datagrams in batches of 64 (recvmmsg/sendmmsg) with their pktinfo.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;
/// Largest datagram read; longer ones are truncated (and a PCP request that long is invalid).
pub const DATAGRAM_LEN: usize = 1104;
/// Room for one pktinfo control message of either family.
const CONTROL_LEN: usize = 64;

#[repr(C)]
union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

/// One received datagram: where from, to which local address, and its length.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: IpAddr,
    pub len: usize,
}

/// A reply to send: `len` bytes of its buffer, to `to`, from `from`.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub from: IpAddr,
    pub len: usize,
}

pub struct Socket {
    fd: OwnedFd,
    v6: bool,
    names: Box<[SockAddr; BATCH]>,
    controls: Box<[Control; BATCH]>,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int of the size passed.
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

fn sockaddr(address: SocketAddr) -> (SockAddr, libc::socklen_t) {
    match address {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
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
            // SAFETY: all-zero is a valid sockaddr_in6.
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

impl Socket {
    /// A non-blocking socket on 0.0.0.0:`port` (or [::]:`port`, IPv6 only) reporting each
    /// datagram's destination and allowed to answer from any address (FREEBIND): the
    /// AnyIP addresses are local routes, not assigned addresses.
    pub fn bind(port: u16, v6: bool) -> io::Result<Socket> {
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
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)?;
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
        } else {
            setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
            setsockopt_int(raw, libc::IPPROTO_IP, libc::IP_FREEBIND, 1)?;
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        };
        // Scans come in bursts: a few MB of queue (FORCE works as root, else best effort).
        let rcvbuf = 8 << 20;
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf)
            .or_else(|_| setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf));
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, rcvbuf);
        let (sa, len) = sockaddr(local);
        // SAFETY: `sa` holds a valid sockaddr of the length passed.
        check(unsafe { libc::bind(raw, (&sa as *const SockAddr).cast(), len) })?;
        // SAFETY: all-zero is valid for these plain C structs and byte arrays.
        let (names, controls) = unsafe { (Box::new(zeroed()), Box::new(zeroed())) };
        Ok(Socket {
            fd,
            v6,
            names,
            controls,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads up to [`BATCH`] waiting datagrams into `bufs` without blocking; `out[i]` says
    /// what `bufs[i]` holds, `None` for a datagram to drop (truncated, no pktinfo).
    /// Returns how many slots were filled (0 when none was waiting).
    pub fn recv_batch(
        &mut self,
        bufs: &mut [[u8; DATAGRAM_LEN]; BATCH],
        out: &mut [Option<Datagram>; BATCH],
    ) -> io::Result<usize> {
        // SAFETY: all-zero is valid for these plain C structs.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM_LEN,
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut SockAddr).cast();
            hdr.msg_namelen = size_of::<SockAddr>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            hdr.msg_controllen = CONTROL_LEN;
        }
        // SAFETY: every pointer in `msgs` refers to a live buffer of the stated size, and
        // they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            out[i] = self.datagram(&msgs[i]);
        }
        Ok(n)
    }

    /// Decodes one received message's source and pktinfo destination.
    fn datagram(&self, msg: &libc::mmsghdr) -> Option<Datagram> {
        let hdr = &msg.msg_hdr;
        if hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return None;
        }
        // SAFETY: the kernel wrote a sockaddr of this socket's family into the name buffer
        // msg_name points at (one of `self.names`).
        let source = unsafe {
            let name = &*(hdr.msg_name as *const SockAddr);
            if self.v6 {
                let a = name.v6;
                SocketAddr::V6(SocketAddrV6::new(
                    a.sin6_addr.s6_addr.into(),
                    u16::from_be(a.sin6_port),
                    0,
                    a.sin6_scope_id,
                ))
            } else {
                let a = name.v4;
                SocketAddr::V4(SocketAddrV4::new(
                    u32::from_be(a.sin_addr.s_addr).into(),
                    u16::from_be(a.sin_port),
                ))
            }
        };
        let mut destination = None;
        // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled, within the
        // msg_controllen it set; each header's length is checked before its data is read
        // (unaligned).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                let h = &*cmsg;
                let len = h.cmsg_len as usize;
                if !self.v6
                    && h.cmsg_level == libc::IPPROTO_IP
                    && h.cmsg_type == libc::IP_PKTINFO
                    && len >= libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize
                {
                    let info: libc::in_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    // ipi_addr: the destination in the IP header, i.e. the probed address.
                    destination = Some(IpAddr::V4(u32::from_be(info.ipi_addr.s_addr).into()));
                }
                if self.v6
                    && h.cmsg_level == libc::IPPROTO_IPV6
                    && h.cmsg_type == libc::IPV6_PKTINFO
                    && len >= libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize
                {
                    let info: libc::in6_pktinfo =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    destination = Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()));
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        Some(Datagram {
            source,
            destination: destination?,
            len: msg.msg_len as usize,
        })
    }

    /// Sends `replies[i]` (bytes `bufs[i][..len]`) each from its own address, in one
    /// sendmmsg where the kernel takes them all. Returns how many were sent; a reply the
    /// kernel refuses is skipped (counted as not sent), so one bad one cannot stall the rest.
    pub fn send_batch(&mut self, bufs: &[[u8; DATAGRAM_LEN]], replies: &[Outgoing]) -> usize {
        let count = replies.len().min(BATCH);
        // SAFETY: all-zero is valid for these plain C structs.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, reply) in replies.iter().take(count).enumerate() {
            let (sa, len) = sockaddr(reply.to);
            self.names[i] = sa;
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_ptr() as *mut libc::c_void,
                iov_len: reply.len.min(DATAGRAM_LEN),
            };
            let control = &mut self.controls[i];
            control.0.fill(0);
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut SockAddr).cast();
            hdr.msg_namelen = len;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = control.0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA compute positions inside the
            // control buffer, which has room for one pktinfo of either family; the writes
            // are unaligned-safe.
            unsafe {
                match reply.from {
                    IpAddr::V4(from) => {
                        hdr.msg_controllen =
                            libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = libc::IPPROTO_IP;
                        (*cmsg).cmsg_type = libc::IP_PKTINFO;
                        (*cmsg).cmsg_len =
                            libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            // ipi_spec_dst: the source address of the reply.
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(from).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                    }
                    IpAddr::V6(from) => {
                        hdr.msg_controllen =
                            libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                        (*cmsg).cmsg_len =
                            libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
                        let info = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: from.octets(),
                            },
                            ipi6_ifindex: 0,
                        };
                        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                    }
                }
            }
        }
        let mut sent = 0;
        let mut at = 0;
        while at < count {
            // SAFETY: every pointer in `msgs[at..count]` refers to a live buffer of the
            // stated size, and they outlive the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[at..].as_mut_ptr(),
                    (count - at) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first message failed (e.g. no route): skip it, send the rest.
                at += 1;
            } else {
                sent += n as usize;
                at += n as usize;
            }
        }
        sent
    }
}
