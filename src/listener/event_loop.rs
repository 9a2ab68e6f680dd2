//! Round-robin for event loops: the hand-off taken without a thread per credit.
//!
//! The blocking path ([`handoff`](super::handoff)) sends one credit per thread that
//! waits, so a worker's credits are its waiting threads. An event loop (tokio, mio, a
//! `poll` loop) has no thread to spare per connection: it says how many connections
//! it is ready for with [`Listener::grant`], waits for the hand-off channel to be
//! readable ([`Listener::handoff_readiness`]) and takes what came with
//! [`Listener::try_accept`], which never blocks. Each connection received spends one
//! credit; the application grants one again when it can take another (when a
//! connection ends, say), so the primary's balance follows the worker's real
//! capacity, as it does for a thread pool. Closing the listener (the worker's
//! disconnect) takes back every credit not spent: the primary stops routing here and
//! takes back what it had sent and nobody received.
//!
//! Node's counterpart is the same `newconn`/`accepted` exchange as the blocking path's;
//! Node's workers are event loops, and ack each connection at once, so the primary
//! there knows nothing of a worker's capacity.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::handoff::{drain_queued, primary_gone, take, Take};
use super::{Endpoint, Listener, Origin, Source};
use crate::connection::Connection;
use crate::ipc::channel::Channel;
use crate::ipc::codec::Message;

/// The most credits [`Listener::grant`] keeps outstanding in one worker, across all
/// its listeners. The primary refuses a worker that claims more than 4,096 on one
/// address (blocking threads' credits included) as a protocol error, and kills it; this
/// leaves half of that to the threads that wait in [`Listener::accept`].
pub const MAX_GRANTED: u32 = 2048;

/// Credits granted with [`Listener::grant`] and not spent yet, in this process (one
/// worker), across its listeners.
static GRANTED: AtomicU32 = AtomicU32::new(0);

/// Spends one of `listener`'s granted credits (a connection arrived against it).
fn spend(listener: &AtomicU32) {
    if listener
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| g.checked_sub(1))
        .is_ok()
    {
        GRANTED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The credits a closed listener had outstanding no longer count: the primary took
/// them back with its channel.
pub(super) fn forget_granted(listener: &AtomicU32) {
    let left = listener.swap(0, Ordering::AcqRel);
    GRANTED.fetch_sub(left, Ordering::AcqRel);
}

/// The hand-off channel of a round-robin listener, to wait on for readability (with
/// epoll, mio, or an async runtime's readiness) before [`Listener::try_accept`]. Not a
/// listener: accepting, reading or writing on it breaks the worker's hand-off.
#[derive(Debug, Clone, Copy)]
pub struct HandoffReadiness<'a> {
    fd: BorrowedFd<'a>,
}

impl AsFd for HandoffReadiness<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
    }
}

