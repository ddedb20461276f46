//! Mappings granted, renewed, deleted and restored, for both protocols: quotas,
//! permission rules, nonces and the choice of external port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use natwarden_wire::Protocol;

use super::{Gateway, RATE_LIMITED_CLIENTS};
use crate::host::HostId;
use crate::output::StateEvent;
use crate::policy::{Permissions, Policy};
use crate::ratelimit::RateLimiter;
use crate::table::{Mapping, MappingKey, Nonce, Origin};

/// Random external ports tried before a linear scan (see `Gateway::allocate`).
const RANDOM_PROBES: u32 = 32;

/// Why a saved mapping was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the client is not a host of an internal subnet any more")]
    ClientNotAllowed,
    #[error("the permission rules no longer allow it")]
    NotAllowed,
    #[error("it clashes with another restored mapping")]
    Conflict,
    #[error("it is beyond mappings.max_per_client or mappings.max_total")]
    OverQuota,
}

/// What a mapping request asks for, whichever protocol carried it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    pub client: IpAddr,
    pub protocol: Protocol,
    pub internal_port: u16,
    pub suggested_port: u16,
    pub lifetime: u32,
    pub origin: Origin,
    pub nonce: Option<Nonce>,
    pub prefer_failure: bool,
    /// PEER (outbound) rather than MAP (inbound).
    pub peer: bool,
}

/// Why a mapping request is refused, whichever protocol carried it; each protocol
/// turns it into its own result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAuthorized,
    /// The mapping exists under another PCP nonce (RFC 6887 section 11.3).
    NonceMismatch,
    Quota,
    /// The gateway's table is full (`max_total`).
    TableFull,
    NoPorts,
    NetworkFailure,
    /// PREFER_FAILURE and the suggested port cannot be had (RFC 6887 section 13.2).
    CannotProvide,
}

impl Gateway {
    /// Creates or renews a mapping (protocol-neutral part of RFC 6886 section 3.3 and
    /// RFC 6887 sections 11.3 and 12.3).
    pub(crate) fn grant(&mut self, now: Instant, ask: Ask) -> Result<Mapping, Refusal> {
        if ask.client.is_ipv4() && self.external_address.is_none() {
            return Err(Refusal::NetworkFailure);
        }
        let lifetime = ask
            .lifetime
            .clamp(self.policy.min_lifetime, self.policy.max_lifetime);
        let expires = now + Duration::from_secs(u64::from(lifetime));
        let k = MappingKey {
            client: ask.client,
            protocol: ask.protocol,
            internal_port: ask.internal_port,
        };
        if let Some(old) = self.table.get(&k) {
            if let (Some(have), Some(asked)) = (old.nonce, ask.nonce) {
                if have != asked {
                    return Err(Refusal::NonceMismatch);
                }
            }
            if ask.prefer_failure
                && ask.suggested_port != 0
                && ask.suggested_port != old.external_port
            {
                return Err(Refusal::CannotProvide);
            }
            // A repeated request gets the port already assigned (RFC 6886 section 3.3);
            // PEER only ever extends (RFC 6887 section 12.3), MAP sets the lifetime.
            let new = Mapping {
                expires: if ask.peer {
                    old.expires.max(expires)
                } else {
                    expires
                },
                origin: ask.origin,
                nonce: ask.nonce.or(old.nonce),
                inbound: old.inbound || !ask.peer,
                outbound: old.outbound || ask.peer,
                ..old
            };
            let added = Mapping {
                inbound: new.inbound && !old.inbound,
                outbound: new.outbound && !old.outbound,
                ..new
            };
            self.push_firewall(&added, true);
            self.table.update(new);
            self.push_journal(StateEvent::Upsert(new));
            return Ok(new);
        }
        if self.table.len() >= self.policy.max_total as usize {
            return Err(Refusal::TableFull);
        }
        if self.table.count_for_host(self.host_of(ask.client)) >= self.policy.max_per_client {
            return Err(Refusal::Quota);
        }
        let external_port = match ask.client {
            IpAddr::V4(_) => self.allocate(&ask)?,
            IpAddr::V6(_) => {
                // A pinhole translates nothing: the external port is the internal one.
                if ask.prefer_failure
                    && ask.suggested_port != 0
                    && ask.suggested_port != ask.internal_port
                {
                    return Err(Refusal::CannotProvide);
                }
                if !self
                    .permissions
                    .allows(ask.internal_port, ask.client, ask.internal_port)
                {
                    return Err(Refusal::NotAuthorized);
                }
                ask.internal_port
            }
        };
        let m = Mapping {
            key: k,
            external_port,
            expires,
            origin: ask.origin,
            nonce: ask.nonce,
            inbound: !ask.peer,
            outbound: ask.peer,
        };
        let host = self.host_of(m.key.client);
        self.table.insert(m, host);
        self.stats.mappings_created += 1;
        self.push_journal(StateEvent::Upsert(m));
        self.push_firewall(&m, true);
        Ok(m)
    }

