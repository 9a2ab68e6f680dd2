//! [`SockType`]: whether a listen request is for a stream listener or a datagram socket.
//!
//! The primary keeps one handle per key *and* type: `127.0.0.1:0` asked for by a TCP
//! [`Listener`](crate::Listener) and by a UDP [`Datagram`](crate::Datagram) are two
//! handles on two ports, as Node keeps `net` servers and `dgram` sockets apart (its
//! `queryServer` key includes `addressType`: `4`, `6`, `udp4`, `udp6`).

/// Stream (TCP, Unix stream) or datagram (UDP, Unix datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SockType {
    /// A listening stream socket: connections.
    Stream,
    /// A bound datagram socket: datagrams.
    Datagram,
}
