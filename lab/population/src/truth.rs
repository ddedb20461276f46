//! What the auditor should find: the ground-truth line of each answering address, from the
//! behaviour table alone (written apart from the auditor), and the leftover-mappings lines.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::mix::Behaviour;
use crate::population::{private_v4, protocol_name, Mapping, MappingKey, Population};

pub const INFORMATION_DISCLOSURE: &str = "information-disclosure";
pub const INTERNAL_TRAFFIC_INTERCEPTION: &str = "internal-traffic-interception";
pub const EXTERNAL_TRAFFIC_INTERCEPTION: &str = "external-traffic-interception";
pub const INTERNAL_SERVICE_ACCESS: &str = "internal-service-access";
pub const HOST_SERVICE_DOS: &str = "host-service-dos";

/// The findings of a probe that only asks (external address, ANNOUNCE) and of one that also
/// maps (intrusive), in the fixed order of the constants above.
pub fn findings(behaviour: Behaviour, v6: bool) -> (Vec<&'static str>, Vec<&'static str>) {
    use Behaviour::*;
    let disclosure = vec![INFORMATION_DISCLOSURE];
    match behaviour {
        Silent | Garbage => (vec![], vec![]),
        Leak | PcpOnly | OtherSource => (disclosure.clone(), disclosure),
        // IPv6: ANNOUNCE reveals no address; the MAP answer's ULA external address does.
        Swapped if v6 => (
            disclosure,
            vec![
                INFORMATION_DISCLOSURE,
                INTERNAL_TRAFFIC_INTERCEPTION,
                INTERNAL_SERVICE_ACCESS,
                HOST_SERVICE_DOS,
            ],
        ),
        Swapped => (
            vec![INFORMATION_DISCLOSURE, INTERNAL_TRAFFIC_INTERCEPTION],
            vec![
                INFORMATION_DISCLOSURE,
                INTERNAL_TRAFFIC_INTERCEPTION,
                INTERNAL_SERVICE_ACCESS,
                HOST_SERVICE_DOS,
            ],
        ),
        // IPv6: only the MAP's NETWORK_FAILURE shows the swap.
        SwappedNofail if v6 => (
            disclosure,
            vec![INFORMATION_DISCLOSURE, INTERNAL_TRAFFIC_INTERCEPTION],
        ),
        SwappedNofail => (
            vec![INFORMATION_DISCLOSURE, INTERNAL_TRAFFIC_INTERCEPTION],
            vec![INFORMATION_DISCLOSURE, INTERNAL_TRAFFIC_INTERCEPTION],
        ),
        Open => (
            disclosure,
            vec![
                INFORMATION_DISCLOSURE,
                EXTERNAL_TRAFFIC_INTERCEPTION,
                INTERNAL_SERVICE_ACCESS,
                HOST_SERVICE_DOS,
            ],
        ),
        OpenReassign => (
            disclosure,
            vec![
                INFORMATION_DISCLOSURE,
                EXTERNAL_TRAFFIC_INTERCEPTION,
                INTERNAL_SERVICE_ACCESS,
            ],
        ),
    }
}

/// One line of the truth file, fields in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthLine {
    pub target: String,
    pub behaviour: &'static str,
    pub protocols: &'static [&'static str],
    /// The address a NAT-PMP external-address request gets with result 0, if it gets one.
    pub external_address: Option<String>,
    /// Where the replies come from when that is not the target.
    pub reply_source: Option<String>,
    pub findings: Vec<&'static str>,
    pub findings_intrusive: Vec<&'static str>,
}

/// One line of the leftover file: a mapping still live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftoverLine {
    pub target: String,
    pub protocol: String,
    pub internal_port: u16,
    pub external_port: u16,
    pub client: String,
    pub expires_in: u64,
}

/// The truth line of `target`, `None` if it never answers validly.
pub fn truth_line(population: &Population, target: IpAddr) -> Option<TruthLine> {
    let behaviour = population.behaviour(target)?;
    if !behaviour.answers_validly() {
        return None;
    }
    let protocols: &[&str] = match (behaviour, target) {
        (_, IpAddr::V6(_)) | (Behaviour::PcpOnly, _) => &["pcp"],
        _ => &["nat-pmp", "pcp"],
    };
    // The address a NAT-PMP external-address request gets with result 0.
    let external_address = match (behaviour, target) {
        (_, IpAddr::V6(_)) | (Behaviour::PcpOnly | Behaviour::SwappedNofail, _) => None,
        (Behaviour::Swapped, IpAddr::V4(v4)) => Some(IpAddr::V4(private_v4(v4))),
        (_, IpAddr::V4(_)) => Some(target),
    };
    let reply_source =
        (behaviour == Behaviour::OtherSource).then(|| population.sibling(target).to_string());
    let (findings, intrusive) = findings(behaviour, target.is_ipv6());
    Some(TruthLine {
        target: target.to_string(),
        behaviour: behaviour.name(),
        protocols,
        external_address: external_address.map(|a| a.to_string()),
        reply_source,
        findings,
        findings_intrusive: intrusive,
    })
}

