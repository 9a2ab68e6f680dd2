//! The system-call layer: every `unsafe` libc call of the crate lives below this module.
//!
//! Each file wraps one family of calls (fds, sockets, `SCM_RIGHTS`, processes, signals,
//! `poll`) and allows `unsafe_code` for itself only; the crate root denies it everywhere
//! else. The wrappers keep the syscall visible (`cvt(unsafe { libc::accept4(..) })`),
//! turn every new descriptor into an [`OwnedFd`](std::os::fd::OwnedFd) on the line after
//! the call that created it, and set `CLOEXEC` in that creating call.
//!
//! # EINTR policy
//!
//! Written down once, here:
//!
//! - Calls that return quickly (`fcntl`, `setsockopt`, `bind`, non-blocking `accept4`,
//!   non-blocking `sendmsg`/`recvmsg`, `waitpid` with `WNOHANG`, …) are retried on
//!   `EINTR` through [`cvt_r`]: a signal arriving during them means nothing.
//! - Calls that block on purpose and that a worker must be able to interrupt (blocking
//!   `accept4` on a listener, blocking `recvmsg` on a hand-off channel, `poll`) return
//!   `EINTR` to their caller, which decides: the listener checks whether it was closed,
//!   the primary's loop re-reads its self-pipe. Their docs say so.
//! - `close` is never retried: on Linux the descriptor is released even when `close`
//!   reports `EINTR`, and a retry could close a descriptor another thread just opened.
//!   Descriptors are closed by dropping their `OwnedFd`, which ignores the result.
//!
//! # Linux
//!
//! Linux is the target. Calls that are Linux-only say so in their docs: `accept4`,
//! `SOCK_SEQPACKET` on Unix sockets, `MSG_CMSG_CLOEXEC`, `PR_SET_PDEATHSIG`,
//! `PR_GET_CHILD_SUBREAPER`, `tgkill`, `close_range`, and everything in `caps`.

pub(crate) mod caps;
pub(crate) mod closer;
pub(crate) mod fd;
pub(crate) mod mem;
pub(crate) mod poll;
pub(crate) mod process;
pub(crate) mod scm;
pub(crate) mod shm;
pub(crate) mod signal;
pub(crate) mod sockaddr;
pub(crate) mod socket;
pub(crate) mod user;

use std::io;

/// Integer return values of libc calls that signal failure with `-1`.
pub(crate) trait IsMinusOne: Copy + PartialEq {
    /// Whether the value is the error sentinel `-1`.
    fn is_minus_one(self) -> bool;
}

macro_rules! impl_is_minus_one {
    ($($t:ty)*) => ($(impl IsMinusOne for $t {
        fn is_minus_one(self) -> bool {
            self == -1
        }
    })*)
}
impl_is_minus_one! { i32 i64 isize }

/// Turns a libc return value into `io::Result`: `-1` becomes `errno`.
pub(crate) fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(last_error())
    } else {
        Ok(ret)
    }
}

/// `errno` as an `io::Error`, out of line: [`cvt`] is inlined at every call of libc,
/// and the failure path is the rare one.
#[cold]
#[inline(never)]
fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Like [`cvt`], and calls `f` again while it fails with `EINTR`.
pub(crate) fn cvt_r<T: IsMinusOne>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
