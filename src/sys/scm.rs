//! `sendmsg(2)` / `recvmsg(2)` with `SCM_RIGHTS`: passing descriptors between processes.
//!
//! Rules this file keeps (each one a bug somebody shipped):
//! - send borrowed, receive owned: every received descriptor becomes an `OwnedFd` while
//!   the control buffer is parsed, so no path can leak it;
//! - receive with `MSG_CMSG_CLOEXEC`, so received descriptors are close-on-exec from the
//!   moment they exist in this process (Linux);
//! - the control buffer is fixed-size and `cmsghdr`-aligned; when the kernel had to drop
//!   descriptors (`MSG_CTRUNC`, also raised under `RLIMIT_NOFILE` pressure) the caller is
//!   told, and the descriptors that did arrive are still owned and get closed;
//! - every message carries at least one byte of data, so a descriptor never travels in an
//!   empty message (which a `SOCK_SEQPACKET` reader could not tell from EOF).
//!
//! # Descriptors from a worker
//!
//! No record a worker sends the primary carries a descriptor, and a worker that dropped
//! privileges is hostile ([`Peer::Untrusted`]). Whatever it attaches must not make the
//! primary wait, and two things can: the *last* close of a TCP socket with unsent data
//! and `SO_LINGER` on (`tcp_close` waits for the linger time), and *any* close of a
//! file whose `flush` waits, as a FUSE file's does for its server (see [`closer`]:
//! `flush` runs on every close, not only the last). So, in this order:
//!
//! 1. **Refused before they exist** (Linux 6.16+): the primary turns `SO_PASSRIGHTS` off
//!    on its end of each channel to a worker ([`refuse_rights`]) right after
//!    `socketpair`, before the worker exists; the worker's `sendmsg` with `SCM_RIGHTS`
//!    fails with `EPERM` and the descriptor never enters the primary. Whether the kernel
//!    knows the option is found once ([`guarantee`]). (The option answers the UAPI
//!    group's wish "disabling reception of `SCM_RIGHTS` for `AF_UNIX` sockets", for
//!    receivers such as systemd that read messages from untrusted senders; its commit
//!    cites systemd's workaround, closing whatever arrived, which is all that older
//!    kernels leave us too.)
//! 2. **Otherwise contained** (older kernels, [`Guarantee::Contained`]): receive with
//!    room for [`SCM_MAX_FD`] descriptors, the most one message can carry, so the kernel
//!    never drops one itself: a descriptor the kernel drops is released by the kernel
//!    inside the receiver (its `fput` runs as the receiver returns from `recvmsg`), and
//!    the last reference of a lingering socket then blocks the receiver before any code
//!    here could make the close abortive. Each descriptor that arrived is closed by
//!    [`closer::close_untrusted`]: an Internet socket abortively (`SO_LINGER {1, 0}`),
//!    anything else on a closer thread.
//!
//! What remains on older kernels: descriptors the kernel cannot install (the primary at
//! its descriptor limit, `MSG_CTRUNC`) are released by the kernel in the primary; and
//! the closer threads' limits (see [`closer`]).
//!
//! A descriptor from the crate's own other side ([`Peer::Trusted`]: the primary, to a
//! worker; the primary itself, on a hand-off channel's worker end that it reads to take
//! connections back) is closed abortively where it is dropped.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use super::{closer, cvt_r, socket};

/// How many descriptors one message from a trusted peer may carry before the kernel
/// truncates the control data (`MSG_CTRUNC`). The protocol uses at most one; room for a
/// few more lets the channel layer see, own and close extras.
pub(crate) const MAX_FDS: usize = 4;

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`: a `sendmsg`
/// with more fails with `EINVAL`).
pub(crate) const SCM_MAX_FD: usize = 253;

/// Control-message buffer of `N` bytes with the alignment of `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg<const N: usize>([u8; N]);

impl<const N: usize> Cmsg<N> {
    const fn new() -> Cmsg<N> {
        Cmsg([0; N])
    }
}

/// Room for [`MAX_FDS`] descriptors (`CMSG_SPACE(4 * 4)` is 32 bytes).
type CmsgBuf = Cmsg<64>;

