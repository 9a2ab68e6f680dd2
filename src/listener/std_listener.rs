//! The listening socket handed to a library as std's own type, for servers that accept
//! by themselves (tokio, hyper, axum, tiny_http, actix-web): [`Listener::try_clone_std`].
//!
//! Node intercepts `server.listen()` inside a worker, so any Node server runs in a
//! cluster unchanged. Rust has no such hook; what it has is std's `TcpListener` and
//! `UnixListener`, which every server library takes. Shared, reuse-port and exclusive
//! listeners are real listening sockets in the worker, so a checked duplicate of the
//! socket is all a library needs. A round-robin listener has no socket in the worker:
//! its connections come from the primary over a hand-off channel, which must never be
//! handed out as if it were a listener (a library accepting on it gets `EINVAL`,
//! logs it where nobody looks, and its clients hang), so asking is an error that says
//! what to do instead.
//!
//! What a library's own accept loop does not get from the crate, and how to give it:
//! - **the disconnect**: the crate's [`Listener::close`] cannot reach a library's
//!   accept loop; watch [`Worker::disconnect_fd`](crate::Worker::disconnect_fd) (or
//!   call [`Worker::wait_disconnect`](crate::Worker::wait_disconnect) on a thread) and
//!   stop the server gracefully when it fires;
//! - **the counters**: connections the library accepts are not seen by the crate;
//!   [`Listener::note_accepted`] counts one (for `Builder::max_connections` recycling,
//!   `WorkerInfo`'s counters and least-connections), open while its guard lives.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;

use super::{Listener, Origin, Source};
use crate::connection::OpenConnection;
use crate::sys::socket;

/// A worker's listening socket as std's listener type, from
/// [`Listener::try_clone_std`].
#[derive(Debug)]
pub enum StdListener {
    /// A TCP listener (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A Unix stream listener.
    Unix(UnixListener),
}

impl StdListener {
    /// The TCP listener, if this is one.
    pub fn into_tcp(self) -> Option<TcpListener> {
        match self {
            StdListener::Tcp(l) => Some(l),
            StdListener::Unix(_) => None,
        }
    }

    /// The Unix listener, if this is one.
    pub fn into_unix(self) -> Option<UnixListener> {
        match self {
            StdListener::Unix(l) => Some(l),
            StdListener::Tcp(_) => None,
        }
    }
}

impl AsFd for StdListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StdListener::Tcp(l) => l.as_fd(),
            StdListener::Unix(l) => l.as_fd(),
        }
    }
}

impl From<StdListener> for OwnedFd {
    fn from(l: StdListener) -> OwnedFd {
        match l {
            StdListener::Tcp(l) => l.into(),
            StdListener::Unix(l) => l.into(),
        }
    }
}

impl Listener {
    /// A duplicate of this listener's socket as std's `TcpListener` or
    /// `UnixListener`, for a server library that accepts by itself
    /// (`tokio::net::TcpListener::from_std`, `tiny_http::Server::from_listener`,
    /// actix-web's `HttpServer::listen`). Checked before it is returned: a listening
    /// (`SO_ACCEPTCONN`) stream socket of the family it claims to be.
    ///
    /// Every copy, this one, the crate's and the other workers' (shared mode), shares
    /// one open file description: `O_NONBLOCK`, which async runtimes set, is set for
    /// all of them (the crate's own `accept` copes with it). The copy is close-on-exec.
    ///
    /// The crate cannot stop a library's accept loop: watch
    /// [`Worker::disconnect_fd`](crate::Worker::disconnect_fd) and stop the server
    /// when it fires; count what it accepts with [`note_accepted`](Listener::note_accepted).
    /// A library that removes its Unix socket file when dropped (tiny_http does, for
    /// a server it bound itself) must not be given the path to bind: give it this
    /// listener, so the file stays the cluster's.
    ///
    /// # Errors
    ///
    /// `Unsupported` in round-robin mode, naming the address and what to use instead:
    /// there is no listening socket in the worker, only the primary's hand-off
    /// channel. `InvalidInput` when the descriptor is not a listening stream socket
    /// (an adopted `fd:N` that is something else); the OS error of the duplication.
    pub fn try_clone_std(&self) -> io::Result<StdListener> {
        let fd = match &self.shared.source {
            Source::Socket { fd, .. } => fd,
            Source::Handoff(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the listener on {} is round-robin (Mode::RoundRobin): the primary \
                         accepts and hands each connection over, so this worker has no \
                         listening socket to give a library; accept with Listener::accept, \
                         or run the cluster in Mode::Shared or Mode::ReusePort",
                        self.shared.local
                    ),
                ))
            }
        };
        let copy = crate::sys::fd::dup_cloexec(fd.as_fd())?;
        let not = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the listener on {} is not {what}", self.shared.local),
            )
        };
        let option = |name| socket::int_option(copy.as_fd(), libc::SOL_SOCKET, name);
        if option(libc::SO_TYPE)? != libc::SOCK_STREAM {
            return Err(not("a stream socket"));
        }
        if option(libc::SO_ACCEPTCONN)? != 1 {
            return Err(not("listening"));
        }
        match option(libc::SO_DOMAIN)? {
            libc::AF_INET | libc::AF_INET6 => Ok(StdListener::Tcp(TcpListener::from(copy))),
            libc::AF_UNIX => Ok(StdListener::Unix(UnixListener::from(copy))),
            _ => Err(not("a TCP or Unix socket")),
        }
    }

    /// Counts one connection that a library accepted by itself on a listener from
    /// [`try_clone_std`](Listener::try_clone_std), as [`accept`](Listener::accept)
    /// counts its own: in [`accepted`](Listener::accepted), in the worker's totals
    /// (`WorkerInfo`, `Builder::max_connections` recycling), and as open until the
    /// returned guard drops.
    pub fn note_accepted(&self) -> OpenConnection {
        let s = &*self.shared;
        s.accepted.fetch_add(1, Ordering::Relaxed);
        OpenConnection::from_count(match &s.origin {
            Origin::Worker { link, .. } => Some(link.accepted()),
            Origin::Standalone { .. } => None,
        })
    }
}
