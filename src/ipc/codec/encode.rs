//! Encoding: a [`Message`] to its record, header and payload, in the layout the
//! module docs of [`codec`](super) give (Node's counterpart: `JSON.stringify` of the
//! internal message in `process.send`).

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::addr::{ListenAddr, PeerAddr};
use crate::options::ListenOptions;

use super::{tag, Message, Transport, HEADER_LEN};

impl Message<'_> {
    /// Appends the whole record (header and payload) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[self.kind(), 0, 0, 0, 0, 0, 0, 0]);
        match self {
            Message::Online | Message::Disconnect | Message::Probe | Message::Ping => {}
            Message::Pong { heartbeat_ms } => out.extend_from_slice(&heartbeat_ms.to_le_bytes()),
            Message::ListenRequest {
                seq, options, addr, ..
            } => {
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
                            Transport::Datagram => tag::DATAGRAM,
                        });
                        put_listen_addr(out, &grant.local);
                    }
                    Err(errno) => out.extend_from_slice(&errno.to_le_bytes()),
                }
            }
            Message::Listening { handle } | Message::ListenerClosed { handle } => {
                out.extend_from_slice(&handle.to_le_bytes());
            }
            Message::NewConn { peer, attempts } => {
                out.push(*attempts);
                match peer {
                    PeerAddr::Tcp(a) => put_socket_addr(out, a),
                    PeerAddr::Unix(p) => put_path(out, p.as_deref().unwrap_or(Path::new(""))),
                }
            }
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
        ListenAddr::Systemd(name) => {
            let bytes = name.as_deref().unwrap_or("").as_bytes();
            let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
            out.push(tag::SYSTEMD);
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}