/// Room for [`SCM_MAX_FD`] descriptors (`CMSG_SPACE(253 * 4)` is 1,032 bytes on 64-bit
/// Linux, 1,024 on 32-bit).
type WideCmsgBuf = Cmsg<1040>;

/// Who sends on the socket a message is received from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The crate's own other side: the primary, to a worker; the primary itself, to the
    /// worker end of a hand-off channel it reads back.
    Trusted,
    /// A worker, to the primary: refused at its `sendmsg` where the kernel can, received
    /// whole and closed without waiting where it cannot (see the module's docs).
    Untrusted,
}

/// What keeps descriptors a worker attaches from making the primary wait, on this
/// kernel (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guarantee {
    /// `SO_PASSRIGHTS` is off on the primary's ends (Linux 6.16+): the worker's
    /// `sendmsg` fails with `EPERM`.
    Refused,
    /// The kernel has no `SO_PASSRIGHTS`: room for [`SCM_MAX_FD`], each descriptor
    /// closed abortively or on a closer thread.
    Contained,
}

/// [`guarantee`]'s answer once found: 0 not yet, 1 refused, 2 contained.
static GUARANTEE: AtomicU8 = AtomicU8::new(0);

/// Which [`Guarantee`] holds here, found once (on a throwaway socket pair: whether
/// `SO_PASSRIGHTS` can be turned off) and remembered.
///
/// With the `test-hooks` feature, `CLUSTER_TEST_NO_PASSRIGHTS` set in the environment
/// pretends the kernel is older, so the crate's tests run both paths on any kernel.
pub(crate) fn guarantee() -> Guarantee {
    match GUARANTEE.load(Ordering::Relaxed) {
        1 => return Guarantee::Refused,
        2 => return Guarantee::Contained,
        _ => {}
    }
    let found = if pretend_old_kernel() {
        Guarantee::Contained
    } else {
        match socket::seqpacket_pair() {
            Ok((a, _b)) if socket::refuse_rights(a.as_fd()).is_ok() => Guarantee::Refused,
            _ => Guarantee::Contained,
        }
    };
    let code = if found == Guarantee::Refused { 1 } else { 2 };
    GUARANTEE.store(code, Ordering::Relaxed);
    found
}

#[cfg(feature = "test-hooks")]
fn pretend_old_kernel() -> bool {
    std::env::var_os("CLUSTER_TEST_NO_PASSRIGHTS").is_some()
}

#[cfg(not(feature = "test-hooks"))]
fn pretend_old_kernel() -> bool {
    false
}

/// Makes `sock` (the primary's end of a channel to a worker) refuse descriptors, where
/// the kernel can ([`Guarantee::Refused`]); says which guarantee holds for it.
///
/// # Errors
///
/// The OS error of `setsockopt`, on a kernel that knows the option.
pub(crate) fn refuse_rights(sock: BorrowedFd<'_>) -> io::Result<Guarantee> {
    match guarantee() {
        Guarantee::Refused => socket::refuse_rights(sock).map(|()| Guarantee::Refused),
        Guarantee::Contained => Ok(Guarantee::Contained),
    }
}

