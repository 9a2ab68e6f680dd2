//! Creating listening sockets (Node's `net._createServerHandle`): the primary does it on
//! a key's first listen request, a process outside a cluster does it for itself.
//!
//! - TCP: `SO_REUSEADDR`, so a restarted server rebinds while old connections sit in
//!   `TIME_WAIT`; `SO_REUSEPORT` too in reuse-port mode. Port 0 is resolved with
//!   `getsockname` right after `bind`, and the resolved address is what every worker
//!   is told.
//! - Unix: a socket file left behind by a dead server (connecting to it is refused) is
//!   removed first; a live one (its backlog full included), or a file that is not a
//!   socket, is `EADDRINUSE` and is never deleted. The file `bind` creates is
//!   remembered by directory handle and inode, so removing it later cannot reach
//!   anything else (see `socket_file.rs`). The path length was checked when the
//!   address was parsed, and is checked again by the kernel-format conversion.
//! - An adopted descriptor (`fd:N`) is duplicated (the original stays where it was) and
//!   must already be a listening stream socket.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::connection::StreamKind;
use crate::error::ListenError;
use crate::options::ListenOptions;
use crate::sock_type::SockType;
use crate::socket_file::{SocketDir, SocketFile};
use crate::sys::sockaddr::{Domain, SockAddr};
use crate::sys::socket;

/// A bound socket and what a worker needs to know about it.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The socket (bound; listening only for adopted descriptors).
    pub(crate) fd: OwnedFd,
    /// The address it is bound to, port 0 resolved.
    pub(crate) local: ListenAddr,
    /// What `accept` on it produces.
    pub(crate) kind: StreamKind,
    /// The Unix socket file this call created (to remove when done).
    pub(crate) socket_file: Option<SocketFile>,
    /// Whether the socket was adopted (`fd:N`): its open file is shared with the
    /// original descriptor's holder, flags included.
    pub(crate) adopted: bool,
}

/// How to create the socket.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BindOptions {
    /// Set `SO_REUSEPORT` (TCP only).
    pub(crate) reuse_port: bool,
    /// Create the socket non-blocking (the primary's round-robin listener).
    pub(crate) nonblocking: bool,
    /// Unix paths: bind through the directory held open, not by path (see
    /// `SocketDir::address`); the primary sets it when workers are untrusted.
    pub(crate) pin_directory: bool,
}

/// Creates and binds (does not listen on) a socket for `addr`, and sets `options` on
/// it ([`configure`]). On failure, a socket file it created is removed again.
///
/// # Errors
///
/// An `io::Error` of the OS error's kind whose message names `addr` (a
/// [`ListenError`] inside).
pub(crate) fn bind(
    addr: &ListenAddr,
    opts: BindOptions,
    options: &ListenOptions,
) -> io::Result<Bound> {
    let mut bound =
        bind_inner(addr, opts, SockType::Stream).map_err(|e| ListenError::io(addr, e))?;
    if let Err(e) = configure(bound.fd.as_fd(), bound.kind, options) {
        if let Some(f) = bound.socket_file.take() {
            f.remove();
        }
        return Err(ListenError::io(addr, e));
    }
    Ok(bound)
}

/// A new socket of `sock`'s type (streams non-blocking when asked).
fn new_socket(domain: Domain, sock: SockType, opts: BindOptions) -> io::Result<OwnedFd> {
    match sock {
        SockType::Stream => socket::stream_socket(domain, opts.nonblocking),
        SockType::Datagram => socket::datagram_socket(domain),
    }
}

fn bind_inner(addr: &ListenAddr, opts: BindOptions, sock: SockType) -> io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(sa) => {
            let domain = if sa.is_ipv4() {
                Domain::Inet4
            } else {
                Domain::Inet6
            };
            let fd = new_socket(domain, sock, opts)?;
            // Streams only: see `bind_datagram` for why UDP never gets it.
            if sock == SockType::Stream {
                socket::set_reuse_address(fd.as_fd())?;
            }
            if opts.reuse_port {
                socket::set_reuse_port(fd.as_fd())?;
            }
            socket::bind(fd.as_fd(), &SockAddr::from_inet(sa))?;
            let local = socket::local_addr(fd.as_fd())?
                .inet()
                .ok_or_else(|| io::Error::other("getsockname returned no IP address"))?;
            Ok(Bound {
                fd,
                local: ListenAddr::Tcp(local),
                kind: StreamKind::Tcp,
                socket_file: None,
                adopted: false,
            })
        }
        ListenAddr::Unix(path) => {
            let dir = SocketDir::open(path)?;
            let sockaddr = dir.address(&SockAddr::from_unix_path(path)?, opts.pin_directory);
            dir.remove_stale(&sockaddr)?;
            let fd = new_socket(Domain::Unix, sock, opts)?;
            socket::bind(fd.as_fd(), &sockaddr)?;
            Ok(Bound {
                fd,
                local: addr.clone(),
                kind: StreamKind::Unix,
                socket_file: Some(dir.created()?),
                adopted: false,
            })
        }
        ListenAddr::Systemd(name) => {
            let n = crate::activation::descriptor(name.as_deref())
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
            adopt_as(sock, n, addr, opts)
        }
        ListenAddr::Fd(n) => adopt_as(sock, *n, addr, opts),
    }
}

