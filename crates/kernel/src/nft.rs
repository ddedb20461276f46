//! The nf_tables messages natwarden sends: our table, chains, sets, rules and set elements,
//! encoded exactly as `nft` 1.0.6 encodes the equivalent ruleset (checked with `nft --debug=mnl`).
//!
//! The whole ruleset, as `nft list table inet natwarden` prints it (EXT is the external
//! interface; the drop rule is there only with `ipv6_inbound_drop`):
//!
//! ```text
//! table inet natwarden {
//!   map fwd4 { type inet_proto . inet_service : ipv4_addr . inet_service }  # (proto, external port) -> (LAN host, port)
//!   set allow4 { type ipv4_addr . inet_proto . inet_service }               # (LAN host, proto, port)
//!   set pinhole6 { type ipv6_addr . inet_proto . inet_service }             # (LAN host, proto, port)
//!   map snat4 { type ipv4_addr . inet_proto . inet_service : inet_service } # (LAN host, proto, port) -> external port
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!     iifname "EXT" meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4 }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname "EXT" ct status dnat ip daddr . meta l4proto . th dport @allow4 accept
//!     iifname "EXT" ip6 daddr . meta l4proto . th dport @pinhole6 accept
//!     iifname "EXT" meta nfproto ipv6 meta l4proto { tcp, udp } ct state new drop }
//!   chain postrouting { type nat hook postrouting priority srcnat - 1; policy accept;
//!     oifname "EXT" meta nfproto ipv4 meta l4proto { tcp, udp } masquerade to :ip saddr . meta l4proto . th sport map @snat4 }
//!   chain input { type filter hook input priority filter - 10; policy accept;
//!     iifname "EXT" udp dport 5350 drop
//!     iifname "EXT" udp dport 5351 drop }
//! }
//! ```
//!
//! `ip6 daddr` brings its own `meta nfproto ipv6`, which nft does not print. nft 1.0.6
//! refuses `masquerade to :<map>` without a transport protocol match ("transport protocol
//! mapping is only valid after transport protocol match"), hence `meta l4proto { tcp, udp }`
//! there although the map's key already holds the protocol. `{ tcp, udp }` is an anonymous
//! constant set, created in the same batch just before its rule, as nft does.

use natwarden_core::firewall::{Forward, Installed, Outbound, Pinhole};

use crate::batch::Batch;
use crate::netlink::{Builder, NLM_F_APPEND, NLM_F_CREATE};
use crate::{FirewallError, NftMessage};

// Message types (low byte; the batch adds the subsystem).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_MAP: u32 = 0x8;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

// Registers: 0 is the verdict, 1 the first 16-byte register, 8.. the 4-byte ones
// (NFT_REG_1 overlaps NFT_REG32_00..03), as nft allocates them.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;
const NFT_REG32_05: u32 = 13;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;

const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;
/// NF_CT_STATE_BIT(IP_CT_NEW): `ct state new`.
const CT_STATE_NEW: u32 = 1 << 3;

const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

// nft's user-space datatype ids; a concatenation is (t1 << 6) | t2 ..., so `nft list`
// knows how to print our keys.
const TYPE_BITS: u32 = 6;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// NAT-PMP (5351) and the old multicast announcement port (5350): never from the WAN.
const NATPMP_PORTS: [u16; 2] = [5350, 5351];

/// A nested attribute's length is 16 bits; the largest element (snat4) takes 40 bytes,
/// so 1024 per message stays well below 64 KiB.
pub const ELEMENTS_PER_MESSAGE: usize = 1024;

/// Anonymous sets are named by the kernel; nft sends this template and so do we.
const ANON_SET_NAME: &str = "__set%d";
/// Transaction ids of the `{ tcp, udp }` sets of the IPv6 drop rule and the masquerade rule.
const DROP6_PROTOS_ID: u32 = 5;
const MASQ_PROTOS_ID: u32 = 6;

const IFNAMSIZ: usize = 16;

