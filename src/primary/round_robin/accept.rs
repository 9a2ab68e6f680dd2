//! Accepting: taking connections from the listening socket without ever blocking the
//! primary (Node's counterpart: the handle's `onconnection`, which feeds `distribute`,
//! and libuv's accept loop under it).
//!
//! [`accept_one`] is called by `pump` only while a connection can go somewhere, so the
//! kernel's backlog holds clients otherwise. It makes at most [`ACCEPT_BATCH`] calls
//! per readiness report, pauses with a growing delay when out of descriptors or memory
//! (instead of spinning on a readable listener, the libuv trap), and before each batch
//! on an adopted listener checks that its shared `O_NONBLOCK` is still set
//! ([`ensure_nonblocking`]), and before each `accept` on it that a connection is queued
//! (so a flag cleared in between cannot block the primary); see the module docs of
//! [`round_robin`](super).
//!
//! [`accept_one`]: RoundRobinHandle::accept_one
//! [`ensure_nonblocking`]: RoundRobinHandle::ensure_nonblocking

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::sys::{fd, poll, socket};

use super::{Pending, RoundRobinHandle, ACCEPT_BATCH};
use crate::accept::{classify, peer_of, AcceptFailure};

impl RoundRobinHandle {
    /// Accepts one connection if the listener has one, without ever blocking: at most
    /// [`ACCEPT_BATCH`] calls per readiness, the first after checking that the listener
    /// is still non-blocking (see the module docs).
    pub(super) fn accept_one(&mut self, now: Instant) -> Option<Pending> {
        if !self.readable || self.resume_at(now).is_some() {
            return None;
        }
        if self.batch == 0 && !self.ensure_nonblocking() {
            self.readable = false;
            return None;
        }
        let listener = self.listener.as_ref()?;
        loop {
            if self.batch >= ACCEPT_BATCH {
                // Enough for this readiness: `poll` says again if more are waiting.
                self.readable = false;
                return None;
            }
            self.batch += 1;
            if self.adopted && !queued(listener.as_fd()) {
                self.readable = false;
                return None;
            }
            match socket::accept(listener.as_fd()) {
                Ok((fd, peer)) => {
                    self.pause.reset();
                    self.paused_until = None;
                    return Some(Pending {
                        fd,
                        peer: peer_of(self.kind, &peer),
                        bounced_from: None,
                        attempts: 0,
                    });
                }
                Err(e) => match classify(&e) {
                    AcceptFailure::Interrupted | AcceptFailure::Skip => continue,
                    AcceptFailure::Resources => {
                        // Out of descriptors: a readable listener would wake `poll` at
                        // once, forever (libuv's trap); leave it alone for a while.
                        if self.pause.first() {
                            crate::log::report!("accept on {}: {e}; pausing", self.local);
                        }
                        self.paused_until = Some(now + self.pause.take());
                        self.readable = false;
                        return None;
                    }
                    // EAGAIN: the backlog is empty. Anything else: wait for `poll`.
                    AcceptFailure::NotReady | AcceptFailure::Closed | AcceptFailure::Fatal => {
                        self.readable = false;
                        return None;
                    }
                },
            }
        }
    }

    /// For an adopted listener: checks `O_NONBLOCK` on its shared open file description
    /// (`F_GETFL`) and sets it again if someone cleared it. Returns whether accepting is
    /// safe (the flag is set); a listener the primary created itself is shared with
    /// nobody and is not checked.
    fn ensure_nonblocking(&mut self) -> bool {
        if !self.adopted {
            return true;
        }
        let Some(listener) = self.listener.as_ref() else {
            return false;
        };
        if let Ok(true) = fd::is_nonblocking(listener.as_fd()) {
            return true;
        }
        let restored = fd::set_nonblocking(listener.as_fd(), true);
        if !self.flag_restored {
            self.flag_restored = true;
            match &restored {
                Ok(()) => crate::log::report!(
                    "{}: someone cleared O_NONBLOCK on the adopted listener (its open file \
                     description is shared with whoever passed it); set it again",
                    self.local
                ),
                Err(e) => crate::log::report!(
                    "{}: the adopted listener lost O_NONBLOCK and cannot get it back: {e}; \
                     not accepting on it",
                    self.local
                ),
            }
        }
        restored.is_ok()
    }
}

/// Whether a connection is queued on `listener` (a zero-timeout `poll`). An adopted
/// listener shares its `O_NONBLOCK` with whoever passed it, who may clear it between
/// the check at a batch's start and an `accept`: asking first means the primary only
/// calls `accept` when it returns at once (it is the listener's only acceptor), so it
/// never blocks, whatever the flag says.
fn queued(listener: BorrowedFd<'_>) -> bool {
    let mut fds = [poll::PollFd::new(listener, false)];
    matches!(poll::poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0) && fds[0].readable()
}
