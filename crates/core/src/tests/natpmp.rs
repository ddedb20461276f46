//! NAT-PMP (RFC 6886), rule by rule: external address, mapping, renewal, deletion,
//! expiry, announcements, plus the quotas, permission rules and rate limits it meets.

use super::*;

#[test]
fn rfc6886_3_2_external_address_and_epoch() {
    let mut h = Harness::new(policy());
    h.now += Duration::from_secs(42);
    match h.send(lan(HOST), Request::ExternalAddress) {
        Ok(Response::ExternalAddress(r)) => {
            assert_eq!(r.result, ResultCode::SUCCESS);
            assert_eq!(r.address, EXT);
            assert_eq!(r.epoch, 42);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc6886_3_5_network_failure_without_external_address() {
    let mut h = Harness::new(policy());
    h.gw.set_external_address(h.now, None);
    match h.send(lan(HOST), Request::ExternalAddress) {
        Ok(Response::ExternalAddress(r)) => {
            assert_eq!(r.result, ResultCode::NETWORK_FAILURE);
            assert_eq!(r.address, Ipv4Addr::UNSPECIFIED, "MUST be zero on error");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.map(8080, 8080, 7200), (ResultCode::NETWORK_FAILURE, 0, 0));
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6886_3_5_unsupported_version_gets_result_1_in_nat_pmp_only_mode() {
    // RFC 6887 Appendix A: a NAT-PMP-only server answers PCP (version 2) with NAT-PMP
    // result 1 so that PCP clients fall back.
    let mut p = policy();
    p.pcp = false;
    let mut h = Harness::new(p);
    for version in [1u8, 2, 255] {
        let reply = h.send_raw(lan(HOST), &[version, 0]).expect("answered");
        assert_eq!(
            Response::parse(&reply),
            Ok(Response::UnsupportedVersion { epoch: 0 })
        );
        assert_eq!(&reply[2..4], &[0, 1]);
    }
}

/// Regression: the dispatcher looked at the opcode byte before the version, so a
/// NAT-PMP-only gateway ignored version-1/2/255 datagrams whose opcode had the top bit
/// set, where RFC 6886 section 3.5 checks the version first.
#[test]
fn rfc6886_3_5_version_is_checked_before_the_opcode_in_nat_pmp_only_mode() {
    let mut p = policy();
    p.pcp = false;
    let mut h = Harness::new(p);
    for request in [&[1u8, 0x80][..], &[2, 0x81, 0, 0], &[255, 0xff], &[1]] {
        let reply = h.send_raw(lan(HOST), request).expect("answered");
        assert_eq!(reply, vec![0, 0, 0, 1, 0, 0, 0, 0], "{request:?}");
    }
    // Version 0 with a response opcode is still ignored.
    assert_eq!(
        h.send_raw(lan(HOST), &[0, 0x80]),
        Err(DropReason::NotARequest)
    );
    assert_eq!(h.send_raw(lan(HOST), &[0]), Err(DropReason::Malformed));
}

#[test]
fn rfc6886_3_5_unsupported_opcode_echoes_request_with_result_5() {
    let mut h = Harness::new(policy());
    let req = [0u8, 3, 0, 0, 1, 2, 3, 4];
    let reply = h.send_raw(lan(HOST), &req).expect("answered");
    assert_eq!(reply, vec![0, 128 + 3, 0, 5, 1, 2, 3, 4]);
    assert_eq!(h.gw.stats().results[5], 1);
}

#[test]
fn rfc6886_3_5_responses_and_short_packets_are_ignored() {
    let mut h = Harness::new(policy());
    assert_eq!(
        h.send_raw(lan(HOST), &[0, 128, 0, 0]),
        Err(DropReason::NotARequest)
    );
    assert_eq!(h.send_raw(lan(HOST), &[]), Err(DropReason::Malformed));
    assert_eq!(h.send_raw(lan(HOST), &[0]), Err(DropReason::Malformed));
    assert_eq!(
        h.send_raw(lan(HOST), &MAP_TCP_8080[..11]),
        Err(DropReason::Malformed)
    );
    let mut long = MAP_TCP_8080.to_vec();
    long.push(0);
    assert_eq!(h.send_raw(lan(HOST), &long), Err(DropReason::Malformed));
    assert!(h.kernel.is_empty());
}

#[test]
fn rfc6886_3_3_suggested_port_honoured_when_free() {
    let mut h = Harness::new(policy());
    assert_eq!(h.map(8080, 9090, 7200), (ResultCode::SUCCESS, 9090, 7200));
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST, Protocol::Tcp, 8080, 9090)])
    );
    assert_eq!(h.forwards(), h.kernel);
}

#[test]
fn rfc6886_3_3_taken_port_gets_another_allowed_port() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200);
    let (res, ext, _) = h.map(8080, 8080, 7200);
    assert_eq!(res, ResultCode::SUCCESS);
    assert_ne!(ext, 8080);
    assert!(ext >= 1024, "default rules allow only unprivileged ports");
    assert_eq!(h.kernel.len(), 2);
}