/// Closes a received descriptor nobody takes, as its sender deserves (see
/// [`Peer`]).
pub(crate) fn dispose(fd: OwnedFd, from: Peer) {
    match from {
        Peer::Trusted => socket::close_abortive(fd),
        Peer::Untrusted => closer::close_untrusted(fd),
    }
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Descriptors received with one message: the first [`MAX_FDS`] kept, the others
/// disposed of ([`dispose`]) as they are taken from the control data.
#[derive(Debug)]
pub(crate) struct ReceivedFds {
    fds: [Option<OwnedFd>; MAX_FDS],
    kept: usize,
    arrived: usize,
    from: Peer,
}

impl ReceivedFds {
    fn new(from: Peer) -> ReceivedFds {
        ReceivedFds {
            fds: Default::default(),
            kept: 0,
            arrived: 0,
            from,
        }
    }

    fn push(&mut self, fd: OwnedFd) {
        self.arrived += 1;
        if self.kept < MAX_FDS {
            self.fds[self.kept] = Some(fd);
            self.kept += 1;
        } else {
            dispose(fd, self.from);
        }
    }

    /// How many descriptors arrived.
    pub(crate) fn len(&self) -> usize {
        self.arrived
    }

    /// The single descriptor, when exactly one arrived; `Err(self)` otherwise (dropping
    /// the error disposes of whatever did arrive).
    pub(crate) fn into_single(mut self) -> Result<Option<OwnedFd>, ReceivedFds> {
        match self.arrived {
            0 => Ok(None),
            1 => Ok(self.fds[0].take()),
            _ => Err(self),
        }
    }
}

/// Whatever nobody took out (a refused record's descriptors, extras beyond the one a
/// record may carry) is disposed of ([`dispose`]): a descriptor a peer sent unasked
/// must never make the receiver wait in `close`. This `Drop` hands each `OwnedFd` over,
/// it closes nothing by hand.
impl Drop for ReceivedFds {
    fn drop(&mut self) {
        for fd in self.fds.iter_mut().filter_map(Option::take) {
            dispose(fd, self.from);
        }
    }
}

/// What one `recvmsg` returned.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of data received (0 with no descriptors means EOF on a `SOCK_SEQPACKET`).
    pub(crate) len: usize,
    /// The descriptors that arrived, owned.
    pub(crate) fds: ReceivedFds,
    /// `MSG_TRUNC`: the message was longer than the buffer; the rest is lost.
    pub(crate) data_truncated: bool,
    /// `MSG_CTRUNC`: some descriptors did not fit or could not be installed (for
    /// instance at `RLIMIT_NOFILE`); the kernel closed them.
    pub(crate) control_truncated: bool,
}

/// Corresponds to `sendmsg(2)` with `MSG_NOSIGNAL` (a vanished peer is `EPIPE`, never
/// `SIGPIPE`), plus `MSG_DONTWAIT` when `nonblocking`, and `SCM_RIGHTS` when `pass` is
/// given. Retried on `EINTR`.
///
/// # Errors
///
/// `InvalidInput` for empty `data` (a descriptor must travel with at least one byte);
/// otherwise the OS error (`EAGAIN` when non-blocking and the peer's queue is full,
/// `EPIPE` when the peer is gone, `EMSGSIZE` when the message exceeds the socket buffer).
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    data: &[u8],
    pass: Option<BorrowedFd<'_>>,
    nonblocking: bool,
) -> io::Result<usize> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "sendmsg without data",
        ));
    }
    let pass: &[BorrowedFd<'_>] = match &pass {
        Some(fd) => std::slice::from_ref(fd),
        None => &[],
    };
    send_with(sock, data, pass, nonblocking, &mut CmsgBuf::new())
}

/// Not part of the API (the `test-hooks` feature): `sendmsg(2)` of `data` with every
/// descriptor of `pass` in one `SCM_RIGHTS` message, so the crate's tests can play a
/// worker that attaches several (up to [`SCM_MAX_FD`]) to one record.
#[cfg(feature = "test-hooks")]
pub(crate) fn send_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    pass: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if data.is_empty() || pass.is_empty() || pass.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "sendmsg with 1 to 253 descriptors and some data",
        ));
    }
    send_with(sock, data, pass, false, &mut WideCmsgBuf::new())
}