/// Which of our named sets, and (inside the batch that creates it) its transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    Fwd4,
    Allow4,
    Pinhole6,
    Snat4,
}

impl Set {
    pub fn name(self) -> &'static str {
        match self {
            Set::Fwd4 => "fwd4",
            Set::Allow4 => "allow4",
            Set::Pinhole6 => "pinhole6",
            Set::Snat4 => "snat4",
        }
    }

    /// The ids nft gives them when it loads the documented ruleset.
    fn id(self) -> u32 {
        match self {
            Set::Fwd4 => 1,
            Set::Allow4 => 2,
            Set::Pinhole6 => 3,
            Set::Snat4 => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

/// Table name: what `nft` accepts as an identifier, so the table can be listed by hand.
pub fn check_table_name(name: &str) -> Result<(), FirewallError> {
    let ok = !name.is_empty()
        && name.len() < 256
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(FirewallError::InvalidName(name.to_owned()))
    }
}

/// Interface name as the kernel allows it (dev_valid_name), padded as iifname compares it.
pub fn ifname_bytes(name: &str) -> Result<[u8; IFNAMSIZ], FirewallError> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        return Err(FirewallError::InvalidName(name.to_owned()));
    }
    let mut out = [0u8; IFNAMSIZ];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// (proto . external port): each field padded to 4 bytes, port in network order.
pub fn fwd4_key(f: &Forward) -> [u8; 8] {
    let p = f.external_port.to_be_bytes();
    [f.protocol.ip_number(), 0, 0, 0, p[0], p[1], 0, 0]
}

/// (internal addr . internal port).
pub fn fwd4_data(f: &Forward) -> [u8; 8] {
    let a = f.internal.ip().octets();
    let p = f.internal.port().to_be_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1], 0, 0]
}

/// (internal addr . proto . internal port).
pub fn allow4_key(f: &Forward) -> [u8; 12] {
    addr4_proto_port(
        f.internal.ip().octets(),
        f.protocol.ip_number(),
        f.internal.port(),
    )
}

/// (LAN host . proto . port).
pub fn pinhole6_key(p: &Pinhole) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&p.address.octets());
    k[16] = p.protocol.ip_number();
    k[20..22].copy_from_slice(&p.port.to_be_bytes());
    k
}

/// (LAN host . proto . internal port).
pub fn snat4_key(o: &Outbound) -> [u8; 12] {
    addr4_proto_port(
        o.internal.ip().octets(),
        o.protocol.ip_number(),
        o.internal.port(),
    )
}

/// The external port alone: an inet_service is 2 bytes, and a map's data is not padded
/// (nft declares the data length as 2).
pub fn snat4_data(o: &Outbound) -> [u8; 2] {
    o.external_port.to_be_bytes()
}

fn addr4_proto_port(a: [u8; 4], proto: u8, port: u16) -> [u8; 12] {
    let p = port.to_be_bytes();
    [a[0], a[1], a[2], a[3], proto, 0, 0, 0, p[0], p[1], 0, 0]
}

/// The kernel ends of one install: table, interface and whether IPv6 inbound is closed.
pub struct Ruleset<'a> {
    pub table: &'a str,
    pub ext_if: &'a [u8; IFNAMSIZ],
    pub ipv6_inbound_drop: bool,
}

