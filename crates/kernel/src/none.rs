//! The none backend: records what would be installed, for dry runs and tests.
//! It refuses what the kernel would refuse, so the daemon sees the same errors.

use std::collections::BTreeSet;

use natwarden_core::firewall::{FirewallChange, Forward, Installed, Outbound, Pinhole};

use crate::{Backend, FirewallError, NftMessage, Set};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NoneBackend {
    pub forwards: BTreeSet<Forward>,
    pub outbound: BTreeSet<Outbound>,
    pub pinholes: BTreeSet<Pinhole>,
}

impl Backend for NoneBackend {
    fn install(&mut self, state: &Installed) -> Result<(), FirewallError> {
        let mut next = NoneBackend::default();
        for f in &state.forwards {
            add_forward(&mut next.forwards, f)?;
        }
        for o in &state.outbound {
            add_outbound(&mut next.outbound, o)?;
        }
        next.pinholes.extend(state.pinholes.iter().copied());
        *self = next;
        Ok(())
    }

    fn apply(&mut self, changes: &[FirewallChange]) -> Result<(), FirewallError> {
        // Work on a copy so a refused change leaves everything as it was, like a batch.
        let mut next = self.clone();
        for c in changes {
            match c {
                FirewallChange::Add(f) => add_forward(&mut next.forwards, f)?,
                FirewallChange::Remove(f) => {
                    if !next.forwards.remove(f) {
                        let set = if next.forwards.iter().any(|g| same_key(g, f)) {
                            Set::Allow4
                        } else {
                            Set::Fwd4
                        };
                        return Err(missing(set));
                    }
                }
                FirewallChange::AddOutbound(o) => add_outbound(&mut next.outbound, o)?,
                FirewallChange::RemoveOutbound(o) => {
                    // The kernel deletes a map element by key; the external port is not compared.
                    let Some(old) = next.outbound.iter().find(|p| same_snat_key(p, o)).copied()
                    else {
                        return Err(missing(Set::Snat4));
                    };
                    next.outbound.remove(&old);
                }
                FirewallChange::AddPinhole(p) => {
                    next.pinholes.insert(*p);
                }
                FirewallChange::RemovePinhole(p) => {
                    if !next.pinholes.remove(p) {
                        return Err(missing(Set::Pinhole6));
                    }
                }
            }
        }
        *self = next;
        Ok(())
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        *self = NoneBackend::default();
        Ok(())
    }
}

fn missing(set: Set) -> FirewallError {
    FirewallError::Kernel {
        errno: libc::ENOENT,
        message: Some(NftMessage::DelSetElem(set)),
        element: None,
        reason: None,
    }
}

fn clash(set: Set) -> FirewallError {
    FirewallError::Kernel {
        errno: libc::EEXIST,
        message: Some(NftMessage::NewSetElem(set)),
        element: None,
        reason: None,
    }
}

fn same_key(a: &Forward, b: &Forward) -> bool {
    a.protocol == b.protocol && a.external_port == b.external_port
}

fn same_snat_key(a: &Outbound, b: &Outbound) -> bool {
    a.protocol == b.protocol && a.internal == b.internal
}

/// Like the fwd4 map: re-adding an identical forward is a no-op, a different target for
/// a (protocol, external port) already mapped is refused.
fn add_forward(set: &mut BTreeSet<Forward>, f: &Forward) -> Result<(), FirewallError> {
    if set.iter().any(|g| same_key(g, f) && g != f) {
        return Err(clash(Set::Fwd4));
    }
    set.insert(*f);
    Ok(())
}

