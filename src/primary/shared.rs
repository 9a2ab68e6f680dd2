//! The shared handle: the primary binds, every worker listens and accepts on the same
//! socket (Node's `lib/internal/cluster/shared_handle.js`, `SCHED_NONE`).
//!
//! The primary creates and binds the socket but does not call `listen(2)`; each worker
//! receives it in its listen reply, calls `listen(2)` (the first call makes the socket
//! listen, later ones only adjust the backlog) and blocks in `accept(2)`. The kernel
//! queues blocked accepters as exclusive waiters and wakes one per connection, oldest
//! first, which balances better than Node's workers, whose epoll loops wake LIFO.
//!
//! The primary keeps its copy for the cluster's whole life, so the socket keeps
//! listening (clients wait in the backlog) while no worker is alive, and a restarted
//! worker gets the same socket back.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::bind::Bound;

/// A shared handle: one bound socket that every worker listens and accepts on.
#[derive(Debug)]
pub(crate) struct SharedHandle {
    local: ListenAddr,
    fd: Option<OwnedFd>,
    /// The socket was adopted (`fd:N`, socket activation): it belongs to whoever passed
    /// it, and outlives this cluster, so shutdown only drops the primary's copy.
    adopted: bool,
}

impl SharedHandle {
    /// Wraps a freshly bound (not yet listening) socket.
    pub(crate) fn new(bound: Bound, adopted: bool) -> SharedHandle {
        SharedHandle {
            local: bound.local,
            fd: Some(bound.fd),
            adopted,
        }
    }

    /// The previous program's socket, passed across a binary upgrade: already
    /// listening, with whatever waits in its backlog.
    pub(crate) fn adopt(local: ListenAddr, fd: OwnedFd, adopted: bool) -> SharedHandle {
        SharedHandle {
            local,
            fd: Some(fd),
            adopted,
        }
    }

    /// The bound address.
    pub(crate) fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// The socket to send a worker, while the handle is open.
    pub(crate) fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Cluster shutdown: `shutdown(SHUT_RD)` on the listening socket stops it listening
    /// for every process that holds it — clients are refused from now on, not queued in
    /// a backlog nobody will accept from — and wakes every worker blocked in `accept`
    /// (which returns `EINVAL`, taken as "closed"). Then the primary's copy is dropped.
    pub(crate) fn close(&mut self) {
        if let Some(fd) = self.fd.take() {
            if !self.adopted {
                let _ =
                    crate::sys::socket::shutdown(fd.as_fd(), crate::sys::socket::Shutdown::Read);
            }
            // A Unix listener's backlog may hold what local clients sent.
            crate::sys::closer::close_own_socket(fd);
        }
    }
}

impl Drop for SharedHandle {
    /// Closes nothing itself: gives the socket to [`SharedHandle::close`]'s careful
    /// close when the handle goes without a shutdown (the fields would drop it).
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            crate::sys::closer::close_own_socket(fd);
        }
    }
}
