//! The TOML config file and its validation into safe, typed settings.
//! Validation is pure (it takes the kernel's view of the interfaces as input), so every
//! refusal of an unsafe layout is unit-tested without touching the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use natwarden_core::{Action, InternalInterface, IpNet, Ipv4Net, Ipv6Net, Policy, PortRange, Rule};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/natwarden/natwarden.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interfaces: InterfacesConfig,
    #[serde(default)]
    pub protocols: ProtocolsConfig,
    #[serde(default)]
    pub mappings: MappingsConfig,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub control: ControlConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The status/control socket; only root (or `group`) can open it.
    pub socket: PathBuf,
    /// A group whose members may also use the socket (mode 0660).
    pub group: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            group: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfacesConfig {
    pub external: String,
    pub internal: Vec<String>,
    pub external_address: Option<Ipv4Addr>,
    /// Addresses to serve on; default: the address of every internal interface.
    #[serde(default)]
    pub listen_addresses: Vec<Ipv4Addr>,
    /// Client ranges allowed beyond the internal subnets (routed LANs).
    #[serde(default)]
    pub allowed_client_ranges: Vec<String>,
    /// The external interface really has only private or shared (RFC 1918, RFC 6598
    /// 100.64/10) addresses while an internal one holds a public address, e.g. a
    /// router behind a carrier NAT serving a public LAN. Without it that layout is
    /// refused as swapped interfaces.
    #[serde(default)]
    pub allow_private_external: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolsConfig {
    /// NAT-PMP (RFC 6886).
    pub nat_pmp: bool,
    /// PCP (RFC 6887).
    pub pcp: bool,
    /// LAN hosts allowed PCP's THIRD_PARTY option (mappings for other hosts of their
    /// subnet). Empty: nobody.
    pub third_party_clients: Vec<IpAddr>,
}

impl Default for ProtocolsConfig {
    fn default() -> Self {
        ProtocolsConfig {
            nat_pmp: true,
            pcp: true,
            third_party_clients: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingsConfig {
    pub min_lifetime: u32,
    pub max_lifetime: u32,
    pub max_per_client: u32,
    /// Mappings of all LAN hosts together.
    pub max_total: u32,
    pub requests_per_second_per_client: u32,
}

impl Default for MappingsConfig {
    fn default() -> Self {
        MappingsConfig {
            min_lifetime: 120,
            max_lifetime: 86400,
            max_per_client: 128,
            max_total: 16384,
            requests_per_second_per_client: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: String,
    pub external_ports: String,
    pub internal_addresses: String,
    pub internal_ports: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Nftables,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    pub backend: BackendKind,
    pub table: String,
    /// Drop new inbound IPv6 TCP/UDP connections on the external interface that no
    /// pinhole allows. Off by default: natwarden touches only its own traffic unless
    /// asked; turn it on where no other firewall already does this (RFC 6092).
    pub ipv6_inbound_drop: bool,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            backend: BackendKind::Nftables,
            table: "natwarden".into(),
            ipv6_inbound_drop: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub file: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            file: PathBuf::from("/var/lib/natwarden/state.json"),
        }
    }
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub name: String,
    pub index: u32,
    pub addresses: Vec<Ipv4Net>,
    pub addresses6: Vec<Ipv6Net>,
}

/// The kernel's view that validation needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemFacts {
    pub interfaces: Vec<InterfaceFacts>,
    /// Interface indexes carrying an IPv4 default route.
    pub default_route_interfaces: Vec<u32>,
}

impl SystemFacts {
    fn interface(&self, name: &str) -> Option<&InterfaceFacts> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

/// Validated settings: safe by construction.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    pub external_interface: String,
    pub external_address: Option<Ipv4Addr>,
    /// True when the address is read from the external interface, and so followed
    /// over rtnetlink; false when the config sets it.
    pub follow_external_address: bool,
    pub backend: BackendKind,
    pub table: String,
    pub ipv6_inbound_drop: bool,
    pub state_file: PathBuf,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    pub warnings: Vec<String>,
}

/// One reason a config is refused: the key at fault, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}; fix: {}", self.key, self.message, self.fix)
    }
}

/// Loads, checks against the machine, and validates; every problem is listed with its
/// key and fix in the error.
pub fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    let cfg = load(path)?;
    let facts = crate::facts::gather(&cfg)?;
    validate(&cfg, &facts).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow::anyhow!(
            "refusing unsafe or invalid configuration {}:\n{}",
            path.display(),
            list.join("\n")
        )
    })
}