/// The whole ruleset as one transaction. Creating the table before deleting it makes
/// the delete succeed whether or not a previous run left one, and the delete takes
/// every leftover chain, set and element with it in the same commit.
pub fn install(batch: &mut Batch, r: &Ruleset<'_>, state: &Installed) {
    let (table, ext_if) = (r.table, r.ext_if);
    new_table(batch, table, false);
    del_table(batch, table);
    new_table(batch, table, true);
    chain(batch, table, "prerouting", "nat", NF_INET_PRE_ROUTING, -100);
    chain(batch, table, "forward", "filter", NF_INET_FORWARD, 0);
    // srcnat - 1: before a router's own masquerade (srcnat), which then leaves the
    // connection alone; the NAT core binds a connection once, in the first chain that maps it.
    chain(batch, table, "postrouting", "nat", NF_INET_POST_ROUTING, 99);
    chain(batch, table, "input", "filter", NF_INET_LOCAL_IN, -10);
    for s in [Set::Fwd4, Set::Allow4, Set::Pinhole6, Set::Snat4] {
        set(batch, table, s);
    }
    rule(batch, table, "prerouting", |b| dnat_rule(b, ext_if));
    rule(batch, table, "forward", |b| forward_rule(b, ext_if));
    rule(batch, table, "forward", |b| pinhole_rule(b, ext_if));
    if r.ipv6_inbound_drop {
        tcp_udp_set(batch, table, DROP6_PROTOS_ID);
        rule(batch, table, "forward", |b| ipv6_drop_rule(b, ext_if));
    }
    tcp_udp_set(batch, table, MASQ_PROTOS_ID);
    rule(batch, table, "postrouting", |b| masquerade_rule(b, ext_if));
    for port in NATPMP_PORTS {
        rule(batch, table, "input", |b| input_drop_rule(b, ext_if, port));
    }
    // One index space over the three lists, in this order, so an element the kernel
    // refuses can be named: forwards from 0, then outbound, then pinholes.
    let (nf, no) = (state.forwards.len(), state.outbound.len());
    let forwards: Vec<_> = state.forwards.iter().copied().enumerate().collect();
    let outbound: Vec<_> = (nf..).zip(state.outbound.iter().copied()).collect();
    let pinholes: Vec<_> = (nf + no..).zip(state.pinholes.iter().copied()).collect();
    forward_elements(batch, table, Op::Add, true, &forwards);
    outbound_elements(batch, table, Op::Add, true, &outbound);
    pinhole_elements(batch, table, Op::Add, true, &pinholes);
}

/// Deletes the table; the preceding create makes this succeed when it does not exist.
pub fn remove(batch: &mut Batch, table: &str) {
    new_table(batch, table, false);
    del_table(batch, table);
}

fn new_table(batch: &mut Batch, table: &str, with_flags: bool) {
    batch.add(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        NFPROTO_INET,
        NftMessage::NewTable(table.into()),
        |b| {
            b.attr_str(NFTA_TABLE_NAME, table);
            if with_flags {
                b.attr_be32(NFTA_TABLE_FLAGS, 0);
            }
        },
    );
}

fn del_table(batch: &mut Batch, table: &str) {
    batch.add(
        NFT_MSG_DELTABLE,
        0,
        NFPROTO_INET,
        NftMessage::DelTable(table.into()),
        |b| b.attr_str(NFTA_TABLE_NAME, table),
    );
}

fn chain(batch: &mut Batch, table: &str, name: &'static str, ty: &str, hook: u32, prio: i32) {
    batch.add(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        NFPROTO_INET,
        NftMessage::NewChain(name),
        |b| {
            b.attr_str(NFTA_CHAIN_TABLE, table);
            b.attr_str(NFTA_CHAIN_NAME, name);
            b.attr_str(NFTA_CHAIN_TYPE, ty);
            b.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            b.nest(NFTA_CHAIN_HOOK, |b| {
                b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
                b.attr(NFTA_HOOK_PRIORITY, &prio.to_be_bytes());
            });
        },
    );
}

