//! What `accept(2)` returns, read the same way by both places that accept: a worker's
//! listener (shared and reuse-port modes, and outside a cluster) and the round-robin
//! primary. Node leaves this to libuv's `uv__server_io`, which retries `EAGAIN` and
//! `ECONNABORTED` and pauses on `EMFILE`.

use std::io;
use std::net::SocketAddr;

use crate::addr::PeerAddr;
use crate::connection::StreamKind;
use crate::sys::sockaddr::SockAddr;

/// What to do after a failed `accept(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// `EINTR`: a signal (a worker's close interrupts its accepting threads this way):
    /// check whether closed, else try again.
    Interrupted,
    /// `EAGAIN`: nothing queued and the socket did not wait (it is non-blocking, or its
    /// receive timeout ran out): wait for readiness.
    NotReady,
    /// The connection died before it was taken (`ECONNABORTED`, a network error
    /// Linux passes on from the new socket): try again at once.
    Skip,
    /// Out of descriptors or memory: back off ([`Doubling::out_of_resources`]), then
    /// try again.
    ///
    /// [`Doubling::out_of_resources`]: crate::backoff::Doubling::out_of_resources
    Resources,
    /// `EINVAL`: the socket no longer listens (shut down at cluster shutdown).
    Closed,
    /// Anything else: give up.
    Fatal,
}

/// Reads `accept(2)`'s error.
pub(crate) fn classify(e: &io::Error) -> AcceptFailure {
    match e.raw_os_error() {
        Some(libc::EINTR) => AcceptFailure::Interrupted,
        // O_NONBLOCK belongs to the open file description, which every worker shares:
        // one that sets it for its own event loop, or systemd's `NonBlocking=yes`, sets
        // it for all; a ListenOptions read timeout ends the wait the same way.
        Some(libc::EAGAIN) => AcceptFailure::NotReady,
        // accept(2): "Linux passes already-pending network errors on the new socket as
        // an error code from accept()": retry, as for an aborted connection.
        Some(
            libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EOPNOTSUPP,
        ) => AcceptFailure::Skip,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptFailure::Resources
        }
        Some(libc::EINVAL) => AcceptFailure::Closed,
        _ => AcceptFailure::Fatal,
    }
}

/// The peer of an accepted connection, as user code sees it: a TCP address, or a Unix
/// path (`None` for an unnamed client socket, the usual case). A TCP connection whose
/// address cannot be read gets the unspecified address `0.0.0.0:0` rather than failing:
/// it stays a TCP peer, since a worker receiving a round-robin hand-off tells TCP from
/// Unix by its peer.
pub(crate) fn peer_of(kind: StreamKind, addr: &SockAddr) -> PeerAddr {
    match kind {
        StreamKind::Tcp => PeerAddr::Tcp(
            addr.inet()
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        ),
        StreamKind::Unix => PeerAddr::Unix(addr.unix_path()),
    }
}
