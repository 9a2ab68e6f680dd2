//! Closing descriptors a worker sent the primary unasked, without the event loop ever
//! waiting in `close` (only on kernels without `SO_PASSRIGHTS`, see [`super::scm`]).
//!
//! Why not simply `close`: `close(2)` calls the file's `flush` on *every* close of a
//! descriptor, not only the last one (`filp_close` → `f_op->flush`; `close_range(2)`,
//! `dup2(2)` onto it and a process's exit do the same). A file on FUSE answers `flush`
//! only when its server does: `fuse_flush` sends `FUSE_FLUSH` and waits, and once the
//! server has read the request the wait cannot be interrupted, not even by `SIGKILL`
//! (state D). No flag or order of calls avoids it: whoever takes the descriptor out of
//! the primary's table waits for the worker's file system. Other files have their own
//! waits (a tty drains its output, a network file system writes back). So the one who
//! waits must not be the loop: a thread that shares the primary's descriptor table
//! takes the descriptor out and waits instead. A child process would not do: it has its
//! own copy of the table, and the primary would still have to close its own copy.
//!
//! What is closed where ([`close_untrusted`]):
//! - an `AF_INET`/`AF_INET6` socket on the loop, abortively
//!   ([`socket::close_abortive`]): no `flush` and, with `SO_LINGER {1, 0}`, no linger;
//!   asking the socket its family (`SO_DOMAIN`) touches no file system;
//! - everything else on a closer thread: files, pipes, and Unix sockets too (closing
//!   the last reference of a Unix socket releases the descriptors queued in it, which
//!   may be a lingering socket or a FUSE file).
//!
//! The threads: one per descriptor, started on demand, at most [`MAX_CLOSERS`] at once;
//! a descriptor that finds them all busy waits, *parked* in the loop's hands, for the
//! next free one. A closer does one system call, `close`, and takes no lock (it
//! receives the number when it starts): a `fork` while it runs leaves the child no lock
//! held. It runs with every signal blocked, so the primary's signals reach the loop. So on Linux 6.16+, and on an older kernel until a worker misbehaves, the
//! primary has no thread at all; [`settle`] joins the finished ones before each `fork`.
//!
//! The race with `fork`: a descriptor still in the primary's table when it forks a
//! worker is inherited, and the worker's `close_range` of what it did not ask for would
//! wait on it instead. [`settle`] waits (at most [`SETTLE`]) until every closer has
//! reached its `close`, which takes the descriptor out of the table before it waits.
//! What remains: the instant between a closer's last instruction and its system call;
//! descriptors parked while [`MAX_CLOSERS`] closers are stuck, or when no thread could
//! be started; and a primary that exits while a closer is stuck does not finish exiting
//! until the file system answers.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{signal, socket};

/// Closer threads alive at most; more descriptors wait parked.
pub(crate) const MAX_CLOSERS: usize = 64;

/// How long [`settle`] waits for the closers to reach their `close`.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// A closer's stack: it calls `close` and returns.
const STACK: usize = 64 * 1024;

/// Descriptors handed to a closer that has not yet called `close`.
static IN_HAND: AtomicUsize = AtomicUsize::new(0);

