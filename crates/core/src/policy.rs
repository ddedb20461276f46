//! What the gateway may do: its interfaces, lifetimes, quotas and permission rules.
//! Built (and checked for safety) by the daemon from its config; read-only to the core.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::net::{IpNet, Ipv4Net, Ipv6Net};

/// An inclusive port range, written "1024-65535" or "8080".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a port or port range (e.g. \"8080\" or \"1024-65535\", first <= last)")]
pub struct PortRangeError(pub String);

impl PortRange {
    pub const ALL_UNPRIVILEGED: PortRange = PortRange {
        first: 1024,
        last: 65535,
    };

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PortRangeError(s.to_string());
        let (a, b) = match s.trim().split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = a.parse().map_err(|_| err())?;
        let last: u16 = b.parse().map_err(|_| err())?;
        if first > last {
            return Err(err());
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// A miniupnpd-style permission line: `allow|deny EXT_PORTS INT_ADDR/MASK INT_PORTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub external_ports: PortRange,
    pub internal_addresses: IpNet,
    pub internal_ports: PortRange,
}

impl Rule {
    pub fn matches(&self, external_port: u16, client: IpAddr, internal_port: u16) -> bool {
        self.external_ports.contains(external_port)
            && self.internal_addresses.contains(client)
            && self.internal_ports.contains(internal_port)
    }
}

/// An internal (LAN) interface: the only place requests are accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalInterface {
    pub name: String,
    /// The kernel's index for `name` now; [`InternalInterface::ABSENT`] while the
    /// interface (or its IPv4 address) is gone: nothing is served on it then.
    pub index: u32,
    /// The gateway's own address on it, with the subnet's prefix length.
    pub net: Ipv4Net,
    /// The gateway's own IPv6 addresses on it with their prefixes, link-local ones
    /// included (PCP requests may be sent to those); clients of IPv6 pinholes must
    /// lie in one of the others.
    pub nets6: Vec<Ipv6Net>,
}

impl InternalInterface {
    /// No kernel interface has index 0.
    pub const ABSENT: u32 = 0;

    /// Whether the interface exists now with an IPv4 address, so requests on it are served.
    pub fn is_present(&self) -> bool {
        self.index != Self::ABSENT
    }

    /// Whether `ip` is one of the gateway's own addresses on this interface.
    pub fn owns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.net.addr() == a,
            IpAddr::V6(a) => self.nets6.iter().any(|n| n.addr() == a),
        }
    }

    /// Whether `ip` lies in one of this interface's (non-link-local) subnets.
    pub fn subnet_contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.net.contains(a),
            IpAddr::V6(a) => self
                .nets6
                .iter()
                .any(|n| !n.is_link_local() && n.contains(a)),
        }
    }
}

/// Everything the core needs to decide; the daemon builds it from the config file and
/// the kernel's view of the interfaces, after refusing unsafe layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub internal: Vec<InternalInterface>,
    pub external_index: u32,
    /// Client ranges allowed beyond the internal subnets (e.g. routed LANs behind a
    /// second router). Empty by default.
    pub extra_client_ranges: Vec<Ipv4Net>,
    /// Serve NAT-PMP (RFC 6886, version 0) and PCP (RFC 6887, version 2); with one off,
    /// its requests get the other protocol's "unsupported version" so clients fall back.
    pub nat_pmp: bool,
    pub pcp: bool,
    /// Requesters allowed the PCP THIRD_PARTY option, for hosts of their own subnet.
    pub third_party_clients: Vec<IpAddr>,
    pub min_lifetime: u32,
    pub max_lifetime: u32,
    pub max_per_client: u32,
    /// Mappings of all clients together: one LAN host (or many) cannot exhaust the
    /// gateway's memory or the kernel's maps. Beyond it: NAT-PMP OUT_OF_RESOURCES, PCP
    /// NO_RESOURCES.
    pub max_total: u32,
    pub requests_per_second_per_client: u32,
    /// First match wins, no match denies. Empty means the default rule set (see
    /// [`Policy::effective_rules`]).
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Defaults of the documented config, for the given interfaces.
    pub fn new(internal: Vec<InternalInterface>, external_index: u32) -> Policy {
        Policy {
            internal,
            external_index,
            extra_client_ranges: Vec::new(),
            nat_pmp: true,
            pcp: true,
            third_party_clients: Vec::new(),
            min_lifetime: 120,
            max_lifetime: 86400,
            max_per_client: 128,
            max_total: 16384,
            requests_per_second_per_client: 20,
            rules: Vec::new(),
        }
    }

    /// The rules in force: the configured ones, or, when none are configured, "allow
    /// ports 1024-65535 for the internal subnets" so that privileged ports stay closed.
    pub fn effective_rules(&self) -> Vec<Rule> {
        if !self.rules.is_empty() {
            return self.rules.clone();
        }
        self.internal
            .iter()
            .flat_map(|i| {
                std::iter::once(IpNet::from(i.net)).chain(
                    i.nets6
                        .iter()
                        .filter(|n| !n.is_link_local())
                        .map(|n| IpNet::from(*n)),
                )
            })
            .chain(self.extra_client_ranges.iter().map(|n| IpNet::from(*n)))
            .map(|net| Rule {
                action: Action::Allow,
                external_ports: PortRange::ALL_UNPRIVILEGED,
                internal_addresses: net,
                internal_ports: PortRange::ALL_UNPRIVILEGED,
            })
            .collect()
    }
}