/// Writes the truth file: a line per answering address, IPv4 range then IPv6, ascending.
pub fn write_truth(population: &Population, out: &mut impl Write) -> io::Result<()> {
    for range in [population.v4, population.v6].into_iter().flatten() {
        for target in range.iter() {
            if let Some(line) = truth_line(population, target) {
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

/// One leftover line: a mapping still live at `now`.
pub fn leftover_line(key: &MappingKey, mapping: &Mapping, now: Duration) -> LeftoverLine {
    LeftoverLine {
        target: key.target.to_string(),
        protocol: protocol_name(key.protocol),
        internal_port: key.internal_port,
        external_port: mapping.external_port,
        client: key.client.to_string(),
        expires_in: mapping.expires.saturating_sub(now).as_secs(),
    }
}

pub fn write_leftover(
    population: &Population,
    now: Duration,
    out: &mut impl Write,
) -> io::Result<()> {
    for (key, mapping) in population.live_mappings(now) {
        serde_json::to_writer(&mut *out, &leftover_line(&key, &mapping, now))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: [&str; 5] = [
        INFORMATION_DISCLOSURE,
        INTERNAL_TRAFFIC_INTERCEPTION,
        EXTERNAL_TRAFFIC_INTERCEPTION,
        INTERNAL_SERVICE_ACCESS,
        HOST_SERVICE_DOS,
    ];

    #[test]
    fn findings_are_in_the_fixed_order_and_intrusive_is_a_superset() {
        for b in Behaviour::ALL {
            for v6 in [false, true] {
                let (plain, intrusive) = findings(b, v6);
                for list in [&plain, &intrusive] {
                    let idx: Vec<usize> = list
                        .iter()
                        .map(|f| ORDER.iter().position(|o| o == f).expect("known finding"))
                        .collect();
                    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{b:?} {list:?}");
                }
                assert!(plain.iter().all(|f| intrusive.contains(f)), "{b:?}");
                assert_eq!(plain.is_empty(), !b.answers_validly());
            }
        }
    }

    #[test]
    fn v6_differs_only_for_the_swapped_kinds() {
        for b in Behaviour::ALL {
            let same = findings(b, false) == findings(b, true);
            assert_eq!(
                same,
                !matches!(b, Behaviour::Swapped | Behaviour::SwappedNofail),
                "{b:?}"
            );
        }
    }

    fn population_of(behaviour: Behaviour) -> Population {
        let spec: Vec<String> = Behaviour::ALL
            .iter()
            .map(|b| format!("{}={}", b.name(), u32::from(*b == behaviour)))
            .collect();
        Population::new(
            1,
            crate::mix::Mix::parse(&spec.join(",")).expect("valid mix"),
            Some(crate::range::Range::parse("100.64.0.0/30", false).expect("range")),
            Some(crate::range::Range::parse("2001:db8:64::/126", true).expect("range")),
            65536,
        )
    }

    fn line(behaviour: Behaviour, target: &str) -> Option<String> {
        let p = population_of(behaviour);
        truth_line(&p, target.parse().expect("address"))
            .map(|l| serde_json::to_string(&l).expect("serializes"))
    }

    #[test]
    fn truth_lines_exactly() {
        assert_eq!(
            line(Behaviour::OtherSource, "100.64.0.2").as_deref(),
            Some(
                r#"{"target":"100.64.0.2","behaviour":"other-source","protocols":["nat-pmp","pcp"],"external_address":"100.64.0.2","reply_source":"100.65.0.2","findings":["information-disclosure"],"findings_intrusive":["information-disclosure"]}"#
            )
        );
        assert_eq!(
            line(Behaviour::Swapped, "100.64.0.1").as_deref(),
            Some(
                r#"{"target":"100.64.0.1","behaviour":"swapped","protocols":["nat-pmp","pcp"],"external_address":"10.64.0.1","reply_source":null,"findings":["information-disclosure","internal-traffic-interception"],"findings_intrusive":["information-disclosure","internal-traffic-interception","internal-service-access","host-service-dos"]}"#
            )
        );
        assert_eq!(
            line(Behaviour::SwappedNofail, "2001:db8:64::3").as_deref(),
            Some(
                r#"{"target":"2001:db8:64::3","behaviour":"swapped-nofail","protocols":["pcp"],"external_address":null,"reply_source":null,"findings":["information-disclosure"],"findings_intrusive":["information-disclosure","internal-traffic-interception"]}"#
            )
        );
        assert!(line(Behaviour::PcpOnly, "100.64.0.1")
            .expect("a line")
            .contains(r#""protocols":["pcp"],"external_address":null"#));
        assert_eq!(line(Behaviour::Silent, "100.64.0.1"), None);
        assert_eq!(line(Behaviour::Garbage, "100.64.0.1"), None);
        assert_eq!(
            line(Behaviour::Open, "100.64.0.4"),
            None,
            "outside the range"
        );
    }

    #[test]
    fn truth_file_is_sorted_v4_then_v6() {
        let p = population_of(Behaviour::Leak);
        let mut out = Vec::new();
        write_truth(&p, &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        let targets: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                v["target"].as_str().expect("target").to_string()
            })
            .collect();
        assert_eq!(
            targets,
            [
                "100.64.0.0",
                "100.64.0.1",
                "100.64.0.2",
                "100.64.0.3",
                "2001:db8:64::",
                "2001:db8:64::1",
                "2001:db8:64::2",
                "2001:db8:64::3"
            ]
        );
    }

    #[test]
    fn leftover_lines_exactly() {
        let key = MappingKey {
            target: "100.64.0.9".parse().expect("address"),
            protocol: 6,
            internal_port: 4444,
            client: "203.0.113.1".parse().expect("address"),
        };
        let mapping = Mapping {
            external_port: 8022,
            expires: Duration::from_secs(700),
        };
        let line = leftover_line(&key, &mapping, Duration::from_secs(100));
        assert_eq!(
            serde_json::to_string(&line).expect("serializes"),
            r#"{"target":"100.64.0.9","protocol":"tcp","internal_port":4444,"external_port":8022,"client":"203.0.113.1","expires_in":600}"#
        );
        let p = population_of(Behaviour::Open);
        let mut out = Vec::new();
        write_leftover(&p, Duration::ZERO, &mut out).expect("writes");
        assert!(out.is_empty(), "no mappings: an empty file");
    }
}
