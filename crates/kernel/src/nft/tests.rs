//! Byte-for-byte checks of our nf_tables messages against what `nft` 1.0.6 sends.
//! Expected bytes were captured with `strace -e write=3 nft -f FILE` and
//! `nft --debug=mnl add element ...` in a scratch network namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use natwarden_core::firewall::{Forward, Installed, Outbound, Pinhole};
use natwarden_wire::Protocol;

use super::*;
use crate::netlink;

fn fwd(protocol: Protocol, external_port: u16, ip: [u8; 4], port: u16) -> Forward {
    Forward {
        protocol,
        external_port,
        internal: SocketAddrV4::new(Ipv4Addr::from(ip), port),
    }
}

fn outbound(protocol: Protocol, ip: [u8; 4], port: u16, external_port: u16) -> Outbound {
    Outbound {
        protocol,
        internal: SocketAddrV4::new(Ipv4Addr::from(ip), port),
        external_port,
    }
}

fn pinhole(protocol: Protocol, address: &str, port: u16) -> Pinhole {
    Pinhole {
        protocol,
        address: address.parse::<Ipv6Addr>().unwrap(),
        port,
    }
}

/// The nf_tables messages of a batch (framing dropped), with sequence numbers zeroed.
fn messages_of(build: impl FnOnce(&mut Batch)) -> Vec<Vec<u8>> {
    let mut batch = Batch::new(0);
    build(&mut batch);
    let bytes = batch.bytes_for_test();
    let msgs: Vec<_> = netlink::messages(&bytes).map(|m| m.unwrap()).collect();
    let mut out = Vec::new();
    let mut off = 0;
    for (i, m) in msgs.iter().enumerate() {
        let len = netlink::NLMSG_HDRLEN + m.payload.len();
        if i != 0 && i != msgs.len() - 1 {
            let mut v = bytes[off..off + len].to_vec();
            v[8..12].copy_from_slice(&[0; 4]);
            out.push(v);
        }
        off += (len + 3) & !3;
    }
    out
}

