//! The worker's listener: what `server.listen()` gives Node code, in blocking form.
//!
//! [`Listener::bind`] works everywhere. In a cluster worker it asks the primary for the
//! address (Node's `cluster._getServer` → `queryServer`) and gets back, depending on the
//! cluster's [`Mode`](crate::Mode), one of two sources of connections:
//!
//! - **a socket** (shared and reuse-port modes): the worker calls `listen(2)` on it and
//!   its threads block in `accept(2)`. Linux wakes one blocked accepter per connection,
//!   first come first served, across every process that blocks on the socket.
//! - **a hand-off channel** (round-robin mode): the primary accepts, and sends each
//!   connection's descriptor over a `SOCK_SEQPACKET` channel. A thread that wants a
//!   connection first sends the primary one credit (`Ready`), then waits for the
//!   channel to be readable and receives, so the primary only ever hands a connection
//!   to a thread that is waiting for one.
//!
//! Outside a cluster it binds and listens by itself, so the same server code runs, and
//! can be tested, without forking.
//!
//! # Closing, and waking blocked threads
//!
//! [`Listener::close`] (called by the worker's runtime when the primary asks the worker
//! to disconnect) makes every `accept` return `Ok(None)`, including calls blocked right
//! now:
//!
//! - a hand-off channel is `shutdown(2)`: blocked `recvmsg` calls return the
//!   connections already queued, then EOF; the primary sees the hang-up and takes back
//!   whatever it had sent and nobody received;
//! - a socket that other workers share (shared mode) cannot be shut down, and closing
//!   a descriptor does not wake a thread blocked on it. So each
//!   accepting thread registers its thread id while it is inside `accept(2)`, and
//!   `close` sends each registered thread [`INTERRUPT_SIGNAL`](crate::sys::signal),
//!   whose handler is installed without `SA_RESTART`, until none is left inside. A
//!   thread that registered but had not yet entered the system call when the signal
//!   came is caught by the next round; a thread that was signalled lets the pending
//!   signal be delivered before it returns to application code, so the signal can never
//!   interrupt the application's own next blocking call.
//! - a socket nobody else holds (outside a cluster) is drained: made non-blocking, its
//!   queued connections are still handed out by `accept`, then it is shut down, so they
//!   are served instead of reset when the process exits. In a cluster, sockets are kept
//!   by the primary too (shared, reuse-port), which decides when they close.
//!
//! # Where each part lives
//!
//! - This file: [`Listener`] and [`Incoming`], binding (standalone, or granted by the
//!   primary), `accept` on a socket, and closing.
//! - [`gate`]: the threads inside `accept(2)` and how `close` interrupts them.
//! - [`handoff`]: the round-robin receive path (credit, wait, receive).
//! - [`std_listener`]: the socket handed to a library as std's listener type.
//! - [`event_loop`]: round-robin for event loops (credits granted, non-blocking take).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::accept::{classify, peer_of, AcceptFailure};
use crate::addr::{ListenAddr, ToListenAddr};
use crate::backoff::Doubling;
use crate::bind::{self, BindOptions};
use crate::connection::{Connection, Stream, StreamKind};
use crate::error::ListenError;
use crate::ipc::channel::Channel;
use crate::options::ListenOptions;
use crate::socket_file::SocketFile;
use crate::sys::sockaddr::SockAddr;
use crate::sys::{poll, signal, socket};

pub(crate) mod datagram;
mod event_loop;
mod gate;
mod handoff;
pub(crate) mod link;
mod std_listener;

pub use event_loop::{HandoffReadiness, MAX_GRANTED};
pub use std_listener::StdListener;

use gate::Gate;
use link::WorkerLink;

/// A listening endpoint that yields [`Connection`]s; safe to share between threads,
/// which may all block in [`accept`](Listener::accept) at once.
///
/// Clones share the same endpoint; it closes when [`close`](Listener::close) is called
/// or the last clone is dropped.
///
/// ```no_run
/// use std::io::Write;
///
/// let listener = cluster::Listener::bind("127.0.0.1:8080")?;
/// while let Some(mut conn) = listener.accept()? {
///     conn.write_all(b"hello\n")?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Listener {
    shared: Arc<Endpoint>,
}

