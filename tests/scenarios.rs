//! End-to-end scenarios: real processes on loopback, bounded in time and count.
//!
//! This is a `harness = false` test. Run without `CLUSTER_SCENARIO_SERVER` it is the
//! driver: it starts servers (this same binary in server role, see `util/server.rs`, or
//! the `hello` example), acts as their clients, and checks the results and the hygiene
//! of every run: the primary's descriptors after the cluster are those before it, it
//! has no child left (zombie or alive), every worker process is gone, every descriptor
//! a worker received has FD_CLOEXEC. Nothing here forks inside a threaded process: the
//! driver only spawns (fork+exec) and the server role is single-threaded.
//!
//! `cargo test --test scenarios -- NAME…` runs the scenarios whose names contain NAME.

mod util;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use util::client::{self, Conn, Target};
use util::proc::{self, Server};

type Outcome = Result<(), String>;
type Scenario = (&'static str, Box<dyn Fn() -> Outcome>);

fn check(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

// ------------------------------------------------------------------ scenario server

struct Spec<'a> {
    mode: &'a str,
    workers: usize,
    listen: String,
    threads: usize,
}

impl Spec<'_> {
    fn start(&self) -> Result<(Server, Vec<Target>), String> {
        let cmd = proc::self_command(&[
            ("SC_MODE", self.mode.to_string()),
            ("SC_WORKERS", self.workers.to_string()),
            ("SC_LISTEN", self.listen.clone()),
            ("SC_THREADS", self.threads.to_string()),
        ]);
        let mut srv = Server::spawn(cmd)?;
        let ready = srv.expect("ready ", Duration::from_secs(20))?;
        let targets = ready["ready ".len()..]
            .split(',')
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((srv, targets))
    }
}

/// SIGTERM, then: exit status 0 within the bound, the primary's hygiene line clean,
/// every worker gone, no panic on stderr.
fn stop_and_check(srv: &mut Server) -> Outcome {
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    let rest = srv.rest(Duration::from_secs(2));
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("server exited with {status}; stderr:\n{stderr}")
    })?;
    check_hygiene(&rest, &stderr)?;
    srv.check_workers_gone(Duration::from_secs(2))
}

