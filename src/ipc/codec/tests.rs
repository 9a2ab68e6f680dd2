//! Unit tests of the record format: every message round-trips, and every way a record
//! can be wrong is refused with the error that says so. (The property tests, over a
//! million random and mutated records, are `ipc::property`.)

use std::time::Duration;

use super::*;

fn every_message() -> Vec<Message<'static>> {
    vec![
        Message::ListenRequest {
            seq: 11,
            options: ListenOptions::new(),
            addr: "[::1]:0".parse().unwrap(),
            sock: SockType::Datagram,
        },
        Message::ListenReply {
            seq: 11,
            result: Ok(ListenGrant {
                handle: 3,
                transport: Transport::Datagram,
                local: "[::1]:5353".parse().unwrap(),
            }),
        },
        Message::Online,
        Message::Disconnect,
        Message::Probe,
        Message::ListenRequest {
            seq: 7,
            options: ListenOptions::new(),
            addr: "127.0.0.1:0".parse().unwrap(),
            sock: SockType::Stream,
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
            sock: SockType::Stream,
        },
        Message::ListenRequest {
            seq: 9,
            options: ListenOptions::new().backlog(16),
            addr: ListenAddr::Unix("/tmp/x.sock".into()),
            sock: SockType::Stream,
        },
        Message::ListenRequest {
            seq: 10,
            options: ListenOptions::new().backlog(16),
            addr: ListenAddr::Fd(3),
            sock: SockType::Stream,
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
            attempts: 0,
        },
        Message::NewConn {
            peer: PeerAddr::Tcp("[2001:db8::1]:5555".parse().unwrap()),
            attempts: 3,
        },
        Message::NewConn {
            peer: PeerAddr::Unix(None),
            attempts: 255,
        },
        Message::NewConn {
            peer: PeerAddr::Unix(Some("/tmp/client".into())),
            attempts: 1,
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
        Message::Ping,
        Message::Pong { heartbeat_ms: 0 },
        Message::Pong {
            heartbeat_ms: u32::MAX,
        },
    ]
}

#[test]
fn ping_and_pong_payloads_are_exact() {
    // A ping has no payload; a pong exactly four bytes.
    let mut ping = Vec::new();
    Message::Ping.encode(&mut ping);
    ping.push(0);
    ping[4] = 1;
    assert!(matches!(
        Message::decode(&ping, 0),
        Err(ProtocolError::Malformed { kind: "ping", .. })
    ));
    for len in [0usize, 3, 5] {
        let mut pong = vec![kind::PONG, 0, 0, 0];
        pong.extend_from_slice(&(len as u32).to_le_bytes());
        pong.resize(HEADER_LEN + len, 7);
        assert!(
            matches!(
                Message::decode(&pong, 0),
                Err(ProtocolError::Malformed { kind: "pong", .. })
            ),
            "pong with {len} payload bytes"
        );
    }
    let mut pong = Vec::new();
    Message::Pong { heartbeat_ms: 5 }.encode(&mut pong);
    assert!(matches!(
        Message::decode(&pong, 1),
        Err(ProtocolError::UnexpectedFd { kind: "pong", .. })
    ));
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
    for k in [0u8, 16, 99, 255] {
        let buf = [k, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Message::decode(&buf, 0), Err(ProtocolError::UnknownKind(k)));
    }
    let buf = [kind::ONLINE, 1, 0, 0, 0, 0, 0, 0];
    assert_eq!(Message::decode(&buf, 0), Err(ProtocolError::Reserved));
}

#[test]
fn datagram_requests_and_grants() {
    // A datagram request is a listen request's payload under its own kind: the same
    // bytes after the header, so a stream request reads as it always did.
    let stream = Message::ListenRequest {
        seq: 5,
        options: ListenOptions::new(),
        addr: "127.0.0.1:53".parse().unwrap(),
        sock: SockType::Stream,
    };
    let datagram = Message::ListenRequest {
        seq: 5,
        options: ListenOptions::new(),
        addr: "127.0.0.1:53".parse().unwrap(),
        sock: SockType::Datagram,
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    stream.encode(&mut a);
    datagram.encode(&mut b);
    assert_eq!((a[0], b[0]), (kind::LISTEN_REQUEST, kind::DATAGRAM_REQUEST));
    assert_eq!(a[1..], b[1..]);
    assert_eq!(Message::decode(&b, 0), Ok(datagram.clone()));
    assert_eq!(datagram.name(), "datagram-request");
    // Never with a descriptor.
    assert_eq!(
        Message::decode(&b, 1),
        Err(ProtocolError::UnexpectedFd {
            kind: "datagram-request",
            count: 1
        })
    );
    // A grant's transport byte: 1, 2 and 3 are known; anything else is refused.
    let grant = Message::ListenReply {
        seq: 5,
        result: Ok(ListenGrant {
            handle: 9,
            transport: Transport::Datagram,
            local: "127.0.0.1:53".parse().unwrap(),
        }),
    };
    let mut g = Vec::new();
    grant.encode(&mut g);
    assert_eq!(Message::decode(&g, 1), Ok(grant));
    let at = HEADER_LEN + 4 + 4 + 4; // seq, errno, handle
    assert_eq!(g[at], tag::DATAGRAM);
    for bad in [0u8, 4, 255] {
        g[at] = bad;
        assert_eq!(
            Message::decode(&g, 1),
            Err(ProtocolError::Malformed {
                kind: "listen-reply",
                reason: "unknown transport"
            })
        );
    }
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
