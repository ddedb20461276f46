//! The link-layer source of LAN datagrams to the gateway's port. An AF_PACKET socket,
//! filtered in the kernel (classic BPF) to IPv6 UDP datagrams for port 5351, sees each
//! one before the UDP socket does; the daemon tells the core which link-layer address
//! (host) sent from which IPv6 address, so a host rotating privacy addresses inside the
//! prefix keeps one quota and one rate limit, as a router identifies it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::udp::check;

const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 header (40) and UDP header (8): all the filter passes on.
const SNAP: u32 = 48;

pub struct LinkTap {
    fd: OwnedFd,
    port: u16,
}

/// A classic BPF program over the IPv6 packet: UDP (next header 17, no extension
/// headers) to `port`, first [`SNAP`] bytes; everything else dropped in the kernel.
fn filter(port: u16) -> [libc::sock_filter; 6] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 6),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, 17),
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 42),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(port),
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, SNAP),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ]
}

impl LinkTap {
    /// Needs CAP_NET_RAW (held at start-up only; the socket stays usable after).
    pub fn open(port: u16) -> io::Result<LinkTap> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IPV6.to_be()),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut program = filter(port);
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr(),
        };
        // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
        check(unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        })?;
        // A burst of requests queues here as it does on the UDP socket.
        let size = 1 << 20;
        crate::udp::setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).or_else(
            |_| crate::udp::setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, size),
        )?;
        // Frames queued before the filter was attached are read (and checked) as usual.
        Ok(LinkTap { fd, port })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every waiting frame: `f(interface, source address, link-layer source)` for
    /// each incoming IPv6 UDP datagram to our port with a 6-byte link-layer address.
    pub fn drain(&self, mut f: impl FnMut(u32, IpAddr, [u8; 6])) {
        let mut buf = [0u8; SNAP as usize];
        for _ in 0..4096 {
            // SAFETY: all-zero is valid for sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are live and their sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return;
            }
            let got = (n as usize).min(buf.len());
            if from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_halen != 6 {
                continue;
            }
            if let Some(source) = udp_source(&buf[..got], self.port) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&from.sll_addr[..6]);
                f(from.sll_ifindex as u32, IpAddr::V6(source), mac);
            }
        }
    }
}

/// The source address of an IPv6 UDP datagram to `port` (first 48 bytes of the packet).
fn udp_source(packet: &[u8], port: u16) -> Option<Ipv6Addr> {
    if packet.len() < SNAP as usize || packet[0] >> 4 != 6 || packet[6] != 17 {
        return None;
    }
    if u16::from_be_bytes([packet[42], packet[43]]) != port {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    Some(Ipv6Addr::from(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_of_udp_to_our_port_only() {
        let mut p = [0u8; 48];
        p[0] = 0x60;
        p[6] = 17;
        p[8..24].copy_from_slice(&"2001:db8:1::1234".parse::<Ipv6Addr>().unwrap().octets());
        p[42..44].copy_from_slice(&5351u16.to_be_bytes());
        assert_eq!(
            udp_source(&p, 5351),
            Some("2001:db8:1::1234".parse().unwrap())
        );
        assert_eq!(udp_source(&p, 5350), None);
        p[6] = 6;
        assert_eq!(udp_source(&p, 5351), None, "TCP");
        assert_eq!(udp_source(&p[..40], 5351), None, "short");
    }

    #[test]
    fn the_filter_jumps_land_on_the_returns() {
        let f = filter(5351);
        // A failed protocol test jumps to the last instruction (drop), as does a wrong port.
        assert_eq!(1 + 1 + usize::from(f[1].jf), 5);
        assert_eq!(3 + 1 + usize::from(f[3].jf), 5);
        assert_eq!(f[5].k, 0);
        assert_eq!(f[4].k, SNAP);
    }
}
