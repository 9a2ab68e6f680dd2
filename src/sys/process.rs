//! Process calls: `fork`, `waitpid`, `kill`, `tgkill`, `_exit`, `prctl`, `setsid`, ids,
//! `getrlimit`/`setrlimit` for the descriptor limit, and the resident set size from
//! `/proc/PID/statm` (with `sysconf(_SC_PAGESIZE)`).
#![allow(unsafe_code)]

use std::io;

use super::{cvt, cvt_r};

/// A process id (`pid_t`).
pub(crate) type Pid = libc::pid_t;

/// Which side of a [`fork`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fork {
    /// In the parent; the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// How many threads this process has (`Threads:` in `/proc/self/status`).
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no Threads: line in /proc/self/status",
            )
        })
}

/// Corresponds to `fork(2)`, refused unless this process has exactly one thread.
///
/// `fork` copies only the calling thread. If another thread held a lock at that moment
/// (the allocator's, stdout's, any `Mutex`), the child inherits it locked forever, so in
/// a multi-threaded process the child may only make async-signal-safe calls until it
/// execs. A cluster's worker runs ordinary Rust code after `fork`, so this wrapper makes
/// the single-threaded condition a checked precondition: with exactly one thread there
/// is no other thread to hold a lock, the child is a complete copy, and `fork` is safe.
///
/// # Errors
///
/// `Other` naming the thread count when the process has more than one thread; the OS
/// error (`EAGAIN`, `ENOMEM`) when `fork` fails.
pub(crate) fn fork() -> io::Result<Fork> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork: the primary has {threads} threads (fork copies only one; \
             create the cluster before starting threads)"
        )));
    }
    // SAFETY: the process has exactly one thread (checked just above, and only this
    // thread could have started another since), so the child is a consistent copy and
    // may run arbitrary code; see the function's docs.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// How a child ended, from `waitpid`'s status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Corresponds to `waitpid(pid, WNOHANG)`: `None` while the child is still running.
///
/// Only the given pid is reaped, never `-1`: the application's own children (a
/// `std::process::Child`) keep their statuses for their own `wait`.
pub(crate) fn try_wait(pid: Pid) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: `status` is a valid int for the kernel to fill.
    let r = cvt_r(|| unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    if r == 0 {
        return Ok(None);
    }
    Ok(Some(decode_status(status)))
}

/// Corresponds to a blocking `waitpid(pid, 0)`, retried on `EINTR`.
pub(crate) fn wait(pid: Pid) -> io::Result<WaitStatus> {
    let mut status = 0;
    // SAFETY: `status` is a valid int for the kernel to fill.
    cvt_r(|| unsafe { libc::waitpid(pid, &mut status, 0) })?;
    Ok(decode_status(status))
}

fn decode_status(status: i32) -> WaitStatus {
    if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    }
}

/// Corresponds to `kill(2)`.
///
/// The caller must only name a child it has not reaped yet: once reaped, the pid may
/// belong to an unrelated process.
pub(crate) fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    // SAFETY: kill() takes plain integers.
    cvt(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// A thread id (`gettid`).
pub(crate) type Tid = libc::pid_t;

/// Corresponds to `gettid(2)`.
pub(crate) fn gettid() -> Tid {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

/// The resident set size of process `pid`, in bytes: the second field of
/// `/proc/PID/statm` (resident pages) times the page size (`sysconf(_SC_PAGESIZE)`).
/// Linux-only (`/proc`). One `open`, `read`, `close`, with `O_CLOEXEC` (std's default).
///
/// # Errors
///
/// `NotFound` when the process is gone, `InvalidData` when the file cannot be read as
/// `statm`.
pub(crate) fn resident_bytes(pid: Pid) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
    Ok(pages.saturating_mul(page_size()))
}

/// Corresponds to `sysconf(_SC_PAGESIZE)`; 4096 if it fails (it does not on Linux).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Corresponds to `getpid(2)`.
pub(crate) fn getpid() -> Pid {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Corresponds to `getppid(2)`.
pub(crate) fn getppid() -> Pid {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

/// Corresponds to `tgkill(2)` on a thread of this process (Linux).
pub(crate) fn signal_thread(tid: Tid, signal: i32) -> io::Result<()> {
    // SAFETY: tgkill takes plain integers; targeting our own thread group means a
    // recycled tid can only be another thread of this process.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            getpid() as libc::c_long,
            tid as libc::c_long,
            signal as libc::c_long,
        )
    })?;
    Ok(())
}

/// Corresponds to `_exit(2)`: leaves at once, without running atexit handlers or
/// destructors and without flushing stdio buffers that belong to the parent's copy.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Corresponds to `prctl(PR_SET_PDEATHSIG, signal)` (Linux): the kernel sends `signal`
/// to this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes an integer signal number.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Corresponds to `setsid(2)`: this process leads a new session and process group, with
/// no controlling terminal. A terminal's job-control signals (`SIGINT` from Ctrl-C,
/// `SIGHUP` on hang-up) then no longer reach it, and it cannot use a terminal it
/// inherited as its own (`TIOCSTI` into it needs it as controlling terminal, or
/// `CAP_SYS_ADMIN`).
///
/// # Errors
///
/// `EPERM` when the process already leads a process group (a freshly forked child
/// never does: it is in its parent's group).
pub(crate) fn new_session() -> io::Result<Pid> {
    // SAFETY: setsid takes no arguments.
    cvt(unsafe { libc::setsid() })
}

/// A user id (`uid_t`).
pub(crate) type Uid = libc::uid_t;
/// A group id (`gid_t`).
pub(crate) type Gid = libc::gid_t;

/// Corresponds to `setgroups(2)`: the supplementary groups.
pub(crate) fn set_groups(groups: &[Gid]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid slice of gid_t.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    Ok(())
}

/// Corresponds to `setgid(2)`.
pub(crate) fn set_gid(gid: Gid) -> io::Result<()> {
    // SAFETY: setgid takes a plain integer.
    cvt(unsafe { libc::setgid(gid) })?;
    Ok(())
}

/// Corresponds to `setuid(2)`.
pub(crate) fn set_uid(uid: Uid) -> io::Result<()> {
    // SAFETY: setuid takes a plain integer.
    cvt(unsafe { libc::setuid(uid) })?;
    Ok(())
}

/// Corresponds to `getrlimit(RLIMIT_NOFILE)` then `setrlimit(RLIMIT_NOFILE)` with the
/// soft limit raised to the hard limit (no privilege needed); returns the soft limit in
/// force afterwards. When the raise fails the old soft limit stays and is returned: a
/// lower limit is a smaller budget, not a reason to fail.
///
/// The new limit is inherited across `fork`, so workers get it too. (A program that
/// still uses `select(2)` must keep its descriptors below `FD_SETSIZE` itself.)
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain old data; all-zero is a valid value, filled in below.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a writable rlimit for the duration of the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit for the duration of the call.
        if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }).is_ok() {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// Corresponds to `clock_gettime(CLOCK_MONOTONIC)`, in microseconds: the clock systemd's
/// `MONOTONIC_USEC=` refers to (`Instant` does not expose its value).
pub(crate) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}
