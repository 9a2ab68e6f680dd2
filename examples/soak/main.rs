//! A bounded soak: push at least half a million connections through each mode, then
//! show that the primary and every worker hold exactly the descriptors they held
//! before, about the same memory, and that nothing was left behind: no zombie, no
//! worker replaced, no process alive after the shutdown.
//!
//! ```text
//! cargo run --release --example soak -- [--seconds N] [--connections M]
//!            [--mode all|shared|round-robin|reuse-port] [--workers W] [--clients C] [--threads T]
//! ```
//!
//! Defaults: 60 s at most per mode, 500,000 connections, every mode, 4 workers of 4
//! threads (the demo's default), 16 client threads. For each mode the program:
//!
//! 1. starts the demo server (the `hello` example's code: this program run again with
//!    `--serve`, in its own session) on a free loopback port;
//! 2. warms up with 20,000 connections, so that every worker thread has run and the
//!    allocator holds its pages, waits 300 ms, and takes the *before* snapshot of the
//!    primary and each worker from `/proc`: pid, open descriptors, `VmRSS`;
//! 3. runs `Connection: close` load (`compare`'s load generator: C threads, each
//!    connect, `GET`, read the response and the server's EOF, again) until M
//!    connections have succeeded; if `--seconds` runs out first, that is a failure;
//! 4. waits 300 ms (up to 3 s more if descriptors are still being closed) and takes
//!    the *after* snapshot;
//! 5. sends the primary SIGTERM (by pid) and waits up to 10 s for it to exit.
//!
//! **Reading the output.** Each mode prints a block: the load (connections, rate,
//! errors, latency), how many connections each worker served, then one line per
//! process, `fds before → after` and `RSS KiB before → after (Δ, allowed)`, what the
//! descriptors are (`socket`, `pipe`, `/dev/null`), the primary's children, and how
//! the shutdown went. A `verdict: FAIL` lists every failed check; a descriptor
//! difference is shown by target (`+socket:[INODE]`), which is what a leak looks like.
//! The table at the end has one row per mode; the exit status is non-zero if any mode
//! failed. A mode passes when:
//!
//! - M connections succeeded within `--seconds`, none failed (warm-up included), and
//!   every worker served some;
//! - the same processes (pid and start time) are there after as before: no worker died
//!   or was replaced;
//! - each process holds exactly as many descriptors after as before;
//! - each one's RSS grew by at most 256 KiB or 5 %, whichever is larger. RSS moves by
//!   a few pages with the allocator's bookkeeping; one heap block leaked per
//!   connection (32 bytes at least with glibc) would add about 4 MiB to each of 4
//!   workers, and 15 MiB to a round-robin primary, which accepts every connection. A
//!   leak every thousandth connection shows only if it holds a descriptor;
//! - the primary has no zombie child and exactly W live ones;
//! - after SIGTERM the primary exits 0 within 10 s, no process of the server's session
//!   (or, without `setsid`, none of its workers) is left, and the server's stderr pipe
//!   closes (no process holds it).

#[path = "../hello/http.rs"]
mod http;
mod launch;
#[path = "../compare/load.rs"]
mod load;
#[path = "../hello/primary.rs"]
mod primary;
mod procs;
mod report;
#[path = "../hello/server.rs"]
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::{Report, Snapshot};

const USAGE: &str = "usage: soak [--seconds N] [--connections M] \
     [--mode all|shared|round-robin|reuse-port] [--workers W] [--clients C] [--threads T]";

const MODES: [&str; 3] = ["shared", "round-robin", "reuse-port"];

