//! `config::validate`, section by section: each `[section]` of the file is checked by a
//! function of its own, against the kernel's view of the interfaces.

use std::net::Ipv4Addr;

use natwarden_core::{Action, InternalInterface, IpNet, Ipv4Net, Ipv6Net, Policy, PortRange, Rule};

use super::{
    FileConfig, FirewallConfig, InterfaceFacts, InterfacesConfig, MappingsConfig, Problem,
    ProtocolsConfig, RuleConfig, Settings, SystemFacts,
};

fn problem(key: &str, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Everything found wrong or worth a warning, in the order found.
#[derive(Default)]
struct Findings {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

/// The external side as the kernel shows it: the interface, its IPv4 subnets and
/// global IPv6 prefixes, and the external address (configured or read from it).
struct External<'a> {
    iface: Option<&'a InterfaceFacts>,
    nets: Vec<Ipv4Net>,
    nets6: Vec<Ipv6Net>,
    address: Option<Ipv4Addr>,
}

/// Checks the config against the machine and refuses every layout that would let the
/// WAN side in (CERT VU#184540). All problems are reported at once.
pub fn validate(cfg: &FileConfig, facts: &SystemFacts) -> Result<Settings, Vec<Problem>> {
    let mut f = Findings::default();
    let ifs = &cfg.interfaces;
    let external = external(ifs, facts, &mut f);
    let mut internal = internal_interfaces(ifs, facts, &external, &mut f);
    swapped_without_default_route(ifs, facts, &external, &mut f);
    listen_addresses(ifs, &external, &mut internal, &mut f);
    let extra = allowed_client_ranges(ifs, &external, &mut f);
    protocols(&cfg.protocols, &internal, &mut f);
    mappings(&cfg.mappings, &mut f);
    let rules = rules(&cfg.rules, &internal, &extra, &external, &mut f);
    firewall(&cfg.firewall, &mut f);

    let Findings { problems, warnings } = f;
    if !problems.is_empty() {
        return Err(problems);
    }
    let m = &cfg.mappings;
    let external_index = external.iface.map(|e| e.index).unwrap_or(0);
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
        external_address: external.address,
        follow_external_address: ifs.external_address.is_none(),
        backend: cfg.firewall.backend,
        table: cfg.firewall.table.clone(),
        ipv6_inbound_drop: cfg.firewall.ipv6_inbound_drop,
        state_file: cfg.state.file.clone(),
        control_socket: cfg.control.socket.clone(),
        control_group: cfg.control.group.clone(),
        warnings,
    })
}