fn hex(lines: &[&str]) -> Vec<u8> {
    let s: String = lines.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const EXT: [u8; 16] = *b"ext0\0\0\0\0\0\0\0\0\0\0\0\0";

// Message headers are host order, so the captured bytes are those of a little-endian host.
#[cfg(target_endian = "little")]
mod little_endian {
    use super::*;

    /// `nft --debug=mnl add element inet natwarden fwd4 { udp . 4000 : 10.0.0.2 . 5000 }`
    /// (nft names the set and adds its cached set id 1; header flags REQUEST|CREATE,
    /// to which we add ACK: 0x0405).
    #[test]
    fn newsetelem_fwd4_matches_nft() {
        let f = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
        let msgs = messages_of(|b| {
            elements(
                b,
                "natwarden",
                Set::Fwd4,
                Op::Add,
                true,
                &[(0, f)],
                fwd4_element,
            )
        });
        #[rustfmt::skip]
        let expected = hex(&[
            "60000000", "0c0a", "0504", "00000000", "00000000", // nlmsghdr: 96 bytes, NEWSETELEM
            "01000000",                                         // nfgenmsg: inet
            "0e000100", "6e617477617264656e000000",             // LIST_TABLE "natwarden"
            "09000200", "6677643400000000",                     // LIST_SET "fwd4"
            "08000400", "00000001",                             // LIST_SET_ID 1
            "28000380",                                         // LIST_ELEMENTS
            "24000180",                                         //  LIST_ELEM
            "10000180", "0c000100", "11000000", "0fa00000",     //   KEY: udp . 4000
            "10000280", "0c000100", "0a000002", "13880000",     //   DATA: 10.0.0.2 . 5000
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `nft add element inet natwarden allow4 { 10.0.0.2 . udp . 5000 }` (strace).
    #[test]
    fn newsetelem_allow4_matches_nft() {
        let f = fwd(Protocol::Udp, 4000, [10, 0, 0, 2], 5000);
        let msgs = messages_of(|b| {
            elements(
                b,
                "natwarden",
                Set::Allow4,
                Op::Add,
                true,
                &[(0, f)],
                allow4_element,
            )
        });
        #[rustfmt::skip]
        let expected = hex(&[
            "54000000", "0c0a", "0504", "00000000", "00000000",
            "01000000",
            "0e000100", "6e617477617264656e000000",
            "0b000200", "616c6c6f77340000",                     // "allow4"
            "08000400", "00000002",
            "1c000380", "18000180",
            "14000180", "10000100", "0a000002", "11000000", "13880000",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `delete element ... fwd4 { udp . 4000 }`: deletion goes by key, to an existing set.
    #[test]
    fn delsetelem_sends_key_only() {
        let f = fwd(Protocol::Tcp, 80, [192, 168, 1, 9], 8080);
        let msgs = messages_of(|b| forward_elements(b, "natwarden", Op::Delete, false, &[(3, f)]));
        #[rustfmt::skip]
        let expected = hex(&[
            "48000000", "0e0a", "0500", "00000000", "00000000",
            "01000000",
            "0e000100", "6e617477617264656e000000",
            "09000200", "6677643400000000",
            "18000380", "14000180",
            "10000180", "0c000100", "06000000", "00500000",     // tcp . 80
        ]);
        assert_eq!(msgs[0], expected);
        // and the allow4 element by its own key.
        #[rustfmt::skip]
        let allow4 = hex(&[
            "4c000000", "0e0a", "0500", "00000000", "00000000",
            "01000000",
            "0e000100", "6e617477617264656e000000",
            "0b000200", "616c6c6f77340000",
            "1c000380", "18000180",
            "14000180", "10000100", "c0a80109", "06000000", "1f900000", // 192.168.1.9 . tcp . 8080
        ]);
        assert_eq!(msgs[1..], [allow4]);
    }

    /// The four base chains, as nft sends them (flags + ACK).
    #[test]
    fn chains_match_nft() {
        let msgs = messages_of(|b| {
            chain(
                b,
                "natwarden",
                "prerouting",
                "nat",
                NF_INET_PRE_ROUTING,
                -100,
            );
            chain(b, "natwarden", "forward", "filter", NF_INET_FORWARD, 0);
            chain(
                b,
                "natwarden",
                "postrouting",
                "nat",
                NF_INET_POST_ROUTING,
                99,
            );
            chain(b, "natwarden", "input", "filter", NF_INET_LOCAL_IN, -10);
        });
        let expected = [
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000f000300707265726f7574696e670000",
                "080007006e617400080005000000000114000480080001000000000008000200ffffff9c"]),
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000c000300666f7277617264000b00070066696c746572000008000500000000011400048008000100000000020800020000000000"]),
            // `type nat hook postrouting priority srcnat - 1`: priority 99.
            hex(&["58000000030a05040000000000000000",
                "010000000e0001006e61747761726465",
                "6e00000010000300706f7374726f7574",
                "696e6700080007006e61740008000500",
                "00000001140004800800010000000004",
                "0800020000000063"]),
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000a000300696e7075740000000b00070066696c7465720000080005000000000114000480080001000000000108000200fffffff6"]),
        ];
        assert_eq!(msgs, expected);
    }

    /// The four sets, as nft sends them minus NFTA_SET_USERDATA (nft's own display hints,
    /// not needed: the type ids alone make `nft list` print the elements).
    #[test]
    fn sets_match_nft_without_userdata() {
        let msgs = messages_of(|b| {
            set(b, "natwarden", Set::Fwd4);
            set(b, "natwarden", Set::Allow4);
            set(b, "natwarden", Set::Pinhole6);
            set(b, "natwarden", Set::Snat4);
        });
        let expected = [
            hex(&[
                "60000000090a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000900020066776434000000000800030000000008",
                "080004000000030d080005000000000808000600000001cd080007000000000808000a0000000001",
            ]),
            hex(&[
                "50000000090a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000b000200616c6c6f773400000800030000000000",
                "080004000000730d080005000000000c08000a0000000002",
            ]),
            // pinhole6: ipv6_addr . inet_proto . inet_service, 24 bytes.
            hex(&[
                "54000000090a05040000000000000000",
                "010000000e0001006e61747761726465",
                "6e0000000d00020070696e686f6c6536",
                "00000000080003000000000008000400",
                "0000830d080005000000001808000a00",
                "00000003",
            ]),
            // snat4: a map whose data, one inet_service, is 2 bytes.
            hex(&[
                "60000000090a05040000000000000000",
                "010000000e0001006e61747761726465",
                "6e0000000a000200736e617434000000",
                "0800030000000008080004000000730d",
                "080005000000000c080006000000000d",
                "080007000000000208000a0000000004",
            ]),
        ];
        assert_eq!(msgs, expected);
    }

    /// `{ tcp, udp }` as nft creates it for a rule: NEWSET (anonymous, constant, size 2;
    /// minus userdata) and NEWSETELEM with one-byte keys, both by transaction id.
    #[test]
    fn anonymous_tcp_udp_set_matches_nft_without_userdata() {
        let msgs = messages_of(|b| tcp_udp_set(b, "natwarden", DROP6_PROTOS_ID));
        let expected = [
            hex(&[
                "5c000000090a05040000000000000000",
                "010000000e0001006e61747761726465",
                "6e0000000c0002005f5f736574256400",
                "0800030000000003080004000000000c",
                "080005000000000108000a0000000005",
                "0c0009800800010000000002",
            ]),
            hex(&[
                "5c0000000c0a05040000000000000000",
                "010000000e0001006e61747761726465",
                "6e0000000c0002005f5f736574256400",
                "08000400000000052400038010000180",
                "0c000180050001000600000010000280",
                "0c0001800500010011000000",
            ]),
        ];
        assert_eq!(msgs, expected);
    }

    /// `iifname "ext0" meta nfproto ipv6 ip6 daddr . meta l4proto . th dport @pinhole6 accept`,
    /// exactly as nft sends it (the address fills reg 1, so l4proto goes to reg 2 and the
    /// port to reg32 5).
    #[test]
    fn pinhole_rule_matches_nft() {
        let msgs = messages_of(|b| rule(b, "natwarden", "forward", |b| pinhole_rule(b, &EXT)));
        let expected = hex(&[
            "d0010000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000c000200666f727761726400",
            "a001048024000180090001006d657461",
            "00000000140002800800020000000006",
            "08000100000000013800018008000100",
            "636d70002c0002800800010000000001",
            "08000200000000001800038014000100",
            "65787430000000000000000000000000",
            "24000180090001006d65746100000000",
            "14000280080002000000000f08000100",
            "000000012c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000000c000380050001000a000000",
            "340001800c0001007061796c6f616400",
            "24000280080001000000000108000200",
            "00000001080003000000001808000400",
            "0000001024000180090001006d657461",
            "00000000140002800800020000000010",
            "0800010000000002340001800c000100",
            "7061796c6f6164002400028008000100",
            "0000000d080002000000000208000300",
            "00000002080004000000000234000180",
            "0b0001006c6f6f6b7570000024000280",
            "08000200000000010d00010070696e68",
            "6f6c6536000000000800040000000003",
            "300001800e000100696d6d6564696174",
            "650000001c0002800800010000000000",
            "100002800c0002800800010000000001",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `iifname "ext0" meta nfproto ipv6 meta l4proto { tcp, udp } ct state new drop`,
    /// exactly as nft sends it (the anonymous set by name template and id 5).
    #[test]
    fn ipv6_drop_rule_matches_nft() {
        let msgs = messages_of(|b| rule(b, "natwarden", "forward", |b| ipv6_drop_rule(b, &EXT)));
        let expected = hex(&[
            "f4010000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000c000200666f727761726400",
            "c401048024000180090001006d657461",
            "00000000140002800800020000000006",
            "08000100000000013800018008000100",
            "636d70002c0002800800010000000001",
            "08000200000000001800038014000100",
            "65787430000000000000000000000000",
            "24000180090001006d65746100000000",
            "14000280080002000000000f08000100",
            "000000012c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000000c000380050001000a000000",
            "24000180090001006d65746100000000",
            "14000280080002000000001008000100",
            "00000001300001800b0001006c6f6f6b",
            "75700000200002800800020000000001",
            "0c0001005f5f73657425640008000400",
            "00000005200001800700010063740000",
            "14000280080002000000000008000100",
            "00000001440001800c00010062697477",
            "69736500340002800800010000000001",
            "08000200000000010800030000000004",
            "0c00048008000100080000000c000580",
            "08000100000000002c00018008000100",
            "636d7000200002800800010000000001",
            "08000200000000010c00038008000100",
            "00000000300001800e000100696d6d65",
            "64696174650000001c00028008000100",
            "00000000100002800c00028008000100",
            "00000000",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `oifname "ext0" meta nfproto ipv4 meta l4proto { tcp, udp } masquerade to : ip saddr
    /// . meta l4proto . th sport map @snat4`, exactly as nft sends it: the map writes the
    /// 2-byte port to reg 1, masq takes it as PROTO_MIN with PROTO_SPECIFIED.
    #[test]
    fn masquerade_rule_matches_nft() {
        let msgs =
            messages_of(|b| rule(b, "natwarden", "postrouting", |b| masquerade_rule(b, &EXT)));
        let expected = hex(&[
            "20020000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e00000010000200706f7374726f7574",
            "696e6700ec0104802400018009000100",
            "6d657461000000001400028008000200",
            "00000007080001000000000138000180",
            "08000100636d70002c00028008000100",
            "00000001080002000000000018000380",
            "14000100657874300000000000000000",
            "0000000024000180090001006d657461",
            "0000000014000280080002000000000f",
            "08000100000000012c00018008000100",
            "636d7000200002800800010000000001",
            "08000200000000000c00038005000100",
            "0200000024000180090001006d657461",
            "00000000140002800800020000000010",
            "0800010000000001300001800b000100",
            "6c6f6f6b757000002000028008000200",
            "000000010c0001005f5f736574256400",
            "0800040000000006340001800c000100",
            "7061796c6f6164002400028008000100",
            "00000001080002000000000108000300",
            "0000000c080004000000000424000180",
            "090001006d6574610000000014000280",
            "08000200000000100800010000000009",
            "340001800c0001007061796c6f616400",
            "24000280080001000000000a08000200",
            "00000002080003000000000008000400",
            "00000002380001800b0001006c6f6f6b",
            "75700000280002800800020000000001",
            "08000300000000010a000100736e6174",
            "34000000080004000000000424000180",
            "090001006d6173710000000014000280",
            "08000100000000020800020000000001",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `nft add element inet natwarden pinhole6 { 2001:db8:1::10 . tcp . 8080 }` and
    /// `nft delete element ...` (strace; the add carries nft's cached set id 3).
    #[test]
    fn pinhole6_elements_match_nft() {
        let p = pinhole(Protocol::Tcp, "2001:db8:1::10", 8080);
        let add = messages_of(|b| pinhole_elements(b, "natwarden", Op::Add, true, &[(0, p)]));
        let del = messages_of(|b| pinhole_elements(b, "natwarden", Op::Delete, false, &[(0, p)]));
        let expected_add = hex(&[
            "640000000c0a05040000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000d00020070696e686f6c6536",
            "00000000080004000000000328000380",
            "24000180200001801c00010020010db8",
            "00010000000000000000001006000000",
            "1f900000",
        ]);
        let expected_del = hex(&[
            "5c0000000e0a05000000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000d00020070696e686f6c6536",
            "00000000280003802400018020000180",
            "1c00010020010db80001000000000000",
            "00000010060000001f900000",
        ]);
        assert_eq!((add, del), (vec![expected_add], vec![expected_del]));
    }

    /// `nft add element inet natwarden pinhole6 { 2001:db8:1::10 . tcp . 8080,
    /// 2001:db8:1::11 . udp . 53 }`: several elements in one message are numbered 1, 2, ...
    #[test]
    fn elements_of_one_message_are_numbered_as_nft_does() {
        let items = [
            (0, pinhole(Protocol::Tcp, "2001:db8:1::10", 8080)),
            (1, pinhole(Protocol::Udp, "2001:db8:1::11", 53)),
        ];
        let msgs = messages_of(|b| pinhole_elements(b, "natwarden", Op::Add, true, &items));
        let expected = hex(&[
            "880000000c0a05040000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000d00020070696e686f6c6536",
            "0000000008000400000000034c000380",
            "24000180200001801c00010020010db8",
            "00010000000000000000001006000000",
            "1f90000024000280200001801c000100",
            "20010db8000100000000000000000011",
            "1100000000350000",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `nft add element inet natwarden snat4 { 192.168.1.10 . udp . 40000 : 50000 }` and
    /// `nft delete element ... { 192.168.1.10 . udp . 40000 }` (strace; the data is the
    /// 2-byte port, the delete sends the key only).
    #[test]
    fn snat4_elements_match_nft() {
        let o = outbound(Protocol::Udp, [192, 168, 1, 10], 40000, 50000);
        let add = messages_of(|b| outbound_elements(b, "natwarden", Op::Add, true, &[(0, o)]));
        let del = messages_of(|b| outbound_elements(b, "natwarden", Op::Delete, false, &[(0, o)]));
        let expected_add = hex(&[
            "600000000c0a05040000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000a000200736e617434000000",
            "08000400000000042800038024000180",
            "1400018010000100c0a8010a11000000",
            "9c4000000c00028006000100c3500000",
        ]);
        let expected_del = hex(&[
            "4c0000000e0a05000000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000a000200736e617434000000",
            "1c000380180001801400018010000100",
            "c0a8010a110000009c400000",
        ]);
        assert_eq!((add, del), (vec![expected_add], vec![expected_del]));
    }

    /// `iifname "ext0" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4`,
    /// captured from nft, plus NFTA_NAT_FLAGS (MAP_IPS|PROTO_SPECIFIED, the last 8 bytes)
    /// and the three enclosing lengths grown by 8. nft leaves the flags for the kernel to
    /// derive from the registers; the kernel dumps them either way.
    #[test]
    fn dnat_rule_matches_nft() {
        let msgs = messages_of(|b| rule(b, "natwarden", "prerouting", |b| dnat_rule(b, &EXT)));
        let expected = hex(&[
            "ac010000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000f000200707265726f757469",
            "6e670000780104802400018009000100",
            "6d657461000000001400028008000200",
            "00000006080001000000000138000180",
            "08000100636d70002c00028008000100",
            "00000001080002000000000018000380",
            "14000100657874300000000000000000",
            "0000000024000180090001006d657461",
            "0000000014000280080002000000000f",
            "08000100000000012c00018008000100",
            "636d7000200002800800010000000001",
            "08000200000000000c00038005000100",
            "0200000024000180090001006d657461",
            "00000000140002800800020000000010",
            "0800010000000001340001800c000100",
            "7061796c6f6164002400028008000100",
            "00000009080002000000000208000300",
            "00000002080004000000000238000180",
            "0b0001006c6f6f6b7570000028000280",
            "08000200000000010800030000000001",
            "09000100667764340000000008000400",
            "0000000138000180080001006e617400",
            "2c000280080001000000000108000200",
            "00000002080003000000000108000500",
            "000000090800070000000003",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `iifname "ext0" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept`,
    /// exactly as nft sends it.
    #[test]
    fn forward_rule_matches_nft() {
        let msgs = messages_of(|b| rule(b, "natwarden", "forward", |b| forward_rule(b, &EXT)));
        let expected = hex(&[
            "5c020000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000c000200666f727761726400",
            "2c02048024000180090001006d657461",
            "00000000140002800800020000000006",
            "08000100000000013800018008000100",
            "636d70002c0002800800010000000001",
            "08000200000000001800038014000100",
            "65787430000000000000000000000000",
            "20000180070001006374000014000280",
            "08000200000000020800010000000001",
            "440001800c0001006269747769736500",
            "34000280080001000000000108000200",
            "0000000108000300000000040c000480",
            "08000100200000000c00058008000100",
            "000000002c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000010c0003800800010000000000",
            "24000180090001006d65746100000000",
            "14000280080002000000000f08000100",
            "000000012c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000000c0003800500010002000000",
            "340001800c0001007061796c6f616400",
            "24000280080001000000000108000200",
            "00000001080003000000001008000400",
            "0000000424000180090001006d657461",
            "00000000140002800800020000000010",
            "0800010000000009340001800c000100",
            "7061796c6f6164002400028008000100",
            "0000000a080002000000000208000300",
            "00000002080004000000000230000180",
            "0b0001006c6f6f6b7570000020000280",
            "08000200000000010b000100616c6c6f",
            "77340000080004000000000230000180",
            "0e000100696d6d656469617465000000",
            "1c000280080001000000000010000280",
            "0c0002800800010000000001",
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// `iifname "ext0" udp dport 5350 drop`, exactly as nft sends it.
    #[test]
    fn input_rule_matches_nft() {
        let msgs =
            messages_of(|b| rule(b, "natwarden", "input", |b| input_drop_rule(b, &EXT, 5350)));
        let expected = hex(&[
            "70010000060a050c0000000000000000",
            "010000000e0001006e61747761726465",
            "6e0000000a000200696e707574000000",
            "4001048024000180090001006d657461",
            "00000000140002800800020000000006",
            "08000100000000013800018008000100",
            "636d70002c0002800800010000000001",
            "08000200000000001800038014000100",
            "65787430000000000000000000000000",
            "24000180090001006d65746100000000",
            "14000280080002000000001008000100",
            "000000012c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000000c0003800500010011000000",
            "340001800c0001007061796c6f616400",
            "24000280080001000000000108000200",
            "00000002080003000000000208000400",
            "000000022c00018008000100636d7000",
            "20000280080001000000000108000200",
            "000000000c0003800600010014e60000",
            "300001800e000100696d6d6564696174",
            "650000001c0002800800010000000000",
            "100002800c0002800800010000000000",
        ]);
        assert_eq!(msgs, vec![expected]);
    }
}

#[test]
fn element_keys_pad_each_field_to_four_bytes() {
    let f = fwd(Protocol::Tcp, 0x1234, [192, 0, 2, 7], 0xabcd);
    assert_eq!(fwd4_key(&f), [6, 0, 0, 0, 0x12, 0x34, 0, 0]);
    assert_eq!(fwd4_data(&f), [192, 0, 2, 7, 0xab, 0xcd, 0, 0]);
    assert_eq!(allow4_key(&f), [192, 0, 2, 7, 6, 0, 0, 0, 0xab, 0xcd, 0, 0]);
    let o = outbound(Protocol::Udp, [192, 0, 2, 7], 0xabcd, 0x1234);
    assert_eq!(snat4_key(&o), [192, 0, 2, 7, 17, 0, 0, 0, 0xab, 0xcd, 0, 0]);
    assert_eq!(snat4_data(&o), [0x12, 0x34]);
    let p = pinhole(Protocol::Tcp, "2001:db8::7", 0xabcd);
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    k[16] = 6;
    k[20..22].copy_from_slice(&[0xab, 0xcd]);
    assert_eq!(pinhole6_key(&p), k);
}

fn message_types(msgs: &[Vec<u8>]) -> Vec<u16> {
    msgs.iter()
        .map(|m| netlink::u16_ne(&m[4..6]) & 0xff)
        .collect()
}

fn install_messages(ipv6_inbound_drop: bool, state: &Installed) -> Vec<Vec<u8>> {
    let r = Ruleset {
        table: "natwarden",
        ext_if: &EXT,
        ipv6_inbound_drop,
    };
    messages_of(|b| install(b, &r, state))
}

#[test]
fn install_order_is_table_delete_table_chains_sets_rules_elements() {
    let state = Installed {
        forwards: (0..3)
            .map(|i| fwd(Protocol::Udp, 1000 + i, [10, 0, 0, 1], 2000 + i))
            .collect(),
        outbound: vec![outbound(Protocol::Udp, [10, 0, 0, 1], 3000, 4000)],
        pinholes: vec![pinhole(Protocol::Tcp, "2001:db8::1", 80)],
    };
    let msgs = install_messages(true, &state);
    assert_eq!(
        message_types(&msgs),
        vec![
            NFT_MSG_NEWTABLE,
            NFT_MSG_DELTABLE,
            NFT_MSG_NEWTABLE,
            NFT_MSG_NEWCHAIN, // prerouting
            NFT_MSG_NEWCHAIN, // forward
            NFT_MSG_NEWCHAIN, // postrouting
            NFT_MSG_NEWCHAIN, // input
            NFT_MSG_NEWSET,   // fwd4
            NFT_MSG_NEWSET,   // allow4
            NFT_MSG_NEWSET,   // pinhole6
            NFT_MSG_NEWSET,   // snat4
            NFT_MSG_NEWRULE,  // dnat
            NFT_MSG_NEWRULE,  // allow4 accept
            NFT_MSG_NEWRULE,  // pinhole6 accept
            NFT_MSG_NEWSET,   // { tcp, udp }
            NFT_MSG_NEWSETELEM,
            NFT_MSG_NEWRULE, // IPv6 drop
            NFT_MSG_NEWSET,  // { tcp, udp }
            NFT_MSG_NEWSETELEM,
            NFT_MSG_NEWRULE,    // masquerade
            NFT_MSG_NEWRULE,    // 5350
            NFT_MSG_NEWRULE,    // 5351
            NFT_MSG_NEWSETELEM, // fwd4
            NFT_MSG_NEWSETELEM, // allow4
            NFT_MSG_NEWSETELEM, // snat4
            NFT_MSG_NEWSETELEM, // pinhole6
        ]
    );
    // Without the IPv6 drop, its set and rule are all that is missing; empty lists send
    // no element messages.
    let msgs = install_messages(false, &Installed::default());
    assert_eq!(message_types(&msgs).len(), 26 - 3 - 4);
    assert!(!msgs.iter().any(
        |m| m.windows(4).any(|w| w == [0, 0, 0, DROP6_PROTOS_ID as u8])
            && m.windows(7).any(|w| w == b"__set%d")
    ));
}

#[test]
fn large_element_lists_are_split_below_the_attribute_limit() {
    let fwds: Vec<_> = (0..2500u32)
        .map(|i| {
            let proto = if i % 2 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            fwd(
                proto,
                1024 + (i / 2) as u16,
                [10, 1, (i >> 8) as u8, i as u8],
                5000,
            )
        })
        .collect();
    let items: Vec<_> = fwds.iter().copied().enumerate().collect();
    let msgs = messages_of(|b| forward_elements(b, "t", Op::Add, false, &items));
    assert_eq!(msgs.len(), 6);
    assert!(msgs.iter().all(|m| m.len() < 65535));
    // Every element is there exactly once: 1024 + 1024 + 452 per set.
    let per_msg: Vec<usize> = msgs
        .iter()
        .map(|m| {
            let body = &m[netlink::NLMSG_HDRLEN + 4..];
            let (_, list) = netlink::attrs(body)
                .map(|a| a.unwrap())
                .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
                .unwrap();
            netlink::attrs(list).count()
        })
        .collect();
    assert_eq!(per_msg, vec![1024, 1024, 452, 1024, 1024, 452]);
}

#[test]
fn names_are_validated() {
    assert!(check_table_name("natwarden").is_ok());
    assert!(check_table_name("nat_warden-2").is_ok());
    for bad in ["", "1abc", "a b", "a\0b", "a\"b", &"x".repeat(256)] {
        assert!(check_table_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(ifname_bytes("ext0").unwrap(), EXT);
    assert!(ifname_bytes("abcdefghijklmno").is_ok());
    for bad in ["", "abcdefghijklmnop", "a/b", "a:b", "a b", ".", ".."] {
        assert!(ifname_bytes(bad).is_err(), "{bad:?}");
    }
}
