//! The load: `C` client threads, each opening one connection after another until the
//! deadline: connect, send `GO\n`, read to EOF. What each connection saw decides its
//! class; failures are kept with their client port and times, to be matched against
//! the connections each killed worker held (`killer.rs`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Every socket call gives up after this long (a hung connection is a failure too).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that did not get its whole answer.
#[derive(Debug)]
pub struct Failure {
    pub port: u16,
    pub start: Instant,
    pub end: Instant,
    /// Whether the ack byte had arrived: a worker had the connection.
    pub acked: bool,
    /// What ended it: "reset", "EOF", "timeout", …
    pub why: String,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub connections: u64,
    pub ok: u64,
    pub connect_errors: u64,
    pub failures: Vec<Failure>,
    /// Connect errors and failures by cause.
    pub causes: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Runs `clients` threads against `addr` for `duration`.
pub fn run(addr: SocketAddr, clients: usize, duration: Duration) -> Tally {
    let start = Instant::now();
    let deadline = start + duration;
    let mut total = Tally::default();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| s.spawn(move || client(addr, deadline)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for t in tallies {
        total.connections += t.connections;
        total.ok += t.ok;
        total.connect_errors += t.connect_errors;
        total.failures.extend(t.failures);
        for (k, v) in t.causes {
            *total.causes.entry(k).or_default() += v;
        }
    }
    total.elapsed = start.elapsed();
    total
}

fn client(addr: SocketAddr, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < deadline {
        t.connections += 1;
        let start = Instant::now();
        let mut s = match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                t.connect_errors += 1;
                *t.causes
                    .entry(format!("connect: {}", cause(&e)))
                    .or_default() += 1;
                continue;
            }
        };
        let port = s.local_addr().map_or(0, |a| a.port());
        let mut got = Vec::with_capacity(16);
        let result = exchange(&mut s, &mut got);
        let complete = got.first() == Some(&b'A') && got[1..].starts_with(b"OK ");
        match result {
            Ok(()) if complete && got.ends_with(b"\n") => t.ok += 1,
            r => {
                let why = r.err().map_or("EOF".to_string(), |e| cause(&e));
                *t.causes.entry(why.clone()).or_default() += 1;
                t.failures.push(Failure {
                    port,
                    start,
                    end: Instant::now(),
                    acked: got.first() == Some(&b'A'),
                    why,
                });
            }
        }
    }
    t
}

/// Sends the request and reads everything up to EOF into `got`. A failed write is not
/// the end: the ack may already be there to read.
fn exchange(s: &mut TcpStream, got: &mut Vec<u8>) -> io::Result<()> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    let sent = s.write_all(b"GO\n");
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return sent,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}
