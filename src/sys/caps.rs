//! Capabilities and the no-new-privileges bit: `capget`, `capset`, `prctl`
//! (`PR_CAP_AMBIENT`, `PR_CAPBSET_DROP`, `PR_SET_NO_NEW_PRIVS`), and the id queries that
//! verify a privilege drop (`getresuid`, `getresgid`, `getgroups`). All Linux-only.
//!
//! Capabilities are per thread: every call here acts on the calling thread, and a
//! thread started later inherits its creator's sets. The worker calls them while it has
//! one thread (right after `fork`, before its runtime starts one), so the whole process
//! is covered.
#![allow(unsafe_code)]

use std::io;

use super::cvt;
use super::process::{Gid, Uid};

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets, as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `CAP_SETPCAP`: needed to drop entries from the bounding set.
const CAP_SETPCAP: u32 = 8;

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (linux/capability.h); version 3 takes two.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets, as 64-bit masks (bit N is capability N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
    pub(crate) inheritable: u64,
}

impl CapSets {
    /// Whether every set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.effective == 0 && self.permitted == 0 && self.inheritable == 0
    }
}

/// Corresponds to `capget(2)` (version 3) for the calling thread.
pub(crate) fn get() -> io::Result<CapSets> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the version-3 layouts the kernel expects: one
    // header and two data structs, valid for writes.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Corresponds to `capset(2)` (version 3) with all-zero data: empties the calling
/// thread's effective, permitted and inheritable sets. Lowering is always allowed;
/// the ambient set, a subset of permitted ∩ inheritable, empties with them.
pub(crate) fn clear() -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: as in `get`; the kernel only reads `data`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })?;
    Ok(())
}

/// Corresponds to `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`: empties the
/// ambient set (what `execve` of an ordinary program would keep). Needs no privilege.
pub(crate) fn clear_ambient() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Corresponds to `prctl(PR_CAPBSET_DROP, cap)` for every capability the kernel knows
/// (until `PR_CAPBSET_READ` says `EINVAL`): empties the bounding set, the limit on what
/// `execve` of a set-user-id or file-capability program could grant.
///
/// Dropping needs `CAP_SETPCAP`. Without it (a non-root primary given a few ambient
/// capabilities, as a systemd unit's `AmbientCapabilities=` does), the kernel answers
/// `EPERM` and the set stays: that is accepted, because `PR_SET_NO_NEW_PRIVS`, set
/// after the drop, makes `execve` grant nothing whatever the bounding set says. Returns
/// whether the set was emptied.
///
/// # Errors
///
/// Any error other than that `EPERM`.
pub(crate) fn drop_bounding() -> io::Result<bool> {
    let may = get()?.effective & (1 << CAP_SETPCAP) != 0;
    for cap in 0..64 as libc::c_ulong {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if r < 0 {
            break; // EINVAL: past the last capability this kernel knows
        }
        if r == 0 {
            continue; // not in the set
        }
        if !may {
            return Ok(false);
        }
        // SAFETY: prctl with integer arguments only.
        cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
    }
    Ok(true)
}

/// Corresponds to `prctl(PR_SET_NO_NEW_PRIVS, 1)`: from now on `execve` grants no
/// privilege (no set-user-id, no file capabilities), for this thread and every thread
/// and child it starts. It cannot be unset.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Corresponds to `prctl(PR_GET_NO_NEW_PRIVS)`.
pub(crate) fn no_new_privs() -> io::Result<bool> {
    // SAFETY: prctl with integer arguments only.
    let r = cvt(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) })?;
    Ok(r == 1)
}

/// Corresponds to `getresuid(2)`: the real, effective and saved user ids.
pub(crate) fn user_ids() -> io::Result<[Uid; 3]> {
    let mut ids: [Uid; 3] = [0; 3];
    let [r, e, s] = &mut ids;
    // SAFETY: three valid uid_t slots for the kernel to fill.
    cvt(unsafe { libc::getresuid(r, e, s) })?;
    Ok(ids)
}

/// Corresponds to `getresgid(2)`: the real, effective and saved group ids.
pub(crate) fn group_ids() -> io::Result<[Gid; 3]> {
    let mut ids: [Gid; 3] = [0; 3];
    let [r, e, s] = &mut ids;
    // SAFETY: three valid gid_t slots for the kernel to fill.
    cvt(unsafe { libc::getresgid(r, e, s) })?;
    Ok(ids)
}

/// Corresponds to `getgroups(2)`: the supplementary groups.
pub(crate) fn groups() -> io::Result<Vec<Gid>> {
    // SAFETY: with a size of 0, getgroups only returns the count.
    let n = cvt(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups: Vec<Gid> = vec![0; n as usize];
    // SAFETY: `groups` has room for `n` entries; getgroups writes at most that many.
    let m = cvt(unsafe { libc::getgroups(n, groups.as_mut_ptr()) })?;
    groups.truncate(m as usize);
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_threads_state() {
        let sets = get().expect("capget");
        // The effective set is always within the permitted one.
        assert_eq!(sets.effective & !sets.permitted, 0);
        user_ids().expect("getresuid");
        group_ids().expect("getresgid");
        groups().expect("getgroups");
        no_new_privs().expect("PR_GET_NO_NEW_PRIVS");
    }
}
