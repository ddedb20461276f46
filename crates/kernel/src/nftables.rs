//! The nftables backend: turns install/apply/remove into one nf_tables batch each,
//! sends it on its own netlink socket and reports the kernel's verdict.

use std::net::SocketAddrV6;

use natwarden_core::firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};

use crate::batch::{Batch, Failure};
use crate::nft::{self, Op};
use crate::socket::NlSocket;
use crate::{Backend, FirewallError, TableWatch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// Our table in family inet; nothing else in the ruleset is touched.
    pub table: String,
    /// The WAN interface: DNAT and the forward accepts apply to traffic arriving on it,
    /// the outbound source-port mappings to traffic leaving by it.
    pub external_interface: String,
    /// Drop new inbound IPv6 TCP and UDP connections from the external interface that no
    /// pinhole lets through (RFC 6092's default), for routers whose own firewall does not
    /// already. Replies and established flows pass.
    pub ipv6_inbound_drop: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self {
            table: "natwarden".into(),
            external_interface: String::new(),
            ipv6_inbound_drop: false,
        }
    }
}

/// nftables over a NETLINK_NETFILTER socket. The socket belongs to the network
/// namespace of the thread that called [`Nftables::new`].
pub struct Nftables {
    table: String,
    ext_if: [u8; 16],
    ipv6_inbound_drop: bool,
    sock: NlSocket,
    seq: u32,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ext = self.ext_if.split(|&b| b == 0).next().unwrap_or(&[]);
        f.debug_struct("Nftables")
            .field("table", &self.table)
            .field("external_interface", &String::from_utf8_lossy(ext))
            .field("ipv6_inbound_drop", &self.ipv6_inbound_drop)
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
            ipv6_inbound_drop: cfg.ipv6_inbound_drop,
            sock,
            seq: 1,
        })
    }

    fn run(
        &mut self,
        build: impl FnOnce(&mut Batch),
        describe: impl Fn(usize) -> Option<String>,
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
            } => FirewallError::Kernel {
                errno,
                message: label,
                element: item.and_then(&describe),
                reason: text.filter(|t| !t.is_empty()),
            },
            Failure::Io(context, e) => FirewallError::io(context, e),
            Failure::Unconfirmed(why) => FirewallError::Unconfirmed(why),
        })
    }
}

impl Backend for Nftables {
    fn install(&mut self, state: &Installed) -> Result<(), FirewallError> {
        let (table, ext_if) = (self.table.clone(), self.ext_if);
        let ruleset = nft::Ruleset {
            table: &table,
            ext_if: &ext_if,
            ipv6_inbound_drop: self.ipv6_inbound_drop,
        };
        self.run(
            |b| nft::install(b, &ruleset, state),
            |i| describe_installed(state, i),
        )
    }

    fn apply(&mut self, changes: &[FirewallChange]) -> Result<(), FirewallError> {
        if changes.is_empty() {
            return Ok(());
        }
        let table = self.table.clone();
        self.run(
            |b| {
                // Consecutive changes of one kind and operation share a message per set;
                // runs keep their order, so a remove followed by an add of the same key works.
                for run in runs(changes) {
                    match run {
                        Run::Forwards(op, v) => nft::forward_elements(b, &table, op, false, &v),
                        Run::Outbound(op, v) => nft::outbound_elements(b, &table, op, false, &v),
                        Run::Pinholes(op, v) => nft::pinhole_elements(b, &table, op, false, &v),
                    }
                }
            },
            |i| changes.get(i).map(describe),
        )
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        let table = self.table.clone();
        self.run(|b| nft::remove(b, &table), |_| None)
    }

    fn watch(&self) -> Result<Option<TableWatch>, FirewallError> {
        // The kernel stamps each event with the port id of the socket whose batch
        // caused it: ours are told apart by this socket's id.
        let own = self
            .sock
            .portid()
            .map_err(|e| FirewallError::io("reading the netfilter socket's port id", e))?;
        TableWatch::open(&self.table, own).map(Some)
    }
}

/// How an element is named in errors.
fn describe(c: &FirewallChange) -> String {
    match c {
        FirewallChange::Add(f) | FirewallChange::Remove(f) => describe_forward(f),
        FirewallChange::AddOutbound(o) | FirewallChange::RemoveOutbound(o) => describe_outbound(o),
        FirewallChange::AddPinhole(p) | FirewallChange::RemovePinhole(p) => describe_pinhole(p),
    }
}

fn describe_forward(f: &Forward) -> String {
    format!("{} {} -> {}", f.protocol, f.external_port, f.internal)
}

fn describe_outbound(o: &Outbound) -> String {
    format!(
        "{} {} -> source port {}",
        o.protocol, o.internal, o.external_port
    )
}

fn describe_pinhole(p: &Pinhole) -> String {
    format!(
        "{} {}",
        p.protocol,
        SocketAddrV6::new(p.address, p.port, 0, 0)
    )
}

/// Install numbers elements across its three lists in turn (see [`nft::install`]).
fn describe_installed(s: &Installed, i: usize) -> Option<String> {
    let (nf, no) = (s.forwards.len(), s.outbound.len());
    if i < nf {
        s.forwards.get(i).map(describe_forward)
    } else if i < nf + no {
        s.outbound.get(i - nf).map(describe_outbound)
    } else {
        s.pinholes.get(i - nf - no).map(describe_pinhole)
    }
}

