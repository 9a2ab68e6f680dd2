//! The wire format of the primary ⇄ worker channels.
//!
//! One record per `SOCK_SEQPACKET` message, so the kernel keeps the boundaries and a
//! passed descriptor arrives with the record it belongs to:
//!
//! ```text
//! offset 0  kind      u8   which message (the numbers are in the `kind` module)
//! offset 1  reserved  [u8; 3], zero
//! offset 4  length    u32 little-endian: payload bytes that follow
//! offset 8  payload   `length` bytes, laid out per kind (integers little-endian)
//! ```
//!
//! Decoding is total: any byte string yields a [`Message`] or a [`ProtocolError`], never
//! a panic. A record must be exactly as long as its header says, its payload exactly as
//! long as its kind needs (no trailing bytes), and it must carry a descriptor exactly
//! when its kind does. Node's counterpart is the JSON `{cmd: 'NODE_CLUSTER', act, …}`
//! internal message of `lib/internal/cluster/utils.js`.
//!
//! # Where each part lives
//!
//! - This file: the format itself, the messages, the errors, each kind's number and
//!   descriptor rule.
//! - [`encode`]: a message to its record ([`Message::encode`]).
//! - [`decode`]: a record to a message or an error ([`Message::decode`]).
//! - `tests`: unit tests, one per way a record can be wrong; the property tests are
//!   `ipc::property`.

use crate::addr::{ListenAddr, PeerAddr};
use crate::options::ListenOptions;
use crate::setup_stage::SetupStage;
use crate::sock_type::SockType;

pub use error::ProtocolError;
pub use limits::MAX_MESSAGE_LEN;
pub(crate) use limits::{HEADER_LEN, MAX_RECORD_LEN};

mod decode;
mod encode;
pub(crate) mod error;
pub(crate) mod limits;
#[cfg(test)]
mod tests;

/// How a worker uses the descriptor that comes with a successful listen reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A socket: the worker calls `listen(2)` on it (a no-op when it already listens)
    /// and blocks in `accept(2)` (Shared and ReusePort modes).
    Socket,
    /// A hand-off channel: the worker receives connections from the primary over it
    /// (RoundRobin mode).
    Handoff,
    /// A bound datagram socket: the worker receives on it (every mode; the only
    /// transport for a datagram request, and only for one).
    Datagram,
}

/// One message between the primary and a worker. `User` borrows its payload from the
/// buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// Worker → primary: the worker runs (Node's `online`).
    Online,
    /// Worker → primary: please give me a listener for `addr` (Node's `queryServer`),
    /// or a datagram socket (its `dgram` counterpart): the two travel as two kinds with
    /// the same payload, so a record of the first kind reads as it always did.
    ListenRequest {
        /// Matches the reply to the request.
        seq: u32,
        /// How the listener should be set up (used when this request creates it).
        options: ListenOptions,
        /// The key.
        addr: ListenAddr,
        /// A stream listener or a datagram socket (the key's other half).
        sock: SockType,
    },
    /// Primary → worker: the answer to `ListenRequest`; `Ok` comes with a descriptor.
    ListenReply {
        /// The request's `seq`.
        seq: u32,
        /// The handle, or the `errno` of the failure (bind's `EADDRINUSE`, …).
        result: Result<ListenGrant, i32>,
    },
    /// Worker → primary: the worker listens on handle `handle` (Node's `listening`).
    Listening {
        /// The handle from the grant.
        handle: u32,
    },
    /// Worker → primary: the worker closed its listener for `handle` (Node's `close`).
    ListenerClosed {
        /// The handle from the grant.
        handle: u32,
    },
    /// Primary → worker, on a hand-off channel: a new connection, with its descriptor
    /// (Node's `newconn`).
    NewConn {
        /// Who connected, as the primary's `accept` saw it.
        peer: PeerAddr,
        /// How often the connection came back before, from workers that died or closed
        /// without receiving it. Workers ignore it; the primary reads it back when it
        /// takes the record back from a worker's queue, so the count survives the trip
        /// (the primary keeps no copy of a connection it sent).
        attempts: u8,
    },
    /// Primary → worker, on a hand-off channel: "are you there?" The thread that receives
    /// it answers with a fresh `Ready` credit and waits again. Sent to a worker that left
    /// a connection unreceived too long (see `primary::round_robin::stall`): its answer
    /// shows it takes connections again.
    Probe,
    /// Worker → primary, on a hand-off channel: `count` more threads wait in `accept`
    /// (the round-robin credit; it plays the part of Node's `accepted` ack).
    Ready {
        /// New credits.
        count: u32,
        /// Connections open in the worker now (for least-connections scheduling).
        open: u32,
    },
    /// Either way: application bytes.
    User(&'a [u8]),
    /// Primary → worker: stop accepting, finish, exit (Node's `disconnect`).
    Disconnect,
    /// Worker → primary: the child could not be set up (chdir, setuid, …); it exits.
    SetupFailed {
        /// The step that failed.
        stage: SetupStage,
        /// Its `errno`.
        errno: i32,
    },
    /// Primary → worker: "are you alive?" (the liveness check, see
    /// `primary::health`). The worker's control thread answers with `Pong`, so a
    /// stopped process, or one whose threads are all stuck, stays silent.
    Ping,
    /// Worker → primary: the answer to `Ping` (also sent unasked while the worker's
    /// inbox is full and its control thread reads nothing).
    Pong {
        /// Milliseconds since the application last called `Worker::heartbeat` (or
        /// since the worker started), saturated at `u32::MAX`.
        heartbeat_ms: u32,
    },
    /// Worker → primary: connections its listeners returned so far (shared and
    /// reuse-port modes count here; the primary counts round-robin hand-offs itself).
    Stats {
        /// Total connections accepted by this worker.
        accepted: u64,
        /// Connections open in the worker now.
        open: u32,
    },
}

