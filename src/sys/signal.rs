//! Signal handling: the primary's self-pipe, and the worker's accept-interrupt signal.
//!
//! **The primary** never acts inside a signal handler. Its handler does one thing: write
//! the signal's number, as one byte, into a non-blocking pipe (keeping `errno`). The
//! primary's `poll` loop watches the pipe's read end, drains it first, then acts on each
//! signal in ordinary code. (signal-hook's `low_level/pipe.rs` pattern.)
//!
//! **A worker** must be able to stop threads that are blocked in `accept(2)` on a
//! listening socket it shares with other processes (competing-accept mode). Closing the
//! descriptor does not wake them on Linux, and `shutdown(2)` would stop the socket for
//! every worker. So a worker installs a no-op handler for [`INTERRUPT_SIGNAL`] *without*
//! `SA_RESTART` and sends that signal to each blocked thread (`tgkill`): `accept4` fails
//! with `EINTR` and the thread sees that its listener was closed. `SIGURG` is used, as
//! Go's runtime does for preemption: its default action is to ignore it and the kernel
//! only sends it for TCP urgent data to a socket owner set with `F_SETOWN`.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

use super::cvt;

/// The signal a worker sends its own threads to interrupt a blocking `accept`.
pub(crate) const INTERRUPT_SIGNAL: i32 = libc::SIGURG;

/// The write end of the active self-pipe, or -1. Read by the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// Whether a [`SignalPipe`] is installed in this process (only one may be).
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe only: errno access, an atomic load and write(2).
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    let saved = unsafe { *libc::__errno_location() };
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, so a full
        // pipe drops the byte instead of stalling (the loop wakes anyway).
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Nothing: delivering the signal is the point (the blocked call returns EINTR).
}

fn sigaction_with(handler: libc::sighandler_t, flags: i32) -> libc::sigaction {
    // SAFETY: sigaction is plain old data; all-zero is a valid starting value.
    let mut sa: libc::sigaction = unsafe { mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    // SAFETY: sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    sa
}

fn set_action(signal: i32, action: &libc::sigaction) -> io::Result<libc::sigaction> {
    // SAFETY: sigaction is plain old data; all-zero is a valid value to overwrite.
    let mut old: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: both pointers refer to valid sigaction structs for the call.
    cvt(unsafe { libc::sigaction(signal, action, &mut old) })?;
    Ok(old)
}

/// The primary's signal handlers and the self-pipe they write into.
///
/// Dropping it restores the handlers that were installed before, then closes the pipe.
#[derive(Debug)]
pub(crate) struct SignalPipe {
    read: OwnedFd,
    /// Kept open for the handler, which writes to it by number.
    _write: OwnedFd,
    previous: Vec<(i32, SavedAction)>,
}

/// A saved `sigaction`, restored on drop of [`SignalPipe`].
struct SavedAction(libc::sigaction);

impl std::fmt::Debug for SavedAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SavedAction")
    }
}

impl SignalPipe {
    /// Creates the pipe and installs the byte-writing handler for each of `signals`
    /// (`SA_RESTART`, so the application's own blocking calls in the primary are not
    /// disturbed; the loop's `poll` sees the pipe become readable instead).
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when another `SignalPipe` is installed in this process; the OS
    /// error of `pipe2` or `sigaction` otherwise (handlers installed so far are restored).
    pub(crate) fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "signal handlers are already installed by another cluster in this process",
            ));
        }
        let (read, write) = match super::fd::pipe_nonblocking() {
            Ok(p) => p,
            Err(e) => {
                INSTALLED.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut pipe = SignalPipe {
            read,
            _write: write,
            previous: Vec::new(),
        };
        let action = sigaction_with(
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            libc::SA_RESTART | libc::SA_NOCLDSTOP,
        );
        for &signal in signals {
            // On error, dropping `pipe` restores what was installed so far.
            let old = set_action(signal, &action)?;
            pipe.previous.push((signal, SavedAction(old)));
        }
        Ok(pipe)
    }

    /// The read end, for `poll`.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_fd()
    }

    /// Reads every pending byte and returns the signal numbers, in arrival order.
    pub(crate) fn drain(&self, out: &mut Vec<i32>) {
        use std::os::fd::AsFd;
        let mut buf = [0u8; 64];
        loop {
            match super::fd::read(self.read.as_fd(), &mut buf) {
                Ok(0) => return,
                Ok(n) => out.extend(buf[..n].iter().map(|&b| i32::from(b))),
                Err(_) => return, // EAGAIN: drained
            }
        }
    }
}