/// What `check-config` says of a config that was not refused: "safe" only when
/// nothing at all was worth a warning.
pub fn verdict(warnings: &[String]) -> &'static str {
    if warnings.is_empty() {
        "configuration is valid and safe"
    } else {
        "configuration is valid, with warnings (read them above)"
    }
}

pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    parse(&text).with_context(|| format!("parsing config file {}", path.display()))
}

pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
    Ok(basic_toml::from_str(text)?)
}

fn problem(key: &str, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Checks the config against the machine and refuses every layout that would let the
/// WAN side in (CERT VU#184540). All problems are reported at once.
pub fn validate(cfg: &FileConfig, facts: &SystemFacts) -> Result<Settings, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let ifs = &cfg.interfaces;

    let external = facts.interface(&ifs.external);
    if external.is_none() {
        problems.push(problem(
            "interfaces.external",
            format!("interface `{}` does not exist", ifs.external),
            "name the WAN interface as `ip link` shows it",
        ));
    }
    let external_nets: Vec<Ipv4Net> = external.map(|e| e.addresses.clone()).unwrap_or_default();
    let external_nets6: Vec<Ipv6Net> = external
        .map(|e| {
            e.addresses6
                .iter()
                .filter(|n| !n.is_link_local())
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let external_address = ifs
        .external_address
        .or_else(|| external_nets.first().map(|n| n.addr()));
    if external.is_some() && external_address.is_none() {
        warnings.push(format!(
            "interfaces.external: `{}` has no IPv4 address yet; requests get \"network failure\" until it has one",
            ifs.external
        ));
    }

    if ifs.internal.is_empty() {
        problems.push(problem(
            "interfaces.internal",
            "no internal interface is listed",
            "list the LAN interface(s), e.g. internal = [\"br-lan\"]",
        ));
    }
    let mut internal = Vec::new();
    for (i, name) in ifs.internal.iter().enumerate() {
        let key = format!("interfaces.internal[{i}]");
        if ifs.internal[..i].contains(name) {
            problems.push(problem(
                &key,
                format!("`{name}` is listed twice"),
                "list each interface once",
            ));
            continue;
        }
        if *name == ifs.external {
            problems.push(problem(
                &key,
                format!("`{name}` is also the external interface"),
                "the internal and external interfaces must differ: swap them if they are the wrong way round",
            ));
            continue;
        }
        let Some(iface) = facts.interface(name) else {
            problems.push(problem(
                &key,
                format!("interface `{name}` does not exist"),
                "name a LAN interface as `ip link` shows it",
            ));
            continue;
        };
        if facts.default_route_interfaces.contains(&iface.index) {
            problems.push(problem(
                &key,
                format!("`{name}` carries the default route, so it faces the Internet"),
                "list the WAN interface under interfaces.external, not here",
            ));
        }
        if let Some(ext) = external_address {
            if iface.addresses.iter().any(|n| n.addr() == ext) {
                problems.push(problem(
                    &key,
                    format!("`{name}` holds the external address {ext}"),
                    "the interface holding the external address is the WAN side: list it under interfaces.external",
                ));
            }
        }
        let Some(own) = iface.addresses.first().copied() else {
            problems.push(problem(
                &key,
                format!("`{name}` has no IPv4 address"),
                "give the LAN interface its address before starting natwarden",
            ));
            continue;
        };
        for net in &iface.addresses {
            for ext in &external_nets {
                if net.overlaps(ext) {
                    problems.push(problem(
                        &key,
                        format!("internal subnet {net} of `{name}` overlaps external subnet {ext}"),
                        "renumber the LAN so that it does not overlap the WAN",
                    ));
                }
            }
            if is_public(net.addr()) {
                warnings.push(format!(
                    "{key}: `{name}` has the public address {net}; check that it really is a LAN interface"
                ));
            }
        }
        for net in iface.addresses6.iter().filter(|n| !n.is_link_local()) {
            for ext in &external_nets6 {
                if net.overlaps(ext) {
                    problems.push(problem(
                        &key,
                        format!(
                            "internal IPv6 prefix {net} of `{name}` overlaps external prefix {ext}"
                        ),
                        "give the LAN a prefix of its own (e.g. a delegated /64)",
                    ));
                }
            }
        }
        internal.push(InternalInterface {
            name: name.clone(),
            index: iface.index,
            net: own,
            nets6: iface.addresses6.clone(),
        });
    }

    // Swapped interfaces without a default route to give them away (e.g. the uplink
    // not yet up): the "external" side has only private or shared addresses while an
    // "internal" one holds a public address.
    let external_private =
        !external_nets.is_empty() && external_nets.iter().all(|n| is_private_or_shared(n.addr()));
    if external_private && !ifs.allow_private_external {
        for (i, name) in ifs.internal.iter().enumerate() {
            let public = facts
                .interface(name)
                .filter(|_| *name != ifs.external)
                .and_then(|iface| iface.addresses.iter().find(|n| is_public(n.addr())));
            if let Some(net) = public {
                problems.push(problem(
                    &format!("interfaces.internal[{i}]"),
                    format!(
                        "`{name}` holds the public address {net} while the external interface `{}` has only private or shared addresses ({}): the interfaces look swapped",
                        ifs.external,
                        external_nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    "swap interfaces.external and interfaces.internal, or, if this really is intended (an uplink behind a carrier NAT serving a public LAN), set `allow_private_external = true` under [interfaces]",
                ));
            }
        }
    }

    for (i, addr) in ifs.listen_addresses.iter().enumerate() {
        let key = format!("interfaces.listen_addresses[{i}]");
        let on_external =
            Some(*addr) == external_address || external_nets.iter().any(|n| n.addr() == *addr);
        if on_external {
            problems.push(problem(
                &key,
                format!("{addr} is on the external side"),
                "listen only on the internal interfaces' addresses (or remove the key to use them all)",
            ));
        } else if !internal.iter().any(|i| i.net.addr() == *addr) {
            problems.push(problem(
                &key,
                format!("{addr} is not the address of an internal interface"),
                "use the address of one of interfaces.internal",
            ));
        }
    }
    if !ifs.listen_addresses.is_empty() {
        internal.retain(|i| ifs.listen_addresses.contains(&i.net.addr()));
    }

    let mut extra = Vec::new();
    for (i, r) in ifs.allowed_client_ranges.iter().enumerate() {
        let key = format!("interfaces.allowed_client_ranges[{i}]");
        match r.parse::<Ipv4Net>() {
            Ok(net) => {
                if external_nets.iter().any(|e| e.overlaps(&net))
                    || external_address.is_some_and(|a| net.contains(a))
                {
                    problems.push(problem(
                        &key,
                        format!("{net} includes the external side"),
                        "allow only ranges behind the internal interfaces",
                    ));
                }
                extra.push(net);
            }
            Err(e) => problems.push(problem(
                &key,
                e.to_string(),
                "write a prefix such as \"10.20.0.0/16\"",
            )),
        }
    }

    for (i, host) in cfg.protocols.third_party_clients.iter().enumerate() {
        if !internal.iter().any(|iface| iface.subnet_contains(*host)) {
            problems.push(problem(
                &format!("protocols.third_party_clients[{i}]"),
                format!("{host} is not a host of an internal subnet"),
                "list only LAN hosts that may map ports for other LAN hosts",
            ));
        }
    }
    if !cfg.protocols.nat_pmp && !cfg.protocols.pcp {
        problems.push(problem(
            "protocols",
            "both nat_pmp and pcp are off",
            "turn at least one on, or do not run natwarden",
        ));
    }

    let m = &cfg.mappings;
    if m.min_lifetime == 0 || m.min_lifetime > m.max_lifetime {
        problems.push(problem(
            "mappings.min_lifetime",
            format!(
                "must be at least 1 and at most max_lifetime ({})",
                m.max_lifetime
            ),
            "e.g. min_lifetime = 120, max_lifetime = 86400",
        ));
    }
    if m.max_total == 0 {
        problems.push(problem(
            "mappings.max_total",
            "0 would refuse every mapping",
            "set a cap such as 16384",
        ));
    }
    if m.max_per_client == 0 {
        problems.push(problem(
            "mappings.max_per_client",
            "0 would refuse every mapping",
            "set a quota such as 128",
        ));
    }

    let mut rules = Vec::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        match parse_rule(r) {
            Ok(rule) => {
                if let Some(why) = rule_outside_the_lan(&rule, &internal, &extra, &external_nets6) {
                    problems.push(problem(
                        &format!("rule[{i}].internal_addresses"),
                        format!("{} {why}: the interfaces or the rule look swapped", rule.internal_addresses),
                        "name the LAN hosts the rule is for (a prefix inside an internal subnet), and check that interfaces.external is the WAN side",
                    ));
                }
                rules.push(rule)
            }
            Err((field, msg, fix)) => {
                problems.push(problem(&format!("rule[{i}].{field}"), msg, fix))
            }
        }
    }

    let table = &cfg.firewall.table;
    if table.is_empty()
        || table.len() > 64
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problems.push(problem(
            "firewall.table",
            format!("`{table}` is not a usable nftables table name"),
            "use letters, digits, `_` or `-`, at most 64 characters",
        ));
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let external_index = external.map(|e| e.index).unwrap_or(0);
    let mut policy = Policy::new(internal, external_index);
    policy.extra_client_ranges = extra;
    policy.min_lifetime = m.min_lifetime;
    policy.max_lifetime = m.max_lifetime;
    policy.max_per_client = m.max_per_client;
    policy.max_total = m.max_total;
    policy.requests_per_second_per_client = m.requests_per_second_per_client;
    policy.rules = rules;
    policy.nat_pmp = cfg.protocols.nat_pmp;
    policy.pcp = cfg.protocols.pcp;
    policy.third_party_clients = cfg.protocols.third_party_clients.clone();
    Ok(Settings {
        policy,
        external_interface: ifs.external.clone(),
        external_address,
        follow_external_address: ifs.external_address.is_none(),
        backend: cfg.firewall.backend,
        table: table.clone(),
        ipv6_inbound_drop: cfg.firewall.ipv6_inbound_drop,
        state_file: cfg.state.file.clone(),
        control_socket: cfg.control.socket.clone(),
        control_group: cfg.control.group.clone(),
        warnings,
    })
}

type RuleError = (&'static str, String, &'static str);

fn parse_rule(r: &RuleConfig) -> Result<Rule, RuleError> {
    let action = match r.action.as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            return Err((
                "action",
                format!("`{other}` is not an action"),
                "use \"allow\" or \"deny\"",
            ));
        }
    };
    let ports = |field: &'static str, s: &str| {
        s.parse::<PortRange>()
            .map_err(|e| (field, e.to_string(), "write \"1024-65535\" or \"8080\""))
    };
    Ok(Rule {
        action,
        external_ports: ports("external_ports", &r.external_ports)?,
        internal_addresses: r.internal_addresses.parse::<IpNet>().map_err(
            |e: natwarden_core::net::NetParseError| {
                (
                    "internal_addresses",
                    e.to_string(),
                    "write a prefix such as \"192.168.1.0/24\"",
                )
            },
        )?,
        internal_ports: ports("internal_ports", &r.internal_ports)?,
    })
}

