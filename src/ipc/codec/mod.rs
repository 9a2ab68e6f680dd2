//! The wire format of the primary ⇄ worker channels.
//!
//! One record per `SOCK_SEQPACKET` message, so the kernel keeps the boundaries and a
//! passed descriptor arrives with the record it belongs to:
//!
//! ```text
//! offset 0  kind      u8   which message (see `Kind`)
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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::addr::{ListenAddr, PeerAddr};
use crate::options::ListenOptions;
use crate::settings::SetupStage;

/// Bytes of the record header.
pub(crate) const HEADER_LEN: usize = 8;

/// The largest user message, in bytes, that [`Cluster::send`](crate::Cluster::send) and
/// [`Worker::send`](crate::Worker::send) accept (64 KiB). Larger payloads are refused
/// with an error before anything is sent; the channel stays usable.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// The largest record on the wire: a header and the largest payload.
pub(crate) const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_MESSAGE_LEN;

/// How a worker uses the descriptor that comes with a successful listen reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A socket: the worker calls `listen(2)` on it (a no-op when it already listens)
    /// and blocks in `accept(2)` (Shared and ReusePort modes).
    Socket,
    /// A hand-off channel: the worker receives connections from the primary over it
    /// (RoundRobin mode).
    Handoff,
}

/// One message between the primary and a worker. `User` borrows its payload from the
/// buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// Worker → primary: the worker runs (Node's `online`).
    Online,
    /// Worker → primary: please give me a listener for `addr` (Node's `queryServer`).
    ListenRequest {
        /// Matches the reply to the request.
        seq: u32,
        /// How the listener should be set up (used when this request creates it).
        options: ListenOptions,
        /// The key.
        addr: ListenAddr,
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
    },
    /// Primary → worker, on a hand-off channel: "are you there?" The thread that receives
    /// it answers with a fresh `Ready` credit and waits again. Sent to a worker that left
    /// a connection unreceived too long (see `round_robin.rs`): its answer shows it
    /// takes connections again.
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