fn set(batch: &mut Batch, table: &str, set: Set) {
    const PROTO_PORT: u32 = TYPE_INET_PROTOCOL << TYPE_BITS | TYPE_INET_SERVICE;
    batch.add(
        NFT_MSG_NEWSET,
        NLM_F_CREATE,
        NFPROTO_INET,
        NftMessage::NewSet(set),
        |b| {
            b.attr_str(NFTA_SET_TABLE, table);
            b.attr_str(NFTA_SET_NAME, set.name());
            match set {
                Set::Fwd4 => {
                    b.attr_be32(NFTA_SET_FLAGS, NFT_SET_MAP);
                    b.attr_be32(NFTA_SET_KEY_TYPE, PROTO_PORT);
                    b.attr_be32(NFTA_SET_KEY_LEN, 8);
                    b.attr_be32(
                        NFTA_SET_DATA_TYPE,
                        TYPE_IPADDR << TYPE_BITS | TYPE_INET_SERVICE,
                    );
                    b.attr_be32(NFTA_SET_DATA_LEN, 8);
                }
                Set::Allow4 => {
                    b.attr_be32(NFTA_SET_FLAGS, 0);
                    b.attr_be32(
                        NFTA_SET_KEY_TYPE,
                        TYPE_IPADDR << (2 * TYPE_BITS) | PROTO_PORT,
                    );
                    b.attr_be32(NFTA_SET_KEY_LEN, 12);
                }
                Set::Pinhole6 => {
                    b.attr_be32(NFTA_SET_FLAGS, 0);
                    b.attr_be32(
                        NFTA_SET_KEY_TYPE,
                        TYPE_IP6ADDR << (2 * TYPE_BITS) | PROTO_PORT,
                    );
                    b.attr_be32(NFTA_SET_KEY_LEN, 24);
                }
                Set::Snat4 => {
                    b.attr_be32(NFTA_SET_FLAGS, NFT_SET_MAP);
                    b.attr_be32(
                        NFTA_SET_KEY_TYPE,
                        TYPE_IPADDR << (2 * TYPE_BITS) | PROTO_PORT,
                    );
                    b.attr_be32(NFTA_SET_KEY_LEN, 12);
                    b.attr_be32(NFTA_SET_DATA_TYPE, TYPE_INET_SERVICE);
                    b.attr_be32(NFTA_SET_DATA_LEN, 2);
                }
            }
            b.attr_be32(NFTA_SET_ID, set.id());
        },
    );
}

/// The anonymous constant set `{ tcp, udp }` (type inet_proto) that the next rule of
/// this batch looks up by `id`, with its two elements; the kernel names it `__setN` and
/// deletes it with the rule.
fn tcp_udp_set(batch: &mut Batch, table: &str, id: u32) {
    const PROTOS: [u8; 2] = [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8];
    batch.add(
        NFT_MSG_NEWSET,
        NLM_F_CREATE,
        NFPROTO_INET,
        NftMessage::NewProtocolSet,
        |b| {
            b.attr_str(NFTA_SET_TABLE, table);
            b.attr_str(NFTA_SET_NAME, ANON_SET_NAME);
            b.attr_be32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
            b.attr_be32(NFTA_SET_KEY_TYPE, TYPE_INET_PROTOCOL);
            b.attr_be32(NFTA_SET_KEY_LEN, 1);
            b.attr_be32(NFTA_SET_ID, id);
            b.nest(NFTA_SET_DESC, |b| {
                b.attr_be32(NFTA_SET_DESC_SIZE, PROTOS.len() as u32)
            });
        },
    );
    batch.add(
        NFT_MSG_NEWSETELEM,
        NLM_F_CREATE,
        NFPROTO_INET,
        NftMessage::NewProtocolSetElements,
        |b| {
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, ANON_SET_NAME);
            b.attr_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
            b.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for (n, p) in (1..).zip(PROTOS) {
                    element(b, n, &p.to_ne_bytes(), None);
                }
            });
        },
    );
}

fn rule(batch: &mut Batch, table: &str, chain: &'static str, exprs: impl FnOnce(&mut Builder)) {
    batch.add(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        NFPROTO_INET,
        NftMessage::NewRule(chain),
        |b| {
            b.attr_str(NFTA_RULE_TABLE, table);
            b.attr_str(NFTA_RULE_CHAIN, chain);
            b.nest(NFTA_RULE_EXPRESSIONS, exprs);
        },
    );
}