/// What every clone of a listener shares.
#[derive(Debug)]
pub(crate) struct Endpoint {
    local: ListenAddr,
    kind: StreamKind,
    source: Source,
    gate: Gate,
    origin: Origin,
    accepted: AtomicU64,
    /// An exclusive socket was drained and shut down after close.
    drained: AtomicBool,
    /// `ListenOptions`' read and write timeouts, set on each connection returned (see
    /// `bind::configure` for why not on the listening socket).
    timeouts: Timeouts,
    /// Hand-off only: the epoll instances threads wait through (see `accept_handoff`),
    /// kept between calls, one per thread waiting at once.
    waits: Mutex<Vec<poll::ExclusiveWait>>,
    /// Hand-off only: credits granted with `Listener::grant` and not spent yet.
    granted: std::sync::atomic::AtomicU32,
    /// Hand-off only: granted credits not sent yet (the channel was full).
    unsent: std::sync::atomic::AtomicU32,
}

/// Where connections come from.
#[derive(Debug)]
enum Source {
    /// A listening socket: `accept(2)`. `exclusive` when no other process holds it
    /// (outside a cluster): then closing drains its queue first.
    Socket { fd: OwnedFd, exclusive: bool },
    /// A round-robin hand-off channel: credit, then `recvmsg`.
    Handoff(Channel),
}

/// What the worker runtime closes when the worker disconnects: a listener's or a
/// datagram socket's shared state.
pub(crate) trait Closable: Send + Sync {
    /// Stops accepting or receiving, waking every thread blocked on it; idempotent.
    fn close(&self);
}

/// Who made the listener, and so who must hear when it closes.
enum Origin {
    /// Bound by this process; `unlink` is the Unix socket file it created.
    Standalone { unlink: Option<SocketFile> },
    /// Granted by the primary as handle `handle`.
    Worker {
        handle: u32,
        /// The runtime to report to.
        link: Arc<dyn WorkerLink>,
    },
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Standalone { unlink } => f
                .debug_struct("Standalone")
                .field("unlink", unlink)
                .finish(),
            Origin::Worker { handle, .. } => f
                .debug_struct("Worker")
                .field("handle", handle)
                .finish_non_exhaustive(),
        }
    }
}

impl Listener {
    /// Listens on `addr` with the default [`ListenOptions`] (backlog 511).
    ///
    /// In a cluster worker the primary provides the listener (see the module docs):
    /// the call blocks, for a round trip to the primary (at most
    /// [`LISTEN_REPLY_TIMEOUT`](crate::LISTEN_REPLY_TIMEOUT)), so an async server
    /// calls it before entering its runtime, or from a blocking task (tokio's
    /// `spawn_blocking`). Elsewhere this binds and listens like
    /// `std::net::TcpListener::bind`, with
    /// `SO_REUSEADDR`, and for Unix paths removes a stale socket file first (and the
    /// file it created when the listener closes).
    ///
    /// # Errors
    ///
    /// An `io::Error` of the OS error's kind whose message names the address, e.g.
    /// "cannot listen on 127.0.0.1:8080: Address already in use (os error 98)"; the
    /// [`ListenError`] inside has the address and errno. In a
    /// cluster worker also: `EMFILE` when the worker's descriptor budget in the primary
    /// is spent, or when the worker itself is at its descriptor limit and cannot
    /// receive the listener; `TimedOut` when the primary gave no answer within
    /// [`LISTEN_REPLY_TIMEOUT`](crate::LISTEN_REPLY_TIMEOUT).
    pub fn bind<A: ToListenAddr>(addr: A) -> io::Result<Listener> {
        Listener::bind_with(addr, &ListenOptions::new())
    }

