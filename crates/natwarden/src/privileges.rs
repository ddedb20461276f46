//! Dropping privileges once start-up is done: the daemon keeps only CAP_NET_ADMIN
//! (nftables changes) and can never gain anything back (no_new_privs, bounding set).

use std::io;

use crate::sys;

const CAP_NET_ADMIN: u32 = 12;
/// Highest capability number a current kernel knows; dropping unknown ones is harmless.
const CAP_LAST: u32 = 63;

/// Keeps CAP_NET_ADMIN alone in the effective and permitted sets, empties the
/// bounding set of everything else and sets no_new_privs.
pub fn drop_to_net_admin() -> io::Result<()> {
    for cap in (0..=CAP_LAST).filter(|&c| c != CAP_NET_ADMIN) {
        // Unknown capability numbers, or no CAP_SETPCAP left: nothing to drop.
        sys::drop_bounding_capability(cap)?;
    }
    let keep = 1u64 << CAP_NET_ADMIN;
    sys::set_capabilities(keep, keep)?;
    sys::set_no_new_privileges()
}
