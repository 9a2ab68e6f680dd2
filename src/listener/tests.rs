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
    let fd = l.as_fd().try_clone_to_owned().unwrap();
    TcpStream::from(fd).read_timeout().unwrap()
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