/// iifname EXT meta nfproto ipv4 dnat ip to meta l4proto . th dport map @fwd4
fn dnat_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    iifname_is(b, ext_if);
    meta(b, NFT_META_NFPROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[NFPROTO_IPV4]);
    meta(b, NFT_META_L4PROTO, NFT_REG_1);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_01);
    // The map turns (proto . port) in reg 1 into (addr . port) over reg 1 and reg32_01.
    lookup(b, Set::Fwd4.name(), Set::Fwd4.id(), Some(NFT_REG_1));
    expr(b, "nat", |b| {
        b.attr_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        b.attr_be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4));
        b.attr_be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
        b.attr_be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG32_01);
        // The kernel derives these from the registers given; explicit, they say what we mean.
        b.attr_be32(
            NFTA_NAT_FLAGS,
            NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
        );
    });
}

/// iifname EXT ct status dnat ip daddr . meta l4proto . th dport @allow4 accept
/// (`ip daddr` in an inet table brings nft's implicit `meta nfproto ipv4`).
fn forward_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    iifname_is(b, ext_if);
    expr(b, "ct", |b| {
        b.attr_be32(NFTA_CT_KEY, NFT_CT_STATUS);
        b.attr_be32(NFTA_CT_DREG, NFT_REG_1);
    });
    bitwise_and(b, IPS_DST_NAT);
    cmp(b, NFT_CMP_NEQ, &[0; 4]);
    meta(b, NFT_META_NFPROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[NFPROTO_IPV4]);
    payload(b, NFT_PAYLOAD_NETWORK_HEADER, 16, 4, NFT_REG_1);
    meta(b, NFT_META_L4PROTO, NFT_REG32_01);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_02);
    lookup(b, Set::Allow4.name(), Set::Allow4.id(), None);
    verdict(b, NF_ACCEPT);
}

/// iifname EXT meta nfproto ipv6 ip6 daddr . meta l4proto . th dport @pinhole6 accept
fn pinhole_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    iifname_is(b, ext_if);
    meta(b, NFT_META_NFPROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[NFPROTO_IPV6]);
    // The 16-byte address fills reg 1; the key goes on in reg 2 and the 4-byte reg after it.
    payload(b, NFT_PAYLOAD_NETWORK_HEADER, 24, 16, NFT_REG_1);
    meta(b, NFT_META_L4PROTO, NFT_REG_2);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG32_05);
    lookup(b, Set::Pinhole6.name(), Set::Pinhole6.id(), None);
    verdict(b, NF_ACCEPT);
}

/// iifname EXT meta nfproto ipv6 meta l4proto { tcp, udp } ct state new drop
///
/// After the pinhole accept: with no pinhole there is no new inbound IPv6 connection
/// (RFC 6092's default), while replies and established flows pass.
fn ipv6_drop_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    iifname_is(b, ext_if);
    meta(b, NFT_META_NFPROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[NFPROTO_IPV6]);
    meta(b, NFT_META_L4PROTO, NFT_REG_1);
    lookup(b, ANON_SET_NAME, DROP6_PROTOS_ID, None);
    expr(b, "ct", |b| {
        b.attr_be32(NFTA_CT_KEY, NFT_CT_STATE);
        b.attr_be32(NFTA_CT_DREG, NFT_REG_1);
    });
    bitwise_and(b, CT_STATE_NEW);
    cmp(b, NFT_CMP_NEQ, &[0; 4]);
    verdict(b, NF_DROP);
}

