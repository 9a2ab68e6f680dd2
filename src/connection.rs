//! An accepted connection: a std stream and the peer's address.
//!
//! Every mode hands worker code the same thing, a `std::net::TcpStream` or a
//! `std::os::unix::net::UnixStream`, whether the worker called `accept(2)` itself
//! (shared, reuse-port) or the primary accepted and passed the descriptor over
//! (round-robin). Code written against std's types runs unchanged.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::PeerAddr;

/// An accepted connection's stream: TCP or Unix, as std types.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

/// The kind of stream a listener produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    Tcp,
    Unix,
}

impl Stream {
    pub(crate) fn from_fd(kind: StreamKind, fd: OwnedFd) -> Stream {
        match kind {
            StreamKind::Tcp => Stream::Tcp(TcpStream::from(fd)),
            StreamKind::Unix => Stream::Unix(UnixStream::from(fd)),
        }
    }

    /// The TCP stream, if this is one.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is one.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }

    /// Reads what has arrived without waiting for more: like `read`, except that when
    /// nothing is there it fails with `WouldBlock` at once, whatever the stream's
    /// blocking mode and timeouts (`recv(2)` with `MSG_DONTWAIT`, one system call).
    ///
    /// For a thread pool that wants to know whether a read would block before it
    /// blocks (to hand its place in `accept` to another thread first, as the `hello`
    /// example does) without paying for a `poll` or two `fcntl`s each time.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::socket::recv_now(self.as_fd(), buf)
    }

    /// Writes what the send buffer takes now: like `write`, except that when it takes
    /// nothing it fails with `WouldBlock` at once (`send(2)` with `MSG_DONTWAIT |
    /// MSG_NOSIGNAL`, one system call; a closed peer is `BrokenPipe`, never `SIGPIPE`).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        crate::sys::socket::send_now(self.as_fd(), data)
    }

    /// See [`TcpStream::set_read_timeout`].
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    /// See [`TcpStream::set_write_timeout`].
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }

    /// `TCP_NODELAY` on TCP streams; nothing on Unix streams.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(on),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// See [`TcpStream::shutdown`].
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// See [`TcpStream::try_clone`].
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl From<Stream> for OwnedFd {
    fn from(s: Stream) -> OwnedFd {
        match s {
            Stream::Tcp(s) => s.into(),
            Stream::Unix(s) => s.into(),
        }
    }
}

/// One connection counted as open in a counter (a worker's, for its `Stats` reports);
/// dropping it counts the connection closed.
#[derive(Debug)]
pub(crate) struct OpenCount(Arc<AtomicU64>);