/// Why a record was refused. Each one closes the offending worker's channel; none
/// panics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Shorter than the 8-byte header.
    Short {
        /// Bytes received.
        len: usize,
    },
    /// Longer than the largest record (or truncated by the receive buffer).
    Oversized {
        /// Bytes received (at least).
        len: usize,
    },
    /// The header's length field disagrees with the record's size.
    LengthMismatch {
        /// Payload bytes the header claims.
        declared: usize,
        /// Payload bytes present.
        actual: usize,
    },
    /// An unknown message kind.
    UnknownKind(u8),
    /// The reserved header bytes are not zero.
    Reserved,
    /// The payload does not fit its kind.
    Malformed {
        /// The message kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Descriptors arrived with a kind that carries none, or more than one arrived.
    UnexpectedFd {
        /// The message kind.
        kind: &'static str,
        /// How many arrived (all closed).
        count: usize,
    },
    /// A kind that must carry a descriptor arrived without one.
    MissingFd {
        /// The message kind.
        kind: &'static str,
    },
    /// The kernel truncated the control data (`MSG_CTRUNC`): descriptors were lost, for
    /// instance at `RLIMIT_NOFILE`. Those that arrived were closed.
    ControlTruncated,
    /// The worker keeps sending requests but does not read the replies.
    NotReading,
    /// More messages in one second than the cluster's
    /// [`message_limit`](crate::Builder::message_limit).
    Flooding {
        /// The limit.
        limit: u32,
    },
    /// A message that is valid but must not travel in this direction or on this channel.
    Unexpected {
        /// The message kind.
        kind: &'static str,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Short { len } => {
                write!(f, "record of {len} bytes is shorter than its header")
            }
            ProtocolError::Oversized { len } => {
                write!(
                    f,
                    "record of {len} bytes exceeds the limit of {MAX_RECORD_LEN}"
                )
            }
            ProtocolError::LengthMismatch { declared, actual } => {
                write!(
                    f,
                    "header declares {declared} payload bytes, record has {actual}"
                )
            }
            ProtocolError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            ProtocolError::Reserved => f.write_str("reserved header bytes are not zero"),
            ProtocolError::Malformed { kind, reason } => {
                write!(f, "malformed {kind} message: {reason}")
            }
            ProtocolError::UnexpectedFd { kind, count } => {
                write!(
                    f,
                    "{kind} message arrived with {count} descriptor(s) it must not carry"
                )
            }
            ProtocolError::MissingFd { kind } => {
                write!(f, "{kind} message arrived without its descriptor")
            }
            ProtocolError::ControlTruncated => {
                f.write_str("control data truncated (MSG_CTRUNC): descriptors were dropped")
            }
            ProtocolError::Unexpected { kind } => write!(f, "{kind} message is not expected here"),
            ProtocolError::NotReading => {
                f.write_str("requests keep coming but replies are not read")
            }
            ProtocolError::Flooding { limit } => {
                write!(f, "more than {limit} messages in one second")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

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
}

mod tag {
    pub(super) const V4: u8 = 4;
    pub(super) const V6: u8 = 6;
    pub(super) const UNIX: u8 = b'U';
    pub(super) const FD: u8 = b'F';
    pub(super) const SOCKET: u8 = 1;
    pub(super) const HANDOFF: u8 = 2;
}

impl Message<'_> {
    /// The kind's name, for errors and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Online => "online",
            Message::ListenRequest { .. } => "listen-request",
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
            | Message::Probe => FdRule::None,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Online => kind::ONLINE,
            Message::ListenRequest { .. } => kind::LISTEN_REQUEST,
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
        }
    }

    /// Appends the whole record (header and payload) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[self.kind(), 0, 0, 0, 0, 0, 0, 0]);
        match self {
            Message::Online | Message::Disconnect | Message::Probe => {}
            Message::ListenRequest { seq, options, addr } => {
                out.extend_from_slice(&seq.to_le_bytes());
                put_options(out, options);
                put_listen_addr(out, addr);
            }
            Message::ListenReply { seq, result } => {
                out.extend_from_slice(&seq.to_le_bytes());
                match result {
                    Ok(grant) => {
                        out.extend_from_slice(&0i32.to_le_bytes());
                        out.extend_from_slice(&grant.handle.to_le_bytes());
                        out.push(match grant.transport {
                            Transport::Socket => tag::SOCKET,
                            Transport::Handoff => tag::HANDOFF,
                        });
                        put_listen_addr(out, &grant.local);
                    }
                    Err(errno) => out.extend_from_slice(&errno.to_le_bytes()),
                }
            }
            Message::Listening { handle } | Message::ListenerClosed { handle } => {
                out.extend_from_slice(&handle.to_le_bytes());
            }
            Message::NewConn { peer } => match peer {
                PeerAddr::Tcp(a) => put_socket_addr(out, a),
                PeerAddr::Unix(p) => put_path(out, p.as_deref().unwrap_or(Path::new(""))),
            },
            Message::Ready { count, open } => {
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&open.to_le_bytes());
            }
            Message::User(bytes) => out.extend_from_slice(bytes),
            Message::SetupFailed { stage, errno } => {
                out.push(stage.code());
                out.extend_from_slice(&errno.to_le_bytes());
            }
            Message::Stats { accepted, open } => {
                out.extend_from_slice(&accepted.to_le_bytes());
                out.extend_from_slice(&open.to_le_bytes());
            }
        }
        let payload = (out.len() - start - HEADER_LEN) as u32;
        out[start + 4..start + 8].copy_from_slice(&payload.to_le_bytes());
    }

    /// Decodes one record. `fds` is how many descriptors arrived with it; the rule of
    /// the decoded kind is checked against it.
    pub(crate) fn decode(record: &[u8], fds: usize) -> Result<Message<'_>, ProtocolError> {
        if record.len() < HEADER_LEN {
            return Err(ProtocolError::Short { len: record.len() });
        }
        if record.len() > MAX_RECORD_LEN {
            return Err(ProtocolError::Oversized { len: record.len() });
        }
        let declared = u32::from_le_bytes([record[4], record[5], record[6], record[7]]) as usize;
        let payload = &record[HEADER_LEN..];
        if declared != payload.len() {
            return Err(ProtocolError::LengthMismatch {
                declared,
                actual: payload.len(),
            });
        }
        if record[1..4] != [0, 0, 0] {
            return Err(ProtocolError::Reserved);
        }
        let mut r = Reader {
            buf: payload,
            kind: "",
        };
        let msg = match record[0] {
            kind::ONLINE => r.named("online").done(Message::Online)?,
            kind::DISCONNECT => r.named("disconnect").done(Message::Disconnect)?,
            kind::PROBE => r.named("probe").done(Message::Probe)?,
            kind::LISTEN_REQUEST => {
                r.kind = "listen-request";
                let seq = r.u32()?;
                let options = r.options()?;
                let addr = r.listen_addr()?;
                r.done(Message::ListenRequest { seq, options, addr })?
            }
            kind::LISTEN_REPLY => {
                r.kind = "listen-reply";
                let seq = r.u32()?;
                let errno = r.i32()?;
                let result = if errno == 0 {
                    let handle = r.u32()?;
                    let transport = match r.u8()? {
                        tag::SOCKET => Transport::Socket,
                        tag::HANDOFF => Transport::Handoff,
                        _ => return Err(r.malformed("unknown transport")),
                    };
                    let local = r.listen_addr()?;
                    Ok(ListenGrant {
                        handle,
                        transport,
                        local,
                    })
                } else if errno > 0 {
                    Err(errno)
                } else {
                    return Err(r.malformed("negative errno"));
                };
                r.done(Message::ListenReply { seq, result })?
            }
            kind::LISTENING => {
                r.kind = "listening";
                let handle = r.u32()?;
                r.done(Message::Listening { handle })?
            }
            kind::LISTENER_CLOSED => {
                r.kind = "listener-closed";
                let handle = r.u32()?;
                r.done(Message::ListenerClosed { handle })?
            }
            kind::NEW_CONN => {
                r.kind = "new-conn";
                let peer = match payload.first() {
                    Some(&tag::UNIX) => {
                        r.u8()?;
                        let p = r.path()?;
                        PeerAddr::Unix(if p.as_os_str().is_empty() {
                            None
                        } else {
                            Some(p)
                        })
                    }
                    _ => PeerAddr::Tcp(r.socket_addr()?),
                };
                r.done(Message::NewConn { peer })?
            }
            kind::READY => {
                r.kind = "ready";
                let count = r.u32()?;
                if count == 0 {
                    return Err(r.malformed("zero credits"));
                }
                let open = r.u32()?;
                r.done(Message::Ready { count, open })?
            }
            kind::USER => Message::User(payload),
            kind::SETUP_FAILED => {
                r.kind = "setup-failed";
                let stage =
                    SetupStage::from_code(r.u8()?).ok_or(r.malformed("unknown setup stage"))?;
                let errno = r.i32()?;
                r.done(Message::SetupFailed { stage, errno })?
            }
            kind::STATS => {
                r.kind = "stats";
                let accepted = u64::from_le_bytes(r.array()?);
                let open = r.u32()?;
                r.done(Message::Stats { accepted, open })?
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        match (msg.fd_rule(), fds) {
            (FdRule::None, 0) | (FdRule::One, 1) => Ok(msg),
            (FdRule::One, 0) => Err(ProtocolError::MissingFd { kind: msg.name() }),
            (_, count) => Err(ProtocolError::UnexpectedFd {
                kind: msg.name(),
                count,
            }),
        }
    }
}

