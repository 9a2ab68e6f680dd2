//! The round-robin receive path: how a worker thread gets a connection from the
//! primary's hand-off channel.
//!
//! Node's counterpart is `child.js`'s `rr()` and `onconnection()`: the primary sends a
//! `newconn` message with the handle, and the worker acks it (`accepted`), which frees
//! it for the next one. Here a thread sends its credit (`Ready`) *before* it waits, so
//! the primary hands a connection only to a thread that is waiting for one; it then
//! waits through an exclusive epoll instance and receives without blocking (see
//! [`accept_handoff`](Endpoint::accept_handoff)), answers a `Probe` with a fresh credit,
//! and ends with `Ok(None)` when the channel reports EOF (closed here, or by the
//! primary). The primary's side is `crate::primary::round_robin`.

use std::io;
use std::os::fd::AsFd;
use std::sync::{MutexGuard, PoisonError};

use crate::addr::PeerAddr;
use crate::connection::{Connection, Stream, StreamKind};
use crate::ipc::channel::{Channel, Incoming as Received, RecvError};
use crate::ipc::codec::{Message, ProtocolError};
use crate::sys::poll;

use super::{back_off, Endpoint, Origin};
use crate::accept::{classify, AcceptFailure};
use crate::backoff::Doubling;

impl Endpoint {
    /// Round-robin: one credit, then wait for the connection sent against it.
    ///
    /// The thread waits through an [`ExclusiveWait`](poll::ExclusiveWait) and then
    /// receives without blocking, rather than blocking in `recvmsg`: if the worker is
    /// killed while a thread is being woken, the connection stays in the channel, where
    /// the primary takes it back and serves it elsewhere, instead of being received by
    /// the dying thread inside the kernel and lost (measured with the `chaos` example:
    /// about one connection lost per `SIGKILL` under load before).
    ///
    /// On kernels before 5.7, where `EPOLLEXCLUSIVE` can leave a record unread while a
    /// thread waits (see [`poll::exclusive_wakeups_reliable`]), threads block in
    /// `recvmsg` instead, as before.
    pub(super) fn accept_handoff(&self, ch: &Channel) -> io::Result<Option<Connection>> {
        if !poll::exclusive_wakeups_reliable() {
            return self.accept_handoff_with(ch, None);
        }
        let pooled = self.lock_waits().pop();
        let wait = match pooled {
            Some(w) => w,
            None => match self.new_wait(ch)? {
                Some(w) => w,
                None => return Ok(None), // closed meanwhile
            },
        };
        let result = self.accept_handoff_with(ch, Some(&wait));
        self.lock_waits().push(wait);
        result
    }

