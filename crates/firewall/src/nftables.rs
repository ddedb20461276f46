//! The nftables backend: turns install/apply/remove into one nf_tables batch each,
//! sends it on its own netlink socket and reports the kernel's verdict.

use natwarden_core::firewall::{FirewallChange, Forward};

use crate::batch::{Batch, Failure};
use crate::nft::{self, Op, Set};
use crate::socket::NlSocket;
use crate::{Backend, FirewallError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// Our table in family inet; nothing else in the ruleset is touched.
    pub table: String,
    /// The WAN interface: DNAT and the forward accept apply to traffic arriving on it.
    pub external_interface: String,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            table: "natwarden".into(),
            external_interface: String::new(),
        }
    }
}

/// nftables over a NETLINK_NETFILTER socket. The socket belongs to the network
/// namespace of the thread that called [`Nftables::new`].
pub struct Nftables {
    table: String,
    ext_if: [u8; 16],
    sock: NlSocket,
    seq: u32,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ext = self.ext_if.split(|&b| b == 0).next().unwrap_or(&[]);
        f.debug_struct("Nftables")
            .field("table", &self.table)
            .field("external_interface", &String::from_utf8_lossy(ext))
            .finish_non_exhaustive()
    }
}

impl Nftables {
    /// Checks the names and opens the netlink socket, in the calling thread's network
    /// namespace. Nothing is sent to the kernel until `install`.
    pub fn new(cfg: NftConfig) -> Result<Self, FirewallError> {
        nft::check_table_name(&cfg.table)?;
        let ext_if = nft::ifname_bytes(&cfg.external_interface)?;
        let sock = NlSocket::open(libc::NETLINK_NETFILTER)
            .map_err(|e| FirewallError::io("opening netfilter netlink socket", e))?;
        // Small error replies (no echo of our large requests), with the kernel's reason
        // and the offset of the element it refused. Both are optional for older kernels.
        let _ = sock.set_int(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        let _ = sock.set_int(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        Ok(Self {
            table: cfg.table,
            ext_if,
            sock,
            seq: 1,
        })
    }

    fn run(
        &mut self,
        build: impl FnOnce(&mut Batch),
        describe: impl Fn(usize) -> Option<Forward>,
    ) -> Result<(), FirewallError> {
        let mut batch = Batch::new(self.seq);
        build(&mut batch);
        self.seq = batch.next_seq();
        batch.commit(&self.sock).map_err(|f| match f {
            Failure::Rejected {
                errno,
                label,
                item,
                text,
            } => {
                let mut message = label.unwrap_or_else(|| "batch".into());
                if let Some(f) = item.and_then(&describe) {
                    message.push_str(&format!(
                        " (element {} {} -> {})",
                        f.protocol, f.external_port, f.internal
                    ));
                }
                if let Some(t) = text.filter(|t| !t.is_empty()) {
                    message.push_str(&format!(" [{t}]"));
                }
                FirewallError::Kernel { errno, message }
            }
            Failure::Io(context, e) => FirewallError::io(context, e),
            Failure::Unconfirmed(why) => FirewallError::Unconfirmed(why),
        })
    }
}

impl Backend for Nftables {
    fn install(&mut self, forwards: &[Forward]) -> Result<(), FirewallError> {
        let (table, ext_if) = (self.table.clone(), self.ext_if);
        self.run(
            |b| nft::install(b, &table, &ext_if, forwards),
            |i| forwards.get(i).copied(),
        )
    }

    fn apply(&mut self, changes: &[FirewallChange]) -> Result<(), FirewallError> {
        if changes.is_empty() {
            return Ok(());
        }
        let table = self.table.clone();
        self.run(
            |b| {
                // Consecutive changes of one kind share a message per set; runs keep
                // their order, so a remove followed by an add of the same key works.
                for (op, run) in runs(changes) {
                    nft::elements(b, &table, Set::Fwd4, op, false, &run);
                    nft::elements(b, &table, Set::Allow4, op, false, &run);
                }
            },
            |i| match changes.get(i) {
                Some(FirewallChange::Add(f) | FirewallChange::Remove(f)) => Some(*f),
                None => None,
            },
        )
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        let table = self.table.clone();
        self.run(|b| nft::remove(b, &table), |_| None)
    }
}

/// Splits changes into maximal runs of the same operation, keeping each change's index.
fn runs(changes: &[FirewallChange]) -> Vec<(Op, Vec<(usize, Forward)>)> {
    let mut out: Vec<(Op, Vec<(usize, Forward)>)> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let (op, f) = match c {
            FirewallChange::Add(f) => (Op::Add, *f),
            FirewallChange::Remove(f) => (Op::Delete, *f),
        };
        match out.last_mut() {
            Some((last, run)) if *last == op => run.push((i, f)),
            _ => out.push((op, vec![(i, f)])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use natwarden_wire::Protocol;

    use super::*;

    fn f(port: u16) -> Forward {
        Forward {
            protocol: Protocol::Udp,
            external_port: port,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
        }
    }

    #[test]
    fn runs_group_consecutive_operations_in_order() {
        use FirewallChange::{Add, Remove};
        let r = runs(&[Add(f(1)), Add(f(2)), Remove(f(3)), Add(f(4))]);
        let shape: Vec<_> = r
            .iter()
            .map(|(op, v)| (*op, v.iter().map(|(i, _)| *i).collect::<Vec<_>>()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Op::Add, vec![0, 1]),
                (Op::Delete, vec![2]),
                (Op::Add, vec![3])
            ]
        );
    }

    #[test]
    fn bad_config_is_refused_before_any_socket() {
        let cfg = NftConfig {
            external_interface: "this-name-is-too-long".into(),
            ..NftConfig::default()
        };
        assert!(matches!(
            Nftables::new(cfg),
            Err(FirewallError::InvalidName(_))
        ));
        let cfg = NftConfig {
            table: "bad name".into(),
            external_interface: "eth0".into(),
        };
        assert!(matches!(
            Nftables::new(cfg),
            Err(FirewallError::InvalidName(_))
        ));
    }
}
