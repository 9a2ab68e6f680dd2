//! The demo's primary: its command line, and a cluster that reports what happens on
//! stderr and prints `ready ADDR` on stdout once every worker listens.

use std::process::ExitCode;
use std::time::Duration;

use cluster::round_robin::{FewestDispatched, Fifo, LeastConnections};
use cluster::{Cluster, Event, ListenAddr, Mode, User};

use crate::server;

/// One line on stderr in one `write(2)`: the primary's lines and its workers' share
/// the pipe, and `eprintln!` writes a line in pieces, which interleave with theirs.
macro_rules! log_line {
    ($($arg:tt)*) => {
        write_args(format_args!($($arg)*))
    };
}

/// [`write_line`] of a `format_args!`: the formatting in one place, not at each line.
fn write_args(args: std::fmt::Arguments<'_>) {
    write_line(&std::fmt::format(args));
}

/// Writes `line` and a newline to stderr with one `write_all` (one `write(2)` for a
/// line under `PIPE_BUF`, so it never interleaves with another process's).
pub fn write_line(line: &str) {
    use std::io::Write;
    let mut all = String::with_capacity(line.len() + 1);
    all.push_str(line);
    all.push('\n');
    let _ = std::io::stderr().lock().write_all(all.as_bytes());
}

/// How to call it.
pub const USAGE: &str = "usage: hello [--listen HOST:PORT|unix:PATH|fd:N|systemd[:NAME]] [--workers N] \
     [--mode shared|round-robin|reuse-port] [--scheduler fewest-dispatched|fifo|least-connections] [--threads T] [--user NAME] \
     [--prefetch N] [--accept-window-us US] [--timeout SECS] [--max-requests N] \
     [--max-requests-jitter J] [--max-rss MIB] [--upgrade-timeout SECS] [--udp HOST:PORT|unix:PATH]";

/// The command line.
pub struct Options {
    listen: ListenAddr,
    /// `--udp ADDR`: a datagram echo beside the HTTP server.
    udp: Option<ListenAddr>,
    workers: Option<usize>,
    mode: Option<Mode>,
    threads: usize,
    user: Option<String>,
    /// `--scheduler`: `None` for the crate's default.
    scheduler: Option<String>,
    prefetch: Option<u32>,
    accept_window_us: Option<u64>,
    upgrade_timeout: Option<u64>,
    /// `--timeout SECS`: `Builder::worker_timeout`.
    timeout: Option<Duration>,
    /// `--max-requests N` and `--max-requests-jitter J`: `Builder::max_connections`.
    max_requests: Option<u64>,
    max_requests_jitter: u64,
    /// `--max-rss MIB`: `Builder::max_rss`.
    max_rss_mib: Option<u64>,
}

/// `v`, the value of `flag`, as a whole number in `range`; otherwise the error
/// `FLAG: "V" is not WHAT`. One function for every numeric flag (out of line: inlined,
/// each flag would carry its own copy of the parser and the message).
#[inline(never)]
fn number(
    flag: &str,
    v: &str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not {what}")),
    }
}

/// The value after `flag`, or the error `FLAG needs a value`.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// Parses the command line (without the program name).
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        listen: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        udp: None,
        workers: None,
        mode: None,
        threads: 4,
        user: None,
        scheduler: None,
        prefetch: None,
        accept_window_us: None,
        upgrade_timeout: None,
        timeout: None,
        max_requests: None,
        max_requests_jitter: 0,
        max_rss_mib: None,
    };
    const FLAGS: [&str; 14] = [
        "--listen",
        "--udp",
        "--workers",
        "--mode",
        "--threads",
        "--user",
        "--prefetch",
        "--accept-window-us",
        "--timeout",
        "--max-requests",
        "--max-requests-jitter",
        "--max-rss",
        "--upgrade-timeout",
        "--scheduler",
    ];
    const ANY: std::ops::RangeInclusive<u64> = 0..=u64::MAX;
    const POSITIVE: std::ops::RangeInclusive<u64> = 1..=u64::MAX;
    while let Some(flag) = args.next() {
        let flag = flag.as_str();
        if matches!(flag, "-h" | "--help") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        // Every other flag takes a value.
        if !FLAGS.contains(&flag) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let v = value(&mut args, flag)?;
        let n = |range, what| number(flag, &v, range, what);
        match flag {
            "--listen" | "--udp" => {
                let addr = v.parse().map_err(|e| format!("{flag}: {e}"))?;
                if flag == "--udp" {
                    opts.udp = Some(addr);
                } else {
                    opts.listen = addr;
                }
            }
            "--workers" => {
                opts.workers = Some(n(1..=usize::MAX as u64, "a positive number")? as usize)
            }
            "--mode" => opts.mode = Some(v.parse().map_err(|e| format!("--mode: {e}"))?),
            "--threads" => opts.threads = n(1..=1024, "a number from 1 to 1024")? as usize,
            "--user" => opts.user = Some(v),
            "--prefetch" => opts.prefetch = Some(n(0..=u64::from(u32::MAX), "a number")? as u32),
            "--accept-window-us" => opts.accept_window_us = Some(n(ANY, "a number")?),
            "--timeout" => {
                let secs = n(POSITIVE, "a whole number of at least 1")?;
                opts.timeout = Some(Duration::from_secs(secs));
            }
            "--max-requests" => {
                opts.max_requests = Some(n(POSITIVE, "a whole number of at least 1")?)
            }
            "--max-requests-jitter" => {
                opts.max_requests_jitter = n(ANY, "a whole number of at least 0")?
            }
            "--max-rss" => {
                let mib = n(POSITIVE, "a whole number of at least 1")?;
                opts.max_rss_mib = Some(mib.min(u64::MAX >> 20));
            }
            "--upgrade-timeout" => {
                opts.upgrade_timeout = Some(n(POSITIVE, "a positive number of seconds")?)
            }
            "--scheduler" => match v.as_str() {
                "fewest-dispatched" | "fifo" | "least-connections" => opts.scheduler = Some(v),
                other => {
                    return Err(format!(
                        "--scheduler: {other:?} is not fewest-dispatched, fifo or least-connections"
                    ))
                }
            },
            _ => return Err(format!("unknown argument {flag:?}")), // not in FLAGS
        }
    }
    Ok(opts)
}

