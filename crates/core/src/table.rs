//! The mapping table: one entry per (client, protocol, internal port), indexed by
//! external port and by expiry time so every operation is O(1) or O(log n).
//!
//! IPv4 entries are NAT mappings; IPv6 entries are pinholes (no translation).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddrV4};
use std::time::Instant;

use natwarden_wire::Protocol;

use crate::firewall::{FirewallChange, Forward, Outbound, Pinhole};
use crate::host::HostId;

/// Who owns a mapping: RFC 6886 section 3.3 and RFC 6887 section 11 key mappings by
/// the requester's own address and internal port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    pub client: IpAddr,
    pub protocol: Protocol,
    pub internal_port: u16,
}

/// Which protocol created (or last renewed) a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    NatPmp,
    Pcp,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::NatPmp => "nat-pmp",
            Origin::Pcp => "pcp",
        }
    }

    pub fn from_name(s: &str) -> Option<Origin> {
        match s {
            "nat-pmp" => Some(Origin::NatPmp),
            "pcp" => Some(Origin::Pcp),
            _ => None,
        }
    }
}

/// PCP's 96-bit mapping nonce (RFC 6887 section 11.1); NAT-PMP mappings have none.
pub type Nonce = [u8; 12];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub key: MappingKey,
    /// For IPv6 pinholes, the internal port (there is no translation).
    pub external_port: u16,
    pub expires: Instant,
    pub origin: Origin,
    pub nonce: Option<Nonce>,
    /// Inbound traffic is forwarded (NAT-PMP map, PCP MAP).
    pub inbound: bool,
    /// Outbound traffic keeps the external port (PCP PEER); IPv4 only.
    pub outbound: bool,
}