/// The effective rules, compiled once, and the first-match decision.
#[derive(Debug, Clone)]
pub(crate) struct Permissions {
    rules: Vec<Rule>,
}

impl Permissions {
    pub(crate) fn new(policy: &Policy) -> Permissions {
        Permissions {
            rules: policy.effective_rules(),
        }
    }

    /// First match wins; no match denies (miniupnpd semantics).
    pub(crate) fn allows(&self, external_port: u16, client: IpAddr, internal_port: u16) -> bool {
        self.rules
            .iter()
            .find(|r| r.matches(external_port, client, internal_port))
            .is_some_and(|r| r.action == Action::Allow)
    }

    /// External port ranges some allow rule could grant to this client and internal
    /// port; the allocator searches only these.
    pub(crate) fn candidate_ranges(
        &self,
        client: IpAddr,
        internal_port: u16,
    ) -> impl Iterator<Item = PortRange> + '_ {
        self.rules
            .iter()
            .filter(move |r| {
                r.action == Action::Allow
                    && r.internal_addresses.contains(client)
                    && r.internal_ports.contains(internal_port)
            })
            .map(|r| r.external_ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action, ext: &str, addr: &str, int: &str) -> Rule {
        Rule {
            action,
            external_ports: ext.parse().expect("range"),
            internal_addresses: addr.parse().expect("net"),
            internal_ports: int.parse().expect("range"),
        }
    }

    fn lan() -> InternalInterface {
        InternalInterface {
            name: "lan0".into(),
            index: 2,
            net: "192.168.1.1/24".parse().expect("net"),
            nets6: Vec::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn port_range_parses_single_and_span_and_rejects_reversed() {
        assert_eq!(
            "80".parse(),
            Ok(PortRange {
                first: 80,
                last: 80
            })
        );
        assert_eq!(
            "1024-2048".parse(),
            Ok(PortRange {
                first: 1024,
                last: 2048
            })
        );
        assert!("2048-1024".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn first_match_wins() {
        let mut p = Policy::new(vec![lan()], 1);
        p.rules = vec![
            rule(Action::Deny, "1024-65535", "192.168.1.66/32", "0-65535"),
            rule(Action::Allow, "1024-65535", "192.168.1.0/24", "1024-65535"),
        ];
        let perms = Permissions::new(&p);
        assert!(!perms.allows(5000, ip("192.168.1.66"), 5000));
        assert!(perms.allows(5000, ip("192.168.1.67"), 5000));
    }

    #[test]
    fn no_match_denies() {
        let mut p = Policy::new(vec![lan()], 1);
        p.rules = vec![rule(
            Action::Allow,
            "2000-3000",
            "192.168.1.0/24",
            "0-65535",
        )];
        let perms = Permissions::new(&p);
        assert!(!perms.allows(4000, ip("192.168.1.5"), 4000));
        assert!(perms.allows(2500, ip("192.168.1.5"), 4000));
    }

    #[test]
    fn no_rules_allows_unprivileged_ports_for_internal_subnets_only() {
        let p = Policy::new(vec![lan()], 1);
        let perms = Permissions::new(&p);
        let client = ip("192.168.1.5");
        assert!(perms.allows(1024, client, 1024));
        assert!(!perms.allows(80, client, 8080), "privileged external port");
        assert!(!perms.allows(8080, client, 22), "privileged internal port");
        assert!(!perms.allows(8080, ip("192.168.2.5"), 8080));
    }
}
