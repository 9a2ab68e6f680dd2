//! [`ClusterListener`]: a worker's listener for tokio, in every mode.
//!
//! - Shared and reuse-port: the worker holds a real listening socket. A duplicate of
//!   it ([`cluster::Listener::try_clone_std`]) becomes a `tokio::net::TcpListener`;
//!   each connection it accepts is counted for the cluster
//!   ([`cluster::Listener::note_accepted`]).
//! - Round-robin: the primary accepts and hands each connection over the worker's
//!   hand-off channel. The listener waits for the channel to be readable in tokio's
//!   reactor ([`cluster::Listener::handoff_readiness`]) and takes what came without
//!   blocking ([`cluster::Listener::try_accept`]). It grants the primary `capacity`
//!   credits at the start and one more each time a connection it handed out ends, so
//!   the primary sends this worker at most `capacity` connections at once, and its
//!   balance across workers follows what each really holds (Node's workers take
//!   whatever they are sent).
//!
//! Either way, [`accept`](ClusterListener::accept) returns `Ok(None)` once the worker
//! is asked to go, and a [`ClusterStream`] counts as open in the worker until it drops.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cluster::{ListenAddr, OpenConnection};

use crate::drain::Stop;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Connections a round-robin worker asks for at once by default: each is a credit the
/// primary spends on a connection to this worker, given back when it ends.
pub const DEFAULT_CAPACITY: u32 = 256;

/// A cluster worker's TCP listener for tokio, hyper and axum (see the module docs).
#[derive(Debug)]
pub struct ClusterListener {
    listener: cluster::Listener,
    source: Source,
    local: SocketAddr,
}

#[derive(Debug)]
enum Source {
    /// Shared, reuse-port, exclusive: the socket itself, and the disconnect that ends
    /// accepting on it.
    Socket(TcpListener, Option<Stop>),
    /// Round-robin: readiness of the hand-off channel (a duplicate of it).
    Handoff(AsyncFd<OwnedFd>),
}

impl ClusterListener {
    /// Wraps a worker's listener ([`cluster::Listener::bind`], called before entering
    /// the runtime: it waits for the primary's reply), with [`DEFAULT_CAPACITY`].
    /// Must be called inside a tokio runtime with I/O enabled.
    ///
    /// # Errors
    ///
    /// `Unsupported` for a Unix listener (this type serves TCP); the errors of
    /// [`cluster::Listener::try_clone_std`] and of the runtime's registration.
    pub fn new(listener: cluster::Listener) -> io::Result<ClusterListener> {
        ClusterListener::with_capacity(listener, DEFAULT_CAPACITY)
    }