    /// Like [`bind`](Listener::bind), with [`ListenOptions`]: the backlog, and options
    /// for the accepted connections, set once on the listening socket. In a cluster,
    /// the options of the first worker that asks for an address set up its listener.
    ///
    /// # Errors
    ///
    /// As for [`bind`](Listener::bind).
    pub fn bind_with<A: ToListenAddr>(addr: A, options: &ListenOptions) -> io::Result<Listener> {
        let addr = addr.to_listen_addr()?;
        signal::install_interrupt_handler()?;
        match link::registered() {
            Some(worker) if !options.exclusive => worker.listen(&addr, options),
            // Node's `exclusive`: the worker binds by itself; its runtime still closes
            // the listener when the worker disconnects.
            Some(worker) => {
                let l = Listener::bind_standalone(&addr, options)?;
                worker.track(Arc::downgrade(&l.shared) as _);
                Ok(l)
            }
            None => Listener::bind_standalone(&addr, options),
        }
    }

    fn bind_standalone(addr: &ListenAddr, options: &ListenOptions) -> io::Result<Listener> {
        let mut bound = bind::bind(addr, BindOptions::default(), options)?;
        let unlink = bound.socket_file.take();
        let listener = Listener::new(
            bound.local.clone(),
            Source::Socket {
                fd: bound.fd,
                exclusive: true,
            },
            Origin::Standalone { unlink },
            options,
        );
        if let Source::Socket { fd, .. } = &listener.shared.source {
            socket::listen(fd.as_fd(), options.backlog).map_err(|e| ListenError::io(addr, e))?;
        }
        Ok(listener)
    }

    /// A listener on a socket granted (and configured) by the primary: listens on it
    /// (a no-op when another worker already did, as the socket is shared).
    pub(crate) fn from_granted_socket(
        local: ListenAddr,
        fd: OwnedFd,
        options: &ListenOptions,
        handle: u32,
        link: Arc<dyn WorkerLink>,
    ) -> io::Result<Listener> {
        socket::listen(fd.as_fd(), options.backlog).map_err(|e| ListenError::io(&local, e))?;
        Ok(Listener::new(
            local,
            // Shared with other workers, or kept by the primary (reuse-port): never
            // drained or shut down by this worker.
            Source::Socket {
                fd,
                exclusive: false,
            },
            Origin::Worker { handle, link },
            options,
        ))
    }

    /// A listener on a hand-off channel granted by the primary.
    pub(crate) fn from_granted_handoff(
        local: ListenAddr,
        fd: OwnedFd,
        options: &ListenOptions,
        handle: u32,
        link: Arc<dyn WorkerLink>,
    ) -> Listener {
        Listener::new(
            local,
            Source::Handoff(Channel::from_fd(fd)),
            Origin::Worker { handle, link },
            options,
        )
    }

    fn new(local: ListenAddr, source: Source, origin: Origin, options: &ListenOptions) -> Listener {
        // A socket says what it is (an adopted `fd:N` may be an abstract or unnamed
        // Unix socket, which its address does not show); a hand-off channel's
        // connections say it one by one (their peer address, see `accept_handoff`).
        let kind = match &source {
            Source::Socket { fd, .. } => {
                bind::kind_of_socket(fd.as_fd()).unwrap_or_else(|_| bind::kind_of(&local))
            }
            Source::Handoff(_) => bind::kind_of(&local),
        };
        Listener {
            shared: Arc::new(Endpoint {
                local,
                kind,
                source,
                gate: Gate::default(),
                origin,
                accepted: AtomicU64::new(0),
                drained: AtomicBool::new(false),
                timeouts: Timeouts {
                    read: options.read_timeout,
                    write: options.write_timeout,
                },
                waits: Mutex::new(Vec::new()),
                granted: std::sync::atomic::AtomicU32::new(0),
                unsent: std::sync::atomic::AtomicU32::new(0),
            }),
        }
    }