    /// Deletes one mapping, or (`internal_port` 0) all of the client's mappings for
    /// `protocol` (`None`: every protocol). A PCP nonce must match the mapping's; a
    /// NAT-PMP request (no nonce) comes from the same host and may delete any
    /// (RFC 6886 section 3.4, RFC 6887 section 11.3). Deleting nothing succeeds.
    pub(crate) fn delete(
        &mut self,
        client: IpAddr,
        protocol: Option<Protocol>,
        internal_port: u16,
        nonce: Option<Nonce>,
    ) -> Result<(), Refusal> {
        let keys = match (protocol, internal_port) {
            (Some(p), port) if port != 0 => vec![MappingKey {
                client,
                protocol: p,
                internal_port: port,
            }],
            (p, _) => self.table.keys_of(client, p),
        };
        let mut refused = false;
        for k in keys {
            let Some(m) = self.table.get(&k) else {
                continue;
            };
            if matches!((m.nonce, nonce), (Some(a), Some(b)) if a != b) {
                refused = true;
                continue;
            }
            self.remove_mapping(&k);
        }
        // Section 3.4: delete as many as possible, but say so when some were not.
        if refused {
            Err(Refusal::NonceMismatch)
        } else {
            Ok(())
        }
    }

    /// The suggested port when the rules allow it and it is free; otherwise a free,
    /// allowed port from a random starting point (RFC 6886 section 3.3: "MUST return an
    /// available external port if possible"), unless PREFER_FAILURE forbids an
    /// alternative. "Not authorized" when the rules grant this client no port at all,
    /// "no ports" when all are taken.
    fn allocate(&mut self, ask: &Ask) -> Result<u16, Refusal> {
        let allowed = |g: &Gateway, port: u16| {
            port != 0 && g.permissions.allows(port, ask.client, ask.internal_port)
        };
        let free = |g: &Gateway, port: u16| g.table.is_free_for(ask.client, ask.protocol, port);
        let suggested = ask.suggested_port;
        if allowed(self, suggested) && free(self, suggested) {
            return Ok(suggested);
        }
        if ask.prefer_failure && suggested != 0 {
            return Err(Refusal::CannotProvide);
        }
        let ranges: Vec<_> = self
            .permissions
            .candidate_ranges(ask.client, ask.internal_port)
            .collect();
        // Random probes first: with the table F full each finds a free port with
        // probability 1-F, so a few suffice even at 50,000 mappings, whatever pattern
        // of suggested ports LAN hosts have used. A linear scan from a random start
        // would cross a long run of taken ports for every request (a host can make
        // such runs on purpose by suggesting consecutive ports).
        for _ in 0..RANDOM_PROBES {
            let Some(range) =
                ranges.get((self.next_random() % ranges.len().max(1) as u64) as usize)
            else {
                break;
            };
            let offset = (self.next_random() % u64::from(range.len())) as u32;
            // offset < len <= 65536, so the sum stays within u16.
            let port = (u32::from(range.first) + offset) as u16;
            if allowed(self, port) && free(self, port) {
                return Ok(port);
            }
        }
        // Then the exhaustive scan, which also tells "all taken" from "none allowed".
        let mut any_allowed = false;
        for range in ranges {
            let len = range.len();
            let start = (self.next_random() % u64::from(len)) as u32;
            for i in 0..len {
                let offset = (start + i) % len;
                // offset < len <= 65536, so the sum stays within u16.
                let port = (u32::from(range.first) + offset) as u16;
                if allowed(self, port) {
                    any_allowed = true;
                    if free(self, port) {
                        return Ok(port);
                    }
                }
            }
        }
        Err(if any_allowed {
            Refusal::NoPorts
        } else {
            Refusal::NotAuthorized
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to make ports unpredictable to a LAN host that cannot
        // observe the seed; not a cryptographic generator.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    pub(crate) fn remove_mapping(&mut self, key: &MappingKey) -> bool {
        let Some(m) = self.table.remove(key) else {
            return false;
        };
        self.push_journal(StateEvent::Remove(*key));
        self.push_firewall(&m, false);
        true
    }

    /// Puts back a mapping saved by an earlier run, with the lifetime it has left. It
    /// is checked against the current policy like a new request (a config change while
    /// the daemon was down must not resurrect what is no longer allowed). Nothing is
    /// queued: its kernel entries come from [`Gateway::installed`] for the atomic
    /// reinstall at start-up, and the daemon's journal starts with a snapshot.
    pub fn restore(
        &mut self,
        now: Instant,
        saved: Mapping,
        remaining: Duration,
    ) -> Result<(), RestoreError> {
        let key = saved.key;
        let home = self
            .policy
            .internal
            .iter()
            .find(|i| i.subnet_contains(key.client))
            .map(|i| i.index);
        let ok = match home {
            Some(index) => self.host_allowed(index, key.client),
            None => self.in_extra_range(key.client),
        };
        if !ok {
            return Err(RestoreError::ClientNotAllowed);
        }
        if key.internal_port == 0
            || saved.external_port == 0
            || (saved.inbound
                && !self
                    .permissions
                    .allows(saved.external_port, key.client, key.internal_port))
        {
            return Err(RestoreError::NotAllowed);
        }
        if self.table.get(&key).is_some()
            || (key.client.is_ipv4()
                && !self
                    .table
                    .is_free_for(key.client, key.protocol, saved.external_port))
        {
            return Err(RestoreError::Conflict);
        }
        if self.table.len() >= self.policy.max_total as usize
            || self.table.count_for_host(self.host_of(key.client)) >= self.policy.max_per_client
        {
            return Err(RestoreError::OverQuota);
        }
        let lifetime = remaining.min(Duration::from_secs(u64::from(self.policy.max_lifetime)));
        let m = Mapping {
            expires: now + lifetime,
            ..saved
        };
        let host = self.host_of(m.key.client);
        self.table.insert(m, host);
        Ok(())
    }

    /// Admin removal (`natwarden status --delete`): every mapping of `client`, or the
    /// one for `(protocol, internal_port)`. Returns how many were removed.
    pub fn admin_delete(&mut self, client: IpAddr, which: Option<(Protocol, u16)>) -> usize {
        let keys: Vec<MappingKey> = match which {
            Some((protocol, internal_port)) => vec![MappingKey {
                client,
                protocol,
                internal_port,
            }],
            None => self.table.keys_of(client, None),
        };
        keys.iter().filter(|k| self.remove_mapping(k)).count()
    }

    /// A reloaded policy (SIGHUP). Mappings the new policy would not grant are removed
    /// at once: a tightened rule must not leave old forwards open until they expire.
    pub fn set_policy(&mut self, policy: Policy) {
        self.permissions = Permissions::new(&policy);
        self.limiter =
            RateLimiter::new(policy.requests_per_second_per_client, RATE_LIMITED_CLIENTS);
        self.policy = policy;
        let doomed: Vec<MappingKey> = self
            .table
            .iter()
            .filter(|m| {
                let k = m.key;
                let in_lan = self
                    .policy
                    .internal
                    .iter()
                    .any(|i| i.subnet_contains(k.client))
                    || self.in_extra_range(k.client);
                !in_lan
                    || (m.inbound
                        && !self
                            .permissions
                            .allows(m.external_port, k.client, k.internal_port))
            })
            .map(|m| m.key)
            .collect();
        for k in doomed {
            self.remove_mapping(&k);
        }
        // A lowered quota applies to what exists: the oldest mappings beyond it close.
        let mut per_host: HashMap<HostId, u32> = Default::default();
        let mut over_quota = Vec::new();
        // Newest first, so the first `max_per_client` of each host are kept.
        let by_age = self.table.keys_oldest_first();
        for k in by_age.iter().rev() {
            let host = self.table.host_of(k).unwrap_or(HostId::Address(k.client));
            let n = per_host.entry(host).or_insert(0);
            *n += 1;
            if *n > self.policy.max_per_client {
                over_quota.push(*k);
            }
        }
        for k in over_quota.iter().rev() {
            self.remove_mapping(k);
        }
        let total = self.policy.max_total as usize;
        if self.table.len() > total {
            let excess = self.table.len() - total;
            for k in self.table.keys_oldest_first().into_iter().take(excess) {
                self.remove_mapping(&k);
            }
        }
    }
}
