//! The worker's datagram socket: what `dgram.createSocket('udp4').bind(port)` gives
//! Node code in a cluster worker, in blocking form ([`Datagram`], the sibling of
//! [`Listener`](super::Listener)).
//!
//! [`Datagram::bind`] works everywhere. In a cluster worker it asks the primary, like a
//! listener does (Node's `cluster._getServer` with a `udp4`/`udp6` address type), and
//! gets back a bound socket:
//!
//! - **shared and round-robin modes**: one socket, bound once by the primary and shared
//!   by every worker (Node's `SharedHandle`: round-robin does not apply to datagrams, as
//!   there is no connection to hand out). Every worker's threads block in `recvfrom(2)`
//!   on it; the kernel gives each datagram to one of them.
//! - **reuse-port mode** (UDP only; a Unix datagram path is one socket, shared): one
//!   `SO_REUSEPORT` socket per worker, bound by the primary; the kernel spreads
//!   datagrams over the sockets by a hash of the sender's address and port, so one
//!   client socket always reaches the same worker.
//! - **workers that run as another user** ([`Builder::user`](crate::Builder::user)),
//!   every mode: UDP only, one `SO_REUSEPORT` socket per worker for that worker's life,
//!   its filter locked, so that nothing one worker does to its socket reaches another
//!   (see the primary's `datagram.rs`).
//!
//! The primary keeps its copy of every socket, so datagrams that arrive while a worker
//! is being replaced (a crash, a reload) wait in the socket's receive queue for the
//! next worker instead of being dropped; only datagrams a dying worker had already
//! taken out of the queue are lost (with untrusted workers, also those still queued on
//! its own socket, which goes with it). Port 0 is bound once per key, so every worker
//! serves the same port; a bind error comes back as the errno, named with the address,
//! as for a listener.
//!
//! Outside a cluster (or with [`ListenOptions::exclusive`]) it binds by itself.
//!
//! # Closing
//!
//! [`Datagram::close`] (called by the worker's runtime when the worker disconnects)
//! makes every [`recv_from`](Datagram::recv_from) return `Ok(None)`, including calls
//! blocked right now: the socket may be shared with other workers, so it is not shut
//! down; each receiving thread is registered while inside `recvfrom(2)` and signalled
//! out of it, exactly as a listener's accepting threads are (see [`gate`](super::gate)).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::gate::Gate;
use super::link::{self, WorkerLink};
use super::{Closable, Origin};
use crate::addr::{ListenAddr, ToListenAddr};
use crate::bind::{self, BindOptions};
use crate::options::ListenOptions;
use crate::sys::{poll, signal};

/// A bound datagram socket (UDP over IPv4 or IPv6, or Unix datagram) whose threads may
/// all block in [`recv_from`](Datagram::recv_from) at once; clones share it.
///
/// ```no_run
/// let socket = cluster::Datagram::bind("127.0.0.1:5353")?;
/// let mut buf = [0u8; 1500];
/// while let Some((n, peer)) = socket.recv_from(&mut buf)? {
///     socket.send_to(&buf[..n], &peer)?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Datagram {
    shared: Arc<DatagramEndpoint>,
}

/// The std socket inside a [`Datagram`], for anything the wrapper does not offer
/// (multicast, `connect`, socket options): [`Datagram::socket`].
#[derive(Debug)]
pub enum DatagramSocket {
    /// A UDP socket, IPv4 or IPv6.
    Udp(UdpSocket),
    /// A Unix datagram socket.
    Unix(UnixDatagram),
}

/// Who sent a datagram, to answer with [`Datagram::send_to`].
#[derive(Debug, Clone)]
pub enum DatagramPeer {
    /// A UDP sender.
    Udp(SocketAddr),
    /// A Unix datagram sender (unnamed, unless it bound a path or an abstract name:
    /// an unnamed sender cannot be answered).
    Unix(std::os::unix::net::SocketAddr),
}

/// What every clone of a datagram socket shares.
#[derive(Debug)]
pub(crate) struct DatagramEndpoint {
    local: ListenAddr,
    socket: DatagramSocket,
    gate: Gate,
    origin: Origin,
    received: AtomicU64,
}

impl Datagram {
    /// Binds a datagram socket on `addr` (`HOST:PORT` is UDP, `unix:PATH` a Unix
    /// datagram socket, `fd:N` / `systemd` an adopted datagram socket) with the default
    /// [`ListenOptions`].
    ///
    /// In a cluster worker the primary provides the socket (see the module docs);
    /// elsewhere this binds like `std::net::UdpSocket::bind`, with `SO_REUSEADDR`, and
    /// for Unix paths removes a stale socket file first (and the file it created when
    /// the socket closes).
    ///
    /// # Errors
    ///
    /// As for [`Listener::bind`](crate::Listener::bind): an `io::Error` of the OS
    /// error's kind whose message names the address.
    pub fn bind<A: ToListenAddr>(addr: A) -> io::Result<Datagram> {
        Datagram::bind_with(addr, &ListenOptions::new())
    }