/// Connections before the first snapshot.
const WARMUP: u64 = 20_000;
/// How long the warm-up may take.
const WARMUP_LIMIT: Duration = Duration::from_secs(20);
/// The pause between the end of a load and a snapshot: connections the clients saw
/// closed are closed in the server too (the client waited for the server's EOF), but a
/// worker's once-a-second report or the primary's timers may be in flight.
const SETTLE: Duration = Duration::from_millis(300);
/// How much longer to wait for descriptor counts to come back before calling it a leak.
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// The command line.
pub struct Options {
    pub seconds: f64,
    pub connections: u64,
    pub modes: Vec<&'static str>,
    pub workers: usize,
    pub clients: usize,
    pub threads: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        seconds: 60.0,
        connections: 500_000,
        modes: MODES.to_vec(),
        workers: 4,
        clients: 16,
        threads: 4,
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let count = |v: String, name: &str, max: u64| match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("{name}: {v:?} is not a number from 1 to {max}")),
        };
        match flag.as_str() {
            "--seconds" => {
                let v = value("--seconds")?;
                o.seconds = match v.parse::<f64>() {
                    Ok(s) if (1.0..=3600.0).contains(&s) => s,
                    _ => return Err(format!("--seconds: {v:?} is not a number from 1 to 3600")),
                }
            }
            "--connections" => {
                o.connections = count(value("--connections")?, "--connections", 1 << 40)?
            }
            "--workers" => o.workers = count(value("--workers")?, "--workers", 256)? as usize,
            "--clients" => o.clients = count(value("--clients")?, "--clients", 1024)? as usize,
            "--threads" => o.threads = count(value("--threads")?, "--threads", 1024)? as usize,
            "--mode" => {
                let v = value("--mode")?;
                o.modes = match v.as_str() {
                    "all" => MODES.to_vec(),
                    m => vec![*MODES.iter().find(|&&n| n == m).ok_or_else(|| {
                        format!("--mode: {m:?} is not all, {}", MODES.join(", "))
                    })?],
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// Adds one load run to the total.
fn merge(total: &mut load::Outcome, part: load::Outcome) {
    total.ok += part.ok;
    total.errors += part.errors;
    if total.first_error.is_none() {
        total.first_error = part.first_error;
    }
    total.latencies.extend(part.latencies);
    for (w, n) in part.by_worker {
        *total.by_worker.entry(w).or_default() += n;
    }
    total.elapsed += part.elapsed;
}

/// `Connection: close` load until `target` connections succeeded or `limit` passed.
/// The load generator is bounded in time, so it runs in slices of at most a second
/// (shorter near the end, from the rate so far); the gap between slices is a thread
/// spawn, nothing the server notices.
fn drive(
    addr: SocketAddr,
    clients: usize,
    target: u64,
    limit: Duration,
    label: &str,
) -> load::Outcome {
    let deadline = Instant::now() + limit;
    let mut total = load::Outcome::default();
    let mut last_note = Instant::now();
    while total.ok < target {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let rate = total.rate();
        let needed = if rate > 0.0 {
            Duration::from_secs_f64((target - total.ok) as f64 / rate * 1.05 + 0.02)
        } else {
            Duration::from_millis(250) // a first look at the rate
        };
        let slice = needed.clamp(Duration::from_millis(50), Duration::from_secs(1));
        merge(&mut total, load::run(addr, clients, slice.min(left), false));
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "soak: {label}: {} of {target} connections, {} errors, {:.0} conn/s",
                total.ok,
                total.errors,
                total.rate()
            );
        }
    }
    total
}

/// Snapshots until every process has the descriptor count it had `before` (or
/// [`SETTLE_MAX`] passed); returns the snapshot and how long it waited.
fn settled_snapshot(pid: u32, before: &Snapshot) -> (Snapshot, Duration) {
    let t0 = Instant::now();
    std::thread::sleep(SETTLE);
    loop {
        let after = Snapshot::take(pid);
        if after.same_fd_counts(before) || t0.elapsed() >= SETTLE + SETTLE_MAX {
            return (after, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One mode, start to stop.
fn soak(mode: &'static str, o: &Options) -> Result<Report, String> {
    let server = launch::Server::start(mode, o.workers, o.threads)?;
    let (pid, addr) = (server.pid, server.addr);
    eprintln!("soak: {mode}: server pid {pid} on {addr}, warming up");
    let warmup = drive(addr, o.clients, WARMUP, WARMUP_LIMIT, mode);
    std::thread::sleep(SETTLE);
    let before = Snapshot::take(pid);
    eprintln!("soak: {mode}: {} connections ...", o.connections);
    let load = drive(
        addr,
        o.clients,
        o.connections,
        Duration::from_secs_f64(o.seconds),
        mode,
    );
    let (after, settled) = settled_snapshot(pid, &before);
    // Everything the server was made of, to look for after it stops.
    let members: Vec<(u32, u64)> = before
        .all()
        .chain(after.all())
        .map(|p| (p.pid, p.start))
        .collect();
    let own_session = server.own_session;
    let stopped = server.stop();
    std::thread::sleep(Duration::from_millis(50));
    let mut left: Vec<u32> = if own_session {
        procs::in_session(pid)
    } else {
        Vec::new()
    };
    left.extend(
        members
            .iter()
            .filter(|&&(p, start)| procs::alive(p, start))
            .map(|&(p, _)| p),
    );
    left.sort_unstable();
    left.dedup();
    Ok(Report {
        mode,
        pid,
        addr,
        own_session,
        warmup,
        load,
        before,
        after,
        settled,
        stopped,
        left,
    })
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        return match primary::parse_args(args) {
            Ok(opts) => primary::run(opts),
            Err(e) => {
                eprintln!("soak --serve: {e}");
                ExitCode::from(2)
            }
        };
    }
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "soak: {} connections per mode within {} s; {} workers × {} threads; {} client threads; \
         Connection: close; RSS allowance +{} KiB or +{} %, whichever is larger",
        o.connections,
        o.seconds,
        o.workers,
        o.threads,
        o.clients,
        report::RSS_SLACK_KIB,
        report::RSS_SLACK_PERCENT
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for &mode in &o.modes {
        match soak(mode, &o) {
            Ok(mut r) => {
                let failures = r.failures(&o);
                r.print(&failures);
                failed |= !failures.is_empty();
                rows.push((r, failures));
            }
            Err(e) => {
                println!("\n== {mode}: could not run: {e}");
                failed = true;
            }
        }
    }
    report::print_table(&rows);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
