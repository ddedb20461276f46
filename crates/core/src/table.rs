//! The mapping table: one entry per (client, protocol, internal port), indexed by
//! external port and by expiry time so every operation is O(1) or O(log n).

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use natwarden_wire::Protocol;

use crate::firewall::Forward;

/// Who owns a mapping: RFC 6886 section 3.3 keys mappings by the requester's own
/// address and internal port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    pub client: Ipv4Addr,
    pub protocol: Protocol,
    pub internal_port: u16,
}

/// Which protocol created (or last renewed) a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    NatPmp,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::NatPmp => "nat-pmp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub key: MappingKey,
    pub external_port: u16,
    pub expires: Instant,
    pub origin: Origin,
}

impl Mapping {
    pub fn forward(&self) -> Forward {
        Forward {
            protocol: self.key.protocol,
            external_port: self.external_port,
            internal: SocketAddrV4::new(self.key.client, self.key.internal_port),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    external_port: u16,
    expires: Instant,
    origin: Origin,
}

#[derive(Debug, Default)]
pub(crate) struct MappingTable {
    by_key: HashMap<MappingKey, Entry>,
    by_external: HashMap<(Protocol, u16), MappingKey>,
    per_client: HashMap<Ipv4Addr, u32>,
    expiry: BTreeSet<(Instant, MappingKey)>,
}

impl MappingTable {
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn contains(&self, key: &MappingKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub(crate) fn count_for(&self, client: Ipv4Addr) -> u32 {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// Free for this client: nobody holds (protocol, port), and the companion port of
    /// the other protocol is free or held by the same client (RFC 6886 section 3.3:
    /// "another client ... MUST NOT be able to successfully acquire the mapping for UDP
    /// port 80" while one holds TCP port 80).
    pub(crate) fn is_free_for(&self, client: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        if self.by_external.contains_key(&(protocol, port)) {
            return false;
        }
        let other = match protocol {
            Protocol::Tcp => Protocol::Udp,
            Protocol::Udp => Protocol::Tcp,
        };
        self.by_external
            .get(&(other, port))
            .is_none_or(|k| k.client == client)
    }

    /// Adds a new mapping. The caller has checked that the key is absent and the port
    /// free; a violation is a bug in the core, so it is asserted in debug builds.
    pub(crate) fn insert(&mut self, m: Mapping) {
        debug_assert!(!self.by_key.contains_key(&m.key));
        debug_assert!(self.is_free_for(m.key.client, m.key.protocol, m.external_port));
        self.by_key.insert(
            m.key,
            Entry {
                external_port: m.external_port,
                expires: m.expires,
                origin: m.origin,
            },
        );
        self.by_external
            .insert((m.key.protocol, m.external_port), m.key);
        *self.per_client.entry(m.key.client).or_insert(0) += 1;
        self.expiry.insert((m.expires, m.key));
    }

    /// Moves an existing mapping's expiry; returns the updated mapping.
    pub(crate) fn renew(
        &mut self,
        key: &MappingKey,
        expires: Instant,
        origin: Origin,
    ) -> Option<Mapping> {
        let e = self.by_key.get_mut(key)?;
        self.expiry.remove(&(e.expires, *key));
        e.expires = expires;
        e.origin = origin;
        self.expiry.insert((expires, *key));
        Some(mapping(*key, e))
    }

    pub(crate) fn remove(&mut self, key: &MappingKey) -> Option<Mapping> {
        let e = self.by_key.remove(key)?;
        self.by_external.remove(&(key.protocol, e.external_port));
        self.expiry.remove(&(e.expires, *key));
        if let Some(n) = self.per_client.get_mut(&key.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&key.client);
            }
        }
        Some(mapping(*key, &e))
    }

    /// Every mapping of `client` for `protocol` (RFC 6886 section 3.4 "delete all").
    pub(crate) fn keys_of(&self, client: Ipv4Addr, protocol: Protocol) -> Vec<MappingKey> {
        if self.count_for(client) == 0 {
            return Vec::new();
        }
        self.by_key
            .keys()
            .filter(|k| k.client == client && k.protocol == protocol)
            .copied()
            .collect()
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Removes and returns every mapping whose lifetime ended at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Mapping> {
        let mut gone = Vec::new();
        while let Some(&(t, key)) = self.expiry.first() {
            if t > now {
                break;
            }
            if let Some(m) = self.remove(&key) {
                gone.push(m);
            }
        }
        gone
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.by_key.iter().map(|(k, e)| mapping(*k, e))
    }

    pub(crate) fn clear(&mut self) -> Vec<Mapping> {
        let all: Vec<Mapping> = self.iter().collect();
        *self = MappingTable::default();
        all
    }
}

fn mapping(key: MappingKey, e: &Entry) -> Mapping {
    Mapping {
        key,
        external_port: e.external_port,
        expires: e.expires,
        origin: e.origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(last: u8, protocol: Protocol, port: u16) -> MappingKey {
        MappingKey {
            client: Ipv4Addr::new(192, 168, 1, last),
            protocol,
            internal_port: port,
        }
    }

    fn m(k: MappingKey, ext: u16, expires: Instant) -> Mapping {
        Mapping {
            key: k,
            external_port: ext,
            expires,
            origin: Origin::NatPmp,
        }
    }

    #[test]
    fn companion_port_is_reserved_for_the_same_client() {
        let t0 = Instant::now();
        let mut t = MappingTable::default();
        let a = key(10, Protocol::Tcp, 80);
        t.insert(m(a, 8080, t0));
        assert!(!t.is_free_for(a.client, Protocol::Tcp, 8080));
        assert!(t.is_free_for(a.client, Protocol::Udp, 8080));
        assert!(!t.is_free_for(Ipv4Addr::new(192, 168, 1, 11), Protocol::Udp, 8080));
    }

    #[test]
    fn expiry_follows_renewal_and_removal_cleans_every_index() {
        let t0 = Instant::now();
        let mut t = MappingTable::default();
        let a = key(10, Protocol::Udp, 5000);
        let b = key(11, Protocol::Udp, 5000);
        t.insert(m(a, 5000, t0 + Duration::from_secs(10)));
        t.insert(m(b, 5001, t0 + Duration::from_secs(20)));
        t.renew(&a, t0 + Duration::from_secs(30), Origin::NatPmp);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(20)));
        let gone = t.expire(t0 + Duration::from_secs(25));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, b);
        assert!(t.is_free_for(b.client, Protocol::Udp, 5001));
        assert_eq!(t.count_for(b.client), 0);
        assert_eq!(t.len(), 1);
        assert!(t.remove(&a).is_some());
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_expiry(), None);
        assert!(t.per_client.is_empty() && t.by_external.is_empty());
    }
}