    /// The address this listener is bound to, with port 0 resolved.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.shared.local
    }

    /// Waits for the next connection. `Ok(None)` once the listener is closed (by
    /// [`close`](Listener::close), or by the primary's disconnect), so a worker's accept
    /// loop ends by itself:
    ///
    /// ```no_run
    /// # let listener = cluster::Listener::bind("127.0.0.1:0")?;
    /// while let Some(conn) = listener.accept()? {
    ///     // serve conn
    /// #   drop(conn);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Transient failures are handled here rather than returned: connections aborted
    /// before they were accepted are skipped, and when the process is out of
    /// descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) the thread backs
    /// off (10 ms doubling to 500 ms) instead of spinning, and retries.
    ///
    /// # Errors
    ///
    /// Errors that retrying cannot fix (`EBADF`, `EINVAL`, a broken hand-off channel).
    pub fn accept(&self) -> io::Result<Option<Connection>> {
        let s = &*self.shared;
        let conn = match &s.source {
            Source::Socket { fd, exclusive } => s.accept_socket(fd.as_fd(), *exclusive)?,
            Source::Handoff(ch) => s.accept_handoff(ch)?,
        };
        conn.map(|c| self.counted(c)).transpose()
    }

    /// A connection this listener returns: counted (here, and in the worker's totals
    /// and open count), with `ListenOptions`' timeouts set.
    fn counted(&self, mut conn: Connection) -> io::Result<Connection> {
        let s = &*self.shared;
        s.accepted.fetch_add(1, Ordering::Relaxed);
        if let Origin::Worker { link, .. } = &s.origin {
            conn = conn.counted(link.accepted());
        }
        s.timeouts.set_on(&conn)?;
        Ok(conn)
    }

    /// An iterator over [`accept`](Listener::accept)'s connections, ending when the
    /// listener closes.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// Stops accepting: every current and future [`accept`](Listener::accept) returns
    /// `Ok(None)` (after the connections already handed to this worker). In a worker,
    /// the primary is told, and stops routing connections here.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`close`](Listener::close) was called (or the worker is disconnecting).
    pub fn is_closed(&self) -> bool {
        self.shared.gate.is_closed()
    }

    /// Whether connections come from the primary over a hand-off channel (round-robin
    /// mode) rather than from `accept(2)` on a socket here. A thread pool may want to
    /// know: on a socket, one thread waiting at a time takes the queue without a
    /// wake-up per connection; on a hand-off channel, each waiting thread is a credit
    /// the primary can hand a connection to at once.
    pub fn is_round_robin(&self) -> bool {
        matches!(self.shared.source, Source::Handoff(_))
    }

    /// Connections this listener has returned so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// The shared state, for the worker runtime's list of listeners to close.
    pub(crate) fn shared(&self) -> &Arc<Endpoint> {
        &self.shared
    }
}

impl ListenOptions {
    /// Shorthand for [`Listener::bind_with`]`(addr, &self)`.
    pub fn bind<A: ToListenAddr>(&self, addr: A) -> io::Result<Listener> {
        Listener::bind_with(addr, self)
    }
}

/// Iterator returned by [`Listener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a Listener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<Connection>;

    fn next(&mut self) -> Option<io::Result<Connection>> {
        self.listener.accept().transpose()
    }
}

impl Listener {
    /// Not part of the API: the listening socket, or in round-robin mode the hand-off
    /// channel, for the crate's tests (a rogue worker writes raw records on it). No
    /// public accessor hands the channel out: it is not a listener.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn raw_fd_for_tests(&self) -> BorrowedFd<'_> {
        match &self.shared.source {
            Source::Socket { fd, .. } => fd.as_fd(),
            Source::Handoff(ch) => ch.as_fd(),
        }
    }
}

/// The read and write timeouts of [`ListenOptions`], for each connection returned.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