#[test]
fn rfc6886_3_3_companion_port_of_other_protocol_is_reserved() {
    let mut h = Harness::new(policy());
    h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200);
    match h.map_from(HOST, Protocol::Udp, 8080, 8080, 7200) {
        Response::Map(m) => assert_ne!(m.external_port, 8080),
        other => panic!("{other:?}"),
    }
    // The owner itself may take the companion port.
    match h.map_from(HOST2, Protocol::Udp, 8080, 8080, 7200) {
        Response::Map(m) => assert_eq!(m.external_port, 8080),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rfc6886_3_3_same_client_renewing_gets_the_same_port() {
    let mut h = Harness::new(policy());
    let (_, first, _) = h.map(8080, 0, 7200);
    assert!(first >= 1024);
    h.advance(3000);
    assert_eq!(h.map(8080, 12345, 7200), (ResultCode::SUCCESS, first, 7200));
    assert_eq!(h.kernel.len(), 1, "a renewal adds no second forward");
    // The renewal moved the expiry: the original deadline passes without loss.
    h.advance(5000);
    assert_eq!(h.kernel.len(), 1);
    h.advance(2300);
    assert!(h.kernel.is_empty(), "expired 7200 s after the renewal");
}

#[test]
fn rfc6886_3_3_lifetimes_are_clamped_to_configured_bounds() {
    let mut p = policy();
    p.min_lifetime = 120;
    p.max_lifetime = 3600;
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 1).2, 120);
    assert_eq!(h.map(8081, 8081, 999_999).2, 3600);
    assert_eq!(h.map(8082, 8082, 600).2, 600);
}

#[test]
fn rfc6886_3_4_lifetime_zero_deletes_and_deleting_twice_succeeds_the_same() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    let first = h.map(8080, 0, 0);
    assert_eq!(first, (ResultCode::SUCCESS, 0, 0));
    assert!(h.kernel.is_empty());
    assert_eq!(h.map(8080, 0, 0), first);
}

#[test]
fn rfc6886_3_4_internal_port_zero_deletes_all_of_the_clients_mappings_for_the_protocol() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map(8081, 8081, 7200);
    h.map_from(HOST, Protocol::Udp, 8082, 8082, 7200);
    h.map_from(HOST2, Protocol::Tcp, 8083, 8083, 7200);
    assert_eq!(h.map(0, 0, 0), (ResultCode::SUCCESS, 0, 0));
    assert_eq!(
        h.kernel,
        BTreeSet::from([
            fwd(HOST, Protocol::Udp, 8082, 8082),
            fwd(HOST2, Protocol::Tcp, 8083, 8083)
        ])
    );
}

#[test]
fn rfc6886_3_4_expiry_removes_the_forward() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 200);
    h.advance(199);
    assert_eq!(h.kernel.len(), 1);
    h.advance(1);
    assert!(h.kernel.is_empty());
    assert_eq!(h.gw.stats().mappings_expired, 1);
}

#[test]
fn poll_timeout_reports_the_next_expiry() {
    let mut p = policy();
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    // Drain the start-up announcements so only the expiry remains.
    h.now += Duration::from_secs(600);
    h.drain_announcements();
    assert_eq!(h.gw.poll_timeout(), None, "nothing to wait for");
    h.map(8080, 8080, 150);
    assert_eq!(h.gw.poll_timeout(), Some(h.now + Duration::from_secs(150)));
}

