//! The none backend: records what would be installed, for dry runs and tests.
//! It refuses what the kernel would refuse, so the daemon sees the same errors.

use std::collections::BTreeSet;

use natwarden_core::firewall::{FirewallChange, Forward};

use crate::{Backend, FirewallError};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NoneBackend {
    pub forwards: BTreeSet<Forward>,
}

impl Backend for NoneBackend {
    fn install(&mut self, forwards: &[Forward]) -> Result<(), FirewallError> {
        let mut next = BTreeSet::new();
        for f in forwards {
            add(&mut next, f)?;
        }
        self.forwards = next;
        Ok(())
    }

    fn apply(&mut self, changes: &[FirewallChange]) -> Result<(), FirewallError> {
        // Work on a copy so a refused change leaves everything as it was, like a batch.
        let mut next = self.forwards.clone();
        for c in changes {
            match c {
                FirewallChange::Add(f) => add(&mut next, f)?,
                FirewallChange::Remove(f) => {
                    if !next.remove(f) {
                        let set = if next.iter().any(|g| same_key(g, f)) {
                            "allow4"
                        } else {
                            "fwd4"
                        };
                        return Err(FirewallError::Kernel {
                            errno: libc::ENOENT,
                            message: format!("DELSETELEM {set}"),
                        });
                    }
                }
            }
        }
        self.forwards = next;
        Ok(())
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        self.forwards.clear();
        Ok(())
    }
}

fn same_key(a: &Forward, b: &Forward) -> bool {
    a.protocol == b.protocol && a.external_port == b.external_port
}

/// Like the fwd4 map: re-adding an identical forward is a no-op, a different target for
/// a (protocol, external port) already mapped is refused.
fn add(set: &mut BTreeSet<Forward>, f: &Forward) -> Result<(), FirewallError> {
    if set.iter().any(|g| same_key(g, f) && g != f) {
        return Err(FirewallError::Kernel {
            errno: libc::EEXIST,
            message: "NEWSETELEM fwd4".into(),
        });
    }
    set.insert(*f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use natwarden_wire::Protocol;

    use super::*;

    fn f(ext: u16, host: u8) -> Forward {
        Forward {
            protocol: Protocol::Tcp,
            external_port: ext,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), 80),
        }
    }

    #[test]
    fn install_replaces_and_apply_follows_kernel_rules() {
        use FirewallChange::{Add, Remove};
        let mut b = NoneBackend::default();
        b.install(&[f(1, 1), f(2, 2)]).unwrap();
        b.install(&[f(3, 3)]).unwrap();
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
        b.install(&[f(1, 1)]).unwrap();
        let e = b.apply(&[Add(f(2, 2)), Remove(f(9, 9))]).unwrap_err();
        assert!(
            matches!(&e, FirewallError::Kernel { errno, message } if *errno == libc::ENOENT && message == "DELSETELEM fwd4"),
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
}
