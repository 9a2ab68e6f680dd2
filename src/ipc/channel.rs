//! A channel: one end of a `SOCK_SEQPACKET` socketpair that speaks the record format of
//! [`codec`](super::codec), with at most one descriptor per record.
//!
//! The primary's end of a channel to a worker refuses descriptors
//! ([`Channel::pair_with_worker`]): no record a worker sends carries one, and the
//! worker may be hostile. On Linux 6.16+ the kernel refuses them at the worker's
//! `sendmsg` (`SO_PASSRIGHTS` off, set before the worker exists); on older kernels they
//! are received whole and closed without the loop waiting (see [`crate::sys::scm`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::codec::{FdRule, Message, ProtocolError, MAX_RECORD_LEN};
use crate::sys::scm::{self, Peer, BATCH, BATCH_RECORD};
use crate::sys::socket;

/// One end of a primary ⇄ worker channel.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
    /// Who sends what this end receives.
    from: Peer,
}

/// Why a receive failed.
#[derive(Debug)]
pub(crate) enum RecvError {
    /// The system call failed (`EAGAIN` when non-blocking and empty, `EINTR`, …).
    Io(io::Error),
    /// The peer sent something that is not a valid record; any descriptors that came
    /// with it are already closed.
    Protocol(ProtocolError),
}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> RecvError {
        RecvError::Io(e)
    }
}

