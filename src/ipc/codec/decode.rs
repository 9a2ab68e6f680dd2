//! Decoding: a record to a [`Message`] or a [`ProtocolError`], never a panic. The
//! header is checked first (lengths, reserved bytes, kind), then the payload is read
//! through a [`Reader`], which fails rather than panics when bytes run out, and the
//! descriptor count is checked against the kind's [`FdRule`]. Node's counterpart:
//! `JSON.parse` of the internal message, which trusts its peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{ListenAddr, PeerAddr};
use crate::options::ListenOptions;
use crate::setup_stage::SetupStage;
use crate::sock_type::SockType;

use super::{kind, tag, FdRule, ListenGrant, Message, ProtocolError, Transport};
use super::{HEADER_LEN, MAX_RECORD_LEN};

impl Message<'_> {
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
            kind::PING => r.named("ping").done(Message::Ping)?,
            kind::PONG => {
                r.kind = "pong";
                let heartbeat_ms = r.u32()?;
                r.done(Message::Pong { heartbeat_ms })?
            }
            kind::LISTEN_REQUEST | kind::DATAGRAM_REQUEST => {
                let sock = if record[0] == kind::LISTEN_REQUEST {
                    r.kind = "listen-request";
                    SockType::Stream
                } else {
                    r.kind = "datagram-request";
                    SockType::Datagram
                };
                let seq = r.u32()?;
                let options = r.options()?;
                let addr = r.listen_addr()?;
                r.done(Message::ListenRequest {
                    seq,
                    options,
                    addr,
                    sock,
                })?
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
                        tag::DATAGRAM => Transport::Datagram,
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
                let attempts = r.u8()?;
                let peer = match payload.get(1) {
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
                r.done(Message::NewConn { peer, attempts })?
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
            tag::SYSTEMD => {
                self.u8()?;
                let name = self.path()?;
                let name = name
                    .to_str()
                    .ok_or_else(|| self.malformed("a systemd socket name that is not text"))?;
                Ok(ListenAddr::Systemd(
                    (!name.is_empty()).then(|| name.to_string()),
                ))
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
