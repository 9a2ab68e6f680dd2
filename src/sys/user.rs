//! User and group lookups: `getpwnam_r`, `getgrouplist`.
//!
//! Done in the primary, before `fork`: name service lookups may read files or load
//! modules, which is nothing a freshly forked child should have to do.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::mem;

use super::process::{Gid, Uid};

/// A user's ids and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserIds {
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
    pub(crate) groups: Vec<Gid>,
}

/// Looks `name` up with `getpwnam_r(3)`, then its groups with `getgrouplist(3)`.
///
/// # Errors
///
/// `NotFound` when no such user exists; `InvalidInput` for a name with a NUL byte; the
/// OS error of the lookup otherwise.
pub(crate) fn lookup(name: &str) -> io::Result<UserIds> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a user name"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain old data; all-zero is a valid value to be filled in.
        let mut pw: libc::passwd = unsafe { mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the NUL-terminated name, the
        // passwd struct, the buffer of `buf.len()` bytes and the result slot.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no user named {name:?}"),
            ));
        }
        let (uid, gid) = (pw.pw_uid, pw.pw_gid);
        // SAFETY: on success pw_name points into `buf`, a NUL-terminated string.
        let pw_name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
        let groups = group_list(&pw_name, gid)?;
        return Ok(UserIds { uid, gid, groups });
    }
}

fn group_list(name: &CStr, gid: Gid) -> io::Result<Vec<Gid>> {
    let mut n: libc::c_int = 32;
    loop {
        let mut groups: Vec<Gid> = vec![0; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most
        // that many and updates `count` to the real number.
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if r >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if count <= n || count > 65536 {
            return Err(io::Error::other("getgrouplist failed"));
        }
        n = count;
    }
}
