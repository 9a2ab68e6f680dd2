//! `poll(2)`: the primary's one wait for everything; and `epoll(7)` with
//! `EPOLLEXCLUSIVE`: a worker thread's wait for its next hand-off.
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// One entry of a `poll` set: a borrowed descriptor and the events of interest.
///
/// `#[repr(transparent)]` over `libc::pollfd`, so a slice of these is the array the
/// kernel expects; the lifetime keeps the descriptor open while it is polled.
#[repr(transparent)]
pub(crate) struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl std::fmt::Debug for PollFd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PollFd({}, {:#x}/{:#x})",
            self.raw.fd, self.raw.events, self.raw.revents
        )
    }
}

impl<'fd> PollFd<'fd> {
    /// Watches `fd` for input, and for output too when `write` is set.
    pub(crate) fn new(fd: BorrowedFd<'fd>, write: bool) -> PollFd<'fd> {
        PollFd::with(fd, true, write)
    }

    /// Watches `fd` for input and/or output as asked; with neither, for hang-up and
    /// errors only (which `poll` always reports).
    pub(crate) fn with(fd: BorrowedFd<'fd>, read: bool, write: bool) -> PollFd<'fd> {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// Input is ready, or the peer hung up, or an error is pending: a read will not block.
    pub(crate) fn readable(&self) -> bool {
        self.raw.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Output space is available.
    pub(crate) fn writable(&self) -> bool {
        self.raw.revents & (libc::POLLOUT | libc::POLLERR) != 0
    }

    /// Anything at all was reported.
    pub(crate) fn any(&self) -> bool {
        self.raw.revents != 0
    }
}

/// Corresponds to `ppoll(2)` with no signal mask (that is, `poll(2)` with a timeout in
/// nanoseconds rather than milliseconds); `None` waits forever.
///
/// `EINTR` is returned to the caller (see the EINTR policy in [`crate::sys`]); the
/// primary's loop treats it as "look again".
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: PollFd is repr(transparent) over pollfd, so the slice is a valid array of
    // `fds.len()` pollfds, each holding a descriptor kept open by its borrow; `ts_ptr`
    // is null or points to a timespec that outlives the call; no signal mask is passed.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sleeps for `d` unless a signal arrives first (`poll` with no descriptors).
///
/// Unlike `std::thread::sleep`, which resumes after a signal, this returns early, so a
/// thread backing off can still be interrupted by its listener's close.
pub(crate) fn interruptible_sleep(d: Duration) {
    let _ = poll(&mut [], Some(d));
}

/// Whether `EPOLLEXCLUSIVE` wakes one waiter per event reliably: from Linux 5.7 on
/// ("epoll: atomically remove wait entry on wake up"). Before, a thread woken but not
/// yet running still counted as a waiter, so a second event could be "delivered" to it
/// again while another thread slept on, leaving a record unread until some thread came
/// back. Read once from `uname(2)`; an unparsable release counts as old.
pub(crate) fn exclusive_wakeups_reliable() -> bool {
    static RELIABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RELIABLE.get_or_init(|| {
        // SAFETY: utsname is plain old data; all-zero is a valid value to overwrite.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid utsname for the call to fill.
        if unsafe { libc::uname(&mut u) } != 0 {
            return false;
        }
        let release: String = u
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor) >= (5, 7),
            _ => false,
        }
    })
}

/// A thread's wait for input on one descriptor that many threads wait on: an epoll
/// instance holding that descriptor with `EPOLLIN | EPOLLEXCLUSIVE`. Each record that
/// arrives wakes one thread waiting through such an instance (not all of them, as
/// `poll` would); a hang-up or `shutdown(2)` wakes them all.
///
/// Waiting here rather than in a blocking `recvmsg` matters when a waiting process is
/// killed: a thread woken by a record but not yet running completes a blocking
/// `recvmsg` inside the kernel before it dies, and the record (a connection) dies with
/// it; a thread woken from `epoll_wait` dies having taken nothing, so the record stays
/// queued for someone else.
#[derive(Debug)]
pub(crate) struct ExclusiveWait {
    ep: OwnedFd,
}

impl ExclusiveWait {
    /// Corresponds to `epoll_create1(EPOLL_CLOEXEC)` and `epoll_ctl(EPOLL_CTL_ADD)` of
    /// `fd` for `EPOLLIN | EPOLLEXCLUSIVE` (level-triggered).
    pub(crate) fn new(fd: BorrowedFd<'_>) -> io::Result<ExclusiveWait> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let raw = super::cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open for the call; `ev` is a valid epoll_event.
        super::cvt(unsafe {
            libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev)
        })?;
        Ok(ExclusiveWait { ep })
    }

    /// Corresponds to `epoll_wait` for one event, without timeout: returns once the
    /// descriptor is readable (or hung up). `EINTR` is returned to the caller.
    pub(crate) fn wait(&self) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is valid for one event; the instance is open.
        super::cvt(unsafe { libc::epoll_wait(self.ep.as_raw_fd(), &mut ev, 1, -1) }).map(drop)
    }
}
