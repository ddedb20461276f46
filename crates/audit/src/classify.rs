//! From evidence to findings: the definitions of the five CERT VU#184540 weaknesses as one
//! pure function, so each can be read, and tested, on its own.

use std::net::{IpAddr, Ipv4Addr};

use crate::report::{Finding, MapProbeKind};

/// What a target's replies showed. Only replies that parsed strictly are evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// A valid reply of either protocol came.
    pub answered: bool,
    /// The NAT-PMP external-address reply: `Ok(address)` for result 0, `Err(code)` otherwise.
    pub natpmp_address: Option<Result<Ipv4Addr, u16>>,
    /// Some reply (NAT-PMP result 3, PCP NETWORK_FAILURE) said the gateway has no external
    /// address.
    pub network_failure: bool,
    pub maps: Vec<MapEvidence>,
}

/// One mapping request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEvidence {
    pub kind: MapProbeKind,
    pub suggested_port: u16,
    /// Result 0 with a lifetime above 0.
    pub granted: bool,
    pub external_port: u16,
    /// The assigned address of a PCP MAP response; NAT-PMP MAP responses carry none.
    pub external_address: Option<IpAddr>,
}

/// The findings `evidence` shows about `target`, in [`Finding::ALL`] order. `prober` is the
/// auditing host's own address: an IPv6 firewall granting a pinhole names it as the
/// "external" address, which is no sign of swapped interfaces.
pub fn classify(target: IpAddr, prober: Option<IpAddr>, evidence: &Evidence) -> Vec<Finding> {
    let mut findings = Vec::new();
    if !evidence.answered {
        return findings;
    }
    findings.push(Finding::InformationDisclosure);

    // The address it says is its external one, as far as any reply told.
    let reported_natpmp = match evidence.natpmp_address {
        Some(Ok(a)) => Some(IpAddr::V4(a)),
        _ => None,
    };
    let foreign = |a: IpAddr| a != target && Some(a) != prober;
    let swapped = evidence.network_failure
        || reported_natpmp.is_some_and(foreign)
        || evidence
            .maps
            .iter()
            .filter(|m| m.granted)
            .filter_map(|m| m.external_address)
            .any(foreign);
    if swapped {
        findings.push(Finding::InternalTrafficInterception);
    }

    let granted: Vec<&MapEvidence> = evidence.maps.iter().filter(|m| m.granted).collect();
    // The outsider now receives what is sent to the probed address: the gateway told it so,
    // by the external-address reply (NAT-PMP) or the mapping's assigned address (PCP).
    let to_probed = granted.iter().any(|m| {
        m.external_address
            .or(reported_natpmp)
            .is_some_and(|a| a == target)
    });
    if to_probed {
        findings.push(Finding::ExternalTrafficInterception);
    }
    if !granted.is_empty() {
        findings.push(Finding::InternalServiceAccess);
    }
    if granted.iter().any(|m| m.external_port == m.suggested_port) {
        findings.push(Finding::HostServiceDos);
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn map(granted: bool, port: u16, addr: Option<IpAddr>) -> MapEvidence {
        MapEvidence {
            kind: MapProbeKind::NatPmpMap,
            suggested_port: 50000,
            granted,
            external_port: port,
            external_address: addr,
        }
    }

    fn answered(natpmp: Option<Result<Ipv4Addr, u16>>, maps: Vec<MapEvidence>) -> Evidence {
        Evidence {
            answered: true,
            natpmp_address: natpmp,
            network_failure: matches!(natpmp, Some(Err(3))),
            maps,
        }
    }

    #[test]
    fn silence_is_no_finding() {
        assert!(classify(T, None, &Evidence::default()).is_empty());
    }

    #[test]
    fn a_leak_of_the_probed_address_is_information_disclosure_only() {
        let e = answered(Some(Ok(Ipv4Addr::new(198, 51, 100, 7))), vec![]);
        assert_eq!(classify(T, None, &e), [Finding::InformationDisclosure]);
        let refused = answered(
            Some(Ok(Ipv4Addr::new(198, 51, 100, 7))),
            vec![map(false, 0, None)],
        );
        assert_eq!(
            classify(T, None, &refused),
            [Finding::InformationDisclosure]
        );
    }

    #[test]
    fn another_external_address_or_network_failure_means_swapped_interfaces() {
        let e = answered(Some(Ok(PRIVATE)), vec![]);
        assert_eq!(
            classify(T, None, &e),
            [
                Finding::InformationDisclosure,
                Finding::InternalTrafficInterception
            ]
        );
        let e = answered(Some(Err(3)), vec![]);
        assert_eq!(
            classify(T, None, &e),
            [
                Finding::InformationDisclosure,
                Finding::InternalTrafficInterception
            ]
        );
        // Granted on the swapped side: service access and port takeover, but the traffic
        // captured is the LAN's, not the probed address's.
        let e = answered(Some(Ok(PRIVATE)), vec![map(true, 50000, None)]);
        assert_eq!(
            classify(T, None, &e),
            [
                Finding::InformationDisclosure,
                Finding::InternalTrafficInterception,
                Finding::InternalServiceAccess,
                Finding::HostServiceDos
            ]
        );
    }

    #[test]
    fn an_open_gateway_shows_all_three_mapping_findings() {
        let e = answered(
            Some(Ok(Ipv4Addr::new(198, 51, 100, 7))),
            vec![map(true, 50000, None)],
        );
        assert_eq!(
            classify(T, None, &e),
            [
                Finding::InformationDisclosure,
                Finding::ExternalTrafficInterception,
                Finding::InternalServiceAccess,
                Finding::HostServiceDos
            ]
        );
        // Another port than suggested: no port takeover.
        let e = answered(
            Some(Ok(Ipv4Addr::new(198, 51, 100, 7))),
            vec![map(true, 50001, None)],
        );
        assert!(!classify(T, None, &e).contains(&Finding::HostServiceDos));
    }

    #[test]
    fn pcp_assigned_address_decides_without_natpmp() {
        let e = answered(None, vec![map(true, 1, Some(T))]);
        assert!(classify(T, None, &e).contains(&Finding::ExternalTrafficInterception));
        let e = answered(None, vec![map(true, 1, Some(IpAddr::V4(PRIVATE)))]);
        assert!(classify(T, None, &e).contains(&Finding::InternalTrafficInterception));
        // An IPv6 pinhole names the requester itself: not a swap.
        let me: IpAddr = "2001:db8::1".parse().unwrap();
        let t6: IpAddr = "2001:db8::7".parse().unwrap();
        let e = answered(None, vec![map(true, 1, Some(me))]);
        assert_eq!(
            classify(t6, Some(me), &e),
            [
                Finding::InformationDisclosure,
                Finding::InternalServiceAccess
            ]
        );
    }
}
