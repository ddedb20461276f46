//! Watches nf_tables events (NFNLGRP_NFTABLES) for changes to our table that we did
//! not make: a `nft flush ruleset`, a deleted table, chain, set or element.

use std::os::fd::RawFd;

use crate::batch::NFNL_SUBSYS_NFTABLES;
use crate::netlink;
use crate::socket::NlSocket;
use crate::FirewallError;

/// The nf_tables multicast group (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// A generation change: sent after every transaction, names no table.
const NFT_MSG_NEWGEN: u16 = 16;
const NFPROTO_INET: u8 = 1;
/// Every object message (table, chain, rule, set, element list, object, flowtable)
/// names its table in attribute 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
/// NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, ...).
const NFTA_ANY_TABLE: u16 = 1;
const NFGENMSG_LEN: usize = 4;
/// Events of a large batch arrive faster than a busy loop may read them: room for
/// tens of thousands of element events (the privileged size passes rmem_max).
const RECEIVE_BUFFER: usize = 8 << 20;

/// A subscription to nf_tables events, filtered to those touching one table and not
/// caused by our own batches (the kernel stamps each event with the port id of the
/// socket whose request caused it).
pub struct TableWatch {
    sock: NlSocket,
    table: String,
    own_portid: u32,
}

impl TableWatch {
    /// Subscribes, in the calling thread's network namespace, to events about `table`
    /// (family inet); events caused by requests from port `own_portid` are ignored.
    pub fn open(table: &str, own_portid: u32) -> Result<TableWatch, FirewallError> {
        let sock = NlSocket::open_groups(libc::NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1))
            .map_err(|e| FirewallError::io("subscribing to nf_tables events", e))?;
        sock.size_buffer(true, RECEIVE_BUFFER)
            .map_err(|e| FirewallError::io("sizing the nf_tables event buffer", e))?;
        Ok(TableWatch {
            sock,
            table: table.to_string(),
            own_portid,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.sock.raw_fd()
    }

    /// Reads every pending event without blocking. True when one of them touched our
    /// table and came from someone else, or when events were lost (ENOBUFS) or did not
    /// parse: then the table can no longer be trusted and the caller rebuilds it.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 64 * 1024];
        let mut touched = false;
        for _ in 0..4096 {
            match self.sock.recv(&mut buf, true) {
                Ok(n) => {
                    touched |=
                        foreign_change(&buf[..n], &self.table, self.own_portid).unwrap_or(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return touched,
                Err(_) => touched = true,
            }
        }
        // Still more after thousands of datagrams: someone is rewriting the ruleset.
        true
    }
}

/// Whether one datagram of nf_tables events holds a change to inet `table` caused by a
/// socket other than `own_portid`.
fn foreign_change(buf: &[u8], table: &str, own_portid: u32) -> Result<bool, netlink::Malformed> {
    for m in netlink::messages(buf) {
        let m = m?;
        if m.ty >> 8 != NFNL_SUBSYS_NFTABLES || m.ty & 0xff == NFT_MSG_NEWGEN {
            continue;
        }
        if m.pid == own_portid {
            continue;
        }
        let Some(family) = m.payload.first() else {
            return Err(netlink::Malformed("short nfgenmsg"));
        };
        if *family != NFPROTO_INET {
            continue;
        }
        for a in netlink::attrs(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[])) {
            let (ty, v) = a?;
            if ty == NFTA_ANY_TABLE {
                let name = v.split(|&b| b == 0).next().unwrap_or(&[]);
                if name == table.as_bytes() {
                    return Ok(true);
                }
                break;
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Builder;

    const NFT_MSG_DELTABLE: u16 = 2;
    const NFT_MSG_DELSETELEM: u16 = 14;

    fn event(msg: u16, family: u8, table: &str, pid: u32) -> Vec<u8> {
        let mut b = Builder::new();
        b.message((NFNL_SUBSYS_NFTABLES << 8) | msg, 0, 0, |b| {
            b.raw(&[family, 0, 0, 0]);
            b.attr_str(NFTA_ANY_TABLE, table);
        });
        let mut v = b.finish().unwrap();
        v[12..16].copy_from_slice(&pid.to_ne_bytes());
        v
    }

    #[test]
    fn someone_elses_change_to_our_table_is_seen() {
        let e = event(NFT_MSG_DELTABLE, NFPROTO_INET, "natwarden", 4242);
        assert_eq!(foreign_change(&e, "natwarden", 7), Ok(true));
        let e = event(NFT_MSG_DELSETELEM, NFPROTO_INET, "natwarden", 4242);
        assert_eq!(foreign_change(&e, "natwarden", 7), Ok(true));
    }

    #[test]
    fn our_own_changes_other_tables_and_families_are_not() {
        let own = event(NFT_MSG_DELTABLE, NFPROTO_INET, "natwarden", 7);
        assert_eq!(foreign_change(&own, "natwarden", 7), Ok(false));
        let other = event(NFT_MSG_DELTABLE, NFPROTO_INET, "filter", 4242);
        assert_eq!(foreign_change(&other, "natwarden", 7), Ok(false));
        let ip = event(NFT_MSG_DELTABLE, 2, "natwarden", 4242);
        assert_eq!(foreign_change(&ip, "natwarden", 7), Ok(false));
        let prefix = event(NFT_MSG_DELTABLE, NFPROTO_INET, "natwarden2", 4242);
        assert_eq!(foreign_change(&prefix, "natwarden", 7), Ok(false));
        let gen = event(NFT_MSG_NEWGEN, NFPROTO_INET, "natwarden", 4242);
        assert_eq!(foreign_change(&gen, "natwarden", 7), Ok(false));
    }

    #[test]
    fn one_foreign_event_among_many_counts_and_garbage_is_an_error() {
        let mut v = event(NFT_MSG_DELSETELEM, NFPROTO_INET, "natwarden", 7);
        v.extend(event(NFT_MSG_DELTABLE, NFPROTO_INET, "natwarden", 99));
        assert_eq!(foreign_change(&v, "natwarden", 7), Ok(true));
        let mut bad = event(NFT_MSG_DELTABLE, NFPROTO_INET, "natwarden", 99);
        bad[0] = 200; // message length past the datagram
        assert!(foreign_change(&bad, "natwarden", 7).is_err());
    }
}