fn check_hygiene(lines: &[String], stderr: &str) -> Outcome {
    let line = lines
        .iter()
        .find(|l| l.starts_with("hygiene "))
        .ok_or_else(|| format!("no hygiene line in {lines:?}; stderr:\n{stderr}"))?;
    let field = |name: &str| -> String {
        line.split(&format!("{name}="))
            .nth(1)
            .map(|s| s.split(" ").next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    check(field("fds_before") == field("fds_after"), || {
        format!("the primary leaked descriptors: {line}")
    })?;
    check(field("children") == "[]", || {
        format!("the primary left children: {line}")
    })?;
    check(!stderr.contains("panicked"), || {
        format!("a process panicked:\n{stderr}")
    })
}

// ------------------------------------------------------------------ scenarios

/// 4 workers, 2,000 connections from 8 clients: all served, every worker used, all on
/// one port (port 0 resolved once), every received descriptor close-on-exec.
fn balance(mode: &str) -> Outcome {
    let spec = Spec {
        mode,
        workers: 4,
        listen: "127.0.0.1:0".into(),
        threads: 4,
    };
    let (mut srv, targets) = spec.start()?;
    let ports: std::collections::BTreeSet<&str> = srv
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("listening "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    check(ports.len() == 1, || {
        format!("workers listen on different addresses: {ports:?}")
    })?;
    let load = client::load(&targets[0], 2000, 8, "hi", Duration::from_secs(10));
    println!(
        "    {mode}: 2000 connections, {} ok, shares: {}",
        load.ok,
        load.shares()
    );
    check(load.errors.is_empty(), || {
        format!(
            "{} errors, first: {:?}",
            load.errors.len(),
            load.errors.first()
        )
    })?;
    check(load.ok == 2000, || {
        format!("only {} of 2000 served", load.ok)
    })?;
    check(load.by_worker.len() == 4, || {
        format!("not every worker served: {}", load.shares())
    })?;
    check(load.not_cloexec == 0, || {
        format!("{} connections without FD_CLOEXEC", load.not_cloexec)
    })?;
    stop_and_check(&mut srv)
}

/// IPv6, a Unix socket (over a stale socket file), and both in one worker: every worker
/// serves on each; the socket file is removed afterwards.
fn families(mode: &str) -> Outcome {
    let path = std::env::temp_dir().join(format!(
        "cluster-scenario-{}-{mode}.sock",
        std::process::id()
    ));
    // A stale socket file: bound, never listened on, left behind.
    drop(std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("stale socket: {e}"))?);
    check(path.exists(), || "stale socket file missing".into())?;
    let spec = Spec {
        mode,
        workers: 3,
        listen: format!("[::1]:0,unix:{}", path.display()),
        threads: 2,
    };
    let (mut srv, targets) = spec.start()?;
    check(targets.len() == 2, || {
        format!("expected 2 addresses, got {targets:?}")
    })?;
    for t in &targets {
        let load = client::load(t, 300, 4, "hi", Duration::from_secs(10));
        println!(
            "    {mode} {t:?}: {} ok, shares: {}",
            load.ok,
            load.shares()
        );
        check(load.errors.is_empty() && load.ok == 300, || {
            format!("{t:?}: {} ok, errors {:?}", load.ok, load.errors.first())
        })?;
        check(load.by_worker.len() == 3, || {
            format!("{t:?}: not every worker served: {}", load.shares())
        })?;
        check(load.not_cloexec == 0, || {
            "descriptor without FD_CLOEXEC".into()
        })?;
    }
    stop_and_check(&mut srv)?;
    check(!path.exists(), || {
        format!("{} was not removed", path.display())
    })
}

/// A port already in use: the worker's listen fails naming the address and
/// EADDRINUSE, the primary reports it, and everything stops cleanly: no panic, no hang.
fn addr_in_use(mode: &str) -> Outcome {
    let taken = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = taken.local_addr().map_err(|e| e.to_string())?;
    let cmd = proc::self_command(&[
        ("SC_MODE", mode.to_string()),
        ("SC_WORKERS", "2".into()),
        ("SC_LISTEN", addr.to_string()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let failed = srv.expect("listen-failed ", Duration::from_secs(10))?;
    check(
        failed.contains(&addr.to_string()) && failed.contains("os error 98"),
        || format!("the report does not name the address and EADDRINUSE: {failed}"),
    )?;
    let status = srv.wait(Duration::from_secs(10))?;
    let rest = srv.rest(Duration::from_secs(2));
    let stderr = srv.stderr();
    check(status.success(), || format!("primary exited with {status}"))?;
    let expected = format!("cannot listen on {addr}: Address already in use (os error 98)");
    check(stderr.contains(&expected), || {
        format!("worker error not found ({expected}) in:\n{stderr}")
    })?;
    check_hygiene(&rest, &stderr)?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// Round-robin: a worker is stopped (SIGSTOP) while connections are handed out, so the
/// ones sent to it sit unreceived in its channel; then it is killed. Every client must
/// still be served, by the other worker, and none may hang.
fn rr_worker_killed() -> Outcome {
    let spec = Spec {
        mode: "round-robin",
        workers: 2,
        listen: "127.0.0.1:0".into(),
        threads: 4,
    };
    let (mut srv, targets) = spec.start()?;
    let target = targets[0].clone();
    // Warm up: both workers serve, and their threads settle back into accept.
    let warm = client::load(&target, 40, 1, "hi", Duration::from_secs(5));
    check(warm.ok == 40 && warm.by_worker.len() == 2, || {
        format!("warm-up: {}", warm.shares())
    })?;
    let victim_pid: u32 = srv
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("fork 1 "))
        .and_then(|p| p.trim().parse().ok())
        .ok_or("no pid for worker 1")?;
    let served_before = warm.by_worker.get(&1).copied().unwrap_or(0);
    proc::signal(victim_pid, "STOP")?;
    proc::wait_stopped(victim_pid, Duration::from_secs(5))?;
    let clients = 16;
    let result = std::thread::scope(|s| -> Outcome {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let t = target.clone();
                s.spawn(move || client::ask(&t, "hi", Duration::from_secs(15)))
            })
            .collect();
        // Wait until the primary has handed the stopped worker more connections than
        // it answered: those sit in its channel, unreceived.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stranded = 0;
        while stranded == 0 {
            let line = srv.line(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(stats) = line.strip_prefix("stats ") {
                let w1: u64 = stats
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("1="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                stranded = w1.saturating_sub(served_before);
            }
        }
        proc::signal(victim_pid, "KILL")?;
        let mut by_worker = std::collections::BTreeMap::new();
        for h in handles {
            let reply = h
                .join()
                .map_err(|_| "client thread panicked".to_string())??;
            *by_worker.entry(reply.worker).or_insert(0) += 1;
        }
        println!("    {stranded} connection(s) stranded in the killed worker; all {clients} served: {by_worker:?}");
        check(!by_worker.contains_key(&1), || {
            "the stopped worker served a client".into()
        })
    });
    result?;
    let exit = srv.expect("exit 1 ", Duration::from_secs(5))?;
    check(
        exit.contains("signal 9") && exit.contains("requested=false"),
        || format!("exit report: {exit}"),
    )?;
    stop_and_check(&mut srv)
}

/// A listening socket the primary inherits (as systemd passes one) is adopted with
/// `fd:N` and served by every worker.
fn adopted_fd(mode: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cmd = proc::self_command(&[
        ("SC_MODE", mode.to_string()),
        ("SC_WORKERS", "3".into()),
        ("SC_LISTEN", "fd:0".into()),
    ]);
    let stdin = std::process::Stdio::from(std::os::fd::OwnedFd::from(listener));
    let mut srv = Server::spawn_with_stdin(cmd, stdin)?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    check(ready == format!("ready {addr}"), || {
        format!("adopted socket reported as {ready}, bound to {addr}")
    })?;
    let load = client::load(&Target::Tcp(addr), 300, 4, "hi", Duration::from_secs(10));
    println!(
        "    {mode} fd:0 ({addr}): {} ok, shares: {}",
        load.ok,
        load.shares()
    );
    check(load.errors.is_empty() && load.ok == 300, || {
        format!("{} ok, errors {:?}", load.ok, load.errors.first())
    })?;
    check(load.by_worker.len() == 3, || {
        format!("not every worker served: {}", load.shares())
    })?;
    stop_and_check(&mut srv)
}

// ------------------------------------------------------------------ the hello example

fn start_hello(args: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
    let mut cmd = std::process::Command::new(proc::example("hello")?);
    cmd.args(args);
    cmd.env_remove("CLUSTER_SCHED_POLICY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn(cmd)
}

fn http_get(conn: &mut Conn, path: &str, close: bool) -> Result<(), String> {
    let extra = if close { "Connection: close\r\n" } else { "" };
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").map_err(|e| e.to_string())
}

/// The demo's contract: `ready ADDR`, 200 with `X-Worker` 1..N, keep-alive, `Connection:
/// close`, 400 for garbage, SIGTERM → exit 0 with each worker's count on stderr.
fn hello_contract(mode: &str) -> Outcome {
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0", "--workers", "2", "--mode", mode],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let t = Duration::from_secs(5);
    // Keep-alive: three requests on one connection, then Connection: close.
    let mut conn = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let mut workers = std::collections::BTreeSet::new();
    {
        for i in 0..4 {
            http_get(&mut conn, "/", i == 3)?;
            let mut r = BufReader::new(&mut conn);
            let resp = client::read_response(&mut r)?;
            check(resp.status == 200 && resp.body == b"hello world\n", || {
                format!("bad response {resp:?}")
            })?;
            let w: u32 = resp
                .header("X-Worker")
                .and_then(|v| v.parse().ok())
                .ok_or("no X-Worker")?;
            check((1..=2).contains(&w), || {
                format!("X-Worker {w} out of range")
            })?;
            workers.insert(w);
            if i == 3 {
                check(client::closed_by_server(&mut r), || {
                    "Connection: close not honoured".into()
                })?;
            }
        }
    }
    check(workers.len() == 1, || {
        "one keep-alive connection was served by two workers".into()
    })?;
    // Malformed: 400, then the server closes.
    let mut bad = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    bad.write_all(b"NOT A REQUEST\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&mut bad);
    let resp = client::read_response(&mut r)?;
    check(resp.status == 400, || {
        format!("garbage got {}", resp.status)
    })?;
    check(client::closed_by_server(&mut r), || {
        "connection left open after 400".into()
    })?;
    // Many connections: both workers serve.
    for _ in 0..40 {
        let mut c = Conn::connect(&target, t).map_err(|e| e.to_string())?;
        http_get(&mut c, "/", true)?;
        let resp = client::read_response(&mut BufReader::new(&mut c))?;
        if let Some(w) = resp.header("X-Worker").and_then(|v| v.parse().ok()) {
            workers.insert(w);
        }
    }
    check(workers.len() == 2, || {
        format!("only workers {workers:?} served")
    })?;
    // An idle keep-alive client must not hold up the shutdown.
    let _idle = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let stopped = Instant::now();
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    let took = stopped.elapsed();
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("hello exited with {status}: {stderr}")
    })?;
    check(took < Duration::from_secs(5), || {
        format!("shutdown took {took:?}")
    })?;
    for w in 1..=2 {
        check(stderr.contains(&format!("worker {w}: served ")), || {
            format!("no count for worker {w}: {stderr}")
        })?;
    }
    srv.check_workers_gone(Duration::from_secs(2))
}

/// Clients that send nothing, or half a request, or vanish mid-request cost nothing
/// lasting: others are served meanwhile, and the silent one is closed by the server
/// after its idle limit (5 s) instead of holding a thread forever.
fn hello_slow_clients() -> Outcome {
    let mut srv = start_hello(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let t = Duration::from_secs(10);
    let mut silent = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let mut half = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    half.write_all(b"GET / HTTP/1.1\r\nHost:")
        .map_err(|e| e.to_string())?;
    {
        let mut gone = Conn::connect(&target, t).map_err(|e| e.to_string())?;
        gone.write_all(b"GET / HT").map_err(|e| e.to_string())?;
    } // closed mid-request
      // Both of the worker's threads may be held by the silent and the half client; the
      // next request waits for one of them to give up (at most 5 s), then is served.
    let waited = Instant::now();
    let mut c = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    http_get(&mut c, "/", true)?;
    let resp = client::read_response(&mut BufReader::new(&mut c))?;
    check(resp.status == 200, || format!("status {}", resp.status))?;
    println!(
        "    served after {:.1}s next to a silent and a half-sent client",
        waited.elapsed().as_secs_f64()
    );
    // The silent client is closed by the server (EOF), within the read timeout.
    let mut r = BufReader::new(&mut silent);
    check(client::closed_by_server(&mut r), || {
        "the silent connection was not closed by the server".into()
    })?;
    drop(half);
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    check(status.success(), || format!("exit {status}"))?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// hello on a Unix socket and on IPv6.
fn hello_families() -> Outcome {
    let path = std::env::temp_dir().join(format!("cluster-hello-{}.sock", std::process::id()));
    for listen in [format!("unix:{}", path.display()), "[::1]:0".to_string()] {
        let mut srv = start_hello(&["--listen", &listen, "--workers", "2"], &[])?;
        let ready = srv.expect("ready ", Duration::from_secs(20))?;
        let target = Target::parse(&ready["ready ".len()..])?;
        let mut c = Conn::connect(&target, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        http_get(&mut c, "/", true)?;
        let resp = client::read_response(&mut BufReader::new(&mut c))?;
        check(resp.status == 200, || {
            format!("{listen}: status {}", resp.status)
        })?;
        srv.signal("INT")?;
        let status = srv.wait(Duration::from_secs(10))?;
        check(status.success(), || format!("{listen}: exit {status}"))?;
        srv.check_workers_gone(Duration::from_secs(2))?;
    }
    check(!path.exists(), || "socket file left behind".into())
}

/// hello on an address in use exits non-zero at once, naming the address; a bad mode
/// in the environment is refused by name.
fn hello_errors() -> Outcome {
    let taken = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = taken.local_addr().map_err(|e| e.to_string())?.to_string();
    for mode in ["round-robin", "shared"] {
        let mut srv = start_hello(&["--listen", &addr, "--workers", "2", "--mode", mode], &[])?;
        let status = srv.wait(Duration::from_secs(10))?;
        let stderr = srv.stderr();
        check(!status.success(), || {
            format!("{mode}: exit {status} on an address in use")
        })?;
        check(
            stderr.contains(&format!("cannot listen on {addr}"))
                && stderr.contains("Address already in use"),
            || format!("{mode}: stderr does not name the address: {stderr}"),
        )?;
        srv.check_workers_gone(Duration::from_secs(2))?;
    }
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0"],
        &[("CLUSTER_SCHED_POLICY", "round_robin")],
    )?;
    let status = srv.wait(Duration::from_secs(10))?;
    let stderr = srv.stderr();
    check(
        !status.success()
            && stderr.contains("CLUSTER_SCHED_POLICY")
            && stderr.contains("round_robin"),
        || format!("bad policy: exit {status}, stderr {stderr}"),
    )?;
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0", "--workers", "1"],
        &[("CLUSTER_SCHED_POLICY", "none")],
    )?;
    srv.expect("ready ", Duration::from_secs(20))?;
    srv.signal("TERM")?;
    check(srv.wait(Duration::from_secs(10))?.success(), || {
        "policy none: bad exit".into()
    })
}

// ------------------------------------------------------------------ runner

fn main() {
    if std::env::var_os("CLUSTER_SCENARIO_SERVER").is_some() {
        std::process::exit(util::server::main());
    }
    let scenarios: Vec<Scenario> = vec![
        ("balance_round_robin", Box::new(|| balance("round-robin"))),
        ("balance_shared", Box::new(|| balance("shared"))),
        ("families_round_robin", Box::new(|| families("round-robin"))),
        ("families_shared", Box::new(|| families("shared"))),
        (
            "addr_in_use_round_robin",
            Box::new(|| addr_in_use("round-robin")),
        ),
        ("addr_in_use_shared", Box::new(|| addr_in_use("shared"))),
        ("rr_worker_killed", Box::new(rr_worker_killed)),
        (
            "adopted_fd_round_robin",
            Box::new(|| adopted_fd("round-robin")),
        ),
        ("adopted_fd_shared", Box::new(|| adopted_fd("shared"))),
        (
            "hello_contract_round_robin",
            Box::new(|| hello_contract("round-robin")),
        ),
        (
            "hello_contract_shared",
            Box::new(|| hello_contract("shared")),
        ),
        ("hello_families", Box::new(hello_families)),
        ("hello_slow_clients", Box::new(hello_slow_clients)),
        ("hello_errors", Box::new(hello_errors)),
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    let fds_before = proc::open_fds();
    for (name, f) in &scenarios {
        if !filters.is_empty() && !filters.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        println!("scenario {name} ...");
        match f() {
            Ok(()) => println!(
                "scenario {name} ok ({:.1}s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!(
                    "scenario {name} FAILED ({:.1}s): {e}",
                    started.elapsed().as_secs_f64()
                );
                failed.push(*name);
            }
        }
    }
    let fds_after = proc::open_fds();
    let children = proc::children_of(std::process::id());
    if fds_after != fds_before {
        println!("driver leaked descriptors: {fds_before:?} -> {fds_after:?}");
        failed.push("driver hygiene");
    }
    if !children.is_empty() {
        println!("driver left children: {children:?}");
        failed.push("driver hygiene");
    }
    println!("\n{ran} scenarios, {} failed {failed:?}", failed.len());
    std::process::exit(i32::from(!failed.is_empty()));
}
