//! A closed-loop HTTP/1.1 load generator on std threads, bounded in time.
//!
//! `clients` threads, one connection at a time each. Close mode: connect, `GET` with
//! `Connection: close`, read the response and the server's EOF, again. Keep-alive
//! mode: one connection per thread for the whole run (reopened after an error), one
//! request after another. Latency is from connect (close) or request (keep-alive) to
//! the response's last byte. Every socket call has a timeout; a thread stops at the
//! deadline whatever happens.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latencies in microseconds.
    pub latencies: Vec<u32>,
    /// `X-Worker` → responses.
    pub by_worker: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The p-th percentile latency in milliseconds.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies[i]) / 1000.0
    }

    /// (max/min, coefficient of variation) of the per-worker shares.
    pub fn balance(&self, workers: usize) -> (f64, f64) {
        let mut counts: Vec<f64> = self.by_worker.values().map(|&c| c as f64).collect();
        counts.resize(workers.max(counts.len()), 0.0); // a worker that served nothing counts
        if counts.is_empty() {
            return (0.0, 0.0);
        }
        let max = counts.iter().cloned().fold(0.0, f64::max);
        let min = counts.iter().cloned().fold(f64::MAX, f64::min);
        let mean = counts.iter().sum::<f64>() / counts.len() as f64;
        let sd =
            (counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64).sqrt();
        (
            if min > 0.0 { max / min } else { f64::INFINITY },
            sd / mean.max(1e-9),
        )
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

struct Response {
    worker: Option<String>,
    close: bool,
}

/// Reads one response; `buf` keeps bytes that belong to the next one (keep-alive).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before the response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("empty response")));
    }
    let mut len = 0;
    let mut worker = None;
    let mut close = false;
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().map_err(|_| bad("bad Content-Length"))?;
            } else if k.eq_ignore_ascii_case("x-worker") {
                worker = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed in the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Ok(Response { worker, close })
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One close-mode request: connect, ask, read, wait for EOF.
fn once(addr: SocketAddr) -> io::Result<Response> {
    let mut s = connect(addr)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: compare\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf)?;
    let mut rest = [0u8; 64];
    match s.read(&mut rest)? {
        0 => Ok(r),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no EOF after Connection: close",
        )),
    }
}

/// Runs the load for `duration`.
pub fn run(addr: SocketAddr, clients: usize, duration: Duration, keep_alive: bool) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let parts: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let mut out = Outcome::default();
                    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let result = if keep_alive {
                            let (s, buf) = match conn.as_mut() {
                                Some(c) => c,
                                None => match connect(addr) {
                                    Ok(s) => conn.insert((s, Vec::new())),
                                    Err(e) => {
                                        out.errors += 1;
                                        out.first_error.get_or_insert(e.to_string());
                                        continue;
                                    }
                                },
                            };
                            let r = s
                                .write_all(b"GET / HTTP/1.1\r\nHost: compare\r\n\r\n")
                                .and_then(|()| read_response(s, buf));
                            if r.as_ref().map_or(true, |r| r.close) {
                                conn = None;
                            }
                            r
                        } else {
                            once(addr)
                        };
                        match result {
                            Ok(r) => {
                                out.ok += 1;
                                out.latencies
                                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                *out.by_worker
                                    .entry(r.worker.unwrap_or_default())
                                    .or_default() += 1;
                            }
                            Err(e) => {
                                out.errors += 1;
                                out.first_error.get_or_insert(e.to_string());
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut total = Outcome {
        elapsed: started.elapsed(),
        ..Outcome::default()
    };
    for p in parts {
        total.ok += p.ok;
        total.errors += p.errors;
        if total.first_error.is_none() {
            total.first_error = p.first_error;
        }
        total.latencies.extend(p.latencies);
        for (w, n) in p.by_worker {
            *total.by_worker.entry(w).or_default() += n;
        }
    }
    total
}