/// `[interfaces] external` and `external_address`.
fn external<'a>(ifs: &InterfacesConfig, facts: &'a SystemFacts, f: &mut Findings) -> External<'a> {
    let iface = facts.interface(&ifs.external);
    if iface.is_none() {
        f.problems.push(problem(
            "interfaces.external",
            format!("interface `{}` does not exist", ifs.external),
            "name the WAN interface as `ip link` shows it",
        ));
    }
    let nets: Vec<Ipv4Net> = iface.map(|e| e.addresses.clone()).unwrap_or_default();
    let nets6: Vec<Ipv6Net> = iface
        .map(|e| {
            e.addresses6
                .iter()
                .filter(|n| !n.is_link_local())
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let address = ifs
        .external_address
        .or_else(|| nets.first().map(|n| n.addr()));
    if iface.is_some() && address.is_none() {
        f.warnings.push(format!(
            "interfaces.external: `{}` has no IPv4 address yet; requests get \"network failure\" until it has one",
            ifs.external
        ));
    }
    External {
        iface,
        nets,
        nets6,
        address,
    }
}

/// `[interfaces] internal`: each exists, is not the WAN side, and has an IPv4 address.
fn internal_interfaces(
    ifs: &InterfacesConfig,
    facts: &SystemFacts,
    external: &External,
    f: &mut Findings,
) -> Vec<InternalInterface> {
    if ifs.internal.is_empty() {
        f.problems.push(problem(
            "interfaces.internal",
            "no internal interface is listed",
            "list the LAN interface(s), e.g. internal = [\"br-lan\"]",
        ));
    }
    let mut internal = Vec::new();
    for (i, name) in ifs.internal.iter().enumerate() {
        let key = format!("interfaces.internal[{i}]");
        if ifs.internal[..i].contains(name) {
            f.problems.push(problem(
                &key,
                format!("`{name}` is listed twice"),
                "list each interface once",
            ));
            continue;
        }
        if *name == ifs.external {
            f.problems.push(problem(
                &key,
                format!("`{name}` is also the external interface"),
                "the internal and external interfaces must differ: swap them if they are the wrong way round",
            ));
            continue;
        }
        let Some(iface) = facts.interface(name) else {
            f.problems.push(problem(
                &key,
                format!("interface `{name}` does not exist"),
                "name a LAN interface as `ip link` shows it",
            ));
            continue;
        };
        if facts.default_route_interfaces.contains(&iface.index) {
            f.problems.push(problem(
                &key,
                format!("`{name}` carries the default route, so it faces the Internet"),
                "list the WAN interface under interfaces.external, not here",
            ));
        }
        if let Some(ext) = external.address {
            if iface.addresses.iter().any(|n| n.addr() == ext) {
                f.problems.push(problem(
                    &key,
                    format!("`{name}` holds the external address {ext}"),
                    "the interface holding the external address is the WAN side: list it under interfaces.external",
                ));
            }
        }
        let Some(own) = iface.addresses.first().copied() else {
            f.problems.push(problem(
                &key,
                format!("`{name}` has no IPv4 address"),
                "give the LAN interface its address before starting natwarden",
            ));
            continue;
        };
        for net in &iface.addresses {
            for ext in &external.nets {
                if net.overlaps(ext) {
                    f.problems.push(problem(
                        &key,
                        format!("internal subnet {net} of `{name}` overlaps external subnet {ext}"),
                        "renumber the LAN so that it does not overlap the WAN",
                    ));
                }
            }
            if is_public(net.addr()) {
                f.warnings.push(format!(
                    "{key}: `{name}` has the public address {net}; check that it really is a LAN interface"
                ));
            }
        }
        for net in iface.addresses6.iter().filter(|n| !n.is_link_local()) {
            for ext in &external.nets6 {
                if net.overlaps(ext) {
                    f.problems.push(problem(
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

    internal
}

/// `[interfaces] allow_private_external`: a swap seen before there is a default route.
fn swapped_without_default_route(
    ifs: &InterfacesConfig,
    facts: &SystemFacts,
    external: &External,
    f: &mut Findings,
) {
    // Swapped interfaces without a default route to give them away (e.g. the uplink
    // not yet up): the "external" side has only private or shared addresses while an
    // "internal" one holds a public address.
    let external_private =
        !external.nets.is_empty() && external.nets.iter().all(|n| is_private_or_shared(n.addr()));
    if external_private && !ifs.allow_private_external {
        for (i, name) in ifs.internal.iter().enumerate() {
            let public = facts
                .interface(name)
                .filter(|_| *name != ifs.external)
                .and_then(|iface| iface.addresses.iter().find(|n| is_public(n.addr())));
            if let Some(net) = public {
                f.problems.push(problem(
                    &format!("interfaces.internal[{i}]"),
                    format!(
                        "`{name}` holds the public address {net} while the external interface `{}` has only private or shared addresses ({}): the interfaces look swapped",
                        ifs.external,
                        external.nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    "swap interfaces.external and interfaces.internal, or, if this really is intended (an uplink behind a carrier NAT serving a public LAN), set `allow_private_external = true` under [interfaces]",
                ));
            }
        }
    }
}

/// `[interfaces] listen_addresses`: internal addresses only; the others are not served.
fn listen_addresses(
    ifs: &InterfacesConfig,
    external: &External,
    internal: &mut Vec<InternalInterface>,
    f: &mut Findings,
) {
    for (i, addr) in ifs.listen_addresses.iter().enumerate() {
        let key = format!("interfaces.listen_addresses[{i}]");
        let on_external =
            Some(*addr) == external.address || external.nets.iter().any(|n| n.addr() == *addr);
        if on_external {
            f.problems.push(problem(
                &key,
                format!("{addr} is on the external side"),
                "listen only on the internal interfaces' addresses (or remove the key to use them all)",
            ));
        } else if !internal.iter().any(|i| i.net.addr() == *addr) {
            f.problems.push(problem(
                &key,
                format!("{addr} is not the address of an internal interface"),
                "use the address of one of interfaces.internal",
            ));
        }
    }
    if !ifs.listen_addresses.is_empty() {
        internal.retain(|i| ifs.listen_addresses.contains(&i.net.addr()));
    }
}

/// `[interfaces] allowed_client_ranges`: prefixes behind the internal interfaces.
fn allowed_client_ranges(
    ifs: &InterfacesConfig,
    external: &External,
    f: &mut Findings,
) -> Vec<Ipv4Net> {
    let mut extra = Vec::new();
    for (i, r) in ifs.allowed_client_ranges.iter().enumerate() {
        let key = format!("interfaces.allowed_client_ranges[{i}]");
        match r.parse::<Ipv4Net>() {
            Ok(net) => {
                if external.nets.iter().any(|e| e.overlaps(&net))
                    || external.address.is_some_and(|a| net.contains(a))
                {
                    f.problems.push(problem(
                        &key,
                        format!("{net} includes the external side"),
                        "allow only ranges behind the internal interfaces",
                    ));
                }
                extra.push(net);
            }
            Err(e) => f.problems.push(problem(
                &key,
                e.to_string(),
                "write a prefix such as \"10.20.0.0/16\"",
            )),
        }
    }

    extra
}

/// `[protocols]`: third-party clients are LAN hosts; at least one protocol is on.
fn protocols(p: &ProtocolsConfig, internal: &[InternalInterface], f: &mut Findings) {
    for (i, host) in p.third_party_clients.iter().enumerate() {
        if !internal.iter().any(|iface| iface.subnet_contains(*host)) {
            f.problems.push(problem(
                &format!("protocols.third_party_clients[{i}]"),
                format!("{host} is not a host of an internal subnet"),
                "list only LAN hosts that may map ports for other LAN hosts",
            ));
        }
    }
    if !p.nat_pmp && !p.pcp {
        f.problems.push(problem(
            "protocols",
            "both nat_pmp and pcp are off",
            "turn at least one on, or do not run natwarden",
        ));
    }
}

/// `[mappings]`: lifetimes and caps that can grant something.
fn mappings(m: &MappingsConfig, f: &mut Findings) {
    if m.min_lifetime == 0 || m.min_lifetime > m.max_lifetime {
        f.problems.push(problem(
            "mappings.min_lifetime",
            format!(
                "must be at least 1 and at most max_lifetime ({})",
                m.max_lifetime
            ),
            "e.g. min_lifetime = 120, max_lifetime = 86400",
        ));
    }
    if m.max_total == 0 {
        f.problems.push(problem(
            "mappings.max_total",
            "0 would refuse every mapping",
            "set a cap such as 16384",
        ));
    }
    if m.max_per_client == 0 {
        f.problems.push(problem(
            "mappings.max_per_client",
            "0 would refuse every mapping",
            "set a quota such as 128",
        ));
    }
}

/// `[[rule]]`: each parses and names hosts of this LAN.
fn rules(
    configured: &[RuleConfig],
    internal: &[InternalInterface],
    extra: &[Ipv4Net],
    external: &External,
    f: &mut Findings,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, r) in configured.iter().enumerate() {
        match parse_rule(r) {
            Ok(rule) => {
                if let Some(why) = rule_outside_the_lan(&rule, internal, extra, &external.nets6) {
                    f.problems.push(problem(
                        &format!("rule[{i}].internal_addresses"),
                        format!("{} {why}: the interfaces or the rule look swapped", rule.internal_addresses),
                        "name the LAN hosts the rule is for (a prefix inside an internal subnet), and check that interfaces.external is the WAN side",
                    ));
                }
                rules.push(rule)
            }
            Err((field, msg, fix)) => {
                f.problems
                    .push(problem(&format!("rule[{i}].{field}"), msg, fix))
            }
        }
    }

    rules
}

/// `[firewall] table`: a usable nftables table name.
fn firewall(fw: &FirewallConfig, f: &mut Findings) {
    let table = &fw.table;
    if table.is_empty()
        || table.len() > 64
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        f.problems.push(problem(
            "firewall.table",
            format!("`{table}` is not a usable nftables table name"),
            "use letters, digits, `_` or `-`, at most 64 characters",
        ));
    }
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
