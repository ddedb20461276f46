//! Byte-for-byte checks of our nf_tables messages against what `nft` 1.0.6 sends.
//! Expected bytes were captured with `strace -e write=3 nft -f FILE` and
//! `nft --debug=mnl add element ...` in a scratch network namespace.

use std::net::{Ipv4Addr, SocketAddrV4};

use natwarden_core::firewall::Forward;
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
        let msgs = messages_of(|b| elements(b, "natwarden", Set::Fwd4, Op::Add, true, &[(0, f)]));
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
        let msgs = messages_of(|b| elements(b, "natwarden", Set::Allow4, Op::Add, true, &[(0, f)]));
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
        let msgs =
            messages_of(|b| elements(b, "natwarden", Set::Fwd4, Op::Delete, false, &[(3, f)]));
        #[rustfmt::skip]
        let expected = hex(&[
            "48000000", "0e0a", "0500", "00000000", "00000000",
            "01000000",
            "0e000100", "6e617477617264656e000000",
            "09000200", "6677643400000000",
            "18000380", "14000180",
            "10000180", "0c000100", "06000000", "00500000",     // tcp . 80
        ]);
        assert_eq!(msgs, vec![expected]);
    }

    /// The three base chains, as nft sends them (flags + ACK).
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
            chain(b, "natwarden", "input", "filter", NF_INET_LOCAL_IN, -10);
        });
        let expected = [
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000f000300707265726f7574696e670000",
                "080007006e617400080005000000000114000480080001000000000008000200ffffff9c"]),
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000c000300666f7277617264000b00070066696c746572000008000500000000011400048008000100000000020800020000000000"]),
            hex(&["58000000030a0504000000000000000001000000",
                "0e0001006e617477617264656e0000000a000300696e7075740000000b00070066696c7465720000080005000000000114000480080001000000000108000200fffffff6"]),
        ];
        assert_eq!(msgs, expected);
    }

    /// The two sets, as nft sends them minus NFTA_SET_USERDATA (nft's own display hints,
    /// not needed: the type ids alone make `nft list` print the elements).
    #[test]
    fn sets_match_nft_without_userdata() {
        let msgs = messages_of(|b| {
            set(b, "natwarden", Set::Fwd4);
            set(b, "natwarden", Set::Allow4);
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
        ];
        assert_eq!(msgs, expected);
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
}

fn message_types(msgs: &[Vec<u8>]) -> Vec<u16> {
    msgs.iter()
        .map(|m| netlink::u16_ne(&m[4..6]) & 0xff)
        .collect()
}

#[test]
fn install_order_is_table_delete_table_chains_sets_rules_elements() {
    let fwds: Vec<_> = (0..3)
        .map(|i| fwd(Protocol::Udp, 1000 + i, [10, 0, 0, 1], 2000 + i))
        .collect();
    let msgs = messages_of(|b| install(b, "natwarden", &EXT, &fwds));
    assert_eq!(
        message_types(&msgs),
        vec![
            NFT_MSG_NEWTABLE,
            NFT_MSG_DELTABLE,
            NFT_MSG_NEWTABLE,
            NFT_MSG_NEWCHAIN,
            NFT_MSG_NEWCHAIN,
            NFT_MSG_NEWCHAIN,
            NFT_MSG_NEWSET,
            NFT_MSG_NEWSET,
            NFT_MSG_NEWRULE,
            NFT_MSG_NEWRULE,
            NFT_MSG_NEWRULE,
            NFT_MSG_NEWRULE,
            NFT_MSG_NEWSETELEM,
            NFT_MSG_NEWSETELEM,
        ]
    );
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
    let msgs = messages_of(|b| {
        elements(b, "t", Set::Fwd4, Op::Add, false, &items);
        elements(b, "t", Set::Allow4, Op::Add, false, &items);
    });
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