/// `sendmsg(2)` of `data` (not empty) with `pass` in one `SCM_RIGHTS` message (none:
/// no control data), through `cbuf`, which must have room for them.
fn send_with<const N: usize>(
    sock: BorrowedFd<'_>,
    data: &[u8],
    pass: &[BorrowedFd<'_>],
    nonblocking: bool,
    cbuf: &mut Cmsg<N>,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid "no name, no control" value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !pass.is_empty() {
        let space = cmsg_space(pass.len());
        if space > N {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more descriptors than the control buffer holds",
            ));
        }
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` (<= N, checked) bytes of aligned,
        // writable memory: room for one cmsghdr with `pass.len()` ints, so FIRSTHDR is
        // non-null and CMSG_DATA has room for every descriptor.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((pass.len() * mem::size_of::<RawFd>()) as _) as _;
            let out = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in pass.iter().enumerate() {
                std::ptr::write_unaligned(out.add(i), fd.as_raw_fd());
            }
        }
    }
    let mut flags = libc::MSG_NOSIGNAL;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points to a valid iovec and (optionally) control buffer that outlive
    // the call; the passed fds are borrowed, so open for the duration of the call.
    let n = cvt_r(|| unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) })?;
    Ok(n as usize)
}

/// Wraps every descriptor of the `SCM_RIGHTS` messages in `msg`'s control data in an
/// `OwnedFd`, right away, so none can leak.
///
/// # Safety
///
/// `msg.msg_control` must hold `msg.msg_controllen` bytes of well-formed control
/// messages as filled in by a successful `recvmsg`/`recvmmsg`, whose descriptors were
/// installed in this process by that call and belong to nobody else.
unsafe fn take_fds(msg: &libc::msghdr, fds: &mut ReceivedFds) {
    // SAFETY: FIRSTHDR/NXTHDR stay within `msg_controllen` (the caller's guarantee);
    // each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / sizeof(int)` fresh
    // descriptors, so wrapping each in an OwnedFd is sound and closes it on every path.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let payload = ((*cmsg).cmsg_len as usize).saturating_sub(header);
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..payload / mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// Corresponds to `recvmsg(2)` with `MSG_CMSG_CLOEXEC` (Linux), plus `MSG_DONTWAIT` when
/// `nonblocking`.
///
/// Every descriptor in the control data is owned before this returns, whatever else
/// went wrong; `MSG_TRUNC` and `MSG_CTRUNC` are reported, not hidden. From an untrusted
/// peer the control buffer has room for [`SCM_MAX_FD`] descriptors, whatever the
/// [`guarantee`]: the kernel never drops one here (see the module's docs).
///
/// `EINTR` is returned to the caller (see the EINTR policy in [`crate::sys`]): a blocked
/// hand-off reader must be able to notice that its listener was closed.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
    from: Peer,
) -> io::Result<Received> {
    match from {
        Peer::Trusted => recv_into(sock, buf, nonblocking, from, &mut CmsgBuf::new(), MAX_FDS),
        Peer::Untrusted => recv_into(
            sock,
            buf,
            nonblocking,
            from,
            &mut WideCmsgBuf::new(),
            SCM_MAX_FD,
        ),
    }
}

