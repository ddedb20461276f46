//! Raw UDP sockets for the auditor: probes leave from any source port (the keyed reply
//! matcher needs one per target) and every UDP reply to this host can be read, in batches
//! (sendmmsg/recvmmsg). Needs CAP_NET_RAW. The kernel answers replies to ports no socket
//! holds with ICMP port unreachable (rate-limited), as it answers zmap's with RSTs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::udp::{check, setsockopt_int, sockaddr, SockAddr};

/// Datagrams per sendmmsg/recvmmsg call.
pub const BATCH: usize = 64;
const UDP_HEADER: usize = 8;
/// Room for an IPv4 header with options, a UDP header and the largest PCP message.
const RECV_LEN: usize = 60 + UDP_HEADER + 1100;

/// Room for a UDP header and the largest probe the auditor sends.
const SEND_LEN: usize = UDP_HEADER + natwarden_audit::probe::MAX_PROBE_LEN;

pub struct RawUdp {
    fd: OwnedFd,
    source: IpAddr,
    bufs: Vec<[u8; RECV_LEN]>,
    /// Reused for every batch sent: no allocation per probe.
    packets: Vec<[u8; SEND_LEN]>,
}

/// One received UDP datagram.
pub struct Datagram<'a> {
    pub source: SocketAddr,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl RawUdp {
    /// A raw UDP socket sending from `source` (this host's address towards the targets).
    pub fn open(source: IpAddr) -> io::Result<RawUdp> {
        let family = match source {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = check(unsafe {
            libc::socket(
                family,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_UDP,
            )
        })
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                io::Error::new(
                    e.kind(),
                    "natwarden audit sends raw UDP and needs CAP_NET_RAW: run it as root",
                )
            } else {
                e
            }
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if source.is_ipv6() {
            // The kernel fills in (and checks) the UDP checksum at offset 6 (RFC 3542 3.1).
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6)?;
        }
        // Replies to a fast scan arrive in bursts, and probes leave in them.
        let size = 8 << 20;
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .or_else(|_| setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, size))?;
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size / 2)
            .or_else(|_| setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, size / 2))?;
        let (sa, len) = sockaddr(SocketAddr::new(source, 0));
        // SAFETY: `sa` holds a valid sockaddr of the length passed.
        check(unsafe { libc::bind(raw, (&sa as *const SockAddr).cast(), len) })?;
        Ok(RawUdp {
            fd,
            source,
            bufs: vec![[0; RECV_LEN]; BATCH],
            packets: vec![[0; SEND_LEN]; BATCH],
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits until the send queue has room (or `timeout` passes): `false` on timeout.
    pub fn wait_writable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match check(rc) {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn is_v6(&self) -> bool {
        self.source.is_ipv6()
    }

    /// Sends up to [`BATCH`] datagrams `(dst, src_port, payload)` in one call; returns how
    /// many the kernel took (0 when its queue is full).
    pub fn send(&mut self, batch: &[(SocketAddr, u16, &[u8])]) -> io::Result<usize> {
        let n = batch.len().min(BATCH);
        let packets = &mut self.packets;
        let mut names: Vec<(SockAddr, libc::socklen_t)> = Vec::with_capacity(n);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        for (i, &(dst, src_port, payload)) in batch[..n].iter().enumerate() {
            let len = udp_datagram(&mut packets[i], self.source, dst, src_port, payload);
            // Raw sockets take the port as a protocol number (IPv6): it must be 0.
            names.push(sockaddr(SocketAddr::new(dst.ip(), 0)));
            iovs.push(libc::iovec {
                iov_base: packets[i].as_mut_ptr().cast(),
                iov_len: len,
            });
        }
        // SAFETY: all-zero is valid for mmsghdr; the pointers set below stay alive
        // (names, iovs, self.packets) until sendmmsg returns.
        let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for i in 0..n {
            msgs[i].msg_hdr.msg_name = (&mut names[i].0 as *mut SockAddr).cast();
            msgs[i].msg_hdr.msg_namelen = names[i].1;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds n initialised headers.
        let rc = unsafe { libc::sendmmsg(self.raw_fd(), msgs.as_mut_ptr(), n as _, 0) };
        match check(rc) {
            Ok(sent) => Ok(sent as usize),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Reads up to [`BATCH`] waiting datagrams from a gateway port (source port
    /// `from_port`) and passes each to `f`; returns how many were read.
    pub fn recv(&mut self, from_port: u16, mut f: impl FnMut(Datagram<'_>)) -> io::Result<usize> {
        // SAFETY: all-zero is valid for these plain C structs.
        let mut names: Vec<SockAddr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: RECV_LEN,
            })
            .collect();
        // SAFETY: as above; the pointers stay alive until recvmmsg returns.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        for i in 0..BATCH {
            msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut SockAddr).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<SockAddr>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH initialised headers over live buffers.
        let rc = unsafe {
            libc::recvmmsg(
                self.raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = match check(rc) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for i in 0..n {
            let len = (msgs[i].msg_len as usize).min(RECV_LEN);
            let bytes = &self.bufs[i][..len];
            let parsed = match self.source {
                IpAddr::V4(_) => parse_ipv4_udp(bytes),
                // SAFETY: the kernel wrote an AF_INET6 sockaddr for this raw IPv6 socket.
                IpAddr::V6(_) => parse_udp(unsafe { names[i].v6 }.sin6_addr.s6_addr.into(), bytes),
            };
            if let Some(d) = parsed.filter(|d| d.source.port() == from_port) {
                f(d);
            }
        }
        Ok(n)
    }
}

/// The UDP datagram in an IPv4 packet as a raw IPv4 socket reads it (header included).
fn parse_ipv4_udp(packet: &[u8]) -> Option<Datagram<'_>> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || *packet.get(9)? != 17 {
        return None;
    }
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    parse_udp(IpAddr::V4(Ipv4Addr::from(src)), packet.get(ihl..)?)
}

/// A UDP header and payload from `source`; the UDP length field bounds the payload.
fn parse_udp(source: IpAddr, udp: &[u8]) -> Option<Datagram<'_>> {
    let header = udp.get(..UDP_HEADER)?;
    let sport = u16::from_be_bytes([header[0], header[1]]);
    let dport = u16::from_be_bytes([header[2], header[3]]);
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let payload = udp.get(UDP_HEADER..len)?;
    let source = match source {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    Some(Datagram {
        source: SocketAddr::new(source, sport),
        dst_port: dport,
        payload,
    })
}

/// Writes a UDP header and `payload` into `out`; returns the datagram's length. The IPv4
/// checksum is computed over the pseudo-header (RFC 768); IPv6's is left to the kernel.
fn udp_datagram(
    out: &mut [u8],
    src: IpAddr,
    dst: SocketAddr,
    src_port: u16,
    payload: &[u8],
) -> usize {
    let len = UDP_HEADER + payload.len();
    out[0..2].copy_from_slice(&src_port.to_be_bytes());
    out[2..4].copy_from_slice(&dst.port().to_be_bytes());
    out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    out[6..8].fill(0);
    out[UDP_HEADER..len].copy_from_slice(payload);
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst.ip()) {
        let mut sum: u32 = 0;
        for w in s.octets().chunks(2).chain(d.octets().chunks(2)) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        sum += 17 + len as u32;
        for w in out[..len].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // 0 means "no checksum" in IPv4; a computed 0 is sent as all ones.
        let c = match !(sum as u16) {
            0 => 0xffff,
            c => c,
        };
        out[6..8].copy_from_slice(&c.to_be_bytes());
    }
    len
}

/// This host's address towards `target` (the kernel's route lookup, no packet sent).
pub fn source_towards(target: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(target, 5351))?;
    Ok(s.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_udp_checksum_verifies_to_zero() {
        let mut out = [0u8; 64];
        let src = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let dst: SocketAddr = "100.64.0.9:5351".parse().unwrap();
        let len = udp_datagram(&mut out, src, dst, 40000, &[0, 0, 1]);
        assert_eq!(len, 11);
        // Summing everything again, checksum included, gives all ones (RFC 1071).
        let mut sum: u32 = 0xcb00 + 0x7101 + 0x6440 + 0x0009 + 17 + len as u32;
        for w in out[..len].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn received_packets_are_read_strictly() {
        let mut packet = vec![
            0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 9, 203, 0, 113, 1,
        ];
        packet.extend_from_slice(&[0x14, 0xe7, 0x9c, 0x40, 0, 10, 0, 0, 0xaa, 0xbb]);
        let d = parse_ipv4_udp(&packet).expect("a datagram");
        assert_eq!(d.source, "100.64.0.9:5351".parse().unwrap());
        assert_eq!(d.dst_port, 40000);
        assert_eq!(d.payload, &[0xaa, 0xbb]);
        // A UDP length beyond the packet, or another protocol, is not a datagram.
        packet[25] = 200;
        assert!(parse_ipv4_udp(&packet).is_none());
        packet[25] = 10;
        packet[9] = 6;
        assert!(parse_ipv4_udp(&packet).is_none());
    }
}
