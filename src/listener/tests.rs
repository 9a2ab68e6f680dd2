//! Unit tests of a standalone listener (no cluster, no fork): the timeouts of
//! `ListenOptions` land on each connection, never on the listening socket.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::Listener;
use crate::options::ListenOptions;

const READ: Duration = Duration::from_millis(300);
const WRITE: Duration = Duration::from_millis(700);

fn options() -> ListenOptions {
    ListenOptions::new()
        .read_timeout(Some(READ))
        .write_timeout(Some(WRITE))
}

/// `SO_RCVTIMEO` of the listening socket itself, read through a std socket that shares
/// its descriptor (`getsockopt` works on any socket).
fn listener_read_timeout(l: &Listener) -> Option<Duration> {
    let std = l.try_clone_std().unwrap().into_tcp().unwrap();
    TcpStream::from(std::os::fd::OwnedFd::from(std))
        .read_timeout()
        .unwrap()
}

#[test]
fn tcp_timeouts_are_set_on_each_connection_not_on_the_listener() {
    let l = Listener::bind_with("127.0.0.1:0", &options()).unwrap();
    // On the listening socket, SO_RCVTIMEO would bound accept(2) as well: every
    // blocked accepter would wake once per timeout.
    assert_eq!(listener_read_timeout(&l), None);
    let addr = l.local_addr().to_string();
    let mut client = TcpStream::connect(&addr).unwrap();
    client.write_all(b"x").unwrap();
    let conn = l.accept().unwrap().unwrap();
    let s = conn.stream();
    match s {
        crate::Stream::Tcp(t) => {
            assert_eq!(t.read_timeout().unwrap(), Some(READ));
            assert_eq!(t.write_timeout().unwrap(), Some(WRITE));
        }
        crate::Stream::Unix(_) => panic!("a TCP listener returned a Unix stream"),
    }
}

#[test]
fn unix_timeouts_are_set_on_each_connection() {
    let dir = std::env::temp_dir().join(format!("cluster-lt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let l = Listener::bind_with(format!("unix:{}", path.display()), &options()).unwrap();
    let _client = UnixStream::connect(&path).unwrap();
    let conn = l.accept().unwrap().unwrap();
    match conn.stream() {
        crate::Stream::Unix(u) => {
            assert_eq!(u.read_timeout().unwrap(), Some(READ));
            assert_eq!(u.write_timeout().unwrap(), Some(WRITE));
        }
        crate::Stream::Tcp(_) => panic!("a Unix listener returned a TCP stream"),
    }
    drop(conn);
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_timeouts_unless_asked() {
    let l = Listener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(l.local_addr().to_string()).unwrap();
    let conn = l.accept().unwrap().unwrap();
    let crate::Stream::Tcp(t) = conn.stream() else {
        panic!("a TCP listener returned a Unix stream");
    };
    assert_eq!(t.read_timeout().unwrap(), None);
    assert_eq!(t.write_timeout().unwrap(), None);
}

/// A hand-off listener over a channel pair, and the primary's end.
fn handoff_listener() -> (Listener, crate::ipc::channel::Channel) {
    let (primary, worker) = crate::ipc::channel::Channel::pair().unwrap();
    let listener = Listener::new(
        "127.0.0.1:1".parse().unwrap(),
        super::Source::Handoff(worker),
        super::Origin::Standalone { unlink: None },
        &ListenOptions::new(),
    );
    (listener, primary)
}

/// Sends `n` real TCP connections over `primary`, as round-robin's primary does; the
/// clients' ends, in order.
fn send_connections(primary: &crate::ipc::channel::Channel, n: usize) -> Vec<TcpStream> {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
            let (conn, peer) = server.accept().unwrap();
            let msg = crate::ipc::codec::Message::NewConn {
                peer: crate::addr::PeerAddr::Tcp(peer),
                attempts: 0,
            };
            primary.send(&msg, Some(conn.as_fd())).unwrap();
            client
        })
        .collect()
}

/// `accept` returns the connections of `clients`, in order, then `None`.
fn accepts_then_ends(listener: &Listener, clients: &[TcpStream]) {
    for (i, client) in clients.iter().enumerate() {
        let conn = listener
            .accept()
            .unwrap()
            .unwrap_or_else(|| panic!("connection {i} lost in the channel"));
        let crate::Stream::Tcp(t) = conn.stream() else {
            panic!("a TCP peer came as a Unix stream");
        };
        assert_eq!(t.peer_addr().unwrap(), client.local_addr().unwrap());
    }
    assert!(listener.accept().unwrap().is_none());
}

/// Round-robin: the worker closes its listener (it disconnects) while the primary's
/// connections sent ahead are queued and no thread is receiving: they are still
/// returned, then the end (after an upgrade's `execve` nobody else could take them).
#[test]
fn handoff_queue_is_drained_after_close() {
    let (listener, primary) = handoff_listener();
    let clients = send_connections(&primary, 2);
    listener.close();
    accepts_then_ends(&listener, &clients);
}

/// Round-robin: the primary's end of the hand-off channel closes (its `execve` in a
/// binary upgrade, or its exit) with a credit of ours unread and two connections it
/// sent ahead still queued. Both are returned, then the end (before, the first `accept`
/// returned `None` and the worker exited with them queued: their clients got resets).
#[test]
fn handoff_queue_is_drained_when_the_primary_is_gone() {
    use crate::ipc::codec::Message;

    let (listener, primary) = handoff_listener();
    let super::Source::Handoff(ch) = &listener.shared.source else {
        unreachable!()
    };
    // A credit the primary never reads: its close then resets our end (ECONNRESET).
    ch.send(&Message::Ready { count: 1, open: 0 }, None)
        .unwrap();
    let clients = send_connections(&primary, 2);
    drop(primary);
    accepts_then_ends(&listener, &clients);
}

#[test]
fn a_std_listener_is_a_checked_copy_of_the_socket_and_its_accepts_can_be_counted() {
    let l = Listener::bind("127.0.0.1:0").unwrap();
    let std = l.try_clone_std().unwrap().into_tcp().unwrap();
    assert_eq!(
        std.local_addr().unwrap().to_string(),
        l.local_addr().to_string()
    );
    assert!(crate::sys::fd::is_cloexec(std.as_fd()).unwrap());
    let _client = TcpStream::connect(std.local_addr().unwrap()).unwrap();
    let (_conn, _) = std.accept().unwrap();
    let open = l.note_accepted();
    assert_eq!(l.accepted(), 1);
    drop(open);

    let dir = std::env::temp_dir().join(format!("cluster-std-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let u = Listener::bind(format!("unix:{}", path.display())).unwrap();
    let std = u.try_clone_std().unwrap();
    assert!(matches!(std, super::StdListener::Unix(_)));
    drop(std);
    drop(u);
    assert!(!path.exists(), "the listener removes its own socket file");
    let _ = std::fs::remove_dir(&dir);
}
