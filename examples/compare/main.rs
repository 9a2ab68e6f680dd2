//! The same workload through every mode, one table: choose a mode with numbers in hand.
//!
//! ```text
//! cargo run --release --example compare -- [--workers N] [--seconds S] [--clients C]
//!            [--keep-alive] [--threads T]
//!            [--modes shared,round-robin,rr-fifo,rr-least-conn,reuse-port,rr-recycle-1000,shared-recycle-1000]
//!            [--target HOST:PORT [--pid PID]] [--udp]
//! ```
//!
//! For each mode this program starts the demo server (the `hello` example's own code,
//! run as a child process of this one: a primary must not fork inside a threaded
//! process, and this one runs load threads), waits for its `ready` line, warms up for
//! half a second, then runs a closed-loop load of `C` clients for `S` seconds and
//! reads the server's CPU time and memory from `/proc`. It prints one row per mode:
//! requests (= connections in close mode) per second, latency percentiles, errors,
//! the balance across workers (max/min share and coefficient of variation), server CPU
//! time per request (primary and workers), and resident memory. The `*-recycle-1000`
//! rows run the same server with `--max-requests 1000` (every worker recycled after
//! 1000 connections): their CPU column includes the forks and the workers' starts, and
//! their balance spans every worker that served, replaced ones included.
//!
//! `--udp` also starts each server with the demo's datagram echo (`--udp 127.0.0.1:0`)
//! and, after the TCP row, runs the same number of clients as lock-step UDP senders
//! (`udp.rs`) for the same time: a second table gives datagrams per second, latency,
//! datagrams lost (unanswered within 200 ms), the balance across workers and the CPU
//! per datagram. Round-robin serves datagrams from one shared socket like shared mode
//! (nothing is accepted, so nothing is handed out); reuse-port from a socket per
//! worker.
//!
//! `--target` measures a server that is already running instead (for instance
//! `../shared/bench/node-cluster.js`); give its primary's `--pid` to get its CPU and
//! memory too. The load generator shares the machine with the server: compare rows of
//! one run, and quote ratios.

#[path = "../hello/http.rs"]
mod http;
mod load;
#[path = "../hello/primary.rs"]
mod primary;
mod procstat;
#[path = "../hello/server.rs"]
mod server;
mod udp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: compare [--workers N] [--seconds S] [--clients C] [--keep-alive] [--threads T] \
     [--modes shared,round-robin,rr-fifo,rr-least-conn,reuse-port,rr-recycle-1000,shared-recycle-1000] \
     [--target HOST:PORT [--pid PID]] [--udp]";

/// One row's server configuration.
#[derive(Debug, Clone, Copy)]
struct Config {
    name: &'static str,
    mode: &'static str,
    /// The round-robin scheduler (`--scheduler` of the demo), if not the default.
    scheduler: Option<&'static str>,
    /// More flags for the demo (`--max-requests 1000` for the recycling row).
    extra: &'static [&'static str],
}

const CONFIGS: [Config; 7] = [
    Config {
        name: "shared",
        mode: "shared",
        scheduler: None,
        extra: &[],
    },
    Config {
        name: "round-robin",
        mode: "round-robin",
        scheduler: None,
        extra: &[],
    },
    Config {
        name: "rr-fifo",
        mode: "round-robin",
        scheduler: Some("fifo"),
        extra: &[],
    },
    Config {
        name: "rr-least-conn",
        mode: "round-robin",
        scheduler: Some("least-connections"),
        extra: &[],
    },
    Config {
        name: "reuse-port",
        mode: "reuse-port",
        scheduler: None,
        extra: &[],
    },
    // Worker health: every worker recycled after 1000 connections (a fork, a listen
    // and a drain each), to measure what recycling costs per connection.
    Config {
        name: "rr-recycle-1000",
        mode: "round-robin",
        scheduler: None,
        extra: &["--max-requests", "1000"],
    },
    Config {
        name: "shared-recycle-1000",
        mode: "shared",
        scheduler: None,
        extra: &["--max-requests", "1000"],
    },
];

