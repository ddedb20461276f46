//! The sockets of the blocking driver: one UDP socket connected to the gateway's port 5351
//! for requests, one bound to the announcement group on port 5350, and poll(2) over both;
//! and the kernel's random numbers (getrandom(2), as the natwarden binary draws them).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::ANNOUNCE_PORT;

/// A UDP socket on an ephemeral port, connected to `gateway` so the kernel routes it and
/// filters other senders (the datagrams' source is still checked by the state machines).
pub fn request_socket(gateway: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match gateway {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(gateway)?;
    Ok(socket)
}

/// The address and port requests leave from: PCP's "PCP Client's IP Address" (RFC 6887
/// section 7.1).
pub fn local_addr(socket: &UdpSocket) -> io::Result<SocketAddr> {
    socket.local_addr()
}

/// A socket that hears the gateway's announcements: bound to 224.0.0.1:5350 (or
/// [ff02::1%interface]:5350 for an IPv6 gateway) with SO_REUSEADDR and SO_REUSEPORT, as RFC
/// 6886 section 3.2.1 asks, so that every client on the host hears them. `local` is the
/// request socket's address: its interface scopes the IPv6 group.
pub fn announcement_socket(gateway: SocketAddr, local: SocketAddr) -> io::Result<UdpSocket> {
    let scope = match (gateway, local) {
        (SocketAddr::V6(g), _) if g.scope_id() != 0 => g.scope_id(),
        (_, SocketAddr::V6(l)) => interface_of(l.ip()).unwrap_or(0),
        _ => 0,
    };
    let (domain, group): (Domain, SocketAddr) = match gateway {
        SocketAddr::V4(_) => (
            Domain::IPV4,
            (natwarden_wire::natpmp::ANNOUNCE_ADDR, ANNOUNCE_PORT).into(),
        ),
        // A link-scope group needs its interface; unknown, any address of the port will do.
        SocketAddr::V6(_) if scope == 0 => {
            (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, ANNOUNCE_PORT).into())
        }
        SocketAddr::V6(_) => (
            Domain::IPV6,
            SocketAddr::V6(SocketAddrV6::new(
                natwarden_wire::pcp::ANNOUNCE_ADDR_V6,
                ANNOUNCE_PORT,
                0,
                scope,
            )),
        ),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if let SocketAddr::V6(_) = group {
        socket.set_only_v6(true)?;
    }
    socket.bind(&group.into())?;
    // All-hosts is joined by every interface already; an explicit membership is harmless,
    // and its failure is not ours to report.
    match gateway {
        SocketAddr::V4(_) => {
            let _ = socket.join_multicast_v4(
                &natwarden_wire::natpmp::ANNOUNCE_ADDR,
                &Ipv4Addr::UNSPECIFIED,
            );
        }
        SocketAddr::V6(_) => {
            let _ = socket.join_multicast_v6(&natwarden_wire::pcp::ANNOUNCE_ADDR_V6, scope);
        }
    }
    let socket: UdpSocket = socket.into();
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The index of the interface holding `address`, from /proc/net/if_inet6 (columns: address,
/// index, prefix length, scope, flags, name; hexadecimal).
pub fn interface_of(address: &Ipv6Addr) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    interface_in(&text, address)
}

fn interface_in(text: &str, address: &Ipv6Addr) -> Option<u32> {
    let want = format!("{:032x}", u128::from(*address));
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (addr, index) = (f.next()?, f.next()?);
        (addr == want).then(|| u32::from_str_radix(index, 16).ok())?
    })
}

/// Waits until one of `fds` is readable (negative fds are skipped) or `timeout` passes.
/// `None` when a signal interrupted the wait, so that the caller can look at its flags.
pub fn wait_readable<const N: usize>(
    fds: [RawFd; N],
    timeout: Duration,
) -> io::Result<Option<[bool; N]>> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // Round up, so that a timer is never polled for just before it is due.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a live array of N pollfd for the duration of the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(pfds.map(|p| {
        p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0
    })))
}

/// 64 random bits from the kernel (getrandom), or `None` if it has none to give.
pub fn random_u64() -> Option<u64> {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    (usize::try_from(n).ok()? == b.len()).then(|| u64::from_ne_bytes(b))
}

/// The raw fd of an optional socket, -1 (ignored by poll) when absent.
pub fn fd_of(socket: Option<&UdpSocket>) -> RawFd {
    socket.map_or(-1, AsRawFd::as_raw_fd)
}

/// Errors a datagram socket reports for a past send (ICMP unreachable, no ARP answer): the
/// exchange goes on, and silence is handled by the retransmission logic. No route at all
/// (ENETUNREACH) is not transient for a one-off request: the caller hears of it at once.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::EHOSTDOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_of_an_ipv6_address() {
        let text = "\
20010db8000100000000000000000010 03 40 00 80     eth0
fe800000000000000000000000000001 0a 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";
        let a: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        assert_eq!(interface_in(text, &a), Some(3));
        assert_eq!(interface_in(text, &"fe80::1".parse().unwrap()), Some(10));
        assert_eq!(interface_in(text, &"2001:db8::99".parse().unwrap()), None);
        assert_eq!(interface_in("garbage", &a), None);
    }

    #[test]
    fn the_kernel_gives_random_numbers() {
        let (a, b) = (random_u64(), random_u64());
        assert!(a.is_some() && b.is_some());
        assert_ne!(a, b);
    }
}
