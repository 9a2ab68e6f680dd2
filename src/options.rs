//! [`ListenOptions`]: how a listener and the connections it accepts are set up.
//!
//! `TCP_NODELAY` and `TCP_DEFER_ACCEPT` are set **once, on the listening socket**, by
//! whoever creates it (the primary in a cluster, the process itself outside one): Linux
//! copies a TCP listener's `TCP_NODELAY` into every connection it accepts, so it costs
//! no system call per connection.
//!
//! The send and receive timeouts are set on each connection the listener returns (one
//! `setsockopt` each, only for those asked for). Not on the listening socket: there a
//! receive timeout bounds a blocking `accept(2)` as well, so every thread blocked in
//! `accept` would wake with `EAGAIN` once per timeout, idle or not (it did, and each
//! woken thread then waited in `poll`, where every connection woke them all). A server
//! that wants no `setsockopt` per connection sets a timeout itself, only on the
//! connections that come to wait (as the `hello` example does).

use std::time::Duration;

/// The listen backlog used when none is given (Node's default, 511).
pub const DEFAULT_BACKLOG: i32 = 511;

/// Settings for [`Listener::bind_with`](crate::Listener::bind_with); `ListenOptions::new()`
/// is what [`Listener::bind`](crate::Listener::bind) uses.
///
/// ```no_run
/// use std::time::Duration;
/// use cluster::{ListenOptions, Listener};
///
/// let options = ListenOptions::new()
///     .nodelay(true)
///     .read_timeout(Some(Duration::from_millis(250)));
/// let _listener = Listener::bind_with("127.0.0.1:8080", &options)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    pub(crate) backlog: i32,
    pub(crate) nodelay: bool,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) defer_accept: Option<Duration>,
    pub(crate) exclusive: bool,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions::new()
    }
}

impl ListenOptions {
    /// Backlog 511 (Node's), nothing else set.
    pub fn new() -> ListenOptions {
        ListenOptions {
            backlog: DEFAULT_BACKLOG,
            nodelay: false,
            read_timeout: None,
            write_timeout: None,
            defer_accept: None,
            exclusive: false,
        }
    }

    /// The `listen(2)` backlog: connections the kernel queues before they are accepted.
    pub fn backlog(mut self, n: i32) -> ListenOptions {
        self.backlog = n;
        self
    }

    /// `TCP_NODELAY` on every accepted TCP connection (Nagle's algorithm off).
    pub fn nodelay(mut self, on: bool) -> ListenOptions {
        self.nodelay = on;
        self
    }

    /// `SO_RCVTIMEO` on every accepted connection: a read waits at most this long and
    /// then fails with `WouldBlock`.
    pub fn read_timeout(mut self, d: Option<Duration>) -> ListenOptions {
        self.read_timeout = d.filter(|d| !d.is_zero());
        self
    }

    /// `SO_SNDTIMEO` on every accepted connection.
    pub fn write_timeout(mut self, d: Option<Duration>) -> ListenOptions {
        self.write_timeout = d.filter(|d| !d.is_zero());
        self
    }

    /// `TCP_DEFER_ACCEPT` (Linux, TCP only): the kernel hands a connection over only
    /// once its first data has arrived (or after about this long), so the thread that
    /// accepts it finds the request already there instead of blocking in its first
    /// read, and clients that connect and say nothing never reach the application.
    /// Only for protocols where the client speaks first (HTTP, not SMTP).
    pub fn defer_accept(mut self, d: Option<Duration>) -> ListenOptions {
        self.defer_accept = d.filter(|d| !d.is_zero());
        self
    }

    /// Node's `exclusive: true` (`server.listen({ port, exclusive: true })`): in a
    /// cluster worker, bind by itself instead of asking the primary. The worker creates,
    /// binds and owns the socket with its own credentials (after any privilege drop of
    /// [`Builder::user`](crate::Builder::user)), exactly as outside a cluster: same error
    /// messages, port 0 is this worker's own port, and no other worker shares it. The
    /// worker's runtime still closes the listener when the worker disconnects, so its
    /// accept loop ends with the others; the primary knows nothing of it (no
    /// [`Event::Listening`](crate::Event::Listening), not kept across a respawn, not
    /// passed across a binary upgrade, not counted in the worker's accepted connections).
    ///
    /// Use it for a per-worker admin or metrics port, or in a test that needs one
    /// worker's own socket. Outside a cluster it changes nothing.
    ///
    /// # Security
    ///
    /// [`Builder::listen_only`](crate::Builder::listen_only) limits what the *primary*
    /// binds for workers, with the primary's privileges. An exclusive listener is not
    /// bound by the primary, so the allowlist does not apply to it: it is a socket the
    /// worker could open with `std::net` anyway, created with the worker's own (dropped)
    /// privileges, so the kernel's rules apply to it (a port below 1024 needs
    /// `CAP_NET_BIND_SERVICE`, which a worker that dropped privileges does not have; a
    /// directory the worker cannot write refuses its Unix socket file). A cluster that
    /// must keep its workers off the network altogether needs the kernel to say so
    /// (a network namespace, seccomp, a firewall), not this crate.
    pub fn exclusive(mut self, on: bool) -> ListenOptions {
        self.exclusive = on;
        self
    }
}
