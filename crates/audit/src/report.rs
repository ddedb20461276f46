//! What an audit tells: a report per answering target and a summary shaped like the table
//! of CERT VU#184540; both serialise to JSON lines with stable field names, and summaries of
//! several runs (shards) merge into one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The five weaknesses of CERT VU#184540, in the note's order of severity as this tool
/// reports them. The names are the stable identifiers of the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finding {
    /// A valid reply to either probe from outside: external address, epoch, boot time leak.
    InformationDisclosure,
    /// It answers from outside and shows the side it answered on is not its external side.
    InternalTrafficInterception,
    /// It grants an outsider a mapping of its (probed) external address.
    ExternalTrafficInterception,
    /// It grants an outside requester any mapping.
    InternalServiceAccess,
    /// It grants an outsider exactly the external port suggested.
    HostServiceDos,
}

impl Finding {
    pub const ALL: [Finding; 5] = [
        Finding::InformationDisclosure,
        Finding::InternalTrafficInterception,
        Finding::ExternalTrafficInterception,
        Finding::InternalServiceAccess,
        Finding::HostServiceDos,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Finding::InformationDisclosure => "information-disclosure",
            Finding::InternalTrafficInterception => "internal-traffic-interception",
            Finding::ExternalTrafficInterception => "external-traffic-interception",
            Finding::InternalServiceAccess => "internal-service-access",
            Finding::HostServiceDos => "host-service-dos",
        }
    }

    /// The note's wording, for the summary table.
    pub const fn title(self) -> &'static str {
        match self {
            Finding::InformationDisclosure => "Information Disclosure about the NAT-PMP device",
            Finding::InternalTrafficInterception => "Interception of Internal NAT Traffic",
            Finding::ExternalTrafficInterception => "Interception of External Traffic",
            Finding::InternalServiceAccess => "Access to Internal NAT Client Services",
            Finding::HostServiceDos => "DoS Against Host Services",
        }
    }

    /// Whether only a mapping request (`--intrusive`) can show it.
    pub const fn needs_intrusive(self) -> bool {
        matches!(
            self,
            Finding::ExternalTrafficInterception
                | Finding::InternalServiceAccess
                | Finding::HostServiceDos
        )
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which mapping request a [`MappingReport`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapProbeKind {
    /// NAT-PMP MAP of a random high port, suggesting the same external port.
    NatPmpMap,
    /// PCP MAP of a random high port for the prober's own address.
    PcpMap,
    /// PCP MAP whose THIRD_PARTY option names another host.
    PcpMapThirdParty,
    /// PCP MAP whose client-address field is not the datagram's source.
    PcpMapClientMismatch,
    /// A mapping suggesting an external port the user named (`--service-port`).
    ServicePort,
}

impl MapProbeKind {
    pub const fn name(self) -> &'static str {
        match self {
            MapProbeKind::NatPmpMap => "nat-pmp-map",
            MapProbeKind::PcpMap => "pcp-map",
            MapProbeKind::PcpMapThirdParty => "pcp-map-third-party",
            MapProbeKind::PcpMapClientMismatch => "pcp-map-client-mismatch",
            MapProbeKind::ServicePort => "service-port",
        }
    }
}

/// Whether a granted mapping was removed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deletion {
    /// Nothing was granted, nothing to delete.
    NotNeeded,
    /// The gateway answered the lifetime-0 request with success.
    Confirmed,
    /// The gateway refused the deletion (the result is in `deletion_result`).
    Refused,
    /// No answer to any attempt: the mapping may live until its lifetime ends.
    Unconfirmed,
}

impl Deletion {
    pub const fn name(self) -> &'static str {
        match self {
            Deletion::NotNeeded => "not-needed",
            Deletion::Confirmed => "confirmed",
            Deletion::Refused => "refused",
            Deletion::Unconfirmed => "unconfirmed",
        }
    }
}

/// One mapping request of an intrusive audit and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingReport {
    pub probe: MapProbeKind,
    /// "nat-pmp" or "pcp".
    pub protocol: String,
    /// The transport of the mapping: "udp" or "tcp".
    pub transport: String,
    pub internal_port: u16,
    pub suggested_port: u16,
    /// The result code's name, or null when no answer came.
    pub result: Option<String>,
    pub granted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<u32>,
    pub deletion: Deletion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_result: Option<String>,
}

/// A `--service-port` asked for: could an outsider take it?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortReport {
    pub port: u16,
    pub taken: bool,
}

/// Everything learnt about one answering target. A target that gave no valid reply has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: IpAddr,
    /// "nat-pmp", "pcp": which protocols gave a valid reply.
    pub protocols: Vec<String>,
    /// The external address a NAT-PMP external-address reply gave (result 0), else null.
    pub external_address: Option<IpAddr>,
    pub epoch: Option<u32>,
    /// Unix time the epoch implies the gateway's mapping state began (its boot, usually).
    pub boot_time: Option<u64>,
    /// Set when replies came from an address other than the probed one.
    pub reply_source: Option<IpAddr>,
    pub nat_pmp_result: Option<String>,
    pub pcp_result: Option<String>,
    pub findings: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<MappingReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_ports: Vec<ServicePortReport>,
}

