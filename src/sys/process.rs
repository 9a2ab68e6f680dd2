//! Process calls: `fork`, `execve`, `waitpid`, `waitid`, `kill`, `tgkill`, `_exit`,
//! `prctl`, `setsid`, `setpgid`, ids, `getrlimit`/`setrlimit` for the descriptor limit,
//! and the resident set size from `/proc/PID/statm` (with `sysconf(_SC_PAGESIZE)`).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
        .and_then(|v| crate::number::parse(v.trim()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no Threads: line in /proc/self/status",
            )
        })
}

/// Corresponds to `fork(2)`, refused unless this process has exactly one thread
/// besides the crate's closer threads.
///
/// `fork` copies only the calling thread. If another thread held a lock at that moment
/// (the allocator's, stdout's, any `Mutex`), the child inherits it locked forever, so in
/// a multi-threaded process the child may only make async-signal-safe calls until it
/// execs. A cluster's worker runs ordinary Rust code after `fork`, so this wrapper makes
/// the single-threaded condition a checked precondition: with exactly one thread there
/// is no other thread to hold a lock, the child is a complete copy, and `fork` is safe.
///
/// The one exception is the crate's own closer threads ([`super::closer`]), which exist
/// only on kernels without `SO_PASSRIGHTS` after a worker attached a file to a record:
/// each makes one system call, `close`, holding no lock, and may be stuck in it for as
/// long as a worker's FUSE server likes. They are settled first ([`super::closer::settle`]:
/// finished ones joined, running ones given time to reach their `close`) and allowed.
///
/// # Errors
///
/// `Other` naming the thread count when the process has more than one thread; the OS
/// error (`EAGAIN`, `ENOMEM`) when `fork` fails.
pub(crate) fn fork() -> io::Result<Fork> {
    // Closer threads (only on kernels without SO_PASSRIGHTS, only after a worker sent a
    // file) take no lock: they may run on, each in its `close` (see `sys::closer`).
    let mut closers = super::closer::settle();
    let mut threads = thread_count()?;
    // A closer joined a moment ago can still be counted until the kernel has released
    // it: look again for a little while (about 10 ms) before refusing.
    for _ in 0..100 {
        if threads <= 1 + closers {
            break;
        }
        std::thread::yield_now();
        closers = super::closer::settle();
        threads = thread_count()?;
        if threads > 1 + closers && closers == 0 && !super::closer::ever_started() {
            break; // no closer ever ran: the extra threads are the application's
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    if threads > 1 + closers {
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

/// Corresponds to `waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT)`: the pid of a child
/// that has exited and is not reaped yet, *left unreaped* (`WNOWAIT`), so the caller
/// can decide who reaps it; `None` when no child has exited (or there is no child).
///
/// Which exited child is reported, when several have, is the kernel's choice.
pub(crate) fn peek_exited_child() -> io::Result<Option<Pid>> {
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value. Zeroed first
    // because with WNOHANG and nothing to report POSIX leaves it unspecified whether
    // the kernel writes `si_pid` (Linux does, with 0).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a writable siginfo_t for the duration of the call; P_ALL
    // ignores the id.
    match cvt_r(|| unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) }) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: `info` was zeroed and then, if a child was found, filled by `waitid`
    // as a SIGCHLD siginfo, whose `si_pid` field is the one read here.
    let pid = unsafe { info.si_pid() };
    Ok((pid != 0).then_some(pid))
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

/// Corresponds to `kill(2)` with a negative pid: `signal` to every process in process
/// group `pgid`.
///
/// The caller must only name the group of a child it has not reaped yet, which made
/// itself its group's leader.
pub(crate) fn kill_group(pgid: Pid, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill() takes plain integers; -pgid > 1 names one group, never "all".
    cvt(unsafe { libc::kill(-pgid, signal) })?;
    Ok(())
}

/// Corresponds to `setpgid(pid, pid)`: `pid` (0: this process) leads a process group
/// of its own, so everything it starts can be signalled together.
pub(crate) fn own_process_group(pid: Pid) -> io::Result<()> {
    // SAFETY: setpgid() takes plain integers.
    cvt(unsafe { libc::setpgid(pid, pid) })?;
    Ok(())
}

/// Corresponds to `execve(2)`: replaces this process's program with the file at `path`,
/// given `argv` and `env`. Returns only when it failed, with the error.
pub(crate) fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
    let argv: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let env: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: `path` and every string are NUL-terminated and outlive the call; both
    // arrays end with a null pointer, as execve requires.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), env.as_ptr()) };
    io::Error::last_os_error()
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
        .and_then(crate::number::u64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
    Ok(pages.saturating_mul(page_size()))
}

/// How many descriptors a process's table has room for (`FDSize:` in
/// `/proc/PID/status`): every descriptor it has open is below it.
///
/// # Errors
///
/// `NotFound` when the process is gone, `InvalidData` when the line is missing.
pub(crate) fn fd_table_size(pid: Pid) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|n| crate::number::parse::<u32>(n.trim()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no FDSize: in status"))
}

/// A process's real uid, from the `Uid:` line of `/proc/PID/status`.
///
/// # Errors
///
/// `NotFound` when the process is gone, `InvalidData` when the line is missing.
pub(crate) fn real_uid(pid: Pid) -> io::Result<Uid> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_ascii_whitespace().next())
        .and_then(crate::number::parse::<Uid>)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid: in status"))
}

/// Corresponds to `sched_getaffinity(2)` on this process: how many CPUs it may run on
/// (`CPU_COUNT` of the mask), as libuv's `uv_available_parallelism` (Node's
/// `os.availableParallelism()`) counts them; `sysconf(_SC_NPROCESSORS_ONLN)` when the
/// mask does not fit a `cpu_set_t` (more than 1,024 CPUs). At least 1.
pub(crate) fn affinity_cpus() -> usize {
    // SAFETY: `cpu_set_t` is an array of integers, for which all zeroes is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of_val(&set);
    // SAFETY: pid 0 is this process; `set` is `size` writable bytes.
    let n = match cvt(unsafe { libc::sched_getaffinity(0, size, &mut set) }) {
        // SAFETY: `set` is an initialised cpu_set_t.
        Ok(_) => i64::from(unsafe { libc::CPU_COUNT(&set) }),
        // SAFETY: sysconf takes a constant and touches no memory of ours.
        Err(_) => unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
    };
    n.max(1) as usize
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

/// Corresponds to `geteuid(2)`.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `pid` is a child of this process, not reaped yet (running or exited):
/// `waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)`, which reaps nothing and fails
/// with `ECHILD` for any other process. `false` for a pid below 1.
pub(crate) fn is_child(pid: Pid) -> bool {
    let Ok(id) = libc::id_t::try_from(pid) else {
        return false;
    };
    if pid < 1 {
        return false;
    }
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a writable siginfo_t for the duration of the call.
    cvt_r(|| unsafe { libc::waitid(libc::P_PID, id, &mut info, flags) }).is_ok()
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

/// Corresponds to `prctl(PR_GET_CHILD_SUBREAPER)` (Linux): whether this process was
/// made a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that processes orphaned below
/// it are reparented to it rather than to the namespace's init.
pub(crate) fn is_child_subreaper() -> io::Result<bool> {
    let mut flag: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer, which points
    // to `flag`, alive for the duration of the call.
    cvt(unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut flag as *mut libc::c_int as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    Ok(flag != 0)
}

/// Corresponds to `setsid(2)`: this process leads a new session and process group, with
/// no controlling terminal. Only the fallback of [`give_up_terminal`] now: a process
/// outside its parent's process group is out of reach of everything that signals or
/// counts a process group (a terminal's Ctrl-C, `kill -- -PGID`, `timeout(1)`).
///
/// # Errors
///
/// `EPERM` when the process already leads a process group (a freshly forked child
/// never does: it is in its parent's group).
pub(crate) fn new_session() -> io::Result<Pid> {
    // SAFETY: setsid takes no arguments.
    cvt(unsafe { libc::setsid() })
}

/// Gives up the controlling terminal without leaving the process group: `TIOCNOTTY` on
/// `/dev/tty` (for a process that does not lead its session it detaches only that
/// process), checked by opening `/dev/tty` again, which must fail with `ENXIO`. A
/// process without a controlling terminal cannot `TIOCSTI` into a terminal it
/// inherited (that needs it as controlling terminal, or `CAP_SYS_ADMIN`), is not sent
/// `SIGTTIN`/`SIGTTOU` for using it, and being no session leader, can never take one
/// again. Where `/dev/tty` cannot be opened at all, falls back to [`new_session`].
///
/// # Errors
///
/// The `ioctl`'s error, `EPERM` if the terminal is still controlling after it, or
/// `setsid`'s.
pub(crate) fn give_up_terminal() -> io::Result<()> {
    match open_tty() {
        // None held (a service).
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
        // The terminal cannot be found (no `/dev/tty` in a container, or not accessible):
        // a session of its own has none for certain.
        Err(_) => return new_session().map(drop),
        Ok(tty) => {
            // SAFETY: `tty` is an open descriptor; TIOCNOTTY takes no argument.
            cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCNOTTY) })?;
        }
    }
    match open_tty() {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the controlling terminal is still held after TIOCNOTTY",
        )),
    }
}

