//! Chaos under load: workers die by `SIGKILL` at random moments while clients keep
//! opening connections, in every mode; each connection that fails is counted and
//! classified.
//!
//! ```text
//! cargo run --release --example chaos -- [--mode all|shared|round-robin|reuse-port]
//!     [--seconds S] [--workers N] [--clients C] [--kill-every-ms MS] [--seed N]
//!     [--no-freeze]
//! ```
//!
//! For each mode it starts a server (this program again, `--serve`: `server.rs`) with
//! `N` workers (default 4) and a respawn policy without back-off, then for `S` seconds
//! (default 10) runs `C` client threads (default 8; `clients.rs`) while a killer
//! (`killer.rs`) kills a random worker every `MS / 2 ..= 3 MS / 2` ms (default 100).
//! A worker writes one ack byte `A` as soon as it has a connection, reads the request,
//! works about 200 µs, answers `OK ID` and closes. Afterwards it checks that the
//! server is back to `N` workers, stops it with `SIGTERM`, and checks that it exits
//! with status 0 and leaves no worker behind.
//!
//! # Reading the output
//!
//! One row per mode. `ok` connections got the whole answer. A failed connection is
//! *before ack* when the client got nothing, *after ack* when it got `A` but not the
//! answer. Before each kill the worker is frozen (`SIGSTOP`) and the connections in its
//! descriptor table are listed, and each failure is matched against the workers killed
//! while it was open: *lost* counts the failures that no killed worker held. A
//! connection that no worker has taken (in the kernel's queue, in the primary, in a
//! hand-off channel) must survive a worker's death, so `lost` should be 0 in every mode.
//! `--no-freeze` kills with `SIGKILL` alone: the same counts, but `lost` is unknown (`?`).
//!
//! A failure before ack is a connection the killed worker held but never acknowledged.
//! Its code had it for at most the few instructions between `accept` returning and the
//! ack's `write`, or never: a thread blocked in `accept(2)` that a new connection has
//! woken, but that has not run yet, completes that call inside the kernel when the kill
//! (or the freeze) wakes it again, and the process dies holding the connection. Under
//! load threads spend far longer in that state than in the window, so in shared and
//! reuse-port modes that is what this column mostly counts: it comes with blocking
//! `accept(2)`. Round-robin workers wait for a hand-off in `epoll_wait` and then receive
//! without blocking, so a connection is only taken by a thread that runs; what remains
//! there is the window itself (a few per thousand kills).
//!
//! The exit status is 1 if in round-robin mode a connection was lost (failed, held by
//! no killed worker) or could not connect, or in any mode the worker count was not
//! restored or the server did not exit cleanly; 2 for a bad command line.

mod clients;
mod killer;
mod process;
mod procs;
mod report;
mod server;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::Mode;

use process::Server;
use report::Row;

const USAGE: &str = "usage: chaos [--mode all|shared|round-robin|reuse-port] [--seconds S] \
     [--workers N] [--clients C] [--kill-every-ms MS] [--seed N] [--no-freeze]";

/// The command line.
pub struct Options {
    pub modes: Vec<Mode>,
    pub seconds: f64,
    pub workers: usize,
    pub clients: usize,
    pub kill_every: Duration,
    pub seed: u64,
    pub freeze: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        modes: vec![Mode::Shared, Mode::RoundRobin, Mode::ReusePort],
        seconds: 10.0,
        workers: 4,
        clients: 8,
        kill_every: Duration::from_millis(100),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        freeze: true,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => {
                let v = value()?;
                if v != "all" {
                    o.modes = vec![v.parse().map_err(|e| format!("--mode: {e}"))?];
                }
            }
            "--seconds" => o.seconds = number(&flag, &value()?, 0.1, 3600.0)?,
            "--workers" => o.workers = whole(&flag, &value()?, 1, 256)? as usize,
            "--clients" => o.clients = whole(&flag, &value()?, 1, 1024)? as usize,
            "--kill-every-ms" => {
                o.kill_every = Duration::from_millis(whole(&flag, &value()?, 1, 1_000_000)?)
            }
            "--seed" => {
                let v = value()?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: {v:?} is not a whole number"))?;
            }
            "--no-freeze" => o.freeze = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// `v` as a number from `min` to `max`, or an error naming the flag and the value.
fn number(flag: &str, v: &str, min: f64, max: f64) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag}: {v:?} is not a number from {min} to {max}")),
    }
}

