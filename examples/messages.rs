//! The primary and its workers talking (Node's `worker.send` / `process.send`).
//!
//! ```text
//! cargo run --example messages -- [--workers N]
//! ```
//!
//! 1. The primary broadcasts a configuration value; every worker acknowledges it.
//! 2. The primary pings each worker and waits for the pong: a round trip each way.
//! 3. Each worker does some work and reports its count; the primary adds them up.
//! 4. Both sides try a message one byte over the limit: it is refused with an error,
//!    and the channel keeps working.
//! 5. The primary shuts the cluster down; each worker's `recv` returns `None` and the
//!    worker returns.
//!
//! Each step prints one line on stdout (the tests read them).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use cluster::{Cluster, Event, Worker, WorkerId, MAX_MESSAGE_LEN};

/// The worker: answers the primary until it is told to go.
fn worker(w: &Worker) -> Result<(), cluster::Error> {
    let id = w.id();
    while let Some(msg) = w.recv() {
        let text = String::from_utf8_lossy(&msg).into_owned();
        let reply = if let Some(value) = text.strip_prefix("config ") {
            format!("config-ack {id} {value}")
        } else if text == "ping" {
            format!("pong {id}")
        } else if text == "work" {
            let units = (1..=id.0 * 10).filter(|n| n % 3 != 0).count(); // some "work"
            format!("count {id} {units}")
        } else if text == "oversized" {
            match w.send(&vec![b'x'; MAX_MESSAGE_LEN + 1]) {
                Err(e) => format!("oversized-refused {id} {e}"),
                Ok(()) => format!("oversized-sent {id}"),
            }
        } else {
            format!("unknown {id} {text}")
        };
        w.send(reply.as_bytes())?;
    }
    Ok(()) // disconnecting: the primary is shutting down
}

/// Waits until `n` workers have sent a message starting with `prefix`.
fn collect(
    cluster: &mut Cluster,
    n: usize,
    prefix: &str,
) -> Result<BTreeMap<WorkerId, String>, cluster::Error> {
    let mut got = BTreeMap::new();
    while got.len() < n {
        match cluster.next_event_timeout(Duration::from_secs(10))? {
            Some(Event::Message { worker, data }) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                if text.starts_with(prefix) {
                    got.insert(worker, text);
                }
            }
            Some(Event::Error(e)) => eprintln!("messages: {e}"),
            Some(_) => {}
            None => {
                return Err(cluster::Error::Config(format!(
                    "no {prefix:?} from every worker within 10 s"
                )))
            }
        }
    }
    Ok(got)
}

fn run(n: usize) -> Result<(), cluster::Error> {
    let mut cluster = Cluster::builder().workers(n).start(worker)?;
    let ids: Vec<WorkerId> = cluster.workers().iter().map(|w| w.id).collect();

    // 1. Broadcast (workers that are still starting get it when they read).
    let sent = cluster.broadcast(b"config greeting=hello")?;
    let acks = collect(&mut cluster, n, "config-ack")?;
    println!(
        "broadcast to {sent} workers, acknowledged by {}",
        acks.len()
    );

    // 2. A round trip each way.
    for &id in &ids {
        cluster.send(id, b"ping")?;
    }
    let pongs = collect(&mut cluster, n, "pong")?;
    println!("round trips: {}", pongs.len());

    // 3. Workers report, the primary adds up.
    for &id in &ids {
        cluster.send(id, b"work")?;
    }
    let counts = collect(&mut cluster, n, "count")?;
    let total: usize = counts
        .values()
        .filter_map(|t| t.split_whitespace().nth(2)?.parse::<usize>().ok())
        .sum();
    println!("counts from {} workers, total {total}", counts.len());

    // 4. One byte over the limit, from a worker and from the primary.
    cluster.send(ids[0], b"oversized")?;
    let refused = collect(&mut cluster, 1, "oversized-refused")?;
    println!(
        "worker side: {}",
        refused.values().next().map_or("", String::as_str)
    );
    match cluster.send(ids[0], &vec![b'x'; MAX_MESSAGE_LEN + 1]) {
        Err(e) => println!("primary side: refused: {e}"),
        Ok(()) => println!("primary side: sent (unexpected)"),
    }
    cluster.send(ids[0], b"ping")?;
    collect(&mut cluster, 1, "pong")?;
    println!("the channel still works");

    // 5. Goodbye.
    cluster.shutdown();
    while let Some(event) = cluster.next_event()? {
        if let Event::Exit { worker, status, .. } = event {
            println!("worker {worker} exited ({status})");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut workers = 3;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse::<usize>())) {
            ("--workers", Some(Ok(n))) if n > 0 => workers = n,
            _ => {
                eprintln!("usage: messages [--workers N]");
                return ExitCode::from(2);
            }
        }
    }
    match run(workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("messages: {e}");
            ExitCode::FAILURE
        }
    }
}