fn put_socket_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            out.push(tag::V4);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_le_bytes());
        }
        SocketAddr::V6(v6) => {
            out.push(tag::V6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_le_bytes());
            out.extend_from_slice(&v6.flowinfo().to_le_bytes());
            out.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
}

fn put_path(out: &mut Vec<u8>, p: &Path) {
    let bytes = p.as_os_str().as_bytes();
    // Paths are checked against the 107-byte socket limit long before they get here;
    // clamp anyway so the length field can never lie.
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    out.push(tag::UNIX);
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Durations travel as milliseconds (0 = none), rounded up so a short one stays set.
fn millis(d: Option<Duration>) -> u32 {
    d.map_or(0, |d| {
        d.as_nanos().div_ceil(1_000_000).clamp(1, u32::MAX as u128) as u32
    })
}

fn put_options(out: &mut Vec<u8>, o: &ListenOptions) {
    out.extend_from_slice(&o.backlog.to_le_bytes());
    out.push(u8::from(o.nodelay));
    out.extend_from_slice(&millis(o.read_timeout).to_le_bytes());
    out.extend_from_slice(&millis(o.write_timeout).to_le_bytes());
    out.extend_from_slice(&millis(o.defer_accept).to_le_bytes());
}

fn put_listen_addr(out: &mut Vec<u8>, a: &ListenAddr) {
    match a {
        ListenAddr::Tcp(sa) => put_socket_addr(out, sa),
        ListenAddr::Unix(p) => put_path(out, p),
        ListenAddr::Fd(n) => {
            out.push(tag::FD);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A cursor over a payload that fails, rather than panics, when bytes run out.
struct Reader<'a> {
    buf: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn named(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn malformed(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            kind: self.kind,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed("payload too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn socket_addr(&mut self) -> Result<SocketAddr, ProtocolError> {
        match self.u8()? {
            tag::V4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = self.u16()?;
                Ok(SocketAddr::new(IpAddr::V4(ip), port))
            }
            tag::V6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let flow = self.u32()?;
                let scope = self.u32()?;
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
            }
            _ => Err(self.malformed("unknown address family")),
        }
    }

    fn path(&mut self) -> Result<PathBuf, ProtocolError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        if bytes.contains(&0) {
            return Err(self.malformed("NUL byte in a path"));
        }
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }

    fn duration(&mut self) -> Result<Option<Duration>, ProtocolError> {
        let ms = self.u32()?;
        Ok((ms != 0).then(|| Duration::from_millis(u64::from(ms))))
    }

    fn options(&mut self) -> Result<ListenOptions, ProtocolError> {
        let backlog = self.i32()?;
        let nodelay = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(self.malformed("bad nodelay flag")),
        };
        Ok(ListenOptions::new()
            .backlog(backlog)
            .nodelay(nodelay)
            .read_timeout(self.duration()?)
            .write_timeout(self.duration()?)
            .defer_accept(self.duration()?))
    }

    fn listen_addr(&mut self) -> Result<ListenAddr, ProtocolError> {
        let Some(&tag) = self.buf.first() else {
            return Err(self.malformed("payload too short"));
        };
        match tag {
            tag::V4 | tag::V6 => Ok(ListenAddr::Tcp(self.socket_addr()?)),
            tag::UNIX => {
                self.u8()?;
                let p = self.path()?;
                if p.as_os_str().is_empty() {
                    return Err(self.malformed("empty Unix socket path"));
                }
                Ok(ListenAddr::Unix(p))
            }
            tag::FD => {
                self.u8()?;
                let n = self.i32()?;
                if n < 0 {
                    return Err(self.malformed("negative descriptor number"));
                }
                Ok(ListenAddr::Fd(n))
            }
            _ => Err(self.malformed("unknown address family")),
        }
    }

    fn done<T>(self, value: T) -> Result<T, ProtocolError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<Message<'static>> {
        vec![
            Message::Online,
            Message::Disconnect,
            Message::Probe,
            Message::ListenRequest {
                seq: 7,
                options: ListenOptions::new(),
                addr: "127.0.0.1:0".parse().unwrap(),
            },
            Message::ListenRequest {
                seq: 8,
                options: ListenOptions::new()
                    .backlog(-1)
                    .nodelay(true)
                    .read_timeout(Some(Duration::from_millis(250)))
                    .write_timeout(Some(Duration::from_secs(5)))
                    .defer_accept(Some(Duration::from_secs(1))),
                addr: "[::1]:8080".parse().unwrap(),
            },
            Message::ListenRequest {
                seq: 9,
                options: ListenOptions::new().backlog(16),
                addr: ListenAddr::Unix("/tmp/x.sock".into()),
            },
            Message::ListenRequest {
                seq: 10,
                options: ListenOptions::new().backlog(16),
                addr: ListenAddr::Fd(3),
            },
            Message::ListenReply {
                seq: 7,
                result: Ok(ListenGrant {
                    handle: 1,
                    transport: Transport::Socket,
                    local: "127.0.0.1:41234".parse().unwrap(),
                }),
            },
            Message::ListenReply {
                seq: 8,
                result: Ok(ListenGrant {
                    handle: 2,
                    transport: Transport::Handoff,
                    local: ListenAddr::Unix("/run/a".into()),
                }),
            },
            Message::ListenReply {
                seq: 9,
                result: Err(libc::EADDRINUSE),
            },
            Message::Listening { handle: 3 },
            Message::ListenerClosed { handle: 3 },
            Message::NewConn {
                peer: PeerAddr::Tcp("10.0.0.1:5555".parse().unwrap()),
            },
            Message::NewConn {
                peer: PeerAddr::Tcp("[2001:db8::1]:5555".parse().unwrap()),
            },
            Message::NewConn {
                peer: PeerAddr::Unix(None),
            },
            Message::NewConn {
                peer: PeerAddr::Unix(Some("/tmp/client".into())),
            },
            Message::Ready { count: 1, open: 0 },
            Message::Ready { count: 64, open: 7 },
            Message::User(b""),
            Message::User(b"hello"),
            Message::SetupFailed {
                stage: SetupStage::Uid,
                errno: libc::EPERM,
            },
            Message::Stats {
                accepted: u64::MAX - 1,
                open: 3,
            },
        ]
    }

    fn fds_for(m: &Message<'_>) -> usize {
        match m.fd_rule() {
            FdRule::None => 0,
            FdRule::One => 1,
        }
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            assert_eq!(Message::decode(&buf, fds_for(&m)).as_ref(), Ok(&m), "{m:?}");
        }
    }

    #[test]
    fn largest_user_message_round_trips() {
        let payload = vec![0xA5u8; MAX_MESSAGE_LEN];
        let mut buf = Vec::new();
        Message::User(&payload).encode(&mut buf);
        assert_eq!(buf.len(), MAX_RECORD_LEN);
        assert_eq!(Message::decode(&buf, 0), Ok(Message::User(&payload)));
    }

    #[test]
    fn short_records() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Message::decode(&vec![1u8; len], 0),
                Err(ProtocolError::Short { len })
            );
        }
    }

    #[test]
    fn oversized_record() {
        let mut buf = vec![kind::USER, 0, 0, 0];
        buf.extend_from_slice(&((MAX_MESSAGE_LEN + 1) as u32).to_le_bytes());
        buf.resize(HEADER_LEN + MAX_MESSAGE_LEN + 1, 0);
        assert_eq!(
            Message::decode(&buf, 0),
            Err(ProtocolError::Oversized { len: buf.len() })
        );
    }

    #[test]
    fn length_field_must_match() {
        let mut buf = Vec::new();
        Message::Listening { handle: 1 }.encode(&mut buf);
        buf.push(0);
        assert_eq!(
            Message::decode(&buf, 0),
            Err(ProtocolError::LengthMismatch {
                declared: 4,
                actual: 5
            })
        );
        buf[4] = 5; // now the header agrees, but the payload has a trailing byte
        assert!(matches!(
            Message::decode(&buf, 0),
            Err(ProtocolError::Malformed {
                reason: "trailing bytes",
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_and_reserved_bytes() {
        for k in [0u8, 13, 99, 255] {
            let buf = [k, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(Message::decode(&buf, 0), Err(ProtocolError::UnknownKind(k)));
        }
        let buf = [kind::ONLINE, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(Message::decode(&buf, 0), Err(ProtocolError::Reserved));
    }

    #[test]
    fn descriptors_where_none_belong_and_missing_ones() {
        for m in every_message() {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            match m.fd_rule() {
                FdRule::None => assert_eq!(
                    Message::decode(&buf, 1),
                    Err(ProtocolError::UnexpectedFd {
                        kind: m.name(),
                        count: 1
                    })
                ),
                FdRule::One => {
                    assert_eq!(
                        Message::decode(&buf, 0),
                        Err(ProtocolError::MissingFd { kind: m.name() })
                    );
                    assert_eq!(
                        Message::decode(&buf, 2),
                        Err(ProtocolError::UnexpectedFd {
                            kind: m.name(),
                            count: 2
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_of_every_message_is_an_error() {
        for m in every_message() {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            for cut in HEADER_LEN..buf.len() {
                let mut t = buf[..cut].to_vec();
                let declared = (cut - HEADER_LEN) as u32;
                t[4..8].copy_from_slice(&declared.to_le_bytes());
                if let Message::User(_) = m {
                    continue; // any length is a valid user payload
                }
                assert!(
                    Message::decode(&t, fds_for(&m)).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn zero_credit_ready_is_malformed() {
        let mut buf = Vec::new();
        Message::Ready { count: 0, open: 0 }.encode(&mut buf);
        assert!(matches!(
            Message::decode(&buf, 0),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
