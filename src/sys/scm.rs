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
//! - a received descriptor nobody takes is closed without lingering
//!   ([`socket::close_abortive`]), so a sender cannot make the receiver block in `close`;
//! - every message carries at least one byte of data, so a descriptor never travels in an
//!   empty message (which a `SOCK_SEQPACKET` reader could not tell from EOF).
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt_r, socket};

/// How many descriptors one received message may carry before the kernel truncates the
/// control data (`MSG_CTRUNC`). The protocol uses at most one; room for a few more lets
/// the channel layer see, own and close a misbehaving sender's extras.
pub(crate) const MAX_FDS: usize = 4;

/// Control-message buffer with the alignment of `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Descriptors received with one message.
#[derive(Debug, Default)]
pub(crate) struct ReceivedFds {
    fds: [Option<OwnedFd>; MAX_FDS],
    count: usize,
}

impl ReceivedFds {
    fn push(&mut self, fd: OwnedFd) {
        if self.count < MAX_FDS {
            self.fds[self.count] = Some(fd);
            self.count += 1;
        } else {
            socket::close_abortive(fd);
        }
    }

    /// How many descriptors arrived.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The single descriptor, when exactly one arrived; `Err(self)` otherwise (dropping
    /// the error closes whatever did arrive, without lingering).
    pub(crate) fn into_single(mut self) -> Result<Option<OwnedFd>, ReceivedFds> {
        match self.count {
            0 => Ok(None),
            1 => Ok(self.fds[0].take()),
            _ => Err(self),
        }
    }
}

/// Whatever nobody took out (a refused record's descriptors, extras beyond the one a
/// record may carry) is closed without lingering ([`socket::close_abortive`]): a
/// descriptor a peer sent unasked must never make the receiver wait in `close`. This
/// `Drop` hands each `OwnedFd` over, it closes nothing by hand.
impl Drop for ReceivedFds {
    fn drop(&mut self) {
        for fd in self.fds.iter_mut().filter_map(Option::take) {
            socket::close_abortive(fd);
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
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: msghdr is plain old data; all-zero is a valid "no name, no control" value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = pass {
        let space = cmsg_space(1);
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes of aligned, writable memory, which
        // is room for exactly one cmsghdr with one int, so FIRSTHDR is non-null and
        // CMSG_DATA has room for the fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as libc::c_uint) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    let mut flags = libc::MSG_NOSIGNAL;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points to a valid iovec and (optionally) control buffer that outlive
    // the call; the passed fd is borrowed, so it is open for the duration of the call.
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
/// went wrong; `MSG_TRUNC` and `MSG_CTRUNC` are reported, not hidden.
///
/// `EINTR` is returned to the caller (see the EINTR policy in [`crate::sys`]): a blocked
/// hand-off reader must be able to notice that its listener was closed.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    let space = cmsg_space(MAX_FDS);
    debug_assert!(space <= cbuf.0.len());
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
    let mut fds = ReceivedFds::default();
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
/// arrive are owned in each [`Received`], exactly as in [`recv`].
///
/// # Errors
///
/// `WouldBlock` when nothing is queued; otherwise the OS error. EOF is one `Received`
/// with length 0 and no descriptors, as in [`recv`].
pub(crate) fn recv_many(
    sock: BorrowedFd<'_>,
    bufs: &mut [[u8; BATCH_RECORD]; BATCH],
    out: &mut Vec<Received>,
) -> io::Result<()> {
    let mut cbufs: [CmsgBuf; BATCH] = std::array::from_fn(|_| CmsgBuf([0; 64]));
    let space = cmsg_space(MAX_FDS);
    let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    for (iov, buf) in iovs.iter_mut().zip(bufs.iter_mut()) {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = buf.len();
    }
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value, filled in below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for ((m, iov), cbuf) in msgs.iter_mut().zip(iovs.iter_mut()).zip(cbufs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_control = cbuf.0.as_mut_ptr().cast();
        m.msg_hdr.msg_controllen = space as _;
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: every mmsghdr points to a live iovec of BATCH_RECORD writable bytes and
    // a live, aligned control buffer of `space` bytes; all outlive the call.
    let n = cvt_r(|| unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            flags as _,
            std::ptr::null_mut(),
        )
    })?;
    for m in msgs.iter().take(n as usize) {
        let mut fds = ReceivedFds::default();
        // SAFETY: as in `recv`: the kernel filled this message's control buffer with
        // well-formed cmsghdrs, and each SCM_RIGHTS descriptor is new and ours.
        unsafe { take_fds(&m.msg_hdr, &mut fds) };
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
        let got = recv(b.as_fd(), &mut buf, true).unwrap();
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
        let got = recv(b.as_fd(), &mut buf, true).unwrap();
        assert!(got.data_truncated);
        drop(a);
        let got = recv(b.as_fd(), &mut buf, true).unwrap();
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
        recv_many(b.as_fd(), &mut bufs, &mut out).unwrap();
        assert_eq!(out.len(), BATCH);
        assert_eq!(out[3].fds.len(), 1);
        assert!(out.iter().all(|m| m.len == 5));
        assert_eq!(bufs[15], {
            let mut x = [0u8; BATCH_RECORD];
            x[..5].copy_from_slice(&[15; 5]);
            x
        });
        out.clear();
        recv_many(b.as_fd(), &mut bufs, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        out.clear();
        let e = recv_many(b.as_fd(), &mut bufs, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
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