/// oifname EXT meta nfproto ipv4 meta l4proto { tcp, udp }
///     masquerade to :ip saddr . meta l4proto . th sport map @snat4
///
/// Masquerade keeps following the interface's address; only the source port comes from
/// the map. A connection without an element misses the lookup and goes on to the
/// router's own source NAT untouched.
fn masquerade_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    meta(b, NFT_META_OIFNAME, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, ext_if);
    meta(b, NFT_META_NFPROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[NFPROTO_IPV4]);
    meta(b, NFT_META_L4PROTO, NFT_REG_1);
    lookup(b, ANON_SET_NAME, MASQ_PROTOS_ID, None);
    payload(b, NFT_PAYLOAD_NETWORK_HEADER, 12, 4, NFT_REG_1);
    meta(b, NFT_META_L4PROTO, NFT_REG32_01);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, NFT_REG32_02);
    lookup(b, Set::Snat4.name(), Set::Snat4.id(), Some(NFT_REG_1));
    expr(b, "masq", |b| {
        b.attr_be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        // No PROTO_MAX: the kernel makes the range the single port in PROTO_MIN.
        b.attr_be32(NFTA_MASQ_REG_PROTO_MIN, NFT_REG_1);
    });
}

/// iifname EXT udp dport PORT drop
fn input_drop_rule(b: &mut Builder, ext_if: &[u8; IFNAMSIZ], port: u16) {
    iifname_is(b, ext_if);
    meta(b, NFT_META_L4PROTO, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &[libc::IPPROTO_UDP as u8]);
    payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, &port.to_be_bytes());
    verdict(b, NF_DROP);
}

fn expr(b: &mut Builder, name: &str, data: impl FnOnce(&mut Builder)) {
    b.nest(NFTA_LIST_ELEM, |b| {
        b.attr_str(NFTA_EXPR_NAME, name);
        b.nest(NFTA_EXPR_DATA, data);
    });
}

fn iifname_is(b: &mut Builder, ext_if: &[u8; IFNAMSIZ]) {
    meta(b, NFT_META_IIFNAME, NFT_REG_1);
    cmp(b, NFT_CMP_EQ, ext_if);
}

fn meta(b: &mut Builder, key: u32, dreg: u32) {
    expr(b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, key);
        b.attr_be32(NFTA_META_DREG, dreg);
    });
}

/// Compares register 1 (the only one our rules compare) with `data`.
fn cmp(b: &mut Builder, op: u32, data: &[u8]) {
    expr(b, "cmp", |b| {
        b.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
        b.attr_be32(NFTA_CMP_OP, op);
        b.nest(NFTA_CMP_DATA, |b| b.attr(NFTA_DATA_VALUE, data));
    });
}

fn payload(b: &mut Builder, base: u32, offset: u32, len: u32, dreg: u32) {
    expr(b, "payload", |b| {
        b.attr_be32(NFTA_PAYLOAD_DREG, dreg);
        b.attr_be32(NFTA_PAYLOAD_BASE, base);
        b.attr_be32(NFTA_PAYLOAD_OFFSET, offset);
        b.attr_be32(NFTA_PAYLOAD_LEN, len);
    });
}

/// reg 1 = reg 1 & mask, for ct state and ct status: host-order words in the register,
/// so mask and xor are host order.
fn bitwise_and(b: &mut Builder, mask: u32) {
    expr(b, "bitwise", |b| {
        b.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_LEN, 4);
        b.nest(NFTA_BITWISE_MASK, |b| {
            b.attr(NFTA_DATA_VALUE, &mask.to_ne_bytes())
        });
        b.nest(NFTA_BITWISE_XOR, |b| b.attr(NFTA_DATA_VALUE, &[0; 4]));
    });
}

/// Looks up the key starting in register 1; the set is created in the same batch, so
/// it is named and identified by its transaction id.
fn lookup(b: &mut Builder, set: &str, set_id: u32, dreg: Option<u32>) {
    expr(b, "lookup", |b| {
        b.attr_be32(NFTA_LOOKUP_SREG, NFT_REG_1);
        if let Some(d) = dreg {
            b.attr_be32(NFTA_LOOKUP_DREG, d);
        }
        b.attr_str(NFTA_LOOKUP_SET, set);
        b.attr_be32(NFTA_LOOKUP_SET_ID, set_id);
    });
}

fn verdict(b: &mut Builder, code: u32) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        b.nest(NFTA_IMMEDIATE_DATA, |b| {
            b.nest(NFTA_DATA_VERDICT, |b| b.attr_be32(NFTA_VERDICT_CODE, code))
        });
    });
}