struct Options {
    workers: usize,
    seconds: f64,
    clients: usize,
    keep_alive: bool,
    threads: Option<usize>,
    configs: Vec<Config>,
    target: Option<SocketAddr>,
    pid: Option<u32>,
    /// `--udp`: a datagram row per mode too.
    udp: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        workers: 4,
        seconds: 5.0,
        clients: 16,
        keep_alive: false,
        threads: None,
        configs: CONFIGS.to_vec(),
        target: None,
        pid: None,
        udp: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |v: String, name: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--workers" => o.workers = number(value("--workers")?, "--workers")?.max(1.0) as usize,
            "--seconds" => o.seconds = number(value("--seconds")?, "--seconds")?.clamp(0.5, 600.0),
            "--clients" => {
                o.clients = number(value("--clients")?, "--clients")?.clamp(1.0, 1024.0) as usize
            }
            "--threads" => {
                o.threads =
                    Some(number(value("--threads")?, "--threads")?.clamp(1.0, 1024.0) as usize)
            }
            "--keep-alive" => o.keep_alive = true,
            "--udp" => o.udp = true,
            "--modes" => {
                let list = value("--modes")?;
                o.configs = list
                    .split(',')
                    .map(|m| {
                        CONFIGS
                            .iter()
                            .find(|c| c.name == m)
                            .copied()
                            .ok_or(format!("--modes: unknown mode {m:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--target" => {
                let v = value("--target")?;
                o.target = Some(v.parse().map_err(|e| format!("--target {v:?}: {e}"))?);
            }
            "--pid" => o.pid = Some(number(value("--pid")?, "--pid")? as u32),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// A server started for one row.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The datagram echo's address (`--udp`).
    udp: Option<SocketAddr>,
}

impl Server {
    fn start(c: &Config, o: &Options) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // In its own session (setsid(1) execs in place: same pid), as the bench harness
        // does: with the kernel's autogroup scheduling, the server then competes with
        // the load generator as one group, not thread by thread.
        let mut cmd = if Command::new("setsid").arg("--version").output().is_ok() {
            let mut c = Command::new("setsid");
            c.arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(["--serve", "--listen", "127.0.0.1:0", "--mode", c.mode]);
        cmd.args(["--workers", &o.workers.to_string()]);
        if let Some(s) = c.scheduler {
            cmd.args(["--scheduler", s]);
        }
        if let Some(t) = o.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        cmd.args(c.extra);
        if o.udp {
            cmd.args(["--udp", "127.0.0.1:0"]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("start the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().map_err(|_| "addr")?,
            udp: None,
        };
        // `ready ADDR`, and with `--udp` also `udp ADDR` (in either order: each comes
        // once every worker has that socket).
        let mut ready = None;
        while ready.is_none() || (o.udp && server.udp.is_none()) {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "the server did not print its ready line".to_string())?;
            let parsed = |prefix: &str| -> Option<SocketAddr> {
                line.strip_prefix(prefix).and_then(|a| a.parse().ok())
            };
            match (parsed("ready "), parsed("udp ")) {
                (Some(a), _) => ready = Some(a),
                (_, Some(a)) => server.udp = Some(a),
                _ => return Err(format!("unexpected line {line:?}")),
            }
        }
        server.addr = ready.ok_or("no ready line")?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    /// SIGTERM by pid (graceful), then SIGKILL if it lingers past 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of the table.
struct Row {
    name: String,
    out: load::Outcome,
    workers: usize,
    cpu: Option<(f64, f64)>,
    primary_rss: Option<u64>,
    worker_rss: Vec<u64>,
}

fn measure(name: &str, addr: SocketAddr, pid: Option<u32>, workers: usize, o: &Options) -> Row {
    // Warm up: every worker thread has run, the allocator has its pages.
    let _ = load::run(addr, o.clients, Duration::from_millis(500), o.keep_alive);
    let before = pid.map(procstat::snapshot);
    let out = load::run(
        addr,
        o.clients,
        Duration::from_secs_f64(o.seconds),
        o.keep_alive,
    );
    let after = pid.map(procstat::snapshot);
    let cpu = before
        .as_ref()
        .zip(after.as_ref())
        .map(|(b, a)| procstat::cpu_between(b, a));
    Row {
        name: name.to_string(),
        out,
        workers,
        cpu,
        primary_rss: after.as_ref().and_then(|a| a.0.map(|p| p.rss_kib)),
        worker_rss: after
            .map(|a| a.1.iter().map(|p| p.rss_kib).collect())
            .unwrap_or_default(),
    }
}

fn print_table(rows: &mut [Row], o: &Options) {
    let unit = if o.keep_alive { "req/s" } else { "conn/s" };
    println!(
        "\n{} clients, {} s, {}; CPU and memory from /proc (CPU in 10 ms ticks)\n",
        o.clients,
        o.seconds,
        if o.keep_alive {
            "keep-alive"
        } else {
            "Connection: close"
        }
    );
    println!(
        "| mode | {unit} | p50 ms | p99 ms | max ms | errors | max/min | CV | CPU µs/req primary + workers | RSS primary | RSS worker mean [max] |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter_mut() {
        let (ratio, cv) = r.out.balance(r.workers);
        let per_req = |secs: f64| secs * 1e6 / (r.out.ok.max(1) as f64);
        let cpu = r.cpu.map_or("–".to_string(), |(p, w)| {
            format!(
                "{:.1} = {:.1} + {:.1}",
                per_req(p + w),
                per_req(p),
                per_req(w)
            )
        });
        let mib = |k: u64| format!("{:.2} MiB", k as f64 / 1024.0);
        let worker_rss = if r.worker_rss.is_empty() {
            "–".to_string()
        } else {
            let mean = r.worker_rss.iter().sum::<u64>() / r.worker_rss.len() as u64;
            format!(
                "{} [{}]",
                mib(mean),
                mib(*r.worker_rss.iter().max().unwrap_or(&0))
            )
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.3} | {} | {} | {} |",
            r.name,
            r.out.rate(),
            r.out.percentile_ms(0.50),
            r.out.percentile_ms(0.99),
            r.out.percentile_ms(1.0),
            r.out.errors,
            ratio,
            cv,
            cpu,
            r.primary_rss.map_or("–".to_string(), mib),
            worker_rss,
        );
    }
    for r in rows.iter() {
        if let Some(e) = &r.out.first_error {
            println!("\n{}: first error: {e}", r.name);
        }
        let shares: Vec<String> = r
            .out
            .by_worker
            .iter()
            .map(|(w, n)| format!("{w}:{n}"))
            .collect();
        println!("{}: responses by worker {}", r.name, shares.join(" "));
    }
}

/// The datagram row of one server (`--udp`): the same clients and time as the TCP
/// row, as lock-step UDP senders.
fn measure_udp(name: &str, addr: SocketAddr, pid: u32, o: &Options) -> Row {
    let _ = udp::run(addr, o.clients, Duration::from_millis(500));
    let before = procstat::snapshot(pid);
    let out = udp::run(addr, o.clients, Duration::from_secs_f64(o.seconds));
    let after = procstat::snapshot(pid);
    Row {
        name: name.to_string(),
        out,
        workers: o.workers,
        cpu: Some(procstat::cpu_between(&before, &after)),
        primary_rss: after.0.map(|p| p.rss_kib),
        worker_rss: after.1.iter().map(|p| p.rss_kib).collect(),
    }
}

/// The `--udp` table: datagrams per second, latency, lost, balance, CPU per datagram.
fn print_udp_table(rows: &mut [Row], o: &Options) {
    println!(
        "\nUDP echo: {} lock-step client sockets, {} s (lost: no answer within 200 ms)\n",
        o.clients, o.seconds
    );
    println!("| mode | datagrams/s | p50 ms | p99 ms | lost | max/min | CV | CPU µs/datagram primary + workers |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter_mut() {
        let (ratio, cv) = r.out.balance(r.workers);
        let per = |secs: f64| secs * 1e6 / (r.out.ok.max(1) as f64);
        let cpu = r.cpu.map_or("–".to_string(), |(p, w)| {
            format!("{:.1} = {:.1} + {:.1}", per(p + w), per(p), per(w))
        });
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} | {:.2} | {:.3} | {} |",
            r.name,
            r.out.rate(),
            r.out.percentile_ms(0.50),
            r.out.percentile_ms(0.99),
            r.out.errors,
            ratio,
            cv,
            cpu,
        );
    }
    for r in rows.iter() {
        let shares: Vec<String> = r
            .out
            .by_worker
            .iter()
            .map(|(w, n)| format!("{w}:{n}"))
            .collect();
        println!("{} (udp): datagrams by worker {}", r.name, shares.join(" "));
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        return match primary::parse_args(args) {
            Ok(opts) => primary::run(opts),
            Err(e) => {
                eprintln!("compare --serve: {e}");
                ExitCode::from(2)
            }
        };
    }
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("compare: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    let mut udp_rows = Vec::new();
    if let Some(addr) = o.target {
        let workers = o.pid.map_or(o.workers, |p| procstat::snapshot(p).1.len());
        eprintln!("compare: {addr} ...");
        rows.push(measure(&format!("target {addr}"), addr, o.pid, workers, &o));
    } else {
        for c in &o.configs {
            eprintln!("compare: {} ...", c.name);
            let server = match Server::start(c, &o) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("compare: {}: {e}", c.name);
                    return ExitCode::FAILURE;
                }
            };
            rows.push(measure(
                c.name,
                server.addr,
                Some(server.pid()),
                o.workers,
                &o,
            ));
            if let Some(addr) = server.udp {
                udp_rows.push(measure_udp(c.name, addr, server.pid(), &o));
            }
            drop(server);
        }
    }
    print_table(&mut rows, &o);
    if !udp_rows.is_empty() {
        print_udp_table(&mut udp_rows, &o);
    }
    ExitCode::SUCCESS
}