    /// Like [`bind`](Datagram::bind), with [`ListenOptions`]; only
    /// [`exclusive`](ListenOptions::exclusive) applies to a datagram socket (the others
    /// are about listening and connections, and are ignored here; the primary does not
    /// compare them with an allowlist either, see
    /// [`Builder::listen_only_datagrams`](crate::Builder::listen_only_datagrams)).
    ///
    /// # Errors
    ///
    /// As for [`bind`](Datagram::bind).
    pub fn bind_with<A: ToListenAddr>(addr: A, options: &ListenOptions) -> io::Result<Datagram> {
        let addr = addr.to_listen_addr()?;
        signal::install_interrupt_handler()?;
        match link::registered() {
            Some(worker) if !options.exclusive => Datagram::granted(worker, &addr, options),
            Some(worker) => {
                let d = Datagram::bind_standalone(&addr)?;
                worker.track(Arc::downgrade(&d.shared) as _);
                Ok(d)
            }
            None => Datagram::bind_standalone(&addr),
        }
    }

    fn bind_standalone(addr: &ListenAddr) -> io::Result<Datagram> {
        let mut bound = bind::bind_datagram(addr, BindOptions::default())?;
        let unlink = bound.socket_file.take();
        Datagram::new(bound.local, bound.fd, Origin::Standalone { unlink })
    }

    /// A datagram socket the primary grants this worker (Node's `queryServer` round
    /// trip), announced to it; closed at once if the worker is disconnecting already.
    fn granted(
        worker: &Arc<dyn WorkerLink>,
        addr: &ListenAddr,
        options: &ListenOptions,
    ) -> io::Result<Datagram> {
        let g = worker.ask_datagram(addr, options)?;
        let origin = Origin::Worker {
            handle: g.handle,
            link: worker.clone(),
        };
        let d = match Datagram::new(g.local, g.fd, origin) {
            Ok(d) => d,
            Err(e) => {
                worker.listener_closed(g.handle);
                return Err(e);
            }
        };
        if worker.announce(g.handle, Arc::downgrade(&d.shared) as _) {
            d.close();
        }
        Ok(d)
    }

    fn new(local: ListenAddr, fd: OwnedFd, origin: Origin) -> io::Result<Datagram> {
        // The socket says what it is (an adopted `fd:N` does not show it).
        let socket = match crate::sys::socket::local_addr(fd.as_fd())?.family() {
            libc::AF_UNIX => DatagramSocket::Unix(UnixDatagram::from(fd)),
            _ => DatagramSocket::Udp(UdpSocket::from(fd)),
        };
        Ok(Datagram {
            shared: Arc::new(DatagramEndpoint {
                local,
                socket,
                gate: Gate::default(),
                origin,
                received: AtomicU64::new(0),
            }),
        })
    }

