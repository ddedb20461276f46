//! The TOML config file: its sections, loading, and the safe, typed settings it becomes.
//! Validation (`config/validate.rs`, one function per section) is pure: it takes the
//! kernel's view of the interfaces as input, so every refusal of an unsafe layout is
//! unit-tested without touching the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use natwarden_core::{Ipv4Net, Ipv6Net, Policy};
use serde::Deserialize;

mod validate;

pub use validate::validate;

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

#[cfg(test)]
mod tests {
    use super::*;
    use natwarden_core::IpNet;

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
