//! The cluster server the scenarios drive: this test binary, run again with
//! `CLUSTER_SCENARIO_SERVER=1`, is a cluster primary. It never runs inside the
//! multi-threaded driver, so its `fork` happens in a single-threaded process.
//!
//! Configuration (environment): `SC_MODE`, `SC_WORKERS`, `SC_LISTEN` (addresses,
//! comma-separated), `SC_THREADS` (accepting threads per listener), `SC_SHUTDOWN_MS`.
//!
//! Protocol of the workers: a client sends one line (`hi`, `sleep MS`), the worker
//! answers `ok WORKER PID L C` (L, C: whether the listener's and the connection's
//! descriptors have FD_CLOEXEC, 1 or 0) and closes.
//!
//! The primary prints one line per event (`fork ID PID`, `online ID`, `listening ID
//! ADDR`, `listen-failed ID ADDR ERROR`, `disconnect ID`, `exit ID PID STATUS
//! requested=B`, `error …`), `ready ADDR[,ADDR…]` once every worker listens on every
//! address, `stats ID=N …` (connections dispatched per worker) whenever they change,
//! and at the end `hygiene fds_before=… fds_after=… children=…` about itself.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use cluster::{Cluster, Event, ListenAddr, Listener, Mode, Stream, Worker};

use super::proc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn serve_one(stream: &mut Stream, id: u32, listener_cloexec: bool) {
    let conn_cloexec = proc::is_cloexec(stream.as_fd().as_raw_fd());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    {
        let mut r = BufReader::new(&*stream);
        if r.read_line(&mut line).is_err() {
            return;
        }
    }
    let cmd: Vec<&str> = line.split_whitespace().collect();
    if let ["sleep", ms] = cmd.as_slice() {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }
    let reply = format!(
        "ok {id} {} {} {}\n",
        std::process::id(),
        u8::from(listener_cloexec),
        u8::from(conn_cloexec)
    );
    let _ = stream.write_all(reply.as_bytes());
}

fn worker_main(w: &Worker, addrs: &[ListenAddr], threads: usize) -> std::io::Result<()> {
    let listeners = addrs
        .iter()
        .map(Listener::bind)
        .collect::<std::io::Result<Vec<_>>>()?;
    let id = w.id().0;
    std::thread::scope(|s| {
        for l in &listeners {
            let cloexec = proc::is_cloexec(l.as_fd().as_raw_fd());
            for _ in 0..threads {
                s.spawn(move || loop {
                    match l.accept() {
                        Ok(Some(conn)) => serve_one(&mut conn.into_stream(), id, cloexec),
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("worker {id}: accept: {e}");
                            break;
                        }
                    }
                });
            }
        }
    });
    Ok(())
}

/// Runs the primary; returns the process exit code.
pub fn main() -> i32 {
    let mode: Mode = match env("SC_MODE", "round-robin").parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("server: {e}");
            return 2;
        }
    };
    let workers: usize = env("SC_WORKERS", "2").parse().unwrap_or(2);
    let threads: usize = env("SC_THREADS", "4").parse().unwrap_or(4);
    let shutdown_ms: u64 = env("SC_SHUTDOWN_MS", "3000").parse().unwrap_or(3000);
    let addrs: Vec<ListenAddr> = match env("SC_LISTEN", "127.0.0.1:0")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("server: {e}");
            return 2;
        }
    };

    let fds_before = proc::open_fds();
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    let worker_addrs = addrs.clone();
    let started = Cluster::builder()
        .workers(workers)
        .mode(mode)
        .shutdown_timeout(Duration::from_millis(shutdown_ms))
        .start(move |w| worker_main(w, &worker_addrs, threads));
    let mut cluster = match started {
        Ok(c) => c,
        Err(e) => {
            say(format!("error {e}"));
            return 1;
        }
    };
    let mut listening: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut resolved: Vec<String> = Vec::new();
    let mut ready = false;
    let mut last_stats = String::new();
    loop {
        let event = match cluster.next_event_timeout(Duration::from_millis(20)) {
            Ok(Some(e)) => Some(e),
            Ok(None) if cluster.is_stopped() => break,
            Ok(None) => None,
            Err(e) => {
                say(format!("error {e}"));
                return 1;
            }
        };
        match event {
            Some(Event::Fork { worker, pid }) => say(format!("fork {worker} {pid}")),
            Some(Event::Online { worker }) => say(format!("online {worker}")),
            Some(Event::Listening { worker, addr }) => {
                say(format!("listening {worker} {addr}"));
                let a = addr.to_string();
                if !resolved.contains(&a) {
                    resolved.push(a.clone());
                }
                listening.entry(worker.0).or_default().insert(a);
                let all = listening.len() >= workers
                    && listening.values().all(|s| s.len() >= addrs.len());
                if all && !ready {
                    ready = true;
                    say(format!("ready {}", resolved.join(",")));
                }
            }
            Some(Event::ListenFailed {
                worker,
                addr,
                error,
            }) => {
                say(format!("listen-failed {worker} {addr} {error}"));
                cluster.shutdown();
            }
            Some(Event::Disconnect { worker }) => say(format!("disconnect {worker}")),
            Some(Event::Exit {
                worker,
                pid,
                status,
                requested,
            }) => say(format!(
                "exit {worker} {pid} {status} requested={requested}"
            )),
            Some(Event::Message { worker, data }) => say(format!(
                "message {worker} {}",
                String::from_utf8_lossy(&data)
            )),
            Some(Event::Error(e)) => say(format!("error {e}")),
            Some(other) => say(format!("event {other:?}")),
            None => {}
        }
        let stats: Vec<String> = cluster
            .workers()
            .iter()
            .map(|w| format!("{}={}", w.id, w.dispatched))
            .collect();
        let stats = stats.join(" ");
        if stats != last_stats {
            say(format!("stats {stats}"));
            last_stats = stats;
        }
    }
    say(format!("dropped {}", cluster.stats().dropped_connections));
    drop(cluster);
    let fds_after = proc::open_fds();
    let me = std::process::id();
    let children = proc::children_of(me);
    say(format!(
        "hygiene fds_before={fds_before:?} fds_after={fds_after:?} children={children:?}"
    ));
    0
}