/// What a receive produced.
#[derive(Debug)]
pub(crate) enum Incoming<'b> {
    /// The peer closed its end (or shut it down).
    Eof,
    /// A record, and the descriptor that came with it when its kind carries one.
    Message(Message<'b>, Option<OwnedFd>),
    /// A record of a kind that carries a descriptor, whose descriptor the kernel could
    /// not install (`MSG_CTRUNC`, as at `RLIMIT_NOFILE`) and closed: the record itself
    /// arrived whole and decoded. The receiver decides what the loss means (a worker's
    /// listen reply becomes `EMFILE` from `Listener::bind`).
    FdLost(Message<'b>),
}

/// Records of up to this many bytes are encoded on the stack.
const SMALL_RECORD: usize = 128;

impl Channel {
    /// A connected pair (`socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`) whose
    /// ends trust each other.
    #[cfg(test)]
    pub(crate) fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::seqpacket_pair()?;
        Ok((
            Channel {
                fd: a,
                from: Peer::Trusted,
            },
            Channel {
                fd: b,
                from: Peer::Trusted,
            },
        ))
    }

    /// A connected pair for the primary (first) and a worker (second): the primary's
    /// end refuses descriptors from the start ([`scm::refuse_rights`]), before the
    /// worker's end ever leaves this process.
    pub(crate) fn pair_with_worker() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::seqpacket_pair()?;
        let mine = Channel::from_worker(a);
        mine.refuse_descriptors()?;
        Ok((
            mine,
            Channel {
                fd: b,
                from: Peer::Trusted,
            },
        ))
    }

    /// Wraps the primary's end of a channel to a worker (one an upgrade passed on, say):
    /// what arrives on it is treated as the worker's ([`Peer::Untrusted`]). Call
    /// [`refuse_descriptors`](Channel::refuse_descriptors) too.
    pub(crate) fn from_worker(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            from: Peer::Untrusted,
        }
    }

    /// Has the kernel refuse descriptors sent to this end, where it can
    /// ([`scm::refuse_rights`]; a no-op on kernels before 6.16).
    pub(crate) fn refuse_descriptors(&self) -> io::Result<()> {
        scm::refuse_rights(self.fd.as_fd()).map(drop)
    }

    /// Wraps a descriptor received from the primary (a worker's end).
    pub(crate) fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            from: Peer::Trusted,
        }
    }

    /// Closes a descriptor that came with a record on this end and that nobody takes,
    /// as its sender deserves ([`scm::dispose`]): without ever waiting for it.
    pub(crate) fn dispose(&self, fd: OwnedFd) {
        scm::dispose(fd, self.from);
    }

    /// Sends one record, blocking while the peer's queue is full.
    ///
    /// `fd` must be given exactly when the message's kind carries one (checked in debug
    /// builds; the receiver refuses a mismatch in any case).
    pub(crate) fn send(&self, msg: &Message<'_>, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        self.send_with(msg, fd, false)
    }

    /// Sends one record without blocking: `WouldBlock` when the peer's queue is full.
    pub(crate) fn try_send(&self, msg: &Message<'_>, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        self.send_with(msg, fd, true)
    }

    fn send_with(
        &self,
        msg: &Message<'_>,
        fd: Option<BorrowedFd<'_>>,
        nonblocking: bool,
    ) -> io::Result<()> {
        debug_assert_eq!(
            fd.is_some(),
            msg.fd_rule() == super::codec::FdRule::One,
            "{} sent with the wrong number of descriptors",
            msg.name()
        );
        let mut record = Vec::with_capacity(SMALL_RECORD);
        msg.encode(&mut record);
        scm::send(self.fd.as_fd(), &record, fd, nonblocking).map(drop)
    }

    /// Sends an already encoded record (for queued, retried sends).
    pub(crate) fn send_encoded(
        &self,
        record: &[u8],
        fd: Option<BorrowedFd<'_>>,
        nonblocking: bool,
    ) -> io::Result<()> {
        scm::send(self.fd.as_fd(), record, fd, nonblocking).map(drop)
    }

    /// Receives one record into `buf`, which should hold [`MAX_RECORD_LEN`] + 1 bytes
    /// (a smaller buffer refuses larger records as oversized, which the hand-off path
    /// uses on purpose).
    ///
    /// `EINTR` comes back as `RecvError::Io` (see [`crate::sys`]'s EINTR policy).
    pub(crate) fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        nonblocking: bool,
    ) -> Result<Incoming<'b>, RecvError> {
        let got = scm::recv(self.fd.as_fd(), buf, nonblocking, self.from)?;
        if got.control_truncated {
            // Only a whole record, none of whose descriptors arrived, of a kind that
            // carries exactly one, is still worth reading.
            if got.data_truncated || got.len > MAX_RECORD_LEN || got.fds.len() > 0 {
                return Err(RecvError::Protocol(ProtocolError::ControlTruncated));
            }
            return match Message::decode(&buf[..got.len], 1) {
                Ok(msg) if msg.fd_rule() == FdRule::One => Ok(Incoming::FdLost(msg)),
                _ => Err(RecvError::Protocol(ProtocolError::ControlTruncated)),
            };
        }
        if got.data_truncated || got.len > MAX_RECORD_LEN {
            return Err(RecvError::Protocol(ProtocolError::Oversized {
                len: got.len,
            }));
        }
        if got.len == 0 && got.fds.len() == 0 {
            return Ok(Incoming::Eof);
        }
        let count = got.fds.len();
        let msg = Message::decode(&buf[..got.len], count).map_err(RecvError::Protocol)?;
        match got.fds.into_single() {
            Ok(fd) => Ok(Incoming::Message(msg, fd)),
            // decode already checked the count; this arm only keeps the code total.
            Err(_) => Err(RecvError::Protocol(ProtocolError::UnexpectedFd {
                kind: msg.name(),
                count,
            })),
        }
    }

    /// How many records [`recv_many`](Channel::recv_many) reads at most in one call on
    /// this end ([`scm::batch_len`]): a caller that got that many looks again.
    pub(crate) fn batch_len(&self) -> usize {
        scm::batch_len(self.from)
    }

    /// Receives up to [`batch_len`](Channel::batch_len) (at most [`BATCH`]) queued
    /// records in one system call (`recvmmsg`),
    /// without blocking, and hands each to `each`: a decoded record, EOF, or the
    /// protocol error of a bad one (its descriptors already closed). Records longer than
    /// [`BATCH_RECORD`] bytes are refused as oversized: only small records travel this way.
    ///
    /// Returns how many records were read; `WouldBlock` when none was queued.
    pub(crate) fn recv_many(
        &self,
        bufs: &mut [[u8; BATCH_RECORD]; BATCH],
        each: &mut dyn FnMut(Result<Incoming<'_>, ProtocolError>),
    ) -> io::Result<usize> {
        let mut got = Vec::with_capacity(BATCH);
        scm::recv_many(self.fd.as_fd(), bufs, &mut got, self.from)?;
        let n = got.len();
        for (r, buf) in got.into_iter().zip(bufs.iter()) {
            if r.control_truncated {
                each(Err(ProtocolError::ControlTruncated));
            } else if r.data_truncated {
                each(Err(ProtocolError::Oversized { len: r.len }));
            } else if r.len == 0 && r.fds.len() == 0 {
                each(Ok(Incoming::Eof));
            } else {
                let count = r.fds.len();
                match Message::decode(&buf[..r.len], count) {
                    Ok(msg) => match r.fds.into_single() {
                        Ok(fd) => each(Ok(Incoming::Message(msg, fd))),
                        Err(_) => each(Err(ProtocolError::UnexpectedFd {
                            kind: msg.name(),
                            count,
                        })),
                    },
                    Err(e) => each(Err(e)),
                }
            }
        }
        Ok(n)
    }

    /// Shuts both directions down: wakes every thread blocked in `recv` on this end
    /// (they get the records still queued, then EOF) and shows the peer a hang-up.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        socket::shutdown(self.fd.as_fd(), socket::Shutdown::Both)
    }
}

