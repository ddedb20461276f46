//! The link-layer source of LAN datagrams to the gateway's port. An AF_PACKET socket,
//! filtered in the kernel (classic BPF) to IPv6 UDP datagrams for port 5351, sees each
//! one before the UDP socket does; the daemon tells the core which link-layer address
//! (host) sent from which IPv6 address, so a host rotating privacy addresses inside the
//! prefix keeps one quota and one rate limit, as a router identifies it.

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::sys;

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
        let fd = sys::socket(
            sys::AF_PACKET,
            libc::SOCK_DGRAM,
            libc::c_int::from(ETH_P_IPV6.to_be()),
        )?;
        sys::attach_filter(fd.as_fd(), &mut filter(port))?;
        // A burst of requests queues here as it does on the UDP socket.
        let size = 1 << 20;
        sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).or_else(
            |_| sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size),
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
            let Ok(Some(frame)) = sys::recv_link_frame(self.fd.as_fd(), &mut buf) else {
                return;
            };
            let Some(mac) = frame.source else {
                continue;
            };
            if let Some(source) = udp_source(&buf[..frame.len], self.port) {
                f(frame.ifindex, IpAddr::V6(source), mac);
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
