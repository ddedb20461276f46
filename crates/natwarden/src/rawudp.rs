//! Raw UDP sockets for the auditor: probes leave from any source port (the keyed reply
//! matcher needs one per target) and every UDP reply to this host can be read, in batches
//! (sendmmsg/recvmmsg). Needs CAP_NET_RAW. The kernel answers replies to ports no socket
//! holds with ICMP port unreachable (rate-limited), as it answers zmap's with RSTs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::sys;

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
            IpAddr::V4(_) => sys::AF_INET,
            IpAddr::V6(_) => sys::AF_INET6,
        };
        let fd = sys::socket(family, libc::SOCK_RAW, libc::IPPROTO_UDP).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                io::Error::new(
                    e.kind(),
                    "natwarden audit sends raw UDP and needs CAP_NET_RAW: run it as root",
                )
            } else {
                e
            }
        })?;
        let s = fd.as_fd();
        if source.is_ipv6() {
            // The kernel fills in (and checks) the UDP checksum at offset 6 (RFC 3542 3.1).
            sys::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6)?;
        }
        // Replies to a fast scan arrive in bursts, and probes leave in them.
        let size = 8 << 20;
        sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .or_else(|_| sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, size))?;
        sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size / 2)
            .or_else(|_| sys::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF, size / 2))?;
        sys::bind(s, SocketAddr::new(source, 0))?;
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
        sys::poll_writable(self.fd.as_fd(), timeout)
    }

    pub fn is_v6(&self) -> bool {
        self.source.is_ipv6()
    }

    /// Sends up to [`BATCH`] datagrams `(dst, src_port, payload)` in one call; returns how
    /// many the kernel took (0 when its queue is full).
    pub fn send(&mut self, batch: &[(SocketAddr, u16, &[u8])]) -> io::Result<usize> {
        let n = batch.len().min(BATCH);
        let mut out: Vec<(SocketAddr, &mut [u8])> = Vec::with_capacity(n);
        for (packet, &(dst, src_port, payload)) in self.packets.iter_mut().zip(&batch[..n]) {
            let len = udp_datagram(packet, self.source, dst, src_port, payload);
            // Raw sockets take the port as a protocol number (IPv6): it must be 0.
            out.push((SocketAddr::new(dst.ip(), 0), &mut packet[..len]));
        }
        match sys::send_batch(self.fd.as_fd(), &mut out) {
            Ok(sent) => Ok(sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Reads up to [`BATCH`] waiting datagrams from a gateway port (source port
    /// `from_port`) and passes each to `f`; returns how many were read.
    pub fn recv(&mut self, from_port: u16, mut f: impl FnMut(Datagram<'_>)) -> io::Result<usize> {
        let v6 = self.source.is_ipv6();
        let got = match sys::recv_batch(self.fd.as_fd(), v6, &mut self.bufs) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        };
        for (buf, &(len, from)) in self.bufs.iter().zip(&got) {
            let bytes = &buf[..len];
            let parsed = match from.ip() {
                IpAddr::V4(_) => parse_ipv4_udp(bytes),
                // A raw IPv6 socket reads from the UDP header on; the source is the name.
                v6 @ IpAddr::V6(_) => parse_udp(v6, bytes),
            };
            if let Some(d) = parsed.filter(|d| d.source.port() == from_port) {
                f(d);
            }
        }
        Ok(got.len())
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