/// The primary's end of a channel to a worker, on a kernel without `SO_PASSRIGHTS`, may
/// hold records the worker sent and nobody read, with descriptors in them: closing the
/// end releases them inside the closing thread, a lingering socket or a FUSE file as
/// much as one received. So before the end closes, what is queued is received (without
/// waiting) and each descriptor disposed of as one received is ([`scm::dispose`]). The
/// worker is gone, or has closed its end, by the time the primary lets go of its
/// channel; a record it sends between this drain and the close is the one case left.
/// This `Drop` closes nothing itself: the `OwnedFd` does, after.
impl Drop for Channel {
    fn drop(&mut self) {
        if self.from != Peer::Untrusted || scm::guarantee() != scm::Guarantee::Contained {
            return;
        }
        let mut buf = [0u8; 64];
        // Bounded: a socket's queue holds a few hundred records at most.
        for _ in 0..4096 {
            match scm::recv(self.fd.as_fd(), &mut buf, true, self.from) {
                // EOF, or what the peer sent: its descriptors go with `got`'s drop.
                Ok(got) if got.len == 0 && got.fds.len() == 0 => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // empty (EAGAIN), or the socket is broken
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PeerAddr;
    use crate::sys::fd;

    fn buf() -> Vec<u8> {
        vec![0u8; MAX_RECORD_LEN + 1]
    }

    #[test]
    fn message_with_fd_round_trip() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = fd::pipe_nonblocking().unwrap();
        let msg = Message::NewConn {
            peer: PeerAddr::Tcp("127.0.0.1:9".parse().unwrap()),
            attempts: 0,
        };
        a.send(&msg, Some(r.as_fd())).unwrap();
        let mut buf = buf();
        match b.recv(&mut buf, true).unwrap() {
            Incoming::Message(m, Some(fd)) => {
                assert_eq!(m, msg);
                assert!(fd::is_cloexec(fd.as_fd()).unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fd_on_a_kind_without_one_is_refused_and_closed() {
        let (a, b) = Channel::pair().unwrap();
        let (r, w) = fd::pipe_nonblocking().unwrap();
        let mut rec = Vec::new();
        Message::Online.encode(&mut rec);
        a.send_encoded(&rec, Some(w.as_fd()), false).unwrap();
        drop(w);
        let mut buf = buf();
        match b.recv(&mut buf, true) {
            Err(RecvError::Protocol(ProtocolError::UnexpectedFd { count: 1, .. })) => {}
            other => panic!("{other:?}"),
        }
        // The received copy of the write end was closed: the pipe now reads EOF.
        let mut one = [0u8; 1];
        assert_eq!(fd::read(r.as_fd(), &mut one).unwrap(), 0);
    }

    #[test]
    fn oversized_and_garbage_records_are_errors() {
        let (a, b) = Channel::pair().unwrap();
        let mut buf = buf();
        let big = vec![1u8; MAX_RECORD_LEN + 100];
        a.send_encoded(&big, None, false).unwrap();
        assert!(matches!(
            b.recv(&mut buf, true),
            Err(RecvError::Protocol(ProtocolError::Oversized { .. }))
        ));
        a.send_encoded(b"garbage!!", None, false).unwrap();
        assert!(matches!(
            b.recv(&mut buf, true),
            Err(RecvError::Protocol(_))
        ));
        // The channel still works after refusing a record.
        a.send(&Message::Online, None).unwrap();
        assert!(matches!(
            b.recv(&mut buf, true),
            Ok(Incoming::Message(Message::Online, None))
        ));
        drop(a);
        assert!(matches!(b.recv(&mut buf, true), Ok(Incoming::Eof)));
    }

    #[test]
    fn shutdown_keeps_queued_records_readable() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Message::Ready { count: 1, open: 0 }, None).unwrap();
        b.shutdown().unwrap();
        let mut buf = buf();
        assert!(matches!(
            b.recv(&mut buf, true),
            Ok(Incoming::Message(Message::Ready { count: 1, .. }, None))
        ));
        assert!(matches!(b.recv(&mut buf, true), Ok(Incoming::Eof)));
        assert!(matches!(a.recv(&mut buf, true), Ok(Incoming::Eof)));
    }
}