/// Why a rule's `internal_addresses` cannot be meant for this LAN, if so. An IPv4 rule
/// must reach an internal subnet or an allowed client range. IPv6 prefixes are
/// followed and may arrive after start-up, so an IPv6 rule is refused only when it lies
/// inside the external interface's own prefix.
fn rule_outside_the_lan(
    rule: &Rule,
    internal: &[InternalInterface],
    extra: &[Ipv4Net],
    external6: &[Ipv6Net],
) -> Option<&'static str> {
    match rule.internal_addresses {
        IpNet::V4(net) => {
            let reaches = internal.iter().any(|i| i.net.overlaps(&net))
                || extra.iter().any(|e| e.overlaps(&net));
            (!reaches).then_some("lies outside every internal subnet")
        }
        IpNet::V6(net) => external6
            .iter()
            .any(|e| e.prefix_len() <= net.prefix_len() && e.overlaps(&net))
            .then_some("lies inside the external interface's IPv6 prefix"),
    }
}

/// RFC 1918 private or RFC 6598 shared (carrier-grade NAT, 100.64.0.0/10).
fn is_private_or_shared(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

/// Not private, shared, loopback, link-local, documentation or otherwise reserved.
fn is_public(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_documentation()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || o[0] >= 240
        || (o[0] == 198 && (o[1] & 0xfe) == 18))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/natwarden.toml");

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("prefix")
    }

    fn iface(name: &str, index: u32, v4: &str) -> InterfaceFacts {
        InterfaceFacts {
            name: name.into(),
            index,
            addresses: vec![net(v4)],
            addresses6: Vec::new(),
        }
    }

    fn net6(s: &str) -> Ipv6Net {
        match s.parse::<IpNet>() {
            Ok(IpNet::V6(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ipv6_prefixes_are_taken_and_overlaps_refused() {
        let mut f = facts();
        f.interfaces[1].addresses6 = vec![net6("2001:db8:100::7/64"), net6("fe80::1/64")];
        f.interfaces[2].addresses6 = vec![net6("2001:db8:1::1/64"), net6("fe80::1/64")];
        let s = validate(&config(""), &f).expect("link-local prefixes never count as overlap");
        assert_eq!(s.policy.internal[0].nets6.len(), 2);
        f.interfaces[2].addresses6 = vec![net6("2001:db8:100::1/64")];
        let p = refused(&config(""), &f);
        assert!(p.iter().any(|p| p.message.contains("IPv6 prefix")), "{p:?}");
    }

    #[test]
    fn third_party_clients_must_be_lan_hosts_and_protocols_configurable() {
        let p = refused(
            &config("[protocols]\nthird_party_clients = [\"10.1.1.1\"]\n"),
            &facts(),
        );
        assert_eq!(p[0].key, "protocols.third_party_clients[0]");
        let s = validate(
            &config("[protocols]\npcp = false\nthird_party_clients = [\"192.168.1.10\"]\n"),
            &facts(),
        )
        .expect("valid");
        assert!(!s.policy.pcp && s.policy.nat_pmp);
        assert_eq!(
            s.policy.third_party_clients,
            vec![IpAddr::from([192, 168, 1, 10])]
        );
        let p = refused(
            &config("[protocols]\npcp = false\nnat_pmp = false\n"),
            &facts(),
        );
        assert_eq!(p[0].key, "protocols");
    }

    /// The lab's layout: eth0 on the WAN (default route), br-lan on the LAN.
    fn facts() -> SystemFacts {
        SystemFacts {
            interfaces: vec![
                iface("lo", 1, "127.0.0.1/8"),
                iface("eth0", 2, "198.51.100.7/24"),
                iface("br-lan", 3, "192.168.1.1/24"),
                iface("guest", 4, "192.168.2.1/24"),
            ],
            default_route_interfaces: vec![2],
        }
    }

    fn config(extra: &str) -> FileConfig {
        parse(&format!(
            "[interfaces]\nexternal = \"eth0\"\ninternal = [\"br-lan\"]\n{extra}"
        ))
        .expect("valid toml")
    }

    fn refused(cfg: &FileConfig, facts: &SystemFacts) -> Vec<Problem> {
        validate(cfg, facts).expect_err("must be refused")
    }

    #[test]
    fn the_shipped_example_is_valid_on_the_lab_layout() {
        let cfg = parse(EXAMPLE).expect("example parses");
        let s = validate(&cfg, &facts()).expect("example is safe");
        assert_eq!(s.external_interface, "eth0");
        assert_eq!(s.external_address, Some(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(s.policy.internal.len(), 1);
        assert_eq!(s.policy.internal[0].index, 3);
        assert_eq!(s.policy.external_index, 2);
        assert_eq!(s.backend, BackendKind::Nftables);
        assert_eq!(s.policy.max_total, 16384);
        assert_eq!(s.policy.max_per_client, 128);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse(
            "[interfaces]\nexternal = \"eth0\"\ninternal = []\nexternal_adress = \"1.2.3.4\"\n",
        );
        assert!(err.is_err());
    }

    #[test]
    fn refuses_external_interface_listed_as_internal() {
        let cfg =
            parse("[interfaces]\nexternal = \"eth0\"\ninternal = [\"eth0\"]\n").expect("toml");
        let p = refused(&cfg, &facts());
        assert!(
            p.iter()
                .any(|p| p.key == "interfaces.internal[0]"
                    && p.message.contains("also the external")),
            "{p:?}"
        );
    }

    #[test]
    fn refuses_swapped_interfaces_internal_holds_default_route() {
        let cfg =
            parse("[interfaces]\nexternal = \"br-lan\"\ninternal = [\"eth0\"]\n").expect("toml");
        let p = refused(&cfg, &facts());
        assert!(
            p.iter()
                .any(|p| p.key == "interfaces.internal[0]" && p.message.contains("default route")),
            "{p:?}"
        );
    }

    #[test]
    fn refuses_internal_interface_holding_the_external_address_read_from_the_wan() {
        // The WAN interface has no default route here (e.g. a PPP link not yet up), but
        // listing it as internal is still caught by its address.
        let mut f = facts();
        f.default_route_interfaces.clear();
        let cfg = parse("[interfaces]\nexternal = \"eth0\"\ninternal = [\"br-lan\", \"eth0\"]\n")
            .expect("toml");
        let p = refused(&cfg, &f);
        assert!(p.iter().any(|p| p.key == "interfaces.internal[1]"), "{p:?}");
    }

    #[test]
    fn refuses_configured_external_address_on_an_internal_interface() {
        let cfg = config("external_address = \"192.168.1.1\"\n");
        let p = refused(&cfg, &facts());
        assert!(
            p.iter().any(
                |p| p.key == "interfaces.internal[0]" && p.message.contains("external address")
            ),
            "{p:?}"
        );
    }

    #[test]
    fn refuses_listen_address_on_the_external_side() {
        let cfg = config("listen_addresses = [\"198.51.100.7\"]\n");
        let p = refused(&cfg, &facts());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "interfaces.listen_addresses[0]");
        assert!(p[0].message.contains("external side"));
        assert!(!p[0].fix.is_empty());
    }

    #[test]
    fn refuses_overlapping_internal_and_external_subnets() {
        let mut f = facts();
        f.interfaces[2].addresses = vec![net("198.51.100.129/25")];
        let p = refused(&config(""), &f);
        assert!(p.iter().any(|p| p.message.contains("overlaps")), "{p:?}");
    }

    #[test]
    fn refuses_interfaces_that_do_not_exist() {
        let cfg =
            parse("[interfaces]\nexternal = \"wan9\"\ninternal = [\"lan9\"]\n").expect("toml");
        let p = refused(&cfg, &facts());
        assert!(p
            .iter()
            .any(|p| p.key == "interfaces.external" && p.message.contains("does not exist")));
        assert!(p
            .iter()
            .any(|p| p.key == "interfaces.internal[0]" && p.message.contains("does not exist")));
    }

    #[test]
    fn refuses_allowed_client_range_that_reaches_the_wan() {
        let p = refused(
            &config("allowed_client_ranges = [\"198.51.0.0/16\"]\n"),
            &facts(),
        );
        assert_eq!(p[0].key, "interfaces.allowed_client_ranges[0]");
    }

    #[test]
    fn warns_about_a_public_address_on_an_internal_interface() {
        let mut f = facts();
        f.interfaces[2].addresses = vec![net("8.8.4.1/24")];
        let s = validate(&config(""), &f).expect("only a warning");
        assert!(
            s.warnings.iter().any(|w| w.contains("public address")),
            "{:?}",
            s.warnings
        );
    }

    /// The lab with a public WAN (45.45.45.7) and no default route, e.g. before the
    /// uplink's DHCP lease: the default-route check cannot catch swapped interfaces.
    fn public_wan_without_default_route() -> SystemFacts {
        let mut f = facts();
        f.interfaces[1].addresses = vec![net("45.45.45.7/24")];
        f.default_route_interfaces.clear();
        f
    }

    #[test]
    fn refuses_swapped_interfaces_without_a_default_route_naming_the_override() {
        let f = public_wan_without_default_route();
        let cfg =
            parse("[interfaces]\nexternal = \"br-lan\"\ninternal = [\"eth0\"]\n").expect("toml");
        let p = refused(&cfg, &f);
        let swap = p
            .iter()
            .find(|p| p.key == "interfaces.internal[0]" && p.message.contains("look swapped"))
            .unwrap_or_else(|| panic!("{p:?}"));
        assert!(swap.message.contains("45.45.45.7"), "{swap:?}");
        assert!(
            swap.fix.contains("allow_private_external = true"),
            "{swap:?}"
        );
    }

    #[test]
    fn private_external_with_a_public_lan_is_accepted_when_said_to_be_intended() {
        // A router behind a carrier NAT (100.64/10 uplink) serving a public /24.
        let mut f = facts();
        f.interfaces[1].addresses = vec![net("100.64.3.2/10")];
        f.interfaces[2].addresses = vec![net("45.45.46.1/24")];
        let rule = "[[rule]]\naction = \"allow\"\nexternal_ports = \"1024-65535\"\ninternal_addresses = \"45.45.46.0/24\"\ninternal_ports = \"1024-65535\"\n";
        let p = refused(&config(rule), &f);
        assert!(
            p.iter().any(|p| p.fix.contains("allow_private_external")),
            "{p:?}"
        );
        let s = validate(
            &config(&format!("allow_private_external = true\n{rule}")),
            &f,
        )
        .expect("intended, so allowed");
        assert!(
            !s.warnings.is_empty(),
            "the public LAN address is still a warning"
        );
        assert_eq!(
            verdict(&s.warnings),
            "configuration is valid, with warnings (read them above)"
        );
        // Both sides private is the ordinary home router: no refusal, no override needed.
        let mut f = facts();
        f.interfaces[1].addresses = vec![net("10.0.0.2/24")];
        validate(&config(""), &f).expect("private WAN, private LAN");
    }

    #[test]
    fn refuses_a_rule_for_hosts_outside_every_internal_subnet_as_a_likely_swap() {
        let rule = |prefix: &str| {
            config(&format!("[[rule]]\naction = \"allow\"\nexternal_ports = \"1024-65535\"\ninternal_addresses = \"{prefix}\"\ninternal_ports = \"1024-65535\"\n"))
        };
        let p = refused(&rule("198.51.100.0/24"), &facts());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "rule[0].internal_addresses");
        assert!(
            p[0].message.contains("outside every internal subnet"),
            "{p:?}"
        );
        refused(&rule("10.9.0.0/16"), &facts());
        validate(&rule("192.168.1.0/24"), &facts()).expect("the LAN");
        validate(&rule("192.168.1.64/26"), &facts()).expect("part of the LAN");
        validate(&rule("0.0.0.0/0"), &facts()).expect("everything includes the LAN");
        // A routed LAN named in allowed_client_ranges is a LAN too.
        let routed = config("allowed_client_ranges = [\"10.20.0.0/16\"]\n[[rule]]\naction = \"allow\"\nexternal_ports = \"1024-65535\"\ninternal_addresses = \"10.20.5.0/24\"\ninternal_ports = \"1024-65535\"\n");
        validate(&routed, &facts()).expect("a routed LAN");
        // IPv6: refused inside the WAN's prefix; a LAN prefix may arrive later.
        let mut f = facts();
        f.interfaces[1].addresses6 = vec![net6("2001:db8:100::7/64")];
        let p = refused(&rule("2001:db8:100::/64"), &f);
        assert!(
            p[0].message.contains("external interface's IPv6 prefix"),
            "{p:?}"
        );
        validate(&rule("2001:db8:1::/64"), &f).expect("a LAN prefix, followed");
    }

    #[test]
    fn check_config_says_safe_only_without_warnings() {
        assert_eq!(verdict(&[]), "configuration is valid and safe");
        let v = verdict(&["x".into()]);
        assert!(
            v.contains("valid, with warnings") && !v.contains("safe"),
            "{v}"
        );
    }

    #[test]
    fn rejects_bad_rules_and_lifetimes_naming_the_key() {
        let cfg = config(
            "[mappings]\nmin_lifetime = 500\nmax_lifetime = 100\n[[rule]]\naction = \"permit\"\nexternal_ports = \"1-2\"\ninternal_addresses = \"192.168.1.0/24\"\ninternal_ports = \"1-2\"\n[[rule]]\naction = \"allow\"\nexternal_ports = \"9-1\"\ninternal_addresses = \"192.168.1.0/24\"\ninternal_ports = \"1-2\"\n",
        );
        let keys: Vec<String> = refused(&cfg, &facts()).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            vec![
                "mappings.min_lifetime",
                "rule[0].action",
                "rule[1].external_ports"
            ]
        );
    }

    #[test]
    fn listen_addresses_restrict_the_served_interfaces() {
        let cfg = parse("[interfaces]\nexternal = \"eth0\"\ninternal = [\"br-lan\", \"guest\"]\nlisten_addresses = [\"192.168.2.1\"]\n").expect("toml");
        let s = validate(&cfg, &facts()).expect("valid");
        assert_eq!(
            s.policy
                .internal
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>(),
            vec!["guest"]
        );
    }
}
