//! What `Builder::start` checks of the process before it forks anything: one thread,
//! and no event loop.
//!
//! A worker is a `fork` of the primary, and it starts with nothing inherited but its
//! standard streams, its channel and what `Builder::keep_fd` names (the "inherit
//! nothing" rule of the worker's setup). An async runtime made before `start` breaks
//! that in two ways:
//! - a multi-threaded one has threads, and `fork` copies only the calling thread (a
//!   lock another thread held stays locked in the child forever);
//! - a single-threaded one (`#[tokio::main(flavor = "current_thread")]`, or any
//!   runtime built early) has no thread to see, but its epoll, eventfd, timerfd or
//!   io_uring descriptors are closed in every worker, and their numbers are soon
//!   reused: the runtime then fails with `EINVAL` or `EBADF` inside each worker, which
//!   dies and is respawned, and dies again.
//!
//! Both are refused here with a message that says where the runtime belongs: inside
//! the worker function, where each worker builds its own.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::Error;
use crate::sys::process;

/// What the kernel calls an event loop's descriptors (`/proc/self/fd` links), and what
/// to call them in the error.
const EVENT_LOOP_INODES: [(&str, &str); 5] = [
    ("anon_inode:[eventpoll]", "an epoll instance"),
    ("anon_inode:[eventfd]", "an eventfd"),
    ("anon_inode:[signalfd]", "a signalfd"),
    ("anon_inode:[timerfd]", "a timerfd"),
    ("anon_inode:[io_uring]", "an io_uring instance"),
];

const WHERE: &str = "build the async runtime (tokio, async-std, smol, mio) inside the worker \
                     function, so each worker makes its own after the fork, not before \
                     Builder::start";

/// Refuses a primary with more than one thread, or with an event loop's descriptor
/// open (other than those kept for the workers with `keep_fd`, which are the
/// application's choice).
///
/// # Errors
///
/// [`Error::Config`] naming the thread count, or the descriptor and what it is.
pub(super) fn check(kept: &[OwnedFd]) -> Result<(), Error> {
    match process::thread_count() {
        Ok(1) | Err(_) => {}
        Ok(n) => {
            return Err(Error::Config(format!(
                "the primary has {n} threads at Builder::start (fork copies only one; a \
                 multi-threaded runtime such as #[tokio::main] starts them): {WHERE}"
            )))
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Ok(()); // no /proc: nothing to tell by
    };
    let mut found: Vec<(i32, &str)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let what = EVENT_LOOP_INODES
                .iter()
                .find(|(name, _)| link.as_os_str() == *name)?
                .1;
            Some((n, what))
        })
        .filter(|(n, _)| !kept.iter().any(|k| k.as_raw_fd() == *n))
        .collect();
    found.sort_unstable();
    match found.first() {
        None => Ok(()),
        Some(&(n, what)) => Err(Error::Config(format!(
            "descriptor {n} is {what}, open before Builder::start{}: an event loop was made \
             in the primary, and the workers, which inherit nothing of it, would fail in it: \
             {WHERE}",
            if found.len() > 1 {
                format!(" ({} such descriptors)", found.len())
            } else {
                String::new()
            }
        ))),
    }
}