    /// The address the socket is bound to, with port 0 resolved.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.shared.local
    }

    /// The std socket, for what this type does not wrap. Receiving on it directly works
    /// too, but such a call is not interrupted by [`close`](Datagram::close). In shared
    /// and round-robin modes trusted workers hold the same socket: an option set on it
    /// (a timeout, `O_NONBLOCK`) is set for all of them. Workers that run as another
    /// user each hold their own, whose filter is locked (attaching one is `EPERM`).
    pub fn socket(&self) -> &DatagramSocket {
        &self.shared.socket
    }

    /// Waits for the next datagram and copies it into `buf` (a longer one is cut to
    /// `buf`'s length, as `recvfrom(2)` does). `Ok(None)` once the socket is closed (by
    /// [`close`](Datagram::close), or by the primary's disconnect), so a receive loop
    /// ends by itself.
    ///
    /// It waits on a non-blocking socket too: should anyone set `O_NONBLOCK` on it (on a
    /// shared socket, another worker), `EAGAIN` is followed by a `poll(2)` for input and
    /// another try, as [`Listener::accept`](crate::Listener::accept) does, instead of a
    /// `WouldBlock` error that would end the worker's receive loop.
    ///
    /// # Errors
    ///
    /// The error of `recvfrom(2)` (a timeout set on [`socket`](Datagram::socket) is
    /// `WouldBlock`).
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<Option<(usize, DatagramPeer)>> {
        let s = &*self.shared;
        loop {
            let Some(ticket) = s.gate.enter() else {
                return Ok(None);
            };
            // std's `recv_from` does not retry `EINTR`: `close`'s signal gets us out.
            let got = match &s.socket {
                DatagramSocket::Udp(u) => u.recv_from(buf).map(|(n, a)| (n, DatagramPeer::Udp(a))),
                DatagramSocket::Unix(u) => {
                    u.recv_from(buf).map(|(n, a)| (n, DatagramPeer::Unix(a)))
                }
            };
            let got = match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match wait_for(s, true) {
                    Ok(true) => continue, // ready, or interrupted: look again
                    Ok(false) => Err(e),  // a receive timeout ran out
                    Err(e) => Err(e),
                },
                other => other,
            };
            drop(ticket);
            match got {
                Ok(got) => {
                    s.received.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(got));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `buf` to `peer` as one datagram (`sendto(2)`); how many bytes went. On a
    /// non-blocking socket whose send buffer is full it waits for room, as
    /// [`recv_from`](Datagram::recv_from) waits for input.
    ///
    /// # Errors
    ///
    /// The error of `sendto(2)` (a send timeout set on the socket is `WouldBlock`);
    /// `InvalidInput` for a peer of the other family, or an
    /// unnamed Unix sender (it cannot be answered).
    pub fn send_to(&self, buf: &[u8], peer: &DatagramPeer) -> io::Result<usize> {
        loop {
            match self.send_once(buf, peer) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_for(&self.shared, false)? {
                        return Err(e); // a send timeout ran out
                    }
                }
                other => return other,
            }
        }
    }

    /// One `sendto(2)`.
    fn send_once(&self, buf: &[u8], peer: &DatagramPeer) -> io::Result<usize> {
        match (&self.shared.socket, peer) {
            (DatagramSocket::Udp(u), DatagramPeer::Udp(a)) => u.send_to(buf, a),
            (DatagramSocket::Unix(u), DatagramPeer::Unix(a)) if !a.is_unnamed() => {
                u.send_to_addr(buf, a)
            }
            (DatagramSocket::Unix(_), DatagramPeer::Unix(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the sender has no address to answer (an unnamed Unix socket)",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the peer is not of this socket's family",
            )),
        }
    }

    /// Stops receiving: every current and future [`recv_from`](Datagram::recv_from)
    /// returns `Ok(None)`. In a worker, the primary is told.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`close`](Datagram::close) was called (or the worker is disconnecting).
    pub fn is_closed(&self) -> bool {
        self.shared.gate.is_closed()
    }

    /// Datagrams [`recv_from`](Datagram::recv_from) has returned so far.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Not part of the API: does to this socket what a hostile worker could and `std`
    /// cannot (the crate's tests use no `unsafe`): `drop-all` attaches a socket filter
    /// that drops every datagram (`SO_ATTACH_FILTER`), `steer` a reuse-port group
    /// program that sends every datagram to the group's first socket
    /// (`SO_ATTACH_REUSEPORT_CBPF`), `rcvbuf-0` sets `SO_RCVBUF` to 0, `shutdown-read`
    /// calls `shutdown(SHUT_RD)`.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn tamper_for_tests(&self, how: &str) -> io::Result<()> {
        use crate::sys::socket;
        let fd = self.as_fd();
        match how {
            "drop-all" => socket::attach_cbpf(fd, libc::SO_ATTACH_FILTER, 0),
            "steer" => socket::attach_reuseport_cbpf(fd, 0),
            "rcvbuf-0" => socket::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 0),
            "shutdown-read" => socket::shutdown(fd, socket::Shutdown::Read),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no tampering {other:?}"),
            )),
        }
    }
}

/// After `EAGAIN`: on a non-blocking socket (someone set `O_NONBLOCK`), waits until it
/// is readable (`read`) or writable, and says `true`: look again. On a blocking socket
/// `EAGAIN` is a timeout set on it (`SO_RCVTIMEO`/`SO_SNDTIMEO`): `false`, the caller
/// returns it. The blocking path never gets here, so it costs nothing there.
///
/// The wait is `poll(2)`, made inside the caller's gate ticket for a receive, so
/// `close`'s signal interrupts it (`EINTR`, also `true`: the caller looks at the gate
/// again). Every thread waiting in `poll` wakes for a datagram, one wins it, the
/// others come back here (the herd a blocking `recvfrom` avoids; only with
/// `O_NONBLOCK` set).
fn wait_for(s: &DatagramEndpoint, read: bool) -> io::Result<bool> {
    let fd = match &s.socket {
        DatagramSocket::Udp(u) => u.as_fd(),
        DatagramSocket::Unix(u) => u.as_fd(),
    };
    if !crate::sys::fd::is_nonblocking(fd)? {
        return Ok(false);
    }
    let mut fds = [poll::PollFd::with(fd, read, !read)];
    match poll::poll(&mut fds, None) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(e) => Err(e),
    }
}

impl AsFd for Datagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.shared.socket {
            DatagramSocket::Udp(u) => u.as_fd(),
            DatagramSocket::Unix(u) => u.as_fd(),
        }
    }
}

impl Closable for DatagramEndpoint {
    /// Closes the socket for receiving (idempotent); see [`Datagram::close`].
    fn close(&self) {
        if !self.gate.close() {
            return;
        }
        self.gate.interrupt_all(&self.local);
        if let Origin::Worker { handle, link } = &self.origin {
            link.listener_closed(*handle);
        }
    }
}

impl Drop for DatagramEndpoint {
    fn drop(&mut self) {
        Closable::close(self);
        if let Origin::Standalone { unlink } = &mut self.origin {
            if let Some(file) = unlink.take() {
                file.remove();
            }
        }
    }
}
