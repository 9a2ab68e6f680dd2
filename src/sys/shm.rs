//! `memfd_create(2)`: the primary makes one, once, to learn which mount the kernel puts
//! memory files on (see `primary/held.rs`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// Corresponds to `memfd_create(2)` with `MFD_CLOEXEC`: an anonymous file in memory.
///
/// # Errors
///
/// The OS error (`EMFILE`, `ENOMEM`, `ENOSYS` before Linux 3.17).
pub(crate) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; memfd_create returns a new fd or -1.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