fn recv_into<const N: usize>(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
    from: Peer,
    cbuf: &mut Cmsg<N>,
    room: usize,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let space = cmsg_space(room);
    debug_assert!(space <= N, "control buffer too small");
    let space = space.min(N);
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points to a writable iovec of `buf.len()` bytes and a writable,
    // aligned control buffer of `space` bytes, both alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = ReceivedFds::new(from);
    // SAFETY: the kernel filled `msg.msg_control` with `msg.msg_controllen` bytes of
    // well-formed cmsghdrs for this call.
    unsafe { take_fds(&msg, &mut fds) };
    Ok(Received {
        len: n as usize,
        fds,
        data_truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// How many messages [`recv_many`] reads at most per call.
pub(crate) const BATCH: usize = 16;

/// Bytes of data per message in [`recv_many`]: room for the small records that
/// travel in batches (credits); longer ones are reported truncated.
pub(crate) const BATCH_RECORD: usize = 32;

/// Corresponds to `recvmmsg(2)` with `MSG_DONTWAIT | MSG_CMSG_CLOEXEC`: up to [`BATCH`]
/// queued messages in one system call, each into its own `BATCH_RECORD`-byte buffer.
///
/// Used where many small records accumulate between reads (round-robin credits), so
/// that reading them costs one system call instead of one per record. Descriptors that
/// arrive are owned in each [`Received`], exactly as in [`recv`]. The control buffers:
/// from an untrusted peer none where the kernel refuses descriptors
/// ([`Guarantee::Refused`]: none can come, and nothing is cleared per call), room for
/// [`SCM_MAX_FD`] each where it does not (16.5 KiB cleared per call); from a trusted
/// one room for [`MAX_FDS`].
///
/// # Errors
///
/// `WouldBlock` when nothing is queued; otherwise the OS error. EOF is one `Received`
/// with length 0 and no descriptors, as in [`recv`].
pub(crate) fn recv_many(
    sock: BorrowedFd<'_>,
    bufs: &mut [[u8; BATCH_RECORD]; BATCH],
    out: &mut Vec<Received>,
    from: Peer,
) -> io::Result<()> {
    match (from, guarantee()) {
        (Peer::Untrusted, Guarantee::Refused) => {
            let mut none: [Cmsg<0>; BATCH] = std::array::from_fn(|_| Cmsg::new());
            recv_batch(sock, bufs, out, from, &mut none, 0, BATCH)
        }
        (Peer::Untrusted, Guarantee::Contained) => {
            let mut wide: [WideCmsgBuf; BATCH] = std::array::from_fn(|_| Cmsg::new());
            recv_batch(
                sock,
                bufs,
                out,
                from,
                &mut wide,
                SCM_MAX_FD,
                CONTAINED_BATCH,
            )
        }
        (Peer::Trusted, _) => {
            let mut small: [CmsgBuf; BATCH] = std::array::from_fn(|_| Cmsg::new());
            recv_batch(sock, bufs, out, from, &mut small, MAX_FDS, BATCH)
        }
    }
}

/// How many records [`recv_many`] reads at most per call from a worker on a kernel
/// without `SO_PASSRIGHTS`: each may carry [`SCM_MAX_FD`] descriptors, all installed
/// before any is closed, and a batch of 16 (4,048 descriptors) could reach the
/// primary's `RLIMIT_NOFILE`, past which the kernel closes the rest inside the
/// primary, the one case the wide buffer is there to avoid.
pub(crate) const CONTAINED_BATCH: usize = 2;

/// How many records [`recv_many`] reads at most per call from `from` (a caller that
/// got that many looks again).
pub(crate) fn batch_len(from: Peer) -> usize {
    match (from, guarantee()) {
        (Peer::Untrusted, Guarantee::Contained) => CONTAINED_BATCH,
        _ => BATCH,
    }
}

fn recv_batch<const N: usize>(
    sock: BorrowedFd<'_>,
    bufs: &mut [[u8; BATCH_RECORD]; BATCH],
    out: &mut Vec<Received>,
    from: Peer,
    cbufs: &mut [Cmsg<N>; BATCH],
    room: usize,
    vlen: usize,
) -> io::Result<()> {
    let space = if room == 0 { 0 } else { cmsg_space(room) };
    debug_assert!(space <= N, "control buffer too small");
    let space = space.min(N);
    let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    for (iov, buf) in iovs.iter_mut().zip(bufs.iter_mut()) {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = buf.len();
    }
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value ("no control"),
    // filled in below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for ((m, iov), cbuf) in msgs.iter_mut().zip(iovs.iter_mut()).zip(cbufs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        if space > 0 {
            m.msg_hdr.msg_control = cbuf.0.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = space as _;
        }
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: every mmsghdr points to a live iovec of BATCH_RECORD writable bytes and
    // either no control buffer or a live, aligned one of `space` bytes; all outlive the
    // call.
    let n = cvt_r(|| unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            vlen.min(BATCH) as libc::c_uint,
            flags as _,
            std::ptr::null_mut(),
        )
    })?;
    for m in msgs.iter().take(n as usize) {
        let mut fds = ReceivedFds::new(from);
        if space > 0 {
            // SAFETY: as in `recv`: the kernel filled this message's control buffer
            // with well-formed cmsghdrs, and each SCM_RIGHTS descriptor is new and ours.
            unsafe { take_fds(&m.msg_hdr, &mut fds) };
        }
        out.push(Received {
            len: m.msg_len as usize,
            fds,
            data_truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            control_truncated: m.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd;
    use crate::sys::socket::seqpacket_pair;
    use std::os::fd::AsFd;

    #[test]
    fn passes_one_fd_with_cloexec() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, _w) = fd::pipe_nonblocking().unwrap();
        assert_eq!(send(a.as_fd(), b"x", Some(r.as_fd()), false).unwrap(), 1);
        let mut buf = [0u8; 8];
        let got = recv(b.as_fd(), &mut buf, true, Peer::Trusted).unwrap();
        assert_eq!(got.len, 1);
        assert!(!got.control_truncated && !got.data_truncated);
        let fd = got.fds.into_single().unwrap().unwrap();
        assert!(fd::is_cloexec(fd.as_fd()).unwrap());
    }

    #[test]
    fn reports_data_truncation_and_eof() {
        let (a, b) = seqpacket_pair().unwrap();
        send(a.as_fd(), b"hello", None, false).unwrap();
        let mut buf = [0u8; 2];
        let got = recv(b.as_fd(), &mut buf, true, Peer::Trusted).unwrap();
        assert!(got.data_truncated);
        drop(a);
        let got = recv(b.as_fd(), &mut buf, true, Peer::Trusted).unwrap();
        assert_eq!(got.len, 0);
        assert_eq!(got.fds.len(), 0);
    }

    #[test]
    fn recv_many_reads_a_batch_and_owns_stray_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, _w) = fd::pipe_nonblocking().unwrap();
        for i in 0..20u8 {
            let pass = (i == 3).then(|| r.as_fd());
            send(a.as_fd(), &[i; 5], pass, false).unwrap();
        }
        let mut bufs = [[0u8; BATCH_RECORD]; BATCH];
        let mut out = Vec::new();
        recv_many(b.as_fd(), &mut bufs, &mut out, Peer::Trusted).unwrap();
        assert_eq!(out.len(), BATCH);
        assert_eq!(out[3].fds.len(), 1);
        assert!(out.iter().all(|m| m.len == 5));
        assert_eq!(bufs[15], {
            let mut x = [0u8; BATCH_RECORD];
            x[..5].copy_from_slice(&[15; 5]);
            x
        });
        out.clear();
        recv_many(b.as_fd(), &mut bufs, &mut out, Peer::Trusted).unwrap();
        assert_eq!(out.len(), 4);
        out.clear();
        let e = recv_many(b.as_fd(), &mut bufs, &mut out, Peer::Trusted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    /// Four pipes' write ends and a socket in one message, from an untrusted peer to an
    /// end that does not refuse them: all five arrive (none dropped by the kernel), and
    /// each is closed once nobody takes it (the pipes on closer threads).
    #[cfg(feature = "test-hooks")]
    #[test]
    fn untrusted_receive_has_room_for_every_descriptor() {
        let (a, b) = seqpacket_pair().unwrap();
        let pipes: Vec<_> = (0..4).map(|_| fd::pipe_nonblocking().unwrap()).collect();
        let (s, _peer) = seqpacket_pair().unwrap();
        let mut pass: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        pass.push(s.as_fd());
        send_fds(a.as_fd(), b"x", &pass).unwrap();
        drop(pass);
        let readers: Vec<_> = pipes.into_iter().map(|(r, _w)| r).collect();
        let mut buf = [0u8; 8];
        let got = recv(b.as_fd(), &mut buf, true, Peer::Untrusted).unwrap();
        assert!(!got.control_truncated);
        assert_eq!(got.fds.len(), 5);
        drop(got);
        // Every write end closed: each reader sees EOF (soon: closers run apart).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for r in &readers {
            let mut one = [0u8; 1];
            while fd::read(r.as_fd(), &mut one).map_or(true, |n| n != 0) {
                assert!(std::time::Instant::now() < deadline, "a pipe is still open");
                std::thread::yield_now();
            }
        }
    }

    /// On a kernel with `SO_PASSRIGHTS` (6.16+), an end that refuses descriptors makes
    /// the sender's `sendmsg` fail with `EPERM`; records without one still pass.
    #[test]
    fn a_refusing_end_fails_the_senders_sendmsg() {
        let (a, b) = seqpacket_pair().unwrap();
        if refuse_rights(b.as_fd()).unwrap() == Guarantee::Contained {
            println!("skipped: this kernel has no SO_PASSRIGHTS");
            return;
        }
        let (r, _w) = fd::pipe_nonblocking().unwrap();
        let e = send(a.as_fd(), b"x", Some(r.as_fd()), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        send(a.as_fd(), b"y", None, false).unwrap();
        let mut bufs = [[0u8; BATCH_RECORD]; BATCH];
        let mut out = Vec::new();
        recv_many(b.as_fd(), &mut bufs, &mut out, Peer::Untrusted).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fds.len(), 0);
        // The other direction is not refused: the primary still sends descriptors.
        send(b.as_fd(), b"z", Some(r.as_fd()), false).unwrap();
    }

    #[test]
    fn refuses_empty_data() {
        let (a, _b) = seqpacket_pair().unwrap();
        assert_eq!(
            send(a.as_fd(), b"", None, false).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