#[test]
fn internal_port_zero_with_a_lifetime_is_refused() {
    let mut h = Harness::new(policy());
    assert_eq!(h.map(0, 8080, 7200), (ResultCode::NOT_AUTHORIZED, 0, 0));
}

#[test]
fn per_client_quota_gives_out_of_resources() {
    let mut p = policy();
    p.max_per_client = 2;
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    assert_eq!(h.map(8081, 8081, 7200).0, ResultCode::SUCCESS);
    assert_eq!(
        h.map(8082, 8082, 7200),
        (ResultCode::OUT_OF_RESOURCES, 0, 0)
    );
    // Renewing an existing one is still allowed, and another host has its own quota.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    match h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn global_cap_gives_out_of_resources_whoever_asks() {
    let mut p = policy();
    p.max_total = 3;
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p);
    for port in [8080, 8081, 8082] {
        assert_eq!(h.map(port, port, 7200).0, ResultCode::SUCCESS);
    }
    // One host filled the table; another host gets "out of resources" too.
    match h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200) {
        Response::Map(m) => assert_eq!(
            (m.result, m.external_port),
            (ResultCode::OUT_OF_RESOURCES, 0)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.forwards().len(), 3);
    // Renewing is not a new mapping; and once one goes, there is room again.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    assert_eq!(h.map(8081, 8081, 0).0, ResultCode::SUCCESS);
    match h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reload_with_a_lowered_quota_closes_the_oldest_mappings_beyond_it() {
    let mut p = policy();
    p.requests_per_second_per_client = 0;
    let mut h = Harness::new(p.clone());
    for port in [8080, 8081, 8082, 8083] {
        assert_eq!(h.map(port, port, 7200).0, ResultCode::SUCCESS);
        h.advance(1);
    }
    // A renewal does not make the first one younger.
    assert_eq!(h.map(8080, 8080, 7200).0, ResultCode::SUCCESS);
    h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200);
    p.max_per_client = 2;
    h.gw.set_policy(p.clone());
    h.drain();
    assert_eq!(
        h.forwards(),
        [
            fwd(HOST, Protocol::Tcp, 8082, 8082),
            fwd(HOST, Protocol::Tcp, 8083, 8083),
            fwd(HOST2, Protocol::Tcp, 9000, 9000),
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        h.kernel,
        h.forwards(),
        "the kernel lost the closed forwards too"
    );
    // A lowered global cap likewise keeps the newest.
    p.max_total = 1;
    h.gw.set_policy(p);
    h.drain();
    assert_eq!(
        h.forwards(),
        [fwd(HOST2, Protocol::Tcp, 9000, 9000)]
            .into_iter()
            .collect()
    );
    assert_eq!(h.kernel, h.forwards());
}

#[test]
fn exhausted_port_range_gives_out_of_resources() {
    let mut p = policy();
    p.rules = vec![Rule {
        action: Action::Allow,
        external_ports: "5000".parse().expect("range"),
        internal_addresses: "192.168.1.0/24".parse().expect("net"),
        internal_ports: "1024-65535".parse().expect("range"),
    }];
    let mut h = Harness::new(p);
    match h.map_from(HOST2, Protocol::Tcp, 8080, 0, 7200) {
        Response::Map(m) => assert_eq!((m.result, m.external_port), (ResultCode::SUCCESS, 5000)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.map(8080, 5000, 7200),
        (ResultCode::OUT_OF_RESOURCES, 0, 0)
    );
}

#[test]
fn rules_first_match_wins_and_no_match_is_not_authorized() {
    let mut p = policy();
    p.rules = vec![
        Rule {
            action: Action::Deny,
            external_ports: "1-65535".parse().expect("range"),
            internal_addresses: "192.168.1.10/32".parse().expect("net"),
            internal_ports: "1-65535".parse().expect("range"),
        },
        Rule {
            action: Action::Allow,
            external_ports: "1024-65535".parse().expect("range"),
            internal_addresses: "192.168.1.0/24".parse().expect("net"),
            internal_ports: "1024-65535".parse().expect("range"),
        },
    ];
    let mut h = Harness::new(p);
    assert_eq!(h.map(8080, 8080, 7200), (ResultCode::NOT_AUTHORIZED, 0, 0));
    match h.map_from(HOST2, Protocol::Tcp, 8080, 8080, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    match h.map_from(HOST2, Protocol::Tcp, 22, 22, 7200) {
        Response::Map(m) => assert_eq!(m.result, ResultCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
}

#[test]
fn privileged_suggested_port_is_replaced_by_an_allowed_one() {
    let mut h = Harness::new(policy());
    let (res, ext, _) = h.map(8080, 80, 7200);
    assert_eq!(res, ResultCode::SUCCESS);
    assert!(ext >= 1024);
}

#[test]
fn rate_limit_drops_a_flooding_client_but_not_its_neighbour() {
    let mut p = policy();
    p.requests_per_second_per_client = 3;
    let mut h = Harness::new(p);
    for _ in 0..3 {
        assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
    }
    assert_eq!(
        h.send_raw(lan(HOST), &ADDR_REQ),
        Err(DropReason::RateLimited)
    );
    assert!(h.send_raw(lan(HOST2), &ADDR_REQ).is_ok());
    h.now += Duration::from_secs(1);
    assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
}

#[test]
fn wan_floods_do_not_consume_a_lan_clients_rate() {
    let mut p = policy();
    p.requests_per_second_per_client = 1;
    let mut h = Harness::new(p);
    let wan = Ingress {
        interface: WAN_IF,
        ..lan(HOST)
    };
    for _ in 0..10 {
        assert!(h.send_raw(wan, &ADDR_REQ).is_err());
    }
    assert!(h.send_raw(lan(HOST), &ADDR_REQ).is_ok());
}

#[test]
fn rfc6886_3_2_1_ten_announcements_250ms_doubling_with_current_epoch() {
    let mut h = Harness::new(policy());
    let mut times = Vec::new();
    let mut t = h.t0;
    // Step through time in 50 ms ticks for 200 s, recording each announcement.
    for _ in 0..4000 {
        let out = h.announcements_at(t);
        if !out.is_empty() {
            // NAT-PMP's external address to 224.0.0.1, and PCP's ANNOUNCE (RFC 6887
            // section 14.1.3) with the same epoch.
            assert_eq!(out.len(), 2, "{out:?}");
            let secs = t.duration_since(h.t0).as_secs();
            match Response::parse(out[0].payload()) {
                Ok(Response::ExternalAddress(r)) => {
                    assert_eq!(r.address, EXT);
                    assert_eq!(u64::from(r.epoch), secs);
                }
                other => panic!("{other:?}"),
            }
            let pcp = natwarden_wire::pcp::Response::parse(out[1].payload()).expect("PCP ANNOUNCE");
            assert_eq!(pcp, natwarden_wire::pcp::Response::announce(secs as u32));
            assert!(
                out.iter().all(|a| a.to == Multicast::V4),
                "no IPv6 on this LAN"
            );
            times.push(t.duration_since(h.t0).as_millis());
        }
        t += Duration::from_millis(50);
    }
    assert_eq!(
        times,
        vec![0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750, 127750]
    );
}

#[test]
fn address_change_resets_epoch_and_announces_again() {
    let mut p = policy();
    p.pcp = false;
    let mut h = Harness::new(p);
    h.now += Duration::from_secs(300);
    h.drain_announcements();
    assert_eq!(h.gw.epoch(h.now), 300);
    let new = Ipv4Addr::new(198, 51, 100, 8);
    h.gw.set_external_address(h.now, Some(new));
    assert_eq!(h.gw.epoch(h.now), 0);
    assert_eq!(h.drain_announcements(), 1);
    // Losing the address stops NAT-PMP announcements until it returns.
    h.gw.set_external_address(h.now, None);
    h.now += Duration::from_secs(1);
    assert_eq!(h.drain_announcements(), 0);
}

#[test]
fn reset_forgets_every_mapping_and_starts_a_new_epoch() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.now += Duration::from_secs(100);
    let gone = h.gw.reset(h.now);
    assert_eq!(gone.len(), 1);
    assert_eq!(h.gw.mapping_count(), 0);
    assert_eq!(h.gw.epoch(h.now), 0);
}
