//! Who a LAN host is, as a router tells: by the link-layer address the shell saw its
//! datagrams come from, else by its IP address. Quotas and the rate limit count per host,
//! so rotating IPv6 privacy addresses inside the prefix buys no more mappings.

use std::collections::HashMap;
use std::net::IpAddr;

/// The identity quotas and rate limits are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostId {
    /// The sender's link-layer (MAC) address: one host however many addresses it uses.
    Link([u8; 6]),
    /// No link-layer address known: the IP address alone.
    Address(IpAddr),
}

/// Link-layer addresses learnt per IP address, bounded: when full it starts afresh (every
/// request is learnt from again before it is handled, and a mapping keeps the host it
/// was granted to, so forgetting costs nothing but the lookups of that moment).
#[derive(Debug)]
pub(crate) struct HostBook {
    by_ip: HashMap<IpAddr, [u8; 6]>,
    capacity: usize,
}

impl HostBook {
    pub(crate) fn new(capacity: usize) -> HostBook {
        HostBook {
            by_ip: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// `ip` was seen sent from link-layer address `link`.
    pub(crate) fn learn(&mut self, ip: IpAddr, link: [u8; 6]) {
        if self.by_ip.len() >= self.capacity && !self.by_ip.contains_key(&ip) {
            self.by_ip.clear();
        }
        self.by_ip.insert(ip, link);
    }

    pub(crate) fn host_of(&self, ip: IpAddr) -> HostId {
        match self.by_ip.get(&ip) {
            Some(link) => HostId::Link(*link),
            None => HostId::Address(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_one_link_are_one_host_and_the_book_is_bounded() {
        let mut book = HostBook::new(2);
        let a: IpAddr = "2001:db8:1::a".parse().unwrap();
        let b: IpAddr = "2001:db8:1::b".parse().unwrap();
        let c: IpAddr = "2001:db8:1::c".parse().unwrap();
        assert_eq!(book.host_of(a), HostId::Address(a));
        book.learn(a, [2, 0, 0, 0, 0, 1]);
        book.learn(b, [2, 0, 0, 0, 0, 1]);
        assert_eq!(book.host_of(a), book.host_of(b));
        book.learn(c, [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            book.host_of(a),
            HostId::Address(a),
            "the oldest is forgotten"
        );
        assert_eq!(book.host_of(c), HostId::Link([2, 0, 0, 0, 0, 2]));
    }
}