/// Adopts descriptor `n` as a listener or as a datagram socket.
fn adopt_as(sock: SockType, n: i32, addr: &ListenAddr, opts: BindOptions) -> io::Result<Bound> {
    match sock {
        SockType::Stream => adopt(n, addr, opts),
        SockType::Datagram => adopt_datagram(n, addr),
    }
}

/// Creates and binds a datagram socket for `addr` (Node's `dgram` `bind`): UDP for an
/// IP address (`SO_REUSEPORT` when asked; never `SO_REUSEADDR`, which on a UDP socket
/// lets another socket with it bind the same port and take a share of the datagrams,
/// and which UDP does not need: there is no `TIME_WAIT`), a Unix datagram socket
/// for a path (a stale socket file removed first, as for streams), or an adopted
/// descriptor that must be a datagram socket. `kind` in the result says the family
/// (`Tcp` for IP). On failure, a socket file it created is removed again.
///
/// # Errors
///
/// An `io::Error` of the OS error's kind whose message names `addr` (a
/// [`ListenError`] inside).
pub(crate) fn bind_datagram(addr: &ListenAddr, opts: BindOptions) -> io::Result<Bound> {
    bind_inner(addr, opts, SockType::Datagram).map_err(|e| ListenError::io(addr, e))
}

/// An adopted datagram socket (`fd:N`, or systemd's `ListenDatagram=`): duplicated,
/// checked to be a bound datagram socket.
fn adopt_datagram(n: i32, addr: &ListenAddr) -> io::Result<Bound> {
    let fd = crate::sys::fd::dup_number(n)?;
    if socket::int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {n} is not a datagram socket"),
        ));
    }
    let sockname = socket::local_addr(fd.as_fd())?;
    let (local, kind) = named_local(&sockname).unwrap_or((addr.clone(), StreamKind::Unix));
    Ok(Bound {
        fd,
        local,
        kind,
        socket_file: None,
        adopted: true,
    })
}

/// An adopted socket's address as a listen address, and what it carries, when its
/// name says: an IP address, or a Unix path (not an abstract or unnamed Unix socket).
fn named_local(sockname: &SockAddr) -> Option<(ListenAddr, StreamKind)> {
    if let Some(a) = sockname.inet() {
        Some((ListenAddr::Tcp(a), StreamKind::Tcp))
    } else {
        sockname
            .unix_path()
            .map(|p| (ListenAddr::Unix(p), StreamKind::Unix))
    }
}

/// An adopted descriptor (`fd:N`, or one systemd passed): duplicated (the original stays
/// where it was), checked to be a listening stream socket, its address and kind read
/// from the socket itself.
fn adopt(n: i32, addr: &ListenAddr, opts: BindOptions) -> io::Result<Bound> {
    let fd = crate::sys::fd::dup_number(n)?;
    if !socket::is_listening_stream(fd.as_fd())? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {n} is not a listening stream socket"),
        ));
    }
    if opts.nonblocking {
        crate::sys::fd::set_nonblocking(fd.as_fd(), true)?;
    }
    let sockname = socket::local_addr(fd.as_fd())?;
    let (local, kind) = match named_local(&sockname) {
        Some(named) => named,
        // Abstract or unnamed: keep `fd:N`.
        None if sockname.family() == libc::AF_UNIX => (addr.clone(), StreamKind::Unix),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {n} is not a TCP or Unix socket"),
            ))
        }
    };
    Ok(Bound {
        fd,
        local,
        kind,
        socket_file: None,
        adopted: true,
    })
}

/// Sets `options` on a bound socket before it listens: `TCP_NODELAY` and
/// `TCP_DEFER_ACCEPT` on TCP sockets (accepted connections inherit the first); nothing
/// on Unix sockets, whose connections inherit nothing.
///
/// Not the timeouts: the listener sets them on each connection it returns. On a
/// listening socket `SO_RCVTIMEO` would bound `accept(2)` too, so every blocked
/// accepter would wake with `EAGAIN` once per timeout, idle or not.
fn configure(
    fd: std::os::fd::BorrowedFd<'_>,
    kind: StreamKind,
    options: &ListenOptions,
) -> io::Result<()> {
    if kind != StreamKind::Tcp {
        return Ok(());
    }
    if options.nodelay {
        socket::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if let Some(d) = options.defer_accept {
        let secs = d.as_secs().clamp(1, i32::MAX as u64) as i32;
        socket::set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs)?;
    }
    Ok(())
}

/// What `accept` on the socket `fd` produces, from its family (`getsockname(2)`):
/// `AF_UNIX` gives Unix streams, anything else TCP. Unlike [`kind_of`], right for an
/// adopted abstract or unnamed Unix socket too.
pub(crate) fn kind_of_socket(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<StreamKind> {
    Ok(match socket::local_addr(fd)?.family() {
        libc::AF_UNIX => StreamKind::Unix,
        _ => StreamKind::Tcp,
    })
}

/// The stream kind a bound address produces, as far as the address shows: `fd:N` is
/// taken for TCP (a hand-off listener's guess; its connections then say what they are).
pub(crate) fn kind_of(addr: &ListenAddr) -> StreamKind {
    match addr {
        ListenAddr::Unix(_) => StreamKind::Unix,
        _ => StreamKind::Tcp,
    }
}