/// `v` as a whole number from `min` to `max`, or an error naming the flag and the value.
fn whole(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag}: {v:?} is not a whole number from {min} to {max}"
        )),
    }
}

fn run_mode(mode: Mode, o: &Options, seed: u64) -> Row {
    let mut row = Row {
        mode: mode.to_string(),
        ..Row::default()
    };
    let server = match Server::start(mode, o.workers) {
        Ok(s) => s,
        Err(e) => {
            row.error = Some(e);
            return row; // dropping the handle killed the server, by pid
        }
    };
    let stop = AtomicBool::new(false);
    let mut rng = killer::Rng::new(seed);
    let (tally, kills) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let port = server.addr.port();
            killer::run(&server.seen, port, o.kill_every, &mut rng, o.freeze, &stop)
        });
        let duration = Duration::from_secs_f64(o.seconds);
        let tally = clients::run(server.addr, o.clients, duration);
        stop.store(true, Ordering::Relaxed);
        (tally, killer.join().unwrap())
    });
    row.workers_end = server.wait_workers(o.workers, Duration::from_secs(5));
    row.forks = server.seen.0.lock().unwrap().forks;
    let stopped = server_stop(server);
    row.clean_exit = stopped.0;
    row.stats = stopped.1;
    // A failure is explained when a worker killed while it was open held it.
    let held = |f: &clients::Failure| {
        kills.iter().any(|k| {
            k.at >= f.start && k.at <= f.end && k.held.as_ref().is_some_and(|h| h.contains(&f.port))
        })
    };
    row.before_ack = tally.failures.iter().filter(|f| !f.acked).count() as u64;
    row.after_ack = tally.failures.len() as u64 - row.before_ack;
    if kills.iter().all(|k| k.held.is_some()) {
        let lost: Vec<&clients::Failure> = tally.failures.iter().filter(|f| !held(f)).collect();
        row.lost = Some(lost.len() as u64);
        row.lost_examples = lost
            .iter()
            .take(5)
            .map(|f| {
                let ack = if f.acked { "after ack" } else { "before ack" };
                let open = (f.end - f.start).as_secs_f64() * 1e3;
                format!(
                    "client port {} failed {ack} ({}) after {open:.1} ms",
                    f.port, f.why
                )
            })
            .collect();
    }
    row.kills = kills.len();
    row.tally = tally;
    row
}

/// Stops the server; (exited 0 and left no worker, its stats line or why not).
fn server_stop(server: Server) -> (bool, String) {
    let seen = server.seen.clone();
    let stopped = server.stop(Duration::from_secs(5));
    let stats = seen.0.lock().unwrap().stats.clone();
    let clean = stopped.status.is_some_and(|s| s.success()) && stopped.left.is_empty();
    let mut why = match stats {
        Some(s) => {
            let f: Vec<&str> = s.split(' ').collect();
            format!(
                "server: {} forks, {} crashes, {} connections dropped by the primary",
                f.first().unwrap_or(&"?"),
                f.get(1).unwrap_or(&"?"),
                f.get(2).unwrap_or(&"?")
            )
        }
        None => "server: no stats line".to_string(),
    };
    match stopped.status {
        Some(st) if !st.success() => why += &format!("; it exited with {st}"),
        None => why += "; it did not exit within 5 s of SIGTERM and was killed",
        _ => {}
    }
    if !stopped.left.is_empty() {
        why += &format!("; workers left behind: {:?}", stopped.left);
    }
    (clean, why)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        // chaos --serve MODE --workers N
        let a: Vec<String> = args.collect();
        return match (a.get(1).map(|m| m.parse()), a.get(3).map(|n| n.parse())) {
            (Some(Ok(mode)), Some(Ok(n))) if a.get(2).map(String::as_str) == Some("--workers") => {
                server::run(mode, n)
            }
            _ => {
                eprintln!("usage: chaos --serve MODE --workers N");
                ExitCode::from(2)
            }
        };
    }
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!("chaos: seed {}", o.seed);
    let mut rows = Vec::new();
    for &mode in &o.modes {
        eprintln!("chaos: {mode} ...");
        // One kill sequence per mode, the same whether it runs alone or with the others.
        let offset = match mode {
            Mode::Shared => 0,
            Mode::RoundRobin => 1,
            Mode::ReusePort => 2,
        };
        rows.push(run_mode(mode, &o, o.seed.wrapping_add(offset)));
    }
    report::print_table(&rows, &o);
    if report::verdict(&rows, o.workers) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