/// Starts the cluster and runs until it stops.
pub fn run(opts: Options) -> ExitCode {
    let mut builder = Cluster::builder().shutdown_timeout(Duration::from_secs(4));
    if let Some(n) = opts.workers {
        builder = builder.workers(n);
    }
    if let Some(m) = opts.mode {
        builder = builder.mode(m);
    }
    match opts.scheduler.as_deref() {
        Some("fifo") => builder = builder.scheduler(Fifo),
        Some("least-connections") => builder = builder.scheduler(LeastConnections),
        Some(_) => builder = builder.scheduler(FewestDispatched),
        None => {}
    }
    if let Some(n) = opts.prefetch {
        builder = builder.prefetch(n);
    }
    if let Some(secs) = opts.upgrade_timeout {
        builder = builder.upgrade_timeout(Duration::from_secs(secs));
    }
    if let Some(us) = opts.accept_window_us {
        builder = builder.accept_window(Duration::from_micros(us));
    }
    if let Some(d) = opts.timeout {
        builder = builder.worker_timeout(d);
    }
    if let Some(n) = opts.max_requests {
        builder = builder
            .max_connections(n)
            .max_connections_jitter(opts.max_requests_jitter);
    }
    if let Some(mib) = opts.max_rss_mib {
        builder = builder.max_rss(mib << 20);
    }
    if let Some(name) = &opts.user {
        match User::named(name) {
            // Workers that dropped privileges are untrusted: they may listen on the
            // demo's address and nothing else.
            Ok(u) => {
                builder = builder
                    .user(u)
                    .listen_only_with([(opts.listen.clone(), crate::http::listen_options())])
                    .listen_only_datagrams(opts.udp.clone())
            }
            Err(e) => {
                eprintln!("hello: --user: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (addr, udp, threads) = (opts.listen.clone(), opts.udp.clone(), opts.threads);
    let mut cluster = match builder.start(move |w| server::serve(w, &addr, udp.as_ref(), threads)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hello: {e}");
            // A bad setting (CLUSTER_SCHED_POLICY, …) is a usage error, like a bad flag.
            return match e {
                cluster::Error::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let expected = cluster.target_workers();
    // The workers seen listening (receiving): a worker counts once however many
    // listeners it reports.
    let mut listening = Vec::new();
    let mut ready = false;
    let mut receiving = Vec::new();
    let mut udp_ready = false;
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
                if !listening.contains(&worker) {
                    listening.push(worker);
                }
                if !ready && listening.len() >= expected {
                    ready = true;
                    println!("ready {addr}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
            Event::Receiving { worker, addr } => {
                if !receiving.contains(&worker) {
                    receiving.push(worker);
                }
                if !udp_ready && receiving.len() >= expected {
                    udp_ready = true;
                    println!("udp {addr}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
            }
            Event::ListenFailed { error, .. } => {
                if !failed {
                    log_line!("hello: {error}"); // once, not once per worker
                }
                failed = true;
                cluster.shutdown();
            }
            Event::Fork { worker, pid } if ready => {
                log_line!("hello: worker {worker} started (pid {pid})")
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
                log_line!("hello: worker {worker} exited with {status} ({why})");
            }
            Event::ReloadStarted => {
                log_line!("hello: reload: replacing every worker, one at a time")
            }
            Event::ReloadFinished { replaced, complete } => {
                log_line!(
                    "hello: reload finished: {replaced} replaced{}",
                    if complete { "" } else { " (stopped early)" }
                )
            }
            Event::UpgradeStarted { program } => {
                log_line!("hello: upgrade: trying {}", program.display())
            }
            // (An upgrade's failure is on stderr already: the crate logs it.)
            Event::Upgraded { previous_workers } => log_line!(
                "hello: upgrade finished: {previous_workers} worker(s) of the previous program retired"
            ),
            Event::Replacing {
                worker,
                pid,
                reason,
            } => log_line!("hello: replacing worker {worker} (pid {pid}): {reason}"),
            Event::Error(e) => log_line!("hello: {e}"),
            _ => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
