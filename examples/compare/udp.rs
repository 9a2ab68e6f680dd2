//! `compare --udp`: a closed-loop datagram load against the demo's `--udp` echo, on
//! std threads, bounded in time.
//!
//! `clients` threads, each with a UDP socket of its own (so reuse-port's hash sees
//! `clients` different senders): send one datagram, wait for its answer (`worker N: `
//! and the datagram), again. A datagram not answered within 200 ms counts as lost (an
//! error) and the thread goes on. Latency is from `sendto` to the answer. The result
//! is a [`load::Outcome`](crate::load::Outcome), so the table prints it like the TCP
//! rows: datagrams per second, percentiles, lost, balance across workers.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::load::Outcome;

/// How long one datagram may wait for its answer before it counts as lost.
const ANSWER_WAIT: Duration = Duration::from_millis(200);

/// `clients` lock-step senders to `addr` for `duration`.
pub fn run(addr: SocketAddr, clients: usize, duration: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|i| s.spawn(move || client(addr, i, deadline)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let mut all = Outcome {
        elapsed: started.elapsed(),
        ..Outcome::default()
    };
    for o in outcomes {
        all.ok += o.ok;
        all.errors += o.errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
        all.latencies.extend(o.latencies);
        for (w, n) in o.by_worker {
            *all.by_worker.entry(w).or_default() += n;
        }
    }
    all
}

fn client(addr: SocketAddr, i: usize, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    let any = if addr.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = match UdpSocket::bind(any).and_then(|s| {
        s.set_read_timeout(Some(ANSWER_WAIT))?;
        s.connect(addr)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("client socket: {e}"));
            return out;
        }
    };
    let mut buf = [0u8; 256];
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let data = format!("client {i} datagram {n}");
        let sent = Instant::now();
        let got = socket
            .send(data.as_bytes())
            .and_then(|_| socket.recv(&mut buf));
        let answer = match got {
            Ok(len) => String::from_utf8_lossy(&buf[..len]).into_owned(),
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("datagram {n}: {e}"));
                }
                continue;
            }
        };
        // A late answer to a datagram counted lost is skipped, not miscounted.
        let Some((worker, rest)) = answer
            .strip_prefix("worker ")
            .and_then(|r| r.split_once(": "))
        else {
            out.errors += 1;
            continue;
        };
        if rest != data {
            continue;
        }
        out.latencies
            .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        out.ok += 1;
        *out.by_worker.entry(worker.to_string()).or_default() += 1;
    }
    out
}