/// Like the snat4 map: one external port per (protocol, internal address and port).
fn add_outbound(set: &mut BTreeSet<Outbound>, o: &Outbound) -> Result<(), FirewallError> {
    if set.iter().any(|p| same_snat_key(p, o) && p != o) {
        return Err(clash(Set::Snat4));
    }
    set.insert(*o);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

    use natwarden_wire::Protocol;

    use super::*;

    fn f(ext: u16, host: u8) -> Forward {
        Forward {
            protocol: Protocol::Tcp,
            external_port: ext,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), 80),
        }
    }

    fn o(port: u16, ext: u16) -> Outbound {
        Outbound {
            protocol: Protocol::Udp,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port),
            external_port: ext,
        }
    }

    fn p(port: u16) -> Pinhole {
        Pinhole {
            protocol: Protocol::Tcp,
            address: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10),
            port,
        }
    }

    fn forwards(v: &[Forward]) -> Installed {
        Installed {
            forwards: v.to_vec(),
            ..Installed::default()
        }
    }

    #[test]
    fn install_replaces_and_apply_follows_kernel_rules() {
        use FirewallChange::{Add, Remove};
        let mut b = NoneBackend::default();
        b.install(&forwards(&[f(1, 1), f(2, 2)])).unwrap();
        b.install(&forwards(&[f(3, 3)])).unwrap();
        assert_eq!(b.forwards, BTreeSet::from([f(3, 3)]));

        b.apply(&[Add(f(4, 4)), Add(f(4, 4)), Remove(f(3, 3))])
            .unwrap();
        assert_eq!(b.forwards, BTreeSet::from([f(4, 4)]));

        // Remove then re-add with a new target in one batch is fine.
        b.apply(&[Remove(f(4, 4)), Add(f(4, 5))]).unwrap();
        assert_eq!(b.forwards, BTreeSet::from([f(4, 5)]));
    }

    #[test]
    fn refused_batches_change_nothing() {
        use FirewallChange::{Add, Remove};
        let mut b = NoneBackend::default();
        b.install(&forwards(&[f(1, 1)])).unwrap();
        let e = b.apply(&[Add(f(2, 2)), Remove(f(9, 9))]).unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, message: Some(NftMessage::DelSetElem(Set::Fwd4)), .. } if *errno == libc::ENOENT),
            "{e}"
        );
        // The typed fields read as the kernel's refusal always did.
        assert!(
            e.to_string()
                .starts_with("kernel rejected DELSETELEM fwd4: "),
            "{e}"
        );
        let e = b.apply(&[Add(f(2, 2)), Add(f(1, 7))]).unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, .. } if *errno == libc::EEXIST),
            "{e}"
        );
        assert_eq!(b.forwards, BTreeSet::from([f(1, 1)]));
        b.remove().unwrap();
        b.remove().unwrap();
        assert!(b.forwards.is_empty());
    }

    #[test]
    fn outbound_and_pinholes_follow_the_kernel_sets() {
        use FirewallChange::{AddOutbound, AddPinhole, RemoveOutbound, RemovePinhole};
        let mut b = NoneBackend::default();
        b.install(&Installed {
            forwards: vec![f(1, 1)],
            outbound: vec![o(4000, 50000)],
            pinholes: vec![p(80)],
        })
        .unwrap();
        // Identical re-adds are no-ops, as in the kernel.
        b.apply(&[
            AddOutbound(o(4000, 50000)),
            AddPinhole(p(80)),
            AddPinhole(p(443)),
        ])
        .unwrap();
        assert_eq!(b.pinholes, BTreeSet::from([p(80), p(443)]));
        // snat4 is keyed by the internal side: another external port for it clashes,
        // and deletion goes by key.
        let e = b.apply(&[AddOutbound(o(4000, 50001))]).unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, message: Some(NftMessage::NewSetElem(Set::Snat4)), .. } if *errno == libc::EEXIST),
            "{e}"
        );
        b.apply(&[RemoveOutbound(o(4000, 1)), RemovePinhole(p(80))])
            .unwrap();
        assert!(b.outbound.is_empty());
        assert_eq!(b.pinholes, BTreeSet::from([p(443)]));
    }

    #[test]
    fn a_refused_batch_mixing_kinds_changes_nothing() {
        use FirewallChange::{Add, AddOutbound, AddPinhole, RemoveOutbound, RemovePinhole};
        let mut b = NoneBackend::default();
        let installed = Installed {
            forwards: vec![f(1, 1)],
            outbound: vec![o(4000, 50000)],
            pinholes: vec![p(80)],
        };
        b.install(&installed).unwrap();
        let before = b.clone();
        let e = b
            .apply(&[
                Add(f(2, 2)),
                AddOutbound(o(4001, 50001)),
                AddPinhole(p(443)),
                RemovePinhole(p(22)),
            ])
            .unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, message: Some(NftMessage::DelSetElem(Set::Pinhole6)), .. } if *errno == libc::ENOENT),
            "{e}"
        );
        let e = b
            .apply(&[AddPinhole(p(443)), RemoveOutbound(o(4001, 50001))])
            .unwrap_err();
        assert!(
            matches!(
                &e,
                FirewallError::Kernel {
                    message: Some(NftMessage::DelSetElem(Set::Snat4)),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(b, before);
        // An install that the kernel would refuse changes nothing either.
        let e = b
            .install(&Installed {
                outbound: vec![o(5000, 1), o(5000, 2)],
                ..Installed::default()
            })
            .unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, .. } if *errno == libc::EEXIST),
            "{e}"
        );
        assert_eq!(b, before);
        b.remove().unwrap();
        assert_eq!(b, NoneBackend::default());
    }
}
