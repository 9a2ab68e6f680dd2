//! The same listener API outside a cluster: `Listener::bind` binds by itself, several
//! threads accept on it at once, and `close` wakes every thread blocked in `accept`.
//! Nothing here forks, so the ordinary (threaded) test harness is fine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cluster::{ListenAddr, ListenOptions, Listener, PeerAddr, Worker};

#[test]
fn outside_a_cluster_bind_accepts_on_several_threads_and_close_wakes_them() {
    assert!(Worker::current().is_none());
    let listener = Listener::bind("127.0.0.1:0").unwrap();
    let ListenAddr::Tcp(addr) = *listener.local_addr() else {
        panic!("not TCP: {:?}", listener.local_addr())
    };
    assert_ne!(addr.port(), 0, "port 0 resolved");
    let served = AtomicUsize::new(0);
    let threads = 4;
    let started = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                started.wait();
                while let Some(mut conn) = listener.accept().unwrap() {
                    assert!(matches!(conn.peer(), PeerAddr::Tcp(p) if p.ip().is_loopback()));
                    conn.write_all(b"hi\n").unwrap();
                    served.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        started.wait();
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"hi\n");
        }
        // Every thread is (or will be) blocked in accept: close must wake them all.
        let closing = Instant::now();
        listener.close();
        assert!(listener.is_closed());
        // The scope joins the threads; reaching the assertions below proves they woke.
        let _ = closing;
    });
    assert_eq!(served.load(Ordering::Relaxed), 50);
    assert_eq!(listener.accepted(), 50);
    assert!(
        listener.accept().unwrap().is_none(),
        "accept after close returns None"
    );
}

#[test]
fn unix_listener_removes_a_stale_file_and_its_own() {
    let path = std::env::temp_dir().join(format!("cluster-standalone-{}.sock", std::process::id()));
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // stale file
    let options = ListenOptions::new().read_timeout(Some(Duration::from_millis(200)));
    let listener = Listener::bind_with(format!("unix:{}", path.display()), &options).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    let conn = listener.accept().unwrap().unwrap();
    assert_eq!(conn.peer(), &PeerAddr::Unix(None));
    // Unix connections do not inherit the listener's timeout: it was set on this one.
    assert_eq!(
        conn.stream().as_unix().unwrap().read_timeout().unwrap(),
        Some(Duration::from_millis(200))
    );
    client.write_all(b"x").unwrap();
    drop(conn);
    drop(listener);
    assert!(!path.exists(), "the socket file it created is removed");
}

#[test]
fn tcp_connections_inherit_listen_options() {
    let options = ListenOptions::new()
        .nodelay(true)
        .read_timeout(Some(Duration::from_millis(250)));
    let listener = Listener::bind_with("127.0.0.1:0", &options).unwrap();
    let addr = listener.local_addr().as_tcp().unwrap();
    let _c = TcpStream::connect(addr).unwrap();
    let conn = listener.accept().unwrap().unwrap();
    let tcp = conn.stream().as_tcp().unwrap();
    assert!(tcp.nodelay().unwrap());
    // The kernel keeps timeouts in scheduler ticks: 250 ms may read back as 252 ms.
    let t = tcp.read_timeout().unwrap().expect("a read timeout");
    assert!(
        t >= Duration::from_millis(250) && t < Duration::from_millis(260),
        "{t:?}"
    );
}

#[test]
fn a_listener_timeout_does_not_end_accept() {
    // The receive timeout is also set on the listening socket; accept must absorb the
    // wake-ups it causes and keep waiting.
    let options = ListenOptions::new().read_timeout(Some(Duration::from_millis(20)));
    let listener = Listener::bind_with("127.0.0.1:0", &options).unwrap();
    let addr = listener.local_addr().as_tcp().unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(|| listener.accept().unwrap().is_some());
        // Let several 20 ms timeouts fire while the thread is blocked, then connect.
        // (Not synchronisation: the test passes either way; this makes it test more.)
        std::thread::sleep(Duration::from_millis(100));
        let _c = TcpStream::connect(addr).unwrap();
        assert!(
            t.join().unwrap(),
            "accept returned a connection, not an error"
        );
    });
}