impl SignalPipe {
    /// In a freshly forked child (signals still blocked): restores the handlers from
    /// before the pipe was installed, as dropping it would, but leaves the pipe's
    /// descriptors to the child's sweep instead of closing them here: the child forgets
    /// the primary's structures rather than dropping them (see
    /// `Cluster::release_in_child`). Everything this changes is the child's own.
    pub(crate) fn leave_in_child(mut self) {
        for (signal, old) in self.previous.drain(..).rev() {
            let _ = set_action(signal, &old.0);
        }
        WAKE_FD.store(-1, Ordering::SeqCst);
        INSTALLED.store(false, Ordering::SeqCst);
        std::mem::forget(self);
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..).rev() {
            let _ = set_action(signal, &old.0);
        }
        WAKE_FD.store(-1, Ordering::SeqCst);
        INSTALLED.store(false, Ordering::SeqCst);
        // `read` and `write` close when the fields drop, after the handlers are gone.
    }
}

/// A thread's signal mask, saved to be restored.
#[derive(Clone, Copy)]
pub(crate) struct SigMask(libc::sigset_t);

impl std::fmt::Debug for SigMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigMask")
    }
}

/// Blocks every signal in this thread (`pthread_sigmask(SIG_SETMASK, full)`); returns
/// the mask before. The primary forks with every signal blocked, so that nothing a
/// signal handler does can run in the child before the child has replaced the
/// primary's handlers (a signal sent to the new pid would otherwise run the primary's
/// handler in the child, which writes into the primary's self-pipe).
pub(crate) fn block_all() -> io::Result<SigMask> {
    // SAFETY: sigset_t is plain old data; sigfillset initialises it.
    let mut full: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `full` is a valid sigset_t.
    unsafe { libc::sigfillset(&mut full) };
    // SAFETY: as above, for the old mask, which the call fills in.
    let mut old: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: both pointers are valid sigset_t for the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &full, &mut old) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(SigMask(old))
}

/// Blocks (`block` true: `SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) `signals` in this
/// thread (`pthread_sigmask`); threads it starts later inherit the mask.
pub(crate) fn set_blocked(signals: &[i32], block: bool) -> io::Result<()> {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is initialised; an invalid number only makes this fail.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is an initialised sigset_t; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Sets this thread's signal mask to `mask` (`pthread_sigmask(SIG_SETMASK)`).
pub(crate) fn set_mask(mask: &SigMask) -> io::Result<()> {
    // SAFETY: `mask.0` is an initialised sigset_t; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// In a freshly forked worker (signals still blocked, see [`block_all`]): every signal
/// in `signals` back to `SIG_DFL` — except those ignored (`SIG_IGN`, as `nohup` sets
/// `SIGHUP`), which stay ignored, as across `execve` — then the mask the primary had
/// before the fork, with [`INTERRUPT_SIGNAL`] unblocked.
pub(crate) fn reset_in_child(signals: &[i32], mask: &SigMask) -> io::Result<()> {
    let dfl = sigaction_with(libc::SIG_DFL, 0);
    for &signal in signals {
        let previous = set_action(signal, &dfl)?;
        if previous.sa_sigaction == libc::SIG_IGN {
            set_action(signal, &previous)?;
        }
    }
    let mut mask = *mask;
    // SAFETY: `mask.0` is an initialised sigset_t.
    unsafe { libc::sigdelset(&mut mask.0, INTERRUPT_SIGNAL) };
    set_mask(&mask)
}

/// Ignores `signal` in this process (`SIG_IGN`).
pub(crate) fn ignore(signal: i32) -> io::Result<()> {
    set_action(signal, &sigaction_with(libc::SIG_IGN, 0)).map(drop)
}

/// Installs the no-op [`INTERRUPT_SIGNAL`] handler without `SA_RESTART`, once per
/// process. Blocking calls of the receiving thread then fail with `EINTR`.
pub(crate) fn install_interrupt_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let action = sigaction_with(
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
            0,
        );
        result = set_action(INTERRUPT_SIGNAL, &action).map(drop);
    });
    result
}

/// Makes the kernel deliver any signal already pending for this thread, now.
///
/// Pending signals are delivered on the way back from a system call, so one cheap
/// system call is enough. A thread that was sent [`INTERRUPT_SIGNAL`] calls this before
/// it returns to application code, so the signal cannot interrupt the application's
/// next blocking call instead.
pub(crate) fn deliver_pending() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}
