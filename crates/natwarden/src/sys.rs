//! The operating system in one place: every system call the natwarden binary makes
//! outside std and the kernel crate (natwarden-kernel), with its `unsafe`, behind safe typed functions.
//!
//! Portable between glibc and musl: C struct fields whose integer types differ between
//! the two (msghdr's lengths, cmsghdr's length) are converted with checked conversions
//! ([`to_c`], [`from_c`]), never with casts. One poll wrapper ([`poll_readable`]), one
//! random source ([`random_u64`]), one way to receive signals in the daemon, the auditor
//! and `map --keep` ([`SignalFd`]).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Room for either address family.
#[repr(C)]
#[derive(Clone, Copy)]
union SockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddr {
    fn zeroed() -> SockAddr {
        // SAFETY: both members are plain old data; all-zero is a valid value.
        unsafe { zeroed() }
    }

    /// The address the kernel wrote, read as the socket's family.
    fn to_std(self, v6: bool) -> SocketAddr {
        // SAFETY: the caller's socket is of family AF_INET6 exactly when `v6`, so the
        // kernel wrote that member (or left zeroes, also valid).
        unsafe {
            if v6 {
                let a = self.v6;
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    0,
                    a.sin6_scope_id,
                ))
            } else {
                let a = self.v4;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                ))
            }
        }
    }
}

