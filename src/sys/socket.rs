//! Socket calls: `socket`, `socketpair`, `bind`, `listen`, `accept4`, `connect`,
//! `setsockopt`, `getsockname`, `shutdown`. The addresses they take and give are
//! [`SockAddr`]s (`sockaddr.rs`).
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::sockaddr::{Domain, SockAddr};
use super::{cvt, cvt_r};

/// Corresponds to `socket(2)` with `SOCK_STREAM | SOCK_CLOEXEC`, plus `SOCK_NONBLOCK`
/// when asked.
pub(crate) fn stream_socket(domain: Domain, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(domain.raw(), ty, 0) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Corresponds to `socket(2)` with `SOCK_DGRAM | SOCK_CLOEXEC` (blocking): a UDP or
/// Unix datagram socket to bind and receive on.
pub(crate) fn datagram_socket(domain: Domain) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(domain.raw(), libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Corresponds to `socket(2)` with `AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC`: an unbound
/// datagram socket, for sending to a service manager's notification socket.
pub(crate) fn unix_datagram_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Corresponds to `sendto(2)` with `MSG_NOSIGNAL`, retried on `EINTR`: one datagram.
pub(crate) fn send_to(fd: BorrowedFd<'_>, data: &[u8], addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `data` is valid for `data.len()` bytes and `addr` for `addr.len` bytes.
    cvt_r(|| unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
            addr.as_ptr(),
            addr.len,
        )
    })?;
    Ok(())
}

/// Corresponds to `recv(2)` with `MSG_DONTWAIT`, retried on `EINTR`: what the stream
/// has now, `WouldBlock` when nothing has arrived, whatever the socket's blocking mode.
pub(crate) fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = cvt_r(|| unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })?;
    Ok(n as usize)
}

/// Corresponds to `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`, retried on `EINTR`: as
/// much as the send buffer takes now, `WouldBlock` when it takes nothing; a peer that
/// is gone is `EPIPE`, not `SIGPIPE`.
pub(crate) fn send_now(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes.
    let n = cvt_r(|| unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })?;
    Ok(n as usize)
}

/// Corresponds to `socketpair(2)` with `AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC`.
///
/// `SOCK_SEQPACKET` keeps message boundaries (one `sendmsg` is one `recvmsg`, and the
/// descriptors passed with a message arrive with it) and is connection-oriented (EOF when
/// the peer is gone). Linux-specific for `AF_UNIX`.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded; both fds are new and owned by nobody else.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((a, b))
}

/// Corresponds to `bind(2)`.
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points to `addr.len` valid bytes of a sockaddr.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len) })?;
    Ok(())
}

/// Corresponds to `connect(2)`, retried on `EINTR`.
///
/// On a non-blocking Unix stream socket it never waits: a listener whose backlog is
/// full gives `EAGAIN` (where a blocking `connect` would wait for room, for good if
/// nobody accepts), a path nobody listens on `ECONNREFUSED`.
pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points to `addr.len` valid bytes of a sockaddr.
    cvt_r(|| unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) })?;
    Ok(())
}

/// Corresponds to `listen(2)`.
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen() takes an fd and an int.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Corresponds to `accept4(2)` with `SOCK_CLOEXEC` (Linux): the new connection and the
/// peer's address.
///
/// Blocks when the listener is blocking. `EINTR` is returned to the caller (see the
/// module's EINTR policy): a worker interrupts its accepting threads with a signal when
/// the listener closes.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, SockAddr)> {
    let mut peer = SockAddr::zeroed();
    // SAFETY: `peer.storage` is writable for `peer.len` bytes, and the kernel updates
    // `peer.len` to the address's real length.
    let new = cvt(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            (&mut peer.storage as *mut libc::sockaddr_storage).cast(),
            &mut peer.len,
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 succeeded; the fd is new and owned by nobody else.
    let conn = unsafe { OwnedFd::from_raw_fd(new) };
    Ok((conn, peer))
}

