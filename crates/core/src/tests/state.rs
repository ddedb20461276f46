//! State for the journal and restarts: journal records, restore under the current
//! policy, admin deletion, reloaded policies and interfaces that come and go.

use super::*;

#[test]
fn every_table_change_is_reported_for_the_journal() {
    let mut h = Harness::new(policy());
    h.drain();
    h.events.clear();
    h.map(8080, 8080, 7200);
    h.map(8080, 8080, 3600);
    h.map(8080, 0, 0);
    let events: Vec<StateEvent> = std::mem::take(&mut h.events);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(events[0], StateEvent::Upsert(m) if m.external_port == 8080));
    assert!(
        matches!(events[1], StateEvent::Upsert(m) if m.expires == h.now + Duration::from_secs(3600))
    );
    assert!(matches!(events[2], StateEvent::Remove(k) if k.internal_port == 8080));
    h.gw.set_external_address(h.now, Some(Ipv4Addr::new(198, 51, 100, 9)));
    h.drain();
    assert_eq!(std::mem::take(&mut h.events), vec![StateEvent::NewEpoch]);
}

fn saved(h: &Harness, client: Ipv4Addr, internal_port: u16, external_port: u16) -> Mapping {
    Mapping {
        key: MappingKey {
            client: client.into(),
            protocol: Protocol::Tcp,
            internal_port,
        },
        external_port,
        expires: h.now,
        origin: Origin::NatPmp,
        nonce: None,
        inbound: true,
        outbound: false,
    }
}

#[test]
fn restore_puts_back_saved_mappings_and_continues_the_epoch() {
    let mut h = Harness::new(policy());
    h.gw.continue_epoch(h.now, 5000);
    assert_eq!(h.gw.epoch(h.now + Duration::from_secs(3)), 5003);
    let m = saved(&h, HOST, 8080, 9090);
    h.gw.restore(h.now, m, Duration::from_secs(100))
        .expect("restorable");
    assert_eq!(
        h.gw.installed().forwards,
        vec![fwd(HOST, Protocol::Tcp, 8080, 9090)]
    );
    h.kernel = h.forwards();
    // The client renewing after the restart keeps its port.
    assert_eq!(h.map(8080, 0, 7200), (ResultCode::SUCCESS, 9090, 7200));
}

#[test]
fn restore_refuses_what_the_current_policy_would_not_grant() {
    let mut h = Harness::new(policy());
    let life = Duration::from_secs(100);
    let cases = [
        (
            saved(&h, Ipv4Addr::new(10, 1, 1, 1), 8080, 8080),
            Err(RestoreError::ClientNotAllowed),
        ),
        (
            saved(&h, GW_LAN, 8080, 8080),
            Err(RestoreError::ClientNotAllowed),
        ),
        (saved(&h, HOST, 8080, 80), Err(RestoreError::NotAllowed)),
        (saved(&h, HOST, 8080, 8080), Ok(())),
        (saved(&h, HOST2, 8081, 8080), Err(RestoreError::Conflict)),
    ];
    for (m, expected) in cases {
        assert_eq!(h.gw.restore(h.now, m, life), expected, "{m:?}");
    }
}

#[test]
fn admin_delete_removes_one_or_all_of_a_clients_mappings() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map_from(HOST, Protocol::Udp, 8081, 8081, 7200);
    h.map_from(HOST2, Protocol::Tcp, 8082, 8082, 7200);
    assert_eq!(
        h.gw.admin_delete(HOST.into(), Some((Protocol::Udp, 8081))),
        1
    );
    assert_eq!(
        h.gw.admin_delete(HOST.into(), Some((Protocol::Udp, 8081))),
        0
    );
    assert_eq!(h.gw.admin_delete(HOST.into(), None), 1);
    h.drain();
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 8082, 8082)])
    );
}

#[test]
fn a_tightened_policy_closes_forwards_it_would_no_longer_grant() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    h.map_from(HOST2, Protocol::Tcp, 9000, 9000, 7200);
    let mut p = policy();
    p.rules = vec![Rule {
        action: Action::Allow,
        external_ports: "9000-9999".parse().expect("range"),
        internal_addresses: "192.168.1.0/24".parse().expect("net"),
        internal_ports: "1024-65535".parse().expect("range"),
    }];
    h.gw.set_policy(p);
    h.drain();
    assert_eq!(
        h.kernel,
        BTreeSet::from([fwd(HOST2, Protocol::Tcp, 9000, 9000)])
    );
    assert_eq!(h.forwards(), h.kernel);
}

#[test]
fn an_absent_internal_interface_is_not_served_and_keeps_its_hosts_mappings() {
    let mut h = Harness::new(policy());
    h.map(8080, 8080, 7200);
    let mut gone = policy();
    gone.internal[0].index = InternalInterface::ABSENT;
    h.gw.set_policy(gone);
    h.drain();
    assert_eq!(h.kernel.len(), 1, "a brief outage must not close forwards");
    // Neither the old index nor index 0 (unknown ingress) finds the absent interface.
    assert_eq!(
        h.send_raw(lan(HOST), &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    let unknown = Ingress {
        interface: InternalInterface::ABSENT,
        ..lan(HOST)
    };
    assert_eq!(
        h.send_raw(unknown, &ADDR_REQ),
        Err(DropReason::NotInternalInterface)
    );
    // Back with a new index (re-created): served at once.
    let mut back = policy();
    back.internal[0].index = OTHER_IF;
    h.gw.set_policy(back);
    h.drain();
    let moved = Ingress {
        interface: OTHER_IF,
        ..lan(HOST)
    };
    assert!(h.send_raw(moved, &ADDR_REQ).is_ok());
    assert_eq!(h.kernel.len(), 1);
}
