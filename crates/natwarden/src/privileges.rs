//! Dropping privileges once start-up is done: the daemon keeps only CAP_NET_ADMIN
//! (nftables changes) and can never gain anything back (no_new_privs, bounding set).

use std::io;

const CAP_NET_ADMIN: u32 = 12;
/// Highest capability number a current kernel knows; dropping unknown ones is harmless.
const CAP_LAST: u32 = 63;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps CAP_NET_ADMIN alone in the effective and permitted sets, empties the
/// bounding set of everything else and sets no_new_privs.
pub fn drop_to_net_admin() -> io::Result<()> {
    for cap in 0..=CAP_LAST {
        if cap == CAP_NET_ADMIN {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL for caps the kernel lacks is fine.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: unknown capability number; EPERM: already without CAP_SETPCAP.
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) {
                return Err(e);
            }
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    let bit = 1u32 << CAP_NET_ADMIN;
    data[0].effective = bit;
    data[0].permitted = bit;
    // SAFETY: capset reads a v3 header and two data structs, which we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