    /// Like [`new`](ClusterListener::new); in round-robin mode the worker holds at
    /// most `capacity` handed-off connections at once on this listener (1 to
    /// [`cluster::MAX_GRANTED`], which bounds a worker's listeners together); ignored
    /// in the other modes.
    ///
    /// # Errors
    ///
    /// As for [`new`](ClusterListener::new); `InvalidInput` for a capacity out of range.
    pub fn with_capacity(
        listener: cluster::Listener,
        capacity: u32,
    ) -> io::Result<ClusterListener> {
        let local = match listener.local_addr() {
            ListenAddr::Tcp(a) => *a,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("ClusterListener serves TCP, not {other}"),
                ))
            }
        };
        if capacity == 0 || capacity > cluster::MAX_GRANTED {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a capacity of {capacity}: from 1 to {} connections",
                    cluster::MAX_GRANTED
                ),
            ));
        }
        let source = match listener.handoff_readiness() {
            Some(ready) => {
                let fd = ready.as_fd().try_clone_to_owned()?;
                let ready = crate::sys::readable(fd)?;
                listener.grant(capacity)?;
                Source::Handoff(ready)
            }
            None => {
                let std = listener.try_clone_std()?.into_tcp().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "not a TCP listener")
                })?;
                std.set_nonblocking(true)?;
                Source::Socket(TcpListener::from_std(std)?, Stop::watch()?)
            }
        };
        Ok(ClusterListener {
            listener,
            source,
            local,
        })
    }

    /// The next connection and its peer, or `Ok(None)` once the worker is asked to go
    /// (its listener closed) and what the primary had handed over is taken.
    ///
    /// hyper 1 without axum, inside a worker's runtime:
    ///
    /// ```no_run
    /// use hyper::{body::Incoming, Request, Response};
    /// use hyper_util::rt::TokioIo;
    ///
    /// async fn serve(listener: cluster_tokio::ClusterListener) -> std::io::Result<()> {
    ///     while let Some((stream, _peer)) = listener.accept().await? {
    ///         tokio::spawn(async move {
    ///             let hello = hyper::service::service_fn(|_req: Request<Incoming>| async {
    ///                 Ok::<_, std::convert::Infallible>(Response::new("hello".to_string()))
    ///             });
    ///             let _ = hyper::server::conn::http1::Builder::new()
    ///                 .serve_connection(TokioIo::new(stream), hello)
    ///                 .await;
    ///         });
    ///     }
    ///     Ok(()) // asked to go: the spawned connections finish on their own
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// What accepting failed with (out of descriptors, …); the listener stays usable.
    pub async fn accept(&self) -> io::Result<Option<(ClusterStream, SocketAddr)>> {
        match &self.source {
            Source::Socket(l, stop) => {
                if self.listener.is_closed() {
                    return Ok(None);
                }
                let accepted = match stop {
                    Some(stop) => tokio::select! {
                        biased;
                        () = stop.asked() => return Ok(None),
                        a = l.accept() => a,
                    },
                    None => l.accept().await,
                };
                match accepted {
                    Ok((io, peer)) => Ok(Some((
                        ClusterStream {
                            io,
                            _open: self.listener.note_accepted(),
                            _credit: None,
                        },
                        peer,
                    ))),
                    // At a shutdown the primary stops a shared socket listening just
                    // before it tells the workers: the end, once the worker knows.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        if let Some(stop) = stop {
                            stop.asked().await;
                        }
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Source::Handoff(ready) => loop {
                let mut guard = ready.readable().await?;
                match guard.try_io(|_| self.listener.try_accept()) {
                    Ok(Ok(Some(mut conn))) => {
                        // First: the credit goes back when this connection ends, also
                        // if turning it into tokio's stream fails below.
                        let credit = Credit(self.listener.clone());
                        let open = conn.take_open();
                        let (std, peer) = conn.into_tcp().map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "a Unix connection")
                        })?;
                        std.set_nonblocking(true)?;
                        let stream = ClusterStream {
                            io: TcpStream::from_std(std)?,
                            _open: open,
                            _credit: Some(credit),
                        };
                        return Ok(Some((stream, peer)));
                    }
                    Ok(Ok(None)) => return Ok(None),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
        }
    }

    /// The address this listener serves, with port 0 resolved.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The cluster's listener underneath.
    pub fn get_ref(&self) -> &cluster::Listener {
        &self.listener
    }
}

/// axum's listener: errors are reported on stderr and retried after a pause (as
/// axum's own `TcpListener` does); once the worker is asked to go, no connection
/// comes any more (the graceful shutdown ends the server).
impl axum::serve::Listener for ClusterListener {
    type Io = ClusterStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ClusterStream, SocketAddr) {
        loop {
            match ClusterListener::accept(self).await {
                Ok(Some(c)) => return c,
                Ok(None) => std::future::pending::<()>().await,
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    eprintln!("cluster-tokio: accept on {}: {e}", self.local);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Gives the primary one credit back when a handed-off connection ends.
#[derive(Debug)]
struct Credit(cluster::Listener);

impl Drop for Credit {
    fn drop(&mut self) {
        // Never blocks; a closed listener grants nothing.
        let _ = self.0.grant(1);
    }
}

/// A connection from a [`ClusterListener`]: a `tokio::net::TcpStream` that counts as
/// open in its worker (and, in round-robin mode, holds one of its credits) until it
/// drops.
#[derive(Debug)]
pub struct ClusterStream {
    io: TcpStream,
    _open: OpenConnection,
    _credit: Option<Credit>,
}

impl ClusterStream {
    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// The TCP stream, mutably.
    pub fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.io
    }
}

impl AsyncRead for ClusterStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClusterStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