impl OpenCount {
    /// Counts one more open connection in `counter`.
    pub(crate) fn new(counter: &Arc<AtomicU64>) -> OpenCount {
        counter.fetch_add(1, Ordering::Relaxed);
        OpenCount(counter.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection counted as open in its worker while this value lives: from
/// [`Listener::note_accepted`](crate::Listener::note_accepted) (a connection a library accepted by itself) or
/// [`Connection::take_open`]. Keep it with the
/// connection, and drop it when the connection ends.
#[derive(Debug)]
pub struct OpenConnection {
    _open: Option<OpenCount>,
}

impl OpenConnection {
    pub(crate) fn from_count(open: Option<OpenCount>) -> OpenConnection {
        OpenConnection { _open: open }
    }
}

/// A connection returned by [`Listener::accept`](crate::Listener::accept).
///
/// In a cluster worker, the connection counts as open (for
/// [`LeastConnections`](crate::round_robin::LeastConnections) scheduling) while this value lives:
/// serve it through [`stream_mut`](Connection::stream_mut) and drop it when done.
/// [`into_stream`](Connection::into_stream) and [`into_parts`](Connection::into_parts)
/// hand over the std stream and end the counting.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    peer: PeerAddr,
    open: Option<OpenCount>,
}

impl Connection {
    pub(crate) fn new(stream: Stream, peer: PeerAddr) -> Connection {
        Connection {
            stream,
            peer,
            open: None,
        }
    }

    /// Counts the connection open in its worker until it drops.
    pub(crate) fn counted(mut self, guard: OpenCount) -> Connection {
        self.open = Some(guard);
        self
    }

    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The stream, mutably (for `Read`/`Write`).
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Who connected.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// Takes this connection's place in its worker's open count (for
    /// least-connections scheduling and `WorkerInfo`), to keep beside the std stream
    /// after [`into_tcp`](Connection::into_tcp) or [`into_parts`](Connection::into_parts):
    /// the connection counts as open until the returned guard drops. Taken twice, the
    /// second guard counts nothing.
    pub fn take_open(&mut self) -> OpenConnection {
        OpenConnection::from_count(self.open.take())
    }

    /// The stream and the peer address.
    pub fn into_parts(self) -> (Stream, PeerAddr) {
        (self.stream, self.peer)
    }

    /// The stream alone.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// A TCP connection as std's stream and the peer's socket address, in one call (what
    /// `std::net::TcpListener::accept` returns); the connection itself back when it is
    /// a Unix one.
    ///
    /// ```no_run
    /// let listener = cluster::Listener::bind(("127.0.0.1", 8080))?;
    /// // `None`: the worker is disconnecting.
    /// while let Some(conn) = listener.accept()? {
    ///     let (stream, peer) = conn.into_tcp().expect("a TCP listener");
    ///     println!("{peer} connected");
    ///     drop(stream);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_tcp(self) -> Result<(TcpStream, SocketAddr), Connection> {
        match (self.stream, self.peer) {
            (Stream::Tcp(s), PeerAddr::Tcp(a)) => Ok((s, a)),
            (stream, peer) => Err(Connection {
                stream,
                peer,
                open: self.open,
            }),
        }
    }

    /// A Unix connection as std's stream and the path the peer bound (clients usually
    /// bind none), in one call; the connection itself back when it is a TCP one.
    pub fn into_unix(self) -> Result<(UnixStream, Option<PathBuf>), Connection> {
        match (self.stream, self.peer) {
            (Stream::Unix(s), PeerAddr::Unix(p)) => Ok((s, p)),
            (stream, peer) => Err(Connection {
                stream,
                peer,
                open: self.open,
            }),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::os::unix::net::UnixStream;

    use super::Stream;

    #[test]
    fn a_connection_becomes_std_stream_and_peer_in_one_call() {
        use super::{Connection, PeerAddr};
        let (a, _b) = UnixStream::pair().unwrap();
        let c = Connection::new(Stream::Unix(a), PeerAddr::Unix(None));
        let c = c.into_tcp().unwrap_err();
        let (_s, peer) = c.into_unix().unwrap();
        assert_eq!(peer, None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let at = t.local_addr().unwrap();
        let c = Connection::new(Stream::Tcp(t), PeerAddr::Tcp(at));
        let c = c.into_unix().unwrap_err();
        let (s, peer) = c.into_tcp().unwrap();
        assert_eq!((s.local_addr().unwrap(), peer), (at, at));
    }

    #[test]
    fn try_read_and_try_write_never_wait() {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Stream::Unix(a);
        let mut buf = [0u8; 8];
        // A blocking stream with nothing to read: WouldBlock, not a wait.
        assert_eq!(
            a.try_read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        (&b).write_all(b"hi").unwrap();
        assert_eq!(a.try_read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        // Fill the send buffer until it takes nothing more (bounded: a few MiB at most).
        let chunk = [0u8; 65536];
        let mut sent = 0;
        let mut full = false;
        for _ in 0..1024 {
            match a.try_write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::WouldBlock);
                    full = true;
                    break;
                }
            }
        }
        assert!(sent > 0 && full, "sent {sent} bytes, full: {full}");

        // The peer is gone: end of stream, and a write fails without SIGPIPE.
        let (c, d) = UnixStream::pair().unwrap();
        let c = Stream::Unix(c);
        drop(d);
        assert_eq!(c.try_read(&mut buf).unwrap(), 0);
        assert_eq!(c.try_write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