/// Opens `/dev/tty`, the controlling terminal, without making anything controlling.
fn open_tty() -> io::Result<OwnedFd> {
    let path = b"/dev/tty\0";
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string; open returns a new fd or -1.
    let fd = cvt_r(|| unsafe { libc::open(path.as_ptr().cast(), flags) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Corresponds to `prctl(PR_SET_CHILD_SUBREAPER, 1)` (Linux); only the test below
    /// needs it (an application sets it itself, the primary only reads it).
    fn become_child_subreaper() -> io::Result<()> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer flag.
        cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
        Ok(())
    }

    /// The state letter and parent of a process, from `/proc/PID/stat`.
    fn state_and_parent(pid: Pid) -> Option<(String, Pid)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut after = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
        let state = after.next()?.to_string();
        Some((state, after.next()?.parse().ok()?))
    }

    /// A child subreaper adopts an orphan (a shell's background job, the shell gone);
    /// once it has exited, `peek_exited_child` names it without reaping it, and
    /// `try_wait` then reaps it. (The only unit test that starts processes, so the
    /// exited child peeked at is this one's. The flag stays on the test process, which
    /// only makes orphans of its children its own; spawning, not forking, as the
    /// harness is multi-threaded.)
    #[test]
    fn a_subreaper_peeks_at_an_orphan_then_reaps_it() {
        use std::io::Read;
        use std::process::{Command, Stdio};
        assert!(!is_child_subreaper().expect("PR_GET_CHILD_SUBREAPER"));
        become_child_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        assert!(is_child_subreaper().expect("PR_GET_CHILD_SUBREAPER"));
        // The job (an external command: a builtin would keep a saved copy of the
        // shell's stdout) reads the shell's stdin, whose only writer is this test: it
        // outlives the shell (which could otherwise reap it first) and exits when that
        // closes.
        let mut sh = Command::new("sh")
            .args(["-c", "exec 3<&0; cat <&3 >/dev/null 2>&1 & echo $!"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let writer = sh.stdin.take();
        let mut pid = String::new();
        sh.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut pid)
            .expect("the job's pid");
        sh.wait().expect("sh");
        let orphan: Pid = pid.trim().parse().expect("the job's pid");
        let adopted = state_and_parent(orphan).expect("the job is running");
        assert_eq!(adopted.1, getpid(), "the orphan was reparented to us");
        assert_ne!(adopted.0, "Z");
        drop(writer);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while state_and_parent(orphan) != Some(("Z".into(), getpid())) {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {orphan} did not become our exited child: {:?}",
                state_and_parent(orphan)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(peek_exited_child().expect("waitid"), Some(orphan));
        // Peeking left it as it was: still there, still exited.
        assert_eq!(state_and_parent(orphan), Some(("Z".into(), getpid())));
        assert_eq!(
            try_wait(orphan).expect("waitpid"),
            Some(WaitStatus::Exited(0))
        );
        assert_eq!(state_and_parent(orphan), None);
        assert_eq!(peek_exited_child().expect("waitid"), None);
    }
}
