//! The thin unsafe layer: one AF_NETLINK socket, its options, send and receive.
//! Everything above it works on byte slices.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A netlink socket bound in the network namespace of the thread that opened it.
pub struct NlSocket {
    fd: OwnedFd,
}

impl NlSocket {
    /// Opens and binds a socket of `protocol` (NETLINK_NETFILTER, NETLINK_ROUTE);
    /// the kernel picks the port id so several sockets per process never clash.
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        Self::open_groups(protocol, 0)
    }

    /// Like [`NlSocket::open`], also subscribed to the multicast `groups` (a bit mask of
    /// RTMGRP_* values), non-blocking so a poll loop can drain it.
    pub fn open_groups(protocol: libc::c_int, groups: u32) -> io::Result<Self> {
        let nonblock = if groups != 0 { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | nonblock,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr = kernel_addr();
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// The port id the kernel gave this socket at bind time.
    pub fn portid(&self) -> io::Result<u32> {
        let mut addr = kernel_addr();
        let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr`/`len` describe a writable sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr.nl_pid)
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    pub fn set_int(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: the option value points to a live c_int and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Raises a socket buffer to at least `bytes`. The privileged variant (CAP_NET_ADMIN,
    /// which a firewall daemon has anyway) passes the rmem_max/wmem_max sysctl caps.
    pub fn size_buffer(&self, receive: bool, bytes: usize) -> io::Result<()> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let (force, plain) = if receive {
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
        } else {
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
        };
        self.set_int(libc::SOL_SOCKET, force, v)
            .or_else(|_| self.set_int(libc::SOL_SOCKET, plain, v))
    }

    pub fn set_receive_timeout(&self, t: Duration) -> io::Result<()> {
        // The field types differ between libcs (and musl's are changing): converted, so
        // that the same code builds for glibc and musl.
        let too_long = || io::Error::from(io::ErrorKind::InvalidInput);
        let tv = libc::timeval {
            tv_sec: c_field(t.as_secs()).ok_or_else(too_long)?,
            tv_usec: c_field(t.subsec_micros().into()).ok_or_else(too_long)?,
        };
        // SAFETY: the option value points to a live timeval and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sends one datagram to the kernel; a netlink datagram is never sent in part.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        let addr = kernel_addr();
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes; `addr` is a valid sockaddr_nl.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short netlink send",
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram from the kernel into `buf`. A datagram larger than `buf`
    /// or from a sender other than the kernel is an error, never silently cut or trusted.
    pub fn recv(&self, buf: &mut [u8], dont_wait: bool) -> io::Result<usize> {
        let flags = libc::MSG_TRUNC | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: zeroed sockaddr_nl is a valid value of this plain C struct.
            let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `from`/`from_len`
            // describe a writable sockaddr_nl.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink datagram larger than the receive buffer",
                ));
            }
            if from.nl_pid != 0 {
                // Only the kernel may answer; ignore anything else.
                continue;
            }
            return Ok(n);
        }
    }
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: zeroed sockaddr_nl is a valid value of this plain C struct.
    let mut a: libc::sockaddr_nl = unsafe { mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a
}

/// A value in a C field whose integer type depends on the libc.
fn c_field<T: TryFrom<u64>>(v: u64) -> Option<T> {
    T::try_from(v).ok()
}