impl Timeouts {
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO` on `conn`, each only when set (a new socket has
    /// neither).
    fn set_on(self, conn: &Connection) -> io::Result<()> {
        if self.read.is_some() {
            conn.stream().set_read_timeout(self.read)?;
        }
        if self.write.is_some() {
            conn.stream().set_write_timeout(self.write)?;
        }
        Ok(())
    }
}

/// A thread's back-off while out of descriptors or memory
/// ([`Doubling::out_of_resources`]): each wait is cut short by a signal, so a close
/// still wakes the thread.
fn back_off(backoff: &mut Doubling) {
    poll::interruptible_sleep(backoff.take());
}

impl Endpoint {
    fn accept_socket(&self, fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<Option<Connection>> {
        let Some(ticket) = self.gate.enter() else {
            return self.drain_one(fd, exclusive);
        };
        let mut backoff = Doubling::out_of_resources();
        loop {
            match socket::accept(fd) {
                Ok((conn, peer)) => {
                    drop(ticket);
                    return Ok(Some(self.connection(conn, &peer)));
                }
                Err(e) => match classify(&e) {
                    AcceptFailure::Interrupted | AcceptFailure::Skip => {}
                    // A blocking socket's receive timeout ran out (set by whoever
                    // made it: a previous program across an upgrade, a service
                    // manager; this crate sets none on a listening socket): block in
                    // `accept` again, where one waiter is woken per connection.
                    AcceptFailure::NotReady
                        if !crate::sys::fd::is_nonblocking(fd).unwrap_or(true) => {}
                    // Retrying at once would spin at 100 % CPU on a non-blocking
                    // socket: wait until a connection is queued. Still inside the gate
                    // ticket, so `close`'s signal interrupts the wait (EINTR) as it
                    // interrupts `accept`. Every thread waiting in `poll` wakes for a
                    // connection and one wins it; the others come back here.
                    AcceptFailure::NotReady => {
                        let mut fds = [poll::PollFd::new(fd, false)];
                        match poll::poll(&mut fds, None) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    AcceptFailure::Resources => {
                        if backoff.first() {
                            crate::log::report!(
                                "accept on {} failed: {e}; backing off",
                                self.local
                            );
                        }
                        back_off(&mut backoff);
                    }
                    AcceptFailure::Closed => {
                        drop(ticket);
                        self.gate.close();
                        return Ok(None);
                    }
                    AcceptFailure::Fatal => return Err(e),
                },
            }
            if self.gate.is_closed() {
                drop(ticket);
                return self.drain_one(fd, exclusive);
            }
        }
    }

    /// After close: on a socket nobody else accepts on, hand out what is still queued
    /// (the socket was made non-blocking by `close`), then stop it listening, so the
    /// kernel sends new connections elsewhere (reuse-port) or refuses them. Only a
    /// connection that arrives between the last accept and the shutdown is reset.
    fn drain_one(&self, fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<Option<Connection>> {
        if !exclusive {
            return Ok(None);
        }
        loop {
            match socket::accept(fd) {
                Ok((conn, peer)) => return Ok(Some(self.connection(conn, &peer))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(classify(&e), AcceptFailure::Skip) => continue,
                Err(_) => {
                    if !self.drained.swap(true, Ordering::AcqRel) {
                        let _ = socket::shutdown(fd, socket::Shutdown::Read);
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn connection(&self, conn: OwnedFd, peer: &SockAddr) -> Connection {
        let peer = peer_of(self.kind, peer);
        Connection::new(Stream::from_fd(self.kind, conn), peer)
    }
}

impl Closable for Endpoint {
    /// Closes the listener (idempotent); see [`Listener::close`].
    fn close(&self) {
        if self.gate.is_closed() {
            return;
        }
        if let Source::Socket {
            fd,
            exclusive: true,
        } = &self.source
        {
            // Before the gate closes: every accept after it must not block (drain_one).
            let _ = crate::sys::fd::set_nonblocking(fd.as_fd(), true);
        }
        if !self.gate.close() {
            return;
        }
        match &self.source {
            Source::Handoff(ch) => {
                let _ = ch.shutdown();
                event_loop::forget_granted(&self.granted);
            }
            Source::Socket { .. } => self.gate.interrupt_all(&self.local),
        }
        if let Origin::Worker { handle, link } = &self.origin {
            link.listener_closed(*handle);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.close();
        if let Origin::Standalone { unlink } = &mut self.origin {
            if let Some(file) = unlink.take() {
                file.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests;