    /// A new wait instance for a thread that waits for the first time; out of
    /// descriptors or memory, it backs off (as `accept` does) until it gets one or the
    /// listener closes (`None`).
    fn new_wait(&self, ch: &Channel) -> io::Result<Option<poll::ExclusiveWait>> {
        let mut backoff = Doubling::out_of_resources();
        loop {
            match poll::ExclusiveWait::new(ch.as_fd()) {
                Ok(w) => return Ok(Some(w)),
                Err(e)
                    if matches!(classify(&e), AcceptFailure::Resources)
                        || e.raw_os_error() == Some(libc::ENOSPC) =>
                {
                    // ENOSPC: fs.epoll.max_user_watches reached.
                    if backoff.first() {
                        crate::log::report!("{}: {e}; backing off", self.local);
                    }
                    back_off(&mut backoff);
                    if self.gate.is_closed() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn lock_waits(&self) -> MutexGuard<'_, Vec<poll::ExclusiveWait>> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accept_handoff_with(
        &self,
        ch: &Channel,
        wait: Option<&poll::ExclusiveWait>,
    ) -> io::Result<Option<Connection>> {
        let mut backoff = Doubling::out_of_resources();
        'credit: loop {
            // Closed (the worker disconnects): no more credits, but what the primary
            // sent before is served, not left in the channel. Before an upgrade's
            // `execve` the primary would take it back; after one it cannot (the
            // previous workers' channels do not cross), and with one thread of a worker
            // accepting at a time, connections were often queued while it served.
            if self.gate.is_closed() {
                return Ok(drain_queued(ch));
            }
            // One credit for this call: the primary sends one connection against it.
            let open = match &self.origin {
                Origin::Worker { link, .. } => link.open_now(),
                Origin::Standalone { .. } => 0,
            };
            match ch.send(&Message::Ready { count: 1, open }, None) {
                Ok(()) => {}
                // Shut down (closed here, or the primary went away): nothing more comes,
                // but what it sent before may still be queued.
                Err(e) if primary_gone(&e) => return Ok(drain_queued(ch)),
                Err(e) => return Err(e),
            }
            let mut buf = [0u8; 256];
            loop {
                if let Some(wait) = wait {
                    match wait.wait() {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                match take(ch, &mut buf, wait.is_some()) {
                    Take::Conn(conn) => return Ok(Some(conn)),
                    Take::Eof => return Ok(None),
                    // The primary asks whether this worker still takes connections
                    // (it left one unreceived too long): answer with a fresh credit.
                    Take::Probe => continue 'credit,
                    // Another thread took it, or the wake-up was spurious: wait again.
                    Take::Empty | Take::Interrupted => continue,
                    Take::PrimaryGone => return Ok(drain_queued(ch)),
                    // The credit was spent on a connection the kernel closed: back off
                    // as accept does on EMFILE, and ask again.
                    Take::Lost => {
                        crate::log::report!(
                            "{}: a connection was lost: no descriptor left to receive it (MSG_CTRUNC); backing off",
                            self.local
                        );
                        back_off(&mut backoff);
                        continue 'credit;
                    }
                    Take::Failed(e) => return Err(e),
                }
            }
        }
    }
}

/// A connection received from the primary. Its kind follows the peer the primary's
/// accept saw: an adopted abstract or unnamed Unix socket's clients come as Unix peers.
pub(super) fn handed_off(fd: std::os::fd::OwnedFd, peer: PeerAddr) -> Connection {
    let kind = match peer {
        PeerAddr::Tcp(_) => StreamKind::Tcp,
        PeerAddr::Unix(_) => StreamKind::Unix,
    };
    Connection::new(Stream::from_fd(kind, fd), peer)
}

/// What one receive on a hand-off channel gave: the blocking path (`accept_handoff`)
/// and the event loop's (`event_loop.rs`) act on the same outcomes.
pub(super) enum Take {
    /// A connection the primary handed over.
    Conn(Connection),
    /// The channel is closed (here, or shut down by the primary).
    Eof,
    /// "Are you there?": the primary left a connection unreceived too long and asks
    /// for a fresh credit.
    Probe,
    /// Nothing there now (`EAGAIN` on a non-blocking receive).
    Empty,
    /// A signal interrupted the receive: look again.
    Interrupted,
    /// The primary's end is gone ([`primary_gone`]); what it sent before may still be
    /// queued ([`drain_queued`]). `ECONNRESET` comes *before* what is still queued (the
    /// kernel reports a pending socket error ahead of the queue).
    PrimaryGone,
    /// Out of descriptors (`RLIMIT_NOFILE`): the kernel could not install the
    /// connection's descriptor and closed it (its client sees the connection end); the
    /// credit was spent on it.
    Lost,
    /// A record that does not belong on the channel, or the receive failed.
    Failed(io::Error),
}

/// Receives one record from a hand-off channel and says what it was (see [`Take`]).
pub(super) fn take(ch: &Channel, buf: &mut [u8], nonblocking: bool) -> Take {
    match ch.recv(buf, nonblocking) {
        Ok(Received::Message(Message::NewConn { peer, .. }, Some(fd))) => {
            Take::Conn(handed_off(fd, peer))
        }
        Ok(Received::Eof) => Take::Eof,
        Ok(Received::Message(Message::Probe, None)) => Take::Probe,
        Ok(Received::Message(other, _fd)) => Take::Failed(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected {} message on the hand-off channel",
                other.name()
            ),
        )),
        Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Take::Empty,
        Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => Take::Interrupted,
        Err(RecvError::Io(e)) if primary_gone(&e) => Take::PrimaryGone,
        Err(RecvError::Io(e)) => Take::Failed(e),
        Ok(Received::FdLost(_)) | Err(RecvError::Protocol(ProtocolError::ControlTruncated)) => {
            Take::Lost
        }
        Err(RecvError::Protocol(e)) => Take::Failed(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// The primary's end of the channel is closed: `EPIPE` on a send, or `ECONNRESET` when
/// it closed with credits of ours unread in its queue (a primary that exited, or that
/// `execve`d a binary upgrade, which passes only the listening sockets on). No
/// connection comes any more, but those it sent before may still be queued
/// ([`drain_queued`]).
pub(super) fn primary_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
}

/// After the primary's end closed: the next connection still queued in the channel,
/// received without waiting (nothing more can come), or `None` once it is empty. A
/// connection the primary sent ahead (round-robin's prefetch) is served, not closed
/// with the channel when the worker exits (the client saw a reset: 1–4 requests in
/// each binary upgrade under load once a worker had one thread accepting).
pub(super) fn drain_queued(ch: &Channel) -> Option<Connection> {
    let mut buf = [0u8; 256];
    // Bounded: each turn takes a record off the queue, or ends.
    loop {
        match ch.recv(&mut buf, true) {
            Ok(Received::Message(Message::NewConn { peer, .. }, Some(fd))) => {
                return Some(handed_off(fd, peer));
            }
            // A probe, a record without its descriptor: nothing to serve; the next.
            Ok(Received::Message(..)) | Ok(Received::FdLost(_)) => continue,
            // The error reported ahead of the queue (read once), or a signal.
            Err(RecvError::Io(e)) if primary_gone(&e) || e.kind() == io::ErrorKind::Interrupted => {
                continue
            }
            Err(RecvError::Protocol(_)) => continue,
            Ok(Received::Eof) | Err(RecvError::Io(_)) => return None,
        }
    }
}