/// A closer thread was ever started in this process.
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a closer thread was ever started here (a thread count above one is then
/// possibly a closer the kernel has not released yet, see [`super::process::fork`]).
pub(crate) fn ever_started() -> bool {
    STARTED.load(Ordering::Relaxed)
}

/// Only the loop's thread uses this (closers never lock it), so it is never held when
/// that thread forks.
static CLOSERS: Mutex<Closers> = Mutex::new(Closers {
    threads: Vec::new(),
    parked: Vec::new(),
});

#[derive(Debug)]
struct Closers {
    threads: Vec<JoinHandle<()>>,
    /// Descriptors waiting for a free closer (all [`MAX_CLOSERS`] busy, or none could
    /// be started).
    parked: Vec<OwnedFd>,
}

fn closers() -> MutexGuard<'static, Closers> {
    CLOSERS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Closers {
    /// Joins the closers that are done (promptly: a finished closer only exits).
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].is_finished() {
                let _ = self.threads.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
    }

    /// Starts a closer for each parked descriptor, while fewer than [`MAX_CLOSERS`] run.
    /// Each starts with every signal blocked (a thread inherits its creator's mask), so
    /// the primary's signals keep going to the loop's thread.
    fn start(&mut self) {
        let Ok(mask) = signal::block_all() else {
            return; // nothing started: the descriptors stay parked
        };
        self.start_blocked();
        let _ = signal::set_mask(&mask);
    }

    fn start_blocked(&mut self) {
        while self.threads.len() < MAX_CLOSERS {
            let Some(fd) = self.parked.pop() else {
                return;
            };
            // The closer owns the number from its first instruction; until then (and
            // for good if it never starts) this thread does.
            let raw: RawFd = fd.into_raw_fd();
            IN_HAND.fetch_add(1, Ordering::AcqRel);
            STARTED.store(true, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name("cluster-closer".into())
                .stack_size(STACK)
                .spawn(move || {
                    // SAFETY: `raw` was an OwnedFd given up just above for this thread
                    // alone; the closure runs at most once, and only if the spawn
                    // succeeded, in which case nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    IN_HAND.fetch_sub(1, Ordering::AcqRel);
                    drop(fd);
                });
            match spawned {
                Ok(h) => self.threads.push(h),
                Err(_) => {
                    IN_HAND.fetch_sub(1, Ordering::AcqRel);
                    // SAFETY: the spawn failed, so the closure never ran and was
                    // dropped without touching `raw` (an integer): it is still ours.
                    self.parked.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    return;
                }
            }
        }
    }
}

/// Closes a descriptor an untrusted peer sent, so that the calling thread never waits
/// in `close`: an Internet socket here, abortively; anything else on a closer thread
/// (see the module's docs).
pub(crate) fn close_untrusted(fd: OwnedFd) {
    if socket::is_inet(fd.as_fd()) {
        socket::close_abortive(fd);
        return;
    }
    // A socket of another family gets no linger either, whoever ends up closing it.
    let _ = socket::set_linger(fd.as_fd(), Some(0));
    let mut c = closers();
    c.reap();
    c.parked.push(fd);
    c.start();
}

/// Lets go of a socket of the primary's own whose queue others can fill: a Unix
/// socket's queued messages (a listener's backlog of connections, a connection's or a
/// datagram socket's data) may carry descriptors that any local client sent with
/// `SCM_RIGHTS`, which no flag of the primary's refuses ahead of time on a listener,
/// and the last close of the socket releases them in the closing thread. So a Unix
/// socket is closed on a closer thread ([`close_untrusted`]); an Internet socket, which
/// carries no descriptors, is closed here as usual (gracefully: it is the primary's).
pub(crate) fn close_own_socket(fd: OwnedFd) {
    if socket::is_inet(fd.as_fd()) {
        drop(fd);
    } else {
        close_untrusted(fd);
    }
}

/// Before `fork`: joins the closers that are done, gives parked descriptors to free
/// closers, waits (at most [`SETTLE`]) until every closer has reached its `close`, and
/// returns how many closer threads are still alive (stuck in a `close`).
pub(crate) fn settle() -> usize {
    let mut c = closers();
    if c.threads.is_empty() && c.parked.is_empty() {
        return 0; // the usual case: no worker ever sent a file
    }
    c.reap();
    c.start();
    let deadline = Instant::now() + SETTLE;
    while IN_HAND.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    c.reap();
    c.threads.len()
}

/// Descriptors parked and closer threads alive (for tests).
#[cfg(test)]
pub(crate) fn counts() -> (usize, usize) {
    let mut c = closers();
    c.reap();
    (c.parked.len(), c.threads.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd;

    #[test]
    fn a_pipe_is_closed_on_a_closer_thread() {
        let (r, w) = fd::pipe_nonblocking().unwrap();
        close_untrusted(w);
        // The read end sees EOF once the closer has closed the write end.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut one = [0u8; 1];
        loop {
            match fd::read(r.as_fd(), &mut one) {
                Ok(0) => break,
                _ if Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("the write end is still open: {other:?}"),
            }
        }
        // The closer is done once its close returned: joined at the next settle.
        while settle() > 0 {
            assert!(Instant::now() < deadline, "the closer did not finish");
        }
        assert_eq!(counts().0, 0);
    }
}