/// An element on the wire: its key and, for a map, the data (sent on add only:
/// deletion goes by key).
pub type Encoded = (Vec<u8>, Option<Vec<u8>>);

pub fn fwd4_element(f: &Forward) -> Encoded {
    (fwd4_key(f).to_vec(), Some(fwd4_data(f).to_vec()))
}

pub fn allow4_element(f: &Forward) -> Encoded {
    (allow4_key(f).to_vec(), None)
}

pub fn snat4_element(o: &Outbound) -> Encoded {
    (snat4_key(o).to_vec(), Some(snat4_data(o).to_vec()))
}

pub fn pinhole6_element(p: &Pinhole) -> Encoded {
    (pinhole6_key(p).to_vec(), None)
}

/// A forward is one element in fwd4 and one in allow4.
pub fn forward_elements(
    batch: &mut Batch,
    table: &str,
    op: Op,
    same_batch_set: bool,
    items: &[(usize, Forward)],
) {
    elements(
        batch,
        table,
        Set::Fwd4,
        op,
        same_batch_set,
        items,
        fwd4_element,
    );
    elements(
        batch,
        table,
        Set::Allow4,
        op,
        same_batch_set,
        items,
        allow4_element,
    );
}

pub fn outbound_elements(
    batch: &mut Batch,
    table: &str,
    op: Op,
    same_batch_set: bool,
    items: &[(usize, Outbound)],
) {
    elements(
        batch,
        table,
        Set::Snat4,
        op,
        same_batch_set,
        items,
        snat4_element,
    );
}

pub fn pinhole_elements(
    batch: &mut Batch,
    table: &str,
    op: Op,
    same_batch_set: bool,
    items: &[(usize, Pinhole)],
) {
    elements(
        batch,
        table,
        Set::Pinhole6,
        op,
        same_batch_set,
        items,
        pinhole6_element,
    );
}

/// Adds or deletes the elements of `items` (caller index, value) in one set, split
/// into messages that fit a nested attribute. `same_batch_set` adds the set's
/// transaction id, needed when the set is created by this very batch.
pub fn elements<T>(
    batch: &mut Batch,
    table: &str,
    set: Set,
    op: Op,
    same_batch_set: bool,
    items: &[(usize, T)],
    encode: impl Fn(&T) -> Encoded,
) {
    let (msg, flags, label): (_, _, fn(Set) -> NftMessage) = match op {
        // No NLM_F_EXCL: re-adding an identical element is a no-op, a clashing one still fails.
        Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, NftMessage::NewSetElem),
        Op::Delete => (NFT_MSG_DELSETELEM, 0, NftMessage::DelSetElem),
    };
    for chunk in items.chunks(ELEMENTS_PER_MESSAGE) {
        batch.add(msg, flags, NFPROTO_INET, label(set), |b| {
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, set.name());
            if same_batch_set {
                b.attr_be32(NFTA_SET_ELEM_LIST_SET_ID, set.id());
            }
            b.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for (n, (idx, item)) in (1..).zip(chunk) {
                    b.mark(*idx);
                    let (key, data) = encode(item);
                    let data = if op == Op::Add { data } else { None };
                    element(b, n, &key, data.as_deref());
                }
            });
        });
    }
}

/// The `n`th element of a message (from 1): libnftnl numbers them so, where other lists
/// use NFTA_LIST_ELEM throughout; the kernel does not look at the type.
fn element(b: &mut Builder, n: u16, key: &[u8], data: Option<&[u8]>) {
    b.nest(n, |b| {
        b.nest(NFTA_SET_ELEM_KEY, |b| b.attr(NFTA_DATA_VALUE, key));
        if let Some(d) = data {
            b.nest(NFTA_SET_ELEM_DATA, |b| b.attr(NFTA_DATA_VALUE, d));
        }
    });
}

#[cfg(test)]
mod tests;