/// Consecutive changes of one kind and operation, each with its index in the request.
#[derive(Debug)]
enum Run {
    Forwards(Op, Vec<(usize, Forward)>),
    Outbound(Op, Vec<(usize, Outbound)>),
    Pinholes(Op, Vec<(usize, Pinhole)>),
}

/// Splits changes into maximal runs of the same kind and operation, in order.
fn runs(changes: &[FirewallChange]) -> Vec<Run> {
    use FirewallChange as C;
    let mut out: Vec<Run> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let op = match c {
            C::Add(_) | C::AddOutbound(_) | C::AddPinhole(_) => Op::Add,
            C::Remove(_) | C::RemoveOutbound(_) | C::RemovePinhole(_) => Op::Delete,
        };
        match (out.last_mut(), c) {
            (Some(Run::Forwards(o, v)), C::Add(f) | C::Remove(f)) if *o == op => v.push((i, *f)),
            (Some(Run::Outbound(o, v)), C::AddOutbound(x) | C::RemoveOutbound(x)) if *o == op => {
                v.push((i, *x))
            }
            (Some(Run::Pinholes(o, v)), C::AddPinhole(p) | C::RemovePinhole(p)) if *o == op => {
                v.push((i, *p))
            }
            (_, C::Add(f) | C::Remove(f)) => out.push(Run::Forwards(op, vec![(i, *f)])),
            (_, C::AddOutbound(x) | C::RemoveOutbound(x)) => {
                out.push(Run::Outbound(op, vec![(i, *x)]))
            }
            (_, C::AddPinhole(p) | C::RemovePinhole(p)) => {
                out.push(Run::Pinholes(op, vec![(i, *p)]))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

    use natwarden_wire::Protocol;

    use super::*;

    fn f(port: u16) -> Forward {
        Forward {
            protocol: Protocol::Udp,
            external_port: port,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
        }
    }

    fn o(port: u16) -> Outbound {
        Outbound {
            protocol: Protocol::Udp,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
            external_port: port + 1,
        }
    }

    fn p(port: u16) -> Pinhole {
        Pinhole {
            protocol: Protocol::Tcp,
            address: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10),
            port,
        }
    }

    fn idx<T>(v: &[(usize, T)]) -> Vec<usize> {
        v.iter().map(|(i, _)| *i).collect()
    }

    fn shape(runs: &[Run]) -> Vec<(&'static str, Op, Vec<usize>)> {
        runs.iter()
            .map(|r| match r {
                Run::Forwards(op, v) => ("fwd", *op, idx(v)),
                Run::Outbound(op, v) => ("out", *op, idx(v)),
                Run::Pinholes(op, v) => ("pin", *op, idx(v)),
            })
            .collect()
    }

    #[test]
    fn runs_group_consecutive_operations_in_order() {
        use FirewallChange::{Add, Remove};
        let r = runs(&[Add(f(1)), Add(f(2)), Remove(f(3)), Add(f(4))]);
        assert_eq!(
            shape(&r),
            vec![
                ("fwd", Op::Add, vec![0, 1]),
                ("fwd", Op::Delete, vec![2]),
                ("fwd", Op::Add, vec![3])
            ]
        );
    }

    #[test]
    fn runs_split_where_the_kind_changes() {
        use FirewallChange::*;
        let r = runs(&[
            Add(f(1)),
            AddOutbound(o(1)),
            AddOutbound(o(2)),
            AddPinhole(p(1)),
            RemovePinhole(p(2)),
            RemoveOutbound(o(3)),
            Add(f(2)),
        ]);
        assert_eq!(
            shape(&r),
            vec![
                ("fwd", Op::Add, vec![0]),
                ("out", Op::Add, vec![1, 2]),
                ("pin", Op::Add, vec![3]),
                ("pin", Op::Delete, vec![4]),
                ("out", Op::Delete, vec![5]),
                ("fwd", Op::Add, vec![6]),
            ]
        );
    }

    #[test]
    fn elements_are_named_in_errors() {
        assert_eq!(
            describe(&FirewallChange::Remove(f(4000))),
            "udp 4000 -> 10.0.0.2:4000"
        );
        assert_eq!(
            describe(&FirewallChange::AddOutbound(o(4000))),
            "udp 10.0.0.2:4000 -> source port 4001"
        );
        assert_eq!(
            describe(&FirewallChange::RemovePinhole(p(80))),
            "tcp [2001:db8:1::10]:80"
        );
        let state = Installed {
            forwards: vec![f(1), f(2)],
            outbound: vec![o(3)],
            pinholes: vec![p(4), p(5)],
        };
        let named: Vec<_> = (0..6).map(|i| describe_installed(&state, i)).collect();
        assert_eq!(
            named,
            vec![
                Some("udp 1 -> 10.0.0.2:1".to_string()),
                Some("udp 2 -> 10.0.0.2:2".to_string()),
                Some("udp 10.0.0.2:3 -> source port 4".to_string()),
                Some("tcp [2001:db8:1::10]:4".to_string()),
                Some("tcp [2001:db8:1::10]:5".to_string()),
                None,
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
            ipv6_inbound_drop: false,
        };
        assert!(matches!(
            Nftables::new(cfg),
            Err(FirewallError::InvalidName(_))
        ));
    }
}