fn sockaddr(addr: SocketAddr) -> (SockAddr, libc::socklen_t) {
    let mut sa = SockAddr::zeroed();
    match addr {
        SocketAddr::V4(a) => {
            let v4 = libc::sockaddr_in {
                sin_family: to_c(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                // SAFETY: sin_zero is a byte array; zero is its only meaningful value.
                ..unsafe { zeroed() }
            };
            sa.v4 = v4;
            (sa, to_c(size_of::<libc::sockaddr_in>()))
        }
        SocketAddr::V6(a) => {
            // SAFETY: plain old data; all-zero is valid (and sin6_flowinfo 0 is wanted).
            let mut v6: libc::sockaddr_in6 = unsafe { zeroed() };
            v6.sin6_family = to_c(libc::AF_INET6);
            v6.sin6_port = a.port().to_be();
            v6.sin6_addr.s6_addr = a.ip().octets();
            v6.sin6_scope_id = a.scope_id();
            sa.v6 = v6;
            (sa, to_c(size_of::<libc::sockaddr_in6>()))
        }
    }
}

/// A C integer field of whatever width this libc gives it (glibc and musl differ).
/// Panics only if the value does not fit, which would be a bug here, not a runtime case.
fn to_c<T: TryFrom<U>, U: Copy + std::fmt::Debug>(v: U) -> T {
    T::try_from(v).unwrap_or_else(|_| panic!("{v:?} does not fit the C field"))
}

/// A length read from a C field of either width.
fn from_c<T: TryInto<usize>>(v: T) -> usize {
    v.try_into().unwrap_or(usize::MAX)
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

// ---- sockets ----

pub const AF_INET: libc::c_int = libc::AF_INET;
pub const AF_INET6: libc::c_int = libc::AF_INET6;
pub const AF_PACKET: libc::c_int = libc::AF_PACKET;

/// A non-blocking, close-on-exec socket.
pub fn socket(family: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = check(unsafe {
        libc::socket(
            family,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            to_c(size_of::<libc::c_int>()),
        )
    })
    .map(drop)
}

pub fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` holds a valid sockaddr of the length passed.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const SockAddr).cast(), len) }).map(drop)
}

/// Attaches a classic BPF program to a socket (SO_ATTACH_FILTER); the kernel copies it.
pub fn attach_filter(fd: BorrowedFd<'_>, program: &mut [libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: to_c(program.len()),
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `program`, alive for the call, with its length.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            to_c(size_of::<libc::sock_fprog>()),
        )
    })
    .map(drop)
}

/// A frame read from an AF_PACKET socket: its length in the buffer, the interface it
/// came in on, and the link-layer source of an incoming frame with a 6-byte address.
pub struct LinkFrame {
    pub len: usize,
    pub ifindex: u32,
    pub source: Option<[u8; 6]>,
}

/// One frame from an AF_PACKET socket, or `None` when none is waiting.
pub fn recv_link_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<LinkFrame>> {
    // SAFETY: all-zero is valid for sockaddr_ll.
    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
    let mut len: libc::socklen_t = to_c(size_of::<libc::sockaddr_ll>());
    // SAFETY: `buf` and `from` are live and their sizes passed.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    let n = match check_size(n) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let incoming = from.sll_pkttype != libc::PACKET_OUTGOING;
    let source = (incoming && from.sll_halen == 6).then(|| {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&from.sll_addr[..6]);
        mac
    });
    Ok(Some(LinkFrame {
        len: n.min(buf.len()),
        ifindex: u32::try_from(from.sll_ifindex).unwrap_or(0),
        source,
    }))
}

/// Control buffer for one pktinfo, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 128]);

/// A msghdr over one iovec and a control buffer of `control_len` bytes.
fn msghdr(
    name: &mut SockAddr,
    namelen: libc::socklen_t,
    iov: &mut libc::iovec,
    control: &mut Control,
    control_len: usize,
) -> libc::msghdr {
    // SAFETY: all-zero is valid for msghdr (musl's has private padding fields, so it
    // cannot be written as a struct literal).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (name as *mut SockAddr).cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = iov;
    msg.msg_iovlen = to_c(1usize);
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = to_c(control_len.min(control.0.len()));
    msg
}

/// Where a datagram came in: its interface and the destination address in its IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub ifindex: u32,
    pub destination: IpAddr,
}

/// One datagram from recvmsg: its length in the buffer (cut there if it was longer), its
/// source, and its packet info when the kernel supplied it.
pub struct Datagram {
    pub len: usize,
    pub source: SocketAddr,
    pub info: Option<PacketInfo>,
}

/// One datagram from a socket with IP_PKTINFO (or IPV6_RECVPKTINFO when `v6`) set;
/// `None` when none is waiting.
pub fn recv_with_pktinfo(
    fd: BorrowedFd<'_>,
    v6: bool,
    buf: &mut [u8],
) -> io::Result<Option<Datagram>> {
    let mut name = SockAddr::zeroed();
    let mut control = Control([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg = msghdr(
        &mut name,
        to_c(size_of::<SockAddr>()),
        &mut iov,
        &mut control,
        128,
    );
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    let len = match check_size(n) {
        Ok(len) => len,
        Err(e) => {
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            }
        }
    };
    let source = name.to_std(v6);
    let mut info = None;
    // SAFETY: the CMSG_* helpers walk `control`, which the kernel filled and whose
    // length it set in msg_controllen; each header's length is checked before its data
    // is read (unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let h = &*cmsg;
            let data_len = from_c(h.cmsg_len);
            if !v6
                && h.cmsg_level == libc::IPPROTO_IP
                && h.cmsg_type == libc::IP_PKTINFO
                && data_len >= from_c(libc::CMSG_LEN(to_c(size_of::<libc::in_pktinfo>())))
            {
                let p: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                info = Some(PacketInfo {
                    ifindex: u32::try_from(p.ipi_ifindex).unwrap_or(0),
                    // ipi_addr is the destination in the IP header; ipi_spec_dst would
                    // be the local address the kernel chose to answer from.
                    destination: IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))),
                });
            }
            if v6
                && h.cmsg_level == libc::IPPROTO_IPV6
                && h.cmsg_type == libc::IPV6_PKTINFO
                && data_len >= from_c(libc::CMSG_LEN(to_c(size_of::<libc::in6_pktinfo>())))
            {
                let p: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                info = Some(PacketInfo {
                    ifindex: p.ipi6_ifindex,
                    destination: IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)),
                });
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Datagram { len, source, info }))
}

/// Sends `data` to `to`, from address `from`, out of interface `ifindex` (a pktinfo
/// control message).
pub fn send_with_pktinfo(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: SocketAddr,
    from: IpAddr,
    ifindex: u32,
) -> io::Result<()> {
    let mut control = Control([0; 128]);
    let (mut sa, sa_len) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let info_len = match from {
        IpAddr::V4(_) => size_of::<libc::in_pktinfo>(),
        IpAddr::V6(_) => size_of::<libc::in6_pktinfo>(),
    };
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = from_c(unsafe { libc::CMSG_SPACE(to_c(info_len)) });
    let msg = msghdr(&mut sa, sa_len, &mut iov, &mut control, space);
    // SAFETY: CMSG_FIRSTHDR/CMSG_DATA compute positions inside `control`, which is large
    // enough for one pktinfo of either family; the data is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_len = to_c(from_c(libc::CMSG_LEN(to_c(info_len))));
        match from {
            IpAddr::V4(from) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                let info = libc::in_pktinfo {
                    ipi_ifindex: to_c(ifindex),
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(from).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
            IpAddr::V6(from) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
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
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    check_size(n).map(drop)
}

#[cfg(feature = "audit")]
/// Sends each `(destination, bytes)` in one sendmmsg call; returns how many the kernel
/// took.
pub fn send_batch(fd: BorrowedFd<'_>, batch: &mut [(SocketAddr, &mut [u8])]) -> io::Result<usize> {
    let n = batch.len();
    let mut names: Vec<(SockAddr, libc::socklen_t)> =
        batch.iter().map(|(to, _)| sockaddr(*to)).collect();
    let mut iovs: Vec<libc::iovec> = batch
        .iter_mut()
        .map(|(_, bytes)| libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
    for (name, iov) in names.iter_mut().zip(iovs.iter_mut()) {
        // SAFETY: all-zero is valid for mmsghdr.
        let mut m: libc::mmsghdr = unsafe { zeroed() };
        m.msg_hdr.msg_name = (&mut name.0 as *mut SockAddr).cast();
        m.msg_hdr.msg_namelen = name.1;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = to_c(1usize);
        msgs.push(m);
    }
    // SAFETY: `msgs` holds n initialised headers whose pointers (names, iovs, the
    // caller's buffers) stay alive until sendmmsg returns.
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), to_c(n), 0) };
    check(rc).map(from_c)
}

#[cfg(feature = "audit")]
/// Reads up to `bufs.len()` waiting datagrams in one recvmmsg call into `bufs`;
/// returns each one's length and source (the socket's family is AF_INET6 when `v6`).
pub fn recv_batch<const L: usize>(
    fd: BorrowedFd<'_>,
    v6: bool,
    bufs: &mut [[u8; L]],
) -> io::Result<Vec<(usize, SocketAddr)>> {
    let n = bufs.len();
    let mut names = vec![SockAddr::zeroed(); n];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: L,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
    for (name, iov) in names.iter_mut().zip(iovs.iter_mut()) {
        // SAFETY: all-zero is valid for mmsghdr.
        let mut m: libc::mmsghdr = unsafe { zeroed() };
        m.msg_hdr.msg_name = (name as *mut SockAddr).cast();
        m.msg_hdr.msg_namelen = to_c(size_of::<SockAddr>());
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = to_c(1usize);
        msgs.push(m);
    }
    // SAFETY: `msgs` holds n initialised headers over live buffers.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            to_c(n),
            to_c(libc::MSG_DONTWAIT),
            std::ptr::null_mut(),
        )
    };
    let got = from_c(check(rc)?);
    Ok(msgs[..got]
        .iter()
        .zip(&names)
        .map(|(m, name)| (from_c(m.msg_len).min(L), name.to_std(v6)))
        .collect())
}

/// Who is at the other end of a Unix stream socket (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    // SAFETY: ucred is plain data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len: libc::socklen_t = to_c(size_of::<libc::ucred>());
    // SAFETY: `cred` and `len` describe a writable ucred.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(PeerCredentials {
        uid: cred.uid,
        gid: cred.gid,
    })
}

// ---- waiting ----

/// Waits until one of `fds` is readable (or in error, or hung up) or `timeout` passes;
/// returns readiness per fd, all false when a signal interrupted the wait. Negative fds
/// are skipped.
pub fn poll_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    poll_for(fds, libc::POLLIN, timeout)
}

/// Waits until `fd` can take more to send (or `timeout` passes): `false` on timeout or
/// when a signal interrupted the wait.
#[cfg(feature = "audit")]
pub fn poll_writable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    Ok(poll_for([fd.as_raw_fd()], libc::POLLOUT, Some(timeout))?[0])
}

/// The one poll(2) wrapper: waits for `events` on each of `fds`.
fn poll_for<const N: usize>(
    fds: [RawFd; N],
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events,
        revents: 0,
    });
    let ms = match timeout {
        None => -1,
        // Round up so a timer is never polled for just before it is due.
        Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `pfds` is a live array of N pollfd.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), to_c(N), ms) };
    if let Err(e) = check(rc) {
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(pfds.map(|p| p.revents & (events | libc::POLLERR | libc::POLLHUP) != 0))
}

/// An epoll instance whose events carry a u64 token (the control socket's many
/// connections).
pub struct Epoll {
    fd: OwnedFd,
}

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollOp {
    Add,
    Modify,
    Delete,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1; the result is checked before use.
        let raw = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn control(&self, op: EpollOp, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let op = match op {
            EpollOp::Add => libc::EPOLL_CTL_ADD,
            EpollOp::Modify => libc::EPOLL_CTL_MOD,
            EpollOp::Delete => libc::EPOLL_CTL_DEL,
        };
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    /// The ready `(token, events)` pairs, without waiting.
    pub fn ready(&self) -> io::Result<Vec<(u64, u32)>> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: `events` is a live array of the length passed.
        let rc = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                to_c(events.len()),
                0,
            )
        };
        match check(rc) {
            Ok(n) => Ok(events[..from_c(n)]
                .iter()
                .map(|e| (e.u64, e.events))
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

// ---- signals ----

pub const SIGTERM: libc::c_int = libc::SIGTERM;
pub const SIGINT: libc::c_int = libc::SIGINT;
pub const SIGHUP: libc::c_int = libc::SIGHUP;

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// `signals` as a readable, non-blocking file descriptor, blocked for normal delivery
/// in this thread (call before any other thread exists).
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        let set = sigset(signals);
        // SAFETY: pthread_sigmask and signalfd only read `set`.
        unsafe {
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let raw = check(libc::signalfd(
                -1,
                &set,
                libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
            ))?;
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(raw),
            })
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    #[cfg(feature = "client")]
    pub fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// The number of the next pending signal, if any.
    pub fn next(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
        // SAFETY: read(2) writes at most the size of `info` into it.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size_of::<libc::signalfd_siginfo>(),
            )
        };
        if check_size(n).ok()? != size_of::<libc::signalfd_siginfo>() {
            return None;
        }
        libc::c_int::try_from(info.ssi_signo).ok()
    }
}

// ---- process ----

/// 64 random bits from the kernel (getrandom), or `None` if it has none to give.
pub fn random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    (check_size(n).ok()? == b.len()).then(|| u64::from_ne_bytes(b))
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the file mode creation mask; returns the previous one.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// The gid of the group called `name`, or `None` when there is none.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: getgrnam reads a valid C string; the result is checked for NULL and read
    // before any other call could reuse its static buffer.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null pointer to the static group struct just returned.
    Ok(Some(unsafe { (*gr).gr_gid }))
}

/// Removes capability `cap` from the bounding set; `Ok(false)` when the kernel does not
/// know it or we may not (EINVAL, EPERM), which leaves nothing to drop.
pub fn drop_bounding_capability(cap: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    match check(rc) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets the effective and permitted capability sets (bit masks of capabilities 0-63)
/// and empties the inheritable one (capset, version 3).
pub fn set_capabilities(effective: u64, permitted: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| [(v & 0xffff_ffff) as u32, (v >> 32) as u32];
    let (e, p) = (split(effective), split(permitted));
    let mut data = [Data::default(); 2];
    for i in 0..2 {
        data[i].effective = e[i];
        data[i].permitted = p[i];
    }
    // SAFETY: capset reads a v3 header and two data structs, which we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// No execve from here on can gain privileges (PR_SET_NO_NEW_PRIVS).
pub fn set_no_new_privileges() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pktinfo_datagram_goes_out_from_the_chosen_address_and_comes_back_with_its_facts() {
        let rx = socket(AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        setsockopt_int(rx.as_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1).unwrap();
        bind(rx.as_fd(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = std::net::UdpSocket::from(rx.try_clone().unwrap())
            .local_addr()
            .unwrap()
            .port();
        let tx = socket(AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        send_with_pktinfo(tx.as_fd(), b"hello", to, IpAddr::V4(Ipv4Addr::LOCALHOST), 1).unwrap();
        poll_readable([rx.as_raw_fd()], Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let d = recv_with_pktinfo(rx.as_fd(), false, &mut buf)
            .unwrap()
            .expect("a datagram");
        assert_eq!(&buf[..d.len], b"hello");
        assert_eq!(d.source.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let info = d.info.expect("pktinfo");
        assert_eq!(info.destination, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(info.ifindex, 1);
    }

    #[test]
    fn the_random_source_gives_different_values() {
        assert_ne!(random_u64(), random_u64());
    }
}
