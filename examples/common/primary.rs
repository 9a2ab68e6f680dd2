//! The primary of the library examples (`tiny_http`, and `cluster-tokio`'s `axum`):
//! the same command line and output contract as `hello`, so the same checks drive
//! them, with the server itself left to the example's worker function.
//!
//! ```text
//! EXAMPLE [--listen ADDR] [--workers N] [--mode shared|round-robin|reuse-port]
//!         [--max-requests N]
//! ```
//!
//! - `ready ADDR` once every worker listens (port 0 resolved);
//! - every response carries `X-Worker: ID` (the worker function's business);
//! - `SIGHUP` rolling restart, `SIGTERM`/`SIGINT` graceful stop with exit 0;
//! - `--max-requests N` recycles a worker after N connections;
//! - each worker start, exit and replacement is logged on stderr, prefixed with the
//!   example's name.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use cluster::{Cluster, Event, ListenAddr, Mode, Worker};

/// The command line.
pub struct Options {
    pub listen: ListenAddr,
    pub workers: Option<usize>,
    pub mode: Option<Mode>,
    pub max_requests: Option<u64>,
}

/// Parses the flags above; `Err` is the message for a usage error (exit 2).
pub fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        listen: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        workers: None,
        mode: None,
        max_requests: None,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => opts.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--workers" => {
                opts.workers =
                    Some(
                        value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                            format!("--workers: {value:?} is not a number above 0")
                        })?,
                    )
            }
            "--mode" => opts.mode = Some(value.parse().map_err(|e| format!("--mode: {e}"))?),
            "--max-requests" => {
                opts.max_requests =
                    Some(value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("--max-requests: {value:?} is not a number above 0")
                    })?)
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(opts)
}

/// Starts the cluster with `serve` as the worker function and runs the primary until
/// it stops; `name` prefixes its log lines.
pub fn run<F>(name: &str, opts: Options, serve: F) -> ExitCode
where
    F: Fn(&Worker, &ListenAddr) -> std::io::Result<()> + 'static,
{
    let mut builder = Cluster::builder().shutdown_timeout(Duration::from_secs(4));
    if let Some(n) = opts.workers {
        builder = builder.workers(n);
    }
    if let Some(m) = opts.mode {
        builder = builder.mode(m);
    }
    if let Some(n) = opts.max_requests {
        builder = builder.max_connections(n);
    }
    let addr = opts.listen.clone();
    let mut cluster = match builder.start(move |w| serve(w, &addr)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return match e {
                cluster::Error::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let expected = cluster.target_workers();
    let mut listening = Vec::new();
    let mut ready = false;
    let mut failed = false;
    loop {
        let event = match cluster.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match event {
            Event::Listening { worker, addr } => {
                if !listening.contains(&worker) {
                    listening.push(worker);
                }
                if !ready && listening.len() >= expected {
                    ready = true;
                    println!("ready {addr}");
                    let _ = std::io::stdout().flush();
                }
            }
            Event::ListenFailed { error, .. } => {
                if !failed {
                    eprintln!("{name}: {error}");
                }
                failed = true;
                cluster.shutdown();
            }
            Event::Fork { worker, pid } if ready => {
                eprintln!("{name}: worker {worker} started (pid {pid})")
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
                eprintln!("{name}: worker {worker} exited with {status} ({why})");
            }
            Event::ReloadFinished { replaced, complete } => eprintln!(
                "{name}: reload finished: {replaced} replaced{}",
                if complete { "" } else { " (stopped early)" }
            ),
            Event::Replacing {
                worker,
                pid,
                reason,
            } => eprintln!("{name}: replacing worker {worker} (pid {pid}): {reason}"),
            Event::Error(e) => eprintln!("{name}: {e}"),
            _ => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
