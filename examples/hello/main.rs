//! The demo server: an HTTP/1.1 "hello world" served by a cluster of workers.
//!
//! ```text
//! cargo run --release --example hello -- [--listen ADDR] [--workers N]
//!            [--mode shared|round-robin] [--threads T] [--user NAME]
//! ```
//!
//! - `ADDR` is `HOST:PORT` (`127.0.0.1:8080`, `[::1]:0`, …) or `unix:PATH`; default
//!   `127.0.0.1:8080`. `--workers` defaults to the number of CPUs, `--mode` to
//!   `CLUSTER_SCHED_POLICY`, then round-robin; `--threads` (accepting threads per
//!   worker) to 8.
//! - Once every worker listens, the primary prints `ready ADDR` (port 0 resolved).
//! - Every response carries `X-Worker: ID`. `GET /pid` answers the worker's pid,
//!   `GET /crash` makes the worker abort (to watch the primary report it).
//! - `--user NAME`: the workers drop to that user (`setgroups`, `setgid`, `setuid`);
//!   the primary keeps its own, so a root primary can serve port 80.
//! - `SIGTERM` / `SIGINT`: stop accepting, finish what is in progress, print each
//!   worker's count of served connections on stderr, exit 0.
//! - `SIGHUP`: rolling restart, one worker at a time, no connection refused.
//!   `SIGTTIN` / `SIGTTOU`: one worker more / fewer. A crashed worker is replaced
//!   (with back-off if they keep crashing).

mod http;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cluster::{Cluster, Event, ListenAddr, Listener, Mode, User, Worker};

const USAGE: &str =
    "usage: hello [--listen HOST:PORT|unix:PATH] [--workers N] [--mode shared|round-robin] [--threads T] [--user NAME]";

struct Options {
    listen: ListenAddr,
    workers: Option<usize>,
    mode: Option<Mode>,
    threads: usize,
    user: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        listen: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        workers: None,
        mode: None,
        threads: 8,
        user: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" => {
                opts.listen = value("--listen")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?
            }
            "--workers" => {
                let v = value("--workers")?;
                match v.parse::<usize>() {
                    Ok(n) if n > 0 => opts.workers = Some(n),
                    _ => return Err(format!("--workers: {v:?} is not a positive number")),
                }
            }
            "--mode" => {
                opts.mode = Some(
                    value("--mode")?
                        .parse()
                        .map_err(|e| format!("--mode: {e}"))?,
                )
            }
            "--threads" => {
                let v = value("--threads")?;
                match v.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => opts.threads = n,
                    _ => return Err(format!("--threads: {v:?} is not a number from 1 to 1024")),
                }
            }
            "--user" => opts.user = Some(value("--user")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(opts)
}

/// The routes.
fn route(req: &http::Request<'_>) -> http::Response {
    let ok = |body: Vec<u8>| http::Response {
        status: "200 OK",
        body,
        then_crash: false,
    };
    match (req.method, req.path) {
        ("GET", "/pid") => ok(format!("{}\n", std::process::id()).into_bytes()),
        ("GET", "/crash") => http::Response {
            then_crash: true,
            ..ok(b"crashing\n".to_vec())
        },
        _ => ok(b"hello world\n".to_vec()),
    }
}

/// A worker: `threads` threads block in the listener's accept; each serves one
/// connection at a time. When the primary asks the worker to disconnect, accept returns
/// `None`, the flag tells busy threads to finish, and the worker returns.
fn serve(worker: &Worker, addr: &ListenAddr, threads: usize) -> std::io::Result<()> {
    let listener = Listener::bind_with(addr, &http::listen_options())?;
    let id = worker.id().0;
    let served = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let router = route;
    std::thread::scope(|s| -> std::io::Result<()> {
        for _ in 0..threads {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn_scoped(s, || {
                    loop {
                        match listener.accept() {
                            Ok(Some(conn)) => {
                                served.fetch_add(1, Ordering::Relaxed);
                                let mut stream = conn.into_stream();
                                http::serve(&mut stream, id, &stop, &router);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                eprintln!("worker {id}: accept: {e}");
                                break;
                            }
                        }
                    }
                    // The listener closed: the worker is stopping; idle connections of
                    // the other threads notice at their next tick.
                    stop.store(true, Ordering::Relaxed);
                })?;
        }
        Ok(())
    })?;
    eprintln!(
        "worker {id}: served {} connections",
        served.load(Ordering::Relaxed)
    );
    Ok(())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hello: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Cluster::builder().shutdown_timeout(Duration::from_secs(4));
    if let Some(n) = opts.workers {
        builder = builder.workers(n);
    }
    if let Some(m) = opts.mode {
        builder = builder.mode(m);
    }
    if let Some(name) = &opts.user {
        match User::named(name) {
            Ok(u) => builder = builder.user(u),
            Err(e) => {
                eprintln!("hello: --user: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (addr, threads) = (opts.listen.clone(), opts.threads);
    let mut cluster = match builder.start(move |w| serve(w, &addr, threads)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hello: {e}");
            return ExitCode::FAILURE;
        }
    };
    let expected = cluster.target_workers();
    let mut listening = std::collections::BTreeSet::new();
    let mut ready = false;
    let mut failed = false;
    loop {
        let event = match cluster.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                eprintln!("hello: {e}");
                return ExitCode::FAILURE;
            }
        };
        match event {
            Event::Listening { worker, addr } => {
                listening.insert(worker);
                if !ready && listening.len() >= expected {
                    ready = true;
                    println!("ready {addr}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
            Event::ListenFailed { error, .. } => {
                eprintln!("hello: {error}");
                failed = true;
                cluster.shutdown();
            }
            Event::Fork { worker, pid } if ready => {
                eprintln!("hello: worker {worker} started (pid {pid})")
            }
            Event::Exit {
                worker,
                status,
                requested,
                ..
            } if ready || !requested => {
                let why = if requested {
                    "asked to"
                } else {
                    "crashed, respawning"
                };
                eprintln!("hello: worker {worker} exited with {status} ({why})");
            }
            Event::ReloadStarted => {
                eprintln!("hello: reload: replacing every worker, one at a time")
            }
            Event::ReloadFinished { replaced, complete } => {
                eprintln!(
                    "hello: reload finished: {replaced} replaced{}",
                    if complete { "" } else { " (stopped early)" }
                )
            }
            Event::Error(e) => eprintln!("hello: {e}"),
            _ => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