/// Corresponds to `setsockopt(2)` with an `int` value.
pub(crate) fn set_int_option(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: i32,
) -> io::Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call.
    cvt_r(|| unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Corresponds to `getsockopt(2)` for an `int` option.
pub(crate) fn int_option(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes; the kernel updates `len`.
    cvt_r(|| unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// `SO_REUSEADDR` on.
pub(crate) fn set_reuse_address(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

/// `SO_REUSEPORT` on.
pub(crate) fn set_reuse_port(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
}

/// Corresponds to `setsockopt(SO_DETACH_REUSEPORT_BPF)` (Linux 4.19): removes the
/// program that steers connections among the sockets of `fd`'s `SO_REUSEPORT` group.
/// The program belongs to the group, so any socket of it detaches it for all.
///
/// # Errors
///
/// `ENOENT` when no program is attached.
pub(crate) fn detach_reuseport_program(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_DETACH_REUSEPORT_BPF, 0)
}

/// Corresponds to `setsockopt(SO_LOCK_FILTER, 1)` (Linux 3.9): from now on nobody can
/// attach a program to `fd` or detach one from it with `SO_ATTACH_FILTER`/`SO_ATTACH_BPF`
/// (and their detach), nor attach a reuse-port steering program through it with
/// `SO_ATTACH_REUSEPORT_CBPF`/`EBPF`: `EPERM`, also for root. The lock cannot be lifted
/// (`SO_LOCK_FILTER` 0 is `EPERM` too). With no filter attached it costs nothing per
/// packet. `SO_DETACH_REUSEPORT_BPF` still works.
pub(crate) fn lock_filter(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1)
}

/// Test support: attaches a classic BPF program that sends every connection of the
/// group to the socket at index `k` (`SO_ATTACH_REUSEPORT_CBPF`), as a worker holding
/// one socket of the group can.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn attach_reuseport_cbpf(fd: BorrowedFd<'_>, k: u32) -> io::Result<()> {
    attach_cbpf(fd, libc::SO_ATTACH_REUSEPORT_CBPF, k)
}

/// Test support: attaches the one-instruction classic BPF program `return k` with
/// `option` (`SO_ATTACH_FILTER`: a socket filter, 0 drops every packet;
/// `SO_ATTACH_REUSEPORT_CBPF`: a group's steering program), as any holder of the
/// socket can.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) fn attach_cbpf(fd: BorrowedFd<'_>, option: i32, k: u32) -> io::Result<()> {
    // BPF_RET | BPF_K: return k.
    let code = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to one valid instruction, alive for the call; the kernel
    // copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Corresponds to `getsockname(2)`.
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let mut addr = SockAddr::zeroed();
    // SAFETY: `addr.storage` is writable for `addr.len` bytes; the kernel updates len.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
    })?;
    Ok(addr)
}

/// Corresponds to `getpeername(2)`.
pub(crate) fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SockAddr> {
    let mut addr = SockAddr::zeroed();
    // SAFETY: `addr.storage` is writable for `addr.len` bytes; the kernel updates len.
    cvt(unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
    })?;
    Ok(addr)
}

/// The socket's type and whether it listens (`SO_TYPE`, `SO_ACCEPTCONN`): used to check
/// a descriptor before adopting it as a listener.
pub(crate) fn is_listening_stream(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let ty = int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    Ok(ty == libc::SOCK_STREAM && listening != 0)
}

/// Corresponds to `setsockopt(SO_LINGER, {l_onoff: 1, l_linger: 0})`, then `close(2)`:
/// closes a descriptor that came from somebody else without ever waiting in `close`.
///
/// A TCP socket whose `SO_LINGER` is on with a timeout makes the `close` that drops its
/// last reference block until its unsent data is acknowledged or the timeout passes
/// (up to `l_linger` seconds, whether or not the descriptor is non-blocking). A worker
/// can hand the primary such a socket (connected to a peer that never reads, its send
/// buffer full) alongside any record; closing it normally would stall the primary's
/// loop. With `l_linger` 0 the close resets the connection (RST) and returns at once.
///
/// Every descriptor the primary receives and does not keep goes through here. The
/// option is set on the socket, which the sender may still share: it can only make
/// the sender's own later close abortive too. `setsockopt` errors are ignored on
/// purpose: `ENOTSOCK` for a pipe or file (whose close does not linger), and anything
/// else leaves nothing better to do than to close anyway.
pub(crate) fn close_abortive(fd: OwnedFd) {
    let _ = set_linger(fd.as_fd(), Some(0));
    drop(fd);
}

