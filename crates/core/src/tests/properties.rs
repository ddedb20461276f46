//! Properties over random inputs: the firewall replayed equals the table whatever LAN
//! hosts ask; any bytes from anywhere never panic and never open anything for the WAN.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Map {
        host: u8,
        tcp: bool,
        int: u16,
        sugg: u16,
        life: u32,
    },
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (2u8..6, any::<bool>(), prop_oneof![Just(0u16), 1000u16..1010], prop_oneof![Just(0u16), 1000u16..1010, 1u16..1024], prop_oneof![Just(0u32), 1u32..500, Just(u32::MAX)])
            .prop_map(|(host, tcp, int, sugg, life)| Op::Map { host, tcp, int, sugg, life }),
        1 => (1u16..400).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever LAN hosts ask, in whatever order: the firewall changes replayed in
    /// order equal the table; every forward points at its requester; external ports
    /// are unique per protocol and allowed by the rules; quotas hold.
    #[test]
    fn table_and_firewall_never_diverge(ops in prop::collection::vec(op(), 1..120)) {
        let mut p = policy();
        p.max_per_client = 4;
        p.requests_per_second_per_client = 0;
        p.rules = vec![Rule {
            action: Action::Allow,
            external_ports: "1000-1015".parse().expect("range"),
            internal_addresses: "192.168.1.0/24".parse().expect("net"),
            internal_ports: "1000-1010".parse().expect("range"),
        }];
        let mut h = Harness::new(p);
        for op in ops {
            match op {
                Op::Advance(s) => h.advance(u64::from(s)),
                Op::Map { host, tcp, int, sugg, life } => {
                    let client = Ipv4Addr::new(192, 168, 1, host);
                    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
                    let r = h.map_from(client, protocol, int, sugg, life);
                    let Response::Map(m) = r else { panic!("{r:?}") };
                    if m.result == ResultCode::SUCCESS && life != 0 {
                        prop_assert!(h.kernel.contains(&fwd(client, protocol, int, m.external_port)));
                        prop_assert!((1000..=1015).contains(&m.external_port));
                    } else {
                        prop_assert_eq!((m.external_port, m.lifetime), (0, 0));
                    }
                }
            }
            prop_assert_eq!(&h.forwards(), &h.kernel);
            let mut seen = BTreeSet::new();
            for m in h.gw.mappings() {
                prop_assert!(seen.insert((m.key.protocol, m.external_port)));
                prop_assert!(h.gw.mappings().filter(|x| x.key.client == m.key.client).count() <= 4);
            }
        }
    }
}

proptest! {
    /// Any bytes, from anywhere: the core never panics, never answers or changes the
    /// firewall for the WAN side, keeps replies within MAX_REPLY, and every forward it
    /// opens points at the datagram's own source.
    #[test]
    fn arbitrary_datagrams_never_panic_and_never_open_anything_for_the_wan(
        bytes in prop::collection::vec(any::<u8>(), 0..1200),
        from_wan in any::<bool>(),
        host in 2u8..250,
        pcp_bias in any::<bool>(),
    ) {
        let mut bytes = bytes;
        // Steer half the cases into the protocols' parsers rather than version errors.
        if let (Some(first), true) = (bytes.first_mut(), pcp_bias) {
            *first = if host % 2 == 0 { 0 } else { 2 };
        }
        let mut h = Harness::new(policy());
        let client = Ipv4Addr::new(192, 168, 1, host);
        let ingress = if from_wan {
            Ingress { interface: WAN_IF, source: sa(client, 5351), destination: EXT.into() }
        } else {
            lan(client)
        };
        h.drain();
        h.gw.handle(h.now, &ingress, &bytes);
        let mut changes = Vec::new();
        let mut verdicts = Vec::new();
        loop {
            match h.gw.poll(h.now) {
                Output::Firewall(c) => changes.push(c),
                Output::Transmit(Transmit::Reply(r)) => verdicts.push(Ok(r.payload.len())),
                Output::Dropped { reason, .. } => verdicts.push(Err(reason)),
                Output::Wait(_) => break,
                Output::Journal(_) | Output::Transmit(Transmit::Announcement(_)) => {}
            }
        }
        prop_assert_eq!(verdicts.len(), 1);
        let v = verdicts[0];
        if from_wan {
            prop_assert_eq!(v, Err(DropReason::ExternalInterface));
            prop_assert!(changes.is_empty());
        }
        if let Ok(n) = v {
            prop_assert!(n <= MAX_REPLY && n > 0);
        }
        for c in changes {
            match c {
                FirewallChange::Add(f) => prop_assert_eq!(*f.internal.ip(), client),
                FirewallChange::AddOutbound(o) => prop_assert_eq!(*o.internal.ip(), client),
                other => prop_assert!(false, "unexpected change {:?}", other),
            }
        }
    }
}