/// A count and its share of the answering targets, as the note gives them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FindingCount {
    pub count: u64,
    /// Percent of answering targets, one decimal.
    pub percent: f64,
}

/// The run's totals: the note's table for the probed targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub targets_probed: u64,
    pub answering: u64,
    pub intrusive: bool,
    pub findings: BTreeMap<Finding, FindingCount>,
    /// Replies that matched no probe (wrong port for their source, or no probe in flight).
    pub stray_replies: u64,
    /// Replies that matched a probe but do not parse as NAT-PMP or PCP: never a finding.
    pub malformed_replies: u64,
    /// Granted mappings whose deletion was not confirmed.
    pub deletions_unconfirmed: u64,
}

impl Summary {
    /// An empty summary; the findings a non-intrusive run cannot show are left out.
    pub fn new(intrusive: bool) -> Summary {
        Summary {
            targets_probed: 0,
            answering: 0,
            intrusive,
            findings: Finding::ALL
                .into_iter()
                .filter(|f| intrusive || !f.needs_intrusive())
                .map(|f| (f, FindingCount::new(0, 0)))
                .collect(),
            stray_replies: 0,
            malformed_replies: 0,
            deletions_unconfirmed: 0,
        }
    }

    /// Counts one answering target.
    pub fn add(&mut self, r: &TargetReport) {
        self.answering += 1;
        for f in &r.findings {
            if let Some(c) = self.findings.get_mut(f) {
                c.count += 1;
            }
        }
        self.deletions_unconfirmed += r
            .mappings
            .iter()
            .filter(|m| m.granted && m.deletion != Deletion::Confirmed)
            .count() as u64;
        self.update_percentages();
    }

    /// Adds the run-level counters of another run's summary (a shard's), whose targets are
    /// counted by [`Summary::add`] from their own lines.
    pub fn add_run(&mut self, other: &Summary) {
        self.targets_probed += other.targets_probed;
        self.stray_replies += other.stray_replies;
        self.malformed_replies += other.malformed_replies;
        if other.intrusive && !self.intrusive {
            self.intrusive = true;
            for f in Finding::ALL {
                self.findings.entry(f).or_insert(FindingCount::new(0, 0));
            }
        }
    }

    fn update_percentages(&mut self) {
        let answering = self.answering;
        for c in self.findings.values_mut() {
            *c = FindingCount::new(c.count, answering);
        }
    }

    /// The note's table: one line per finding with count and percent of answering targets.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} targets probed, {} answering from outside ({:.1}%)\n",
            self.targets_probed,
            self.answering,
            percent(self.answering, self.targets_probed)
        );
        for f in Finding::ALL {
            match self.findings.get(&f) {
                Some(c) => out.push_str(&format!(
                    "  {:<48} {:>9} ({:.1}% of answering)\n",
                    f.title(),
                    c.count,
                    c.percent
                )),
                None => out.push_str(&format!(
                    "  {:<48} {:>9} (needs --intrusive)\n",
                    f.title(),
                    "-"
                )),
            }
        }
        if self.deletions_unconfirmed > 0 {
            out.push_str(&format!(
                "  WARNING: {} granted mapping(s) could not be confirmed deleted; they expire with their lifetime\n",
                self.deletions_unconfirmed
            ));
        }
        if self.stray_replies + self.malformed_replies > 0 {
            out.push_str(&format!(
                "  ignored: {} stray and {} malformed replies\n",
                self.stray_replies, self.malformed_replies
            ));
        }
        out
    }
}

impl FindingCount {
    fn new(count: u64, answering: u64) -> FindingCount {
        FindingCount {
            count,
            percent: (percent(count, answering) * 10.0).round() / 10.0,
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One line of `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum JsonLine {
    Target(TargetReport),
    Summary(Summary),
}

impl TargetReport {
    /// One line for a person: the target, what answered, and the findings.
    pub fn render(&self) -> String {
        let mut line = format!("{:<16} {}", self.target, self.protocols.join("+"));
        match (self.external_address, &self.nat_pmp_result) {
            (Some(a), _) => line.push_str(&format!("  external {a}")),
            (None, Some(r)) => line.push_str(&format!("  external address: {r}")),
            (None, None) => {}
        }
        if let Some(e) = self.epoch {
            line.push_str(&format!("  epoch {e}s"));
        }
        if let Some(s) = self.reply_source {
            line.push_str(&format!("  replies from {s}"));
        }
        let names: Vec<&str> = self.findings.iter().map(|f| f.name()).collect();
        line.push_str(&format!("  [{}]", names.join(", ")));
        for m in self.mappings.iter().filter(|m| m.granted) {
            line.push_str(&format!(
                "\n    granted {} {}/{} -> external {}{} (deletion {})",
                m.probe.name(),
                m.transport,
                m.internal_port,
                m.external_port.map_or("?".into(), |p| p.to_string()),
                if m.external_port == Some(m.suggested_port) {
                    " as suggested"
                } else {
                    ""
                },
                m.deletion.name()
            ));
        }
        for s in &self.service_ports {
            line.push_str(&format!(
                "\n    service port {}: {}",
                s.port,
                if s.taken {
                    "an outsider can take it"
                } else {
                    "not granted"
                }
            ));
        }
        line
    }
}
