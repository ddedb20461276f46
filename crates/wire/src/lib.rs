//! Wire formats of the port-mapping protocols natwarden speaks, as pure functions over bytes.
//! No allocation, no I/O, no logging: `parse` never panics, `emit` writes into a caller's buffer.

#![forbid(unsafe_code)]

mod bytes;
pub mod natpmp;
pub mod pcp;

/// The protocol version of a datagram received on the shared NAT-PMP/PCP port: its first byte,
/// 0 for NAT-PMP and 2 for PCP (RFC 6886 section 1.1). `None` if the datagram is empty.
pub fn version_of(datagram: &[u8]) -> Option<u8> {
    datagram.first().copied()
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// IANA protocol number (as in the IPv4 protocol field).
    pub const fn ip_number(self) -> u8 {
        match self {
            Protocol::Udp => 17,
            Protocol::Tcp => 6,
        }
    }

    pub const fn from_ip_number(n: u8) -> Option<Protocol> {
        match n {
            17 => Some(Protocol::Udp),
            6 => Some(Protocol::Tcp),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

impl core::fmt::Display for Protocol {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_of_reads_first_byte() {
        assert_eq!(version_of(&[]), None);
        assert_eq!(version_of(&[0, 0]), Some(natpmp::VERSION));
        assert_eq!(version_of(&[2, 1, 0]), Some(2));
    }

    #[test]
    fn protocol_numbers() {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            assert_eq!(
                Protocol::from_ip_number(protocol.ip_number()),
                Some(protocol)
            );
        }
        assert_eq!(Protocol::from_ip_number(1), None);
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
    }
}