impl AsRawFd for HandoffReadiness<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Listener {
    /// In round-robin mode, the descriptor to wait on for readability before
    /// [`try_accept`](Listener::try_accept) (see the type's docs); `None` for a
    /// listener on a socket, whose std listener a library takes instead
    /// ([`try_clone_std`](Listener::try_clone_std)).
    pub fn handoff_readiness(&self) -> Option<HandoffReadiness<'_>> {
        match &self.shared.source {
            Source::Handoff(ch) => Some(HandoffReadiness { fd: ch.as_fd() }),
            Source::Socket { .. } => None,
        }
    }

    /// Round-robin: tells the primary this worker is ready for `n` more connections on
    /// this listener (credits). Each connection [`try_accept`](Listener::try_accept)
    /// returns spends one. Outside round-robin there is nothing to grant: `Ok(())`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when more than [`MAX_GRANTED`] would be outstanding in this
    /// worker (across its listeners); the OS error of the send. A primary that is gone
    /// is not an error (nothing more comes).
    pub fn grant(&self, n: u32) -> io::Result<()> {
        let s = &*self.shared;
        let Source::Handoff(ch) = &s.source else {
            return Ok(());
        };
        if n == 0 || s.gate.is_closed() {
            return Ok(());
        }
        // Checked and added in one step: connections ending on several threads give
        // their credits back at once.
        let added = GRANTED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
            g.checked_add(n).filter(|&t| t <= MAX_GRANTED)
        });
        if let Err(outstanding) = added {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {n} more credits would make {} outstanding in this worker, over \
                     {MAX_GRANTED}",
                    s.local,
                    u64::from(outstanding) + u64::from(n)
                ),
            ));
        }
        s.granted.fetch_add(n, Ordering::AcqRel);
        s.send_credits(ch, n)
    }

    /// Round-robin, without blocking: the next connection the primary handed over,
    /// `Ok(None)` once the listener is closed and what was queued is served, or
    /// `WouldBlock` when none is there now (wait for
    /// [`handoff_readiness`](Listener::handoff_readiness) and call again). Counted as
    /// [`accept`](Listener::accept) counts.
    ///
    /// # Errors
    ///
    /// `WouldBlock`, as above; `Unsupported` for a listener on a socket (take its std
    /// listener with [`try_clone_std`](Listener::try_clone_std)); `InvalidData` for a
    /// record that does not belong on the channel; the OS error of the receive.
    pub fn try_accept(&self) -> io::Result<Option<Connection>> {
        let s = &*self.shared;
        let Source::Handoff(ch) = &s.source else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} is on a socket, not round-robin: take its std listener with \
                     Listener::try_clone_std",
                    s.local
                ),
            ));
        };
        s.try_accept_handoff(ch)?
            .map(|c| self.counted(c))
            .transpose()
    }
}

impl Endpoint {
    /// Sends `n` credits, and any that could not be sent before, with the worker's
    /// open count, without blocking: an event loop's thread must never wait on the
    /// primary. When the channel's send buffer is full (the primary has not read
    /// hundreds of this worker's credits: it has plenty), they are kept and go with
    /// the next grant or take. A primary that is gone is not an error.
    fn send_credits(&self, ch: &Channel, n: u32) -> io::Result<()> {
        let count = self.unsent.swap(0, Ordering::Relaxed).saturating_add(n);
        if count == 0 {
            return Ok(());
        }
        let open = match &self.origin {
            Origin::Worker { link, .. } => link.open_now(),
            Origin::Standalone { .. } => 0,
        };
        match ch.try_send(&Message::Ready { count, open }, None) {
            Ok(()) => Ok(()),
            Err(e) if primary_gone(&e) => Ok(()),
            // Kept for the next grant or take, whatever the failure: credits granted
            // and never sent would shrink the worker's capacity for good.
            Err(e) => {
                self.unsent.fetch_add(count, Ordering::Relaxed);
                if e.kind() == io::ErrorKind::WouldBlock {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn try_accept_handoff(&self, ch: &Channel) -> io::Result<Option<Connection>> {
        if self.gate.is_closed() {
            return Ok(drain_queued(ch));
        }
        if self.unsent.load(Ordering::Relaxed) > 0 {
            self.send_credits(ch, 0)?;
        }
        let mut buf = [0u8; 256];
        loop {
            match take(ch, &mut buf, true) {
                Take::Conn(conn) => {
                    spend(&self.granted);
                    return Ok(Some(conn));
                }
                Take::Eof => return Ok(None),
                // The primary asks whether this worker still takes connections: a
                // fresh credit says it does (as a waiting thread answers).
                Take::Probe => self.send_credits(ch, 1)?,
                // Empty: the caller waits for readiness. A signal: look again.
                Take::Empty => return Err(io::ErrorKind::WouldBlock.into()),
                Take::Interrupted => {}
                Take::PrimaryGone => return Ok(drain_queued(ch)),
                // Out of descriptors: the connection was lost (the kernel closed it);
                // its credit is given again, and the caller's next wait backs off.
                Take::Lost => {
                    crate::log::report!(
                        "{}: a connection was lost: no descriptor left to receive it (MSG_CTRUNC)",
                        self.local
                    );
                    self.send_credits(ch, 1)?;
                    return Err(io::Error::from_raw_os_error(libc::EMFILE));
                }
                Take::Failed(e) => return Err(e),
            }
        }
    }
}
