//! CERT VU#184540, each problem tried from the WAN side: silence, and nothing opened.
//! Also the neighbouring ingress rules (unknown interfaces, spoofed sources).

use super::*;

#[test]
fn cert_information_disclosure_external_address_request_from_wan_is_silent() {
    let mut h = Harness::new(policy());
    let wan = Ingress {
        interface: WAN_IF,
        source: sa(Ipv4Addr::new(203, 0, 113, 9), 5555),
        destination: EXT.into(),
    };
    assert_eq!(
        h.send_raw(wan, &ADDR_REQ),
        Err(DropReason::ExternalInterface)
    );
    assert_eq!(h.gw.stats().drops_for(DropReason::ExternalInterface), 1);
}

#[test]
fn cert_wan_request_aimed_at_the_lan_address_through_the_wan_link_is_silent() {
    // The attacker routes a packet for 192.168.1.1 over the WAN link: it arrives on
    // the external interface although addressed to the internal address.
    let mut h = Harness::new(policy());
    let wan = Ingress {
        interface: WAN_IF,
        source: sa(HOST, 5555),
        destination: GW_LAN.into(),
    };
    assert_eq!(
        h.send_raw(wan, &MAP_TCP_8080),
        Err(DropReason::ExternalInterface)
    );
    assert_eq!(
        h.send_raw(wan, &ADDR_REQ),
        Err(DropReason::ExternalInterface)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn cert_interception_and_service_access_mapping_request_from_wan_opens_nothing() {
    let mut h = Harness::new(policy());
    for dst in [EXT, GW_LAN] {
        let wan = Ingress {
            interface: WAN_IF,
            source: sa(Ipv4Addr::new(203, 0, 113, 9), 5555),
            destination: dst.into(),
        };
        assert!(h.send_raw(wan, &MAP_TCP_8080).is_err());
    }
    assert!(h.kernel.is_empty() && h.gw.mapping_count() == 0);
}

#[test]
fn cert_request_addressed_to_the_external_address_from_inside_is_silent() {
    let mut h = Harness::new(policy());
    let ing = Ingress {
        destination: EXT.into(),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(ing, &MAP_TCP_8080),
        Err(DropReason::NotToInternalAddress)
    );
}

#[test]
fn cert_mapping_for_another_address_is_impossible_spoofed_source_outside_subnet() {
    let mut h = Harness::new(policy());
    let spoofed = Ingress {
        source: sa(Ipv4Addr::new(10, 9, 9, 9), 40000),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(spoofed, &MAP_TCP_8080),
        Err(DropReason::ClientNotAllowed)
    );
    assert!(h.kernel.is_empty());
}

#[test]
fn cert_dos_against_host_services_mapping_may_never_target_the_gateway() {
    let mut h = Harness::new(policy());
    for own in [
        GW_LAN,
        EXT,
        Ipv4Addr::new(192, 168, 1, 0),
        Ipv4Addr::new(192, 168, 1, 255),
    ] {
        let ing = Ingress {
            source: sa(own, 40000),
            ..lan(HOST)
        };
        assert_eq!(
            h.send_raw(ing, &MAP_TCP_8080),
            Err(DropReason::ClientNotAllowed),
            "{own}"
        );
    }
    assert!(h.kernel.is_empty());
}

#[test]
fn datagrams_on_an_unknown_interface_or_to_multicast_are_dropped() {
    let mut h = Harness::new(policy());
    let other = Ingress {
        interface: OTHER_IF,
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(other, &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    let mcast = Ingress {
        destination: Ipv4Addr::new(224, 0, 0, 1).into(),
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(mcast, &ADDR_REQ),
        Err(DropReason::NotToInternalAddress)
    );
}

#[test]
fn a_mapping_always_points_at_the_requester() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Udp, 6000, 6000, 3600);
    assert_eq!(
        h.kernel.iter().copied().collect::<Vec<_>>(),
        vec![fwd(HOST2, Protocol::Udp, 6000, 6000)]
    );
}