impl Mapping {
    /// The kernel entries this mapping needs, as additions (or removals).
    pub fn kernel_changes(&self, add: bool, out: &mut Vec<FirewallChange>) {
        match self.key.client {
            IpAddr::V4(client) => {
                let internal = SocketAddrV4::new(client, self.key.internal_port);
                if self.inbound {
                    let f = Forward {
                        protocol: self.key.protocol,
                        external_port: self.external_port,
                        internal,
                    };
                    out.push(if add {
                        FirewallChange::Add(f)
                    } else {
                        FirewallChange::Remove(f)
                    });
                }
                if self.outbound {
                    let o = Outbound {
                        protocol: self.key.protocol,
                        internal,
                        external_port: self.external_port,
                    };
                    out.push(if add {
                        FirewallChange::AddOutbound(o)
                    } else {
                        FirewallChange::RemoveOutbound(o)
                    });
                }
            }
            IpAddr::V6(address) => {
                if self.inbound {
                    let p = Pinhole {
                        protocol: self.key.protocol,
                        address,
                        port: self.key.internal_port,
                    };
                    out.push(if add {
                        FirewallChange::AddPinhole(p)
                    } else {
                        FirewallChange::RemovePinhole(p)
                    });
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Insertion order, for "oldest first" when a lowered quota closes mappings.
    seq: u64,
    /// The host the mapping counts against (its quota).
    host: HostId,
    external_port: u16,
    expires: Instant,
    origin: Origin,
    nonce: Option<Nonce>,
    inbound: bool,
    outbound: bool,
}

#[derive(Debug, Default)]
pub(crate) struct MappingTable {
    by_key: HashMap<MappingKey, Entry>,
    /// External ports in use: IPv4 NAT mappings only (a pinhole's port belongs to its
    /// own address).
    by_external: HashMap<(Protocol, u16), MappingKey>,
    /// Mappings per host, for quotas.
    per_host: HashMap<HostId, u32>,
    /// Mappings per internal address, so "delete all of a client's" needs no scan when
    /// it has none.
    per_client: HashMap<IpAddr, u32>,
    expiry: BTreeSet<(Instant, MappingKey)>,
    next_seq: u64,
}

impl MappingTable {
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn get(&self, key: &MappingKey) -> Option<Mapping> {
        self.by_key.get(key).map(|e| mapping(*key, e))
    }

    fn count_for(&self, client: IpAddr) -> u32 {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// How many mappings count against `host`'s quota.
    pub(crate) fn count_for_host(&self, host: HostId) -> u32 {
        self.per_host.get(&host).copied().unwrap_or(0)
    }

    /// The host `key` counts against.
    pub(crate) fn host_of(&self, key: &MappingKey) -> Option<HostId> {
        self.by_key.get(key).map(|e| e.host)
    }

    /// Free for this client: nobody holds (protocol, port), and the companion port of
    /// the other protocol is free or held by the same client (RFC 6886 section 3.3:
    /// "another client ... MUST NOT be able to successfully acquire the mapping for UDP
    /// port 80" while one holds TCP port 80).
    pub(crate) fn is_free_for(&self, client: IpAddr, protocol: Protocol, port: u16) -> bool {
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
    pub(crate) fn insert(&mut self, m: Mapping, host: HostId) {
        debug_assert!(!self.by_key.contains_key(&m.key));
        if m.key.client.is_ipv4() {
            debug_assert!(self.is_free_for(m.key.client, m.key.protocol, m.external_port));
            self.by_external
                .insert((m.key.protocol, m.external_port), m.key);
        }
        self.next_seq += 1;
        self.by_key.insert(
            m.key,
            Entry {
                seq: self.next_seq,
                host,
                external_port: m.external_port,
                expires: m.expires,
                origin: m.origin,
                nonce: m.nonce,
                inbound: m.inbound,
                outbound: m.outbound,
            },
        );
        *self.per_client.entry(m.key.client).or_insert(0) += 1;
        *self.per_host.entry(host).or_insert(0) += 1;
        self.expiry.insert((m.expires, m.key));
    }

    /// Replaces an existing mapping's mutable parts (expiry, origin, nonce, kinds);
    /// the external port never changes.
    pub(crate) fn update(&mut self, m: Mapping) {
        let Some(e) = self.by_key.get_mut(&m.key) else {
            return;
        };
        debug_assert_eq!(e.external_port, m.external_port);
        self.expiry.remove(&(e.expires, m.key));
        e.expires = m.expires;
        e.origin = m.origin;
        e.nonce = m.nonce;
        e.inbound = m.inbound;
        e.outbound = m.outbound;
        self.expiry.insert((m.expires, m.key));
    }

    pub(crate) fn remove(&mut self, key: &MappingKey) -> Option<Mapping> {
        let e = self.by_key.remove(key)?;
        if key.client.is_ipv4() {
            self.by_external.remove(&(key.protocol, e.external_port));
        }
        self.expiry.remove(&(e.expires, *key));
        decrement(&mut self.per_client, key.client);
        decrement(&mut self.per_host, e.host);
        Some(mapping(*key, &e))
    }

    /// Every mapping of `client`, for `protocol` or for all when `None` (RFC 6886
    /// section 3.4 "delete all"; RFC 6887 protocol 0).
    pub(crate) fn keys_of(&self, client: IpAddr, protocol: Option<Protocol>) -> Vec<MappingKey> {
        if self.count_for(client) == 0 {
            return Vec::new();
        }
        self.by_key
            .keys()
            .filter(|k| k.client == client && protocol.is_none_or(|p| k.protocol == p))
            .copied()
            .collect()
    }

    /// Every key, the longest-held mapping first (renewals do not make one younger).
    pub(crate) fn keys_oldest_first(&self) -> Vec<MappingKey> {
        let mut keys: Vec<(u64, MappingKey)> =
            self.by_key.iter().map(|(k, e)| (e.seq, *k)).collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k).collect()
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

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = counts.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&k);
        }
    }
}

fn mapping(key: MappingKey, e: &Entry) -> Mapping {
    Mapping {
        key,
        external_port: e.external_port,
        expires: e.expires,
        origin: e.origin,
        nonce: e.nonce,
        inbound: e.inbound,
        outbound: e.outbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn key(last: u8, protocol: Protocol, port: u16) -> MappingKey {
        MappingKey {
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, last)),
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
            nonce: None,
            inbound: true,
            outbound: false,
        }
    }

    #[test]
    fn companion_port_is_reserved_for_the_same_client() {
        let t0 = Instant::now();
        let mut t = MappingTable::default();
        let a = key(10, Protocol::Tcp, 80);
        t.insert(m(a, 8080, t0), HostId::Address(a.client));
        assert!(!t.is_free_for(a.client, Protocol::Tcp, 8080));
        assert!(t.is_free_for(a.client, Protocol::Udp, 8080));
        assert!(!t.is_free_for(
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 11)),
            Protocol::Udp,
            8080
        ));
    }

    #[test]
    fn pinholes_do_not_take_external_ports() {
        let t0 = Instant::now();
        let mut t = MappingTable::default();
        let v6 = MappingKey {
            client: "2001:db8:1::10".parse().expect("v6"),
            protocol: Protocol::Tcp,
            internal_port: 8080,
        };
        t.insert(m(v6, 8080, t0), HostId::Address(v6.client));
        assert!(t.is_free_for(key(10, Protocol::Tcp, 1).client, Protocol::Tcp, 8080));
        assert_eq!(t.count_for(v6.client), 1);
        assert!(t.remove(&v6).is_some());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn expiry_follows_updates_and_removal_cleans_every_index() {
        let t0 = Instant::now();
        let mut t = MappingTable::default();
        let a = key(10, Protocol::Udp, 5000);
        let b = key(11, Protocol::Udp, 5000);
        t.insert(
            m(a, 5000, t0 + Duration::from_secs(10)),
            HostId::Address(a.client),
        );
        t.insert(
            m(b, 5001, t0 + Duration::from_secs(20)),
            HostId::Address(b.client),
        );
        t.update(m(a, 5000, t0 + Duration::from_secs(30)));
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
        assert!(t.per_client.is_empty() && t.per_host.is_empty() && t.by_external.is_empty());
    }
}