#[test]
fn bind_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Listener::bind(addr).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let msg = e.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("os error 98"),
        "{msg}"
    );
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<cluster::ListenError>())
        .unwrap();
    assert_eq!(inner.os_error(), Some(libc::EADDRINUSE));
    let e = Listener::bind("no-such-host:80").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("no-such-host"), "{e}");
}

#[test]
fn a_datagram_socket_outside_a_cluster_echoes_and_close_wakes_its_threads() {
    use cluster::{Datagram, DatagramSocket};
    let socket = Datagram::bind("127.0.0.1:0").unwrap();
    let ListenAddr::Tcp(addr) = *socket.local_addr() else {
        panic!("not an IP address: {:?}", socket.local_addr())
    };
    assert_ne!(addr.port(), 0, "port 0 resolved");
    assert!(matches!(socket.socket(), DatagramSocket::Udp(_)));
    let threads = 3;
    let started = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                started.wait();
                let mut buf = [0u8; 64];
                while let Some((n, peer)) = socket.recv_from(&mut buf).unwrap() {
                    socket.send_to(&buf[..n], &peer).unwrap();
                }
            });
        }
        started.wait();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for i in 0..20u8 {
            client.send_to(&[i; 7], addr).unwrap();
            let mut b = [0u8; 16];
            let n = client.recv(&mut b).unwrap();
            assert_eq!(&b[..n], &[i; 7]);
        }
        // Every thread is (or will be) blocked in recvfrom: close must wake them all
        // (the scope joins them).
        socket.close();
    });
    assert_eq!(socket.received(), 20);
    assert!(socket.recv_from(&mut [0u8; 4]).unwrap().is_none());
    // A port in use: the error names the address.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let e = Datagram::bind(busy).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains(&busy.to_string()), "{e}");
}

#[test]
fn a_unix_datagram_socket_answers_a_named_sender_and_removes_its_file() {
    use cluster::{Datagram, DatagramSocket};
    let dir = std::env::temp_dir();
    let path = dir.join(format!("cluster-dgram-{}.sock", std::process::id()));
    let own = dir.join(format!("cluster-dgram-client-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&own);
    let socket = Datagram::bind(format!("unix:{}", path.display())).unwrap();
    assert!(matches!(socket.socket(), DatagramSocket::Unix(_)));
    let client = std::os::unix::net::UnixDatagram::bind(&own).unwrap();
    client.send_to(b"ping", &path).unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = socket.recv_from(&mut buf).unwrap().unwrap();
    socket.send_to(&buf[..n], &peer).unwrap();
    let mut b = [0u8; 16];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = client.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ping");
    // An unnamed sender cannot be answered: an error, not a panic.
    let unnamed = std::os::unix::net::UnixDatagram::unbound().unwrap();
    unnamed.send_to(b"x", &path).unwrap();
    let (_, peer) = socket.recv_from(&mut buf).unwrap().unwrap();
    let e = socket.send_to(b"x", &peer).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // A live socket of the other type on a path is in use, not stale.
    let e = Listener::bind(format!("unix:{}", path.display())).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    drop(socket);
    assert!(!path.exists(), "the socket file was left behind");
    std::fs::remove_file(&own).unwrap();
}

#[test]
fn exclusive_changes_nothing_outside_a_cluster() {
    let l = ListenOptions::new()
        .exclusive(true)
        .bind("127.0.0.1:0")
        .unwrap();
    let ListenAddr::Tcp(addr) = *l.local_addr() else {
        panic!("not TCP")
    };
    let _c = TcpStream::connect(addr).unwrap();
    assert!(l.accept().unwrap().is_some());
}