/// Whether `fd` is an `AF_INET` or `AF_INET6` socket (`getsockopt(SO_DOMAIN)`), without
/// touching what it refers to: for anything but a socket the call fails (`ENOTSOCK`)
/// before any file system is asked, so even a FUSE file gets no request.
pub(crate) fn is_inet(fd: BorrowedFd<'_>) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are valid for writes for the duration of the call.
    let r = cvt_r(|| unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    });
    r.is_ok() && matches!(domain, libc::AF_INET | libc::AF_INET6)
}

/// `SO_PASSRIGHTS` (Linux 6.16+, `include/uapi/asm-generic/socket.h`; the `libc`
/// crate does not define it yet). Its number is 83 except on SPARC (`0x5c`) and PA-RISC
/// (`0x4051`, not a Rust target).
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PASSRIGHTS: libc::c_int = 83;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PASSRIGHTS: libc::c_int = 0x5c;

/// Corresponds to `setsockopt(SO_PASSRIGHTS, 0)` on an `AF_UNIX` socket (Linux 6.16+):
/// from then on, a peer's `sendmsg` with `SCM_RIGHTS` to this socket fails with
/// `EPERM`, so no descriptor can reach it. Options are the socket's, not the
/// descriptor's: every copy of this end refuses them.
///
/// # Errors
///
/// `ENOPROTOOPT` on kernels before 6.16, which do not know the option.
pub(crate) fn refuse_rights(fd: BorrowedFd<'_>) -> io::Result<()> {
    let off: libc::c_int = 0;
    // SAFETY: `off` is a valid int for the duration of the call.
    cvt_r(|| unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&off as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Corresponds to `setsockopt(SO_LINGER)`: `Some(seconds)` turns lingering on with that
/// timeout (0: `close` resets the connection at once), `None` turns it off.
pub(crate) fn set_linger(fd: BorrowedFd<'_>, seconds: Option<u32>) -> io::Result<()> {
    let value = libc::linger {
        l_onoff: i32::from(seconds.is_some()),
        l_linger: seconds.unwrap_or(0).min(i32::MAX as u32) as i32,
    };
    // SAFETY: `value` is a valid linger struct for the duration of the call.
    cvt_r(|| unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&value as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Which directions [`shutdown`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// `SHUT_RD`; on a listening TCP socket: stop listening (for every process holding
    /// it), reset the connections in its backlog, wake blocked `accept` calls.
    Read,
    /// `SHUT_RDWR`.
    Both,
}

/// Corresponds to `shutdown(2)`.
///
/// On a `SOCK_SEQPACKET` hand-off channel, `SHUT_RDWR` wakes every thread blocked in
/// `recvmsg` on it (they read the messages still queued, then EOF) and shows the peer a
/// hang-up, while the queued messages stay readable: the primary relies on both.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown() takes an fd and an int.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), how) })?;
    Ok(())
}

/// Corresponds to `getsockopt(SO_PEERCRED)`: the pid of the peer's credentials. For a
/// `socketpair`, Linux gives both ends the credentials of the process that called
/// `socketpair` (not of whoever holds the other end now).
pub(crate) fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `len` bytes; the kernel updates `len`.
    cvt_r(|| unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_inet_tells_internet_sockets_from_the_rest() {
        let tcp = stream_socket(Domain::Inet4, false).unwrap();
        assert!(is_inet(tcp.as_fd()));
        let (unix, _) = seqpacket_pair().unwrap();
        assert!(!is_inet(unix.as_fd()));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_inet(file.as_fd()));
    }
}