/// What a successful listen reply grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenGrant {
    /// The primary's id for the handle (used in `Listening` / `ListenerClosed`).
    pub(crate) handle: u32,
    /// What the accompanying descriptor is.
    pub(crate) transport: Transport,
    /// The bound address, with port 0 resolved.
    pub(crate) local: ListenAddr,
}

/// Whether a kind travels with a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdRule {
    /// Never.
    None,
    /// Always, exactly one.
    One,
}

mod kind {
    pub(super) const ONLINE: u8 = 1;
    pub(super) const LISTEN_REQUEST: u8 = 2;
    pub(super) const LISTEN_REPLY: u8 = 3;
    pub(super) const LISTENING: u8 = 4;
    pub(super) const LISTENER_CLOSED: u8 = 5;
    pub(super) const NEW_CONN: u8 = 6;
    pub(super) const READY: u8 = 7;
    pub(super) const USER: u8 = 8;
    pub(super) const DISCONNECT: u8 = 9;
    pub(super) const SETUP_FAILED: u8 = 10;
    pub(super) const STATS: u8 = 11;
    pub(super) const PROBE: u8 = 12;
    pub(super) const PING: u8 = 13;
    pub(super) const PONG: u8 = 14;
    pub(super) const DATAGRAM_REQUEST: u8 = 15;
}

mod tag {
    pub(super) const V4: u8 = 4;
    pub(super) const V6: u8 = 6;
    pub(super) const UNIX: u8 = b'U';
    pub(super) const FD: u8 = b'F';
    pub(super) const SYSTEMD: u8 = b'S';
    pub(super) const SOCKET: u8 = 1;
    pub(super) const HANDOFF: u8 = 2;
    pub(super) const DATAGRAM: u8 = 3;
}

impl Message<'_> {
    /// The kind's name, for errors and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Online => "online",
            Message::ListenRequest {
                sock: SockType::Stream,
                ..
            } => "listen-request",
            Message::ListenRequest {
                sock: SockType::Datagram,
                ..
            } => "datagram-request",
            Message::ListenReply { .. } => "listen-reply",
            Message::Listening { .. } => "listening",
            Message::ListenerClosed { .. } => "listener-closed",
            Message::NewConn { .. } => "new-conn",
            Message::Ready { .. } => "ready",
            Message::User(_) => "user",
            Message::Disconnect => "disconnect",
            Message::SetupFailed { .. } => "setup-failed",
            Message::Stats { .. } => "stats",
            Message::Probe => "probe",
            Message::Ping => "ping",
            Message::Pong { .. } => "pong",
        }
    }

    /// Whether this message carries a descriptor.
    pub(crate) fn fd_rule(&self) -> FdRule {
        match self {
            Message::ListenReply { result: Ok(_), .. } | Message::NewConn { .. } => FdRule::One,
            Message::Online
            | Message::ListenRequest { .. }
            | Message::ListenReply { result: Err(_), .. }
            | Message::Listening { .. }
            | Message::ListenerClosed { .. }
            | Message::Ready { .. }
            | Message::User(_)
            | Message::Disconnect
            | Message::SetupFailed { .. }
            | Message::Stats { .. }
            | Message::Probe
            | Message::Ping
            | Message::Pong { .. } => FdRule::None,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Online => kind::ONLINE,
            Message::ListenRequest {
                sock: SockType::Stream,
                ..
            } => kind::LISTEN_REQUEST,
            Message::ListenRequest {
                sock: SockType::Datagram,
                ..
            } => kind::DATAGRAM_REQUEST,
            Message::ListenReply { .. } => kind::LISTEN_REPLY,
            Message::Listening { .. } => kind::LISTENING,
            Message::ListenerClosed { .. } => kind::LISTENER_CLOSED,
            Message::NewConn { .. } => kind::NEW_CONN,
            Message::Ready { .. } => kind::READY,
            Message::User(_) => kind::USER,
            Message::Disconnect => kind::DISCONNECT,
            Message::SetupFailed { .. } => kind::SETUP_FAILED,
            Message::Stats { .. } => kind::STATS,
            Message::Probe => kind::PROBE,
            Message::Ping => kind::PING,
            Message::Pong { .. } => kind::PONG,
        }
    }
}
