//! The `axum` example through what a deployment does to it, in every mode: keep-alive
//! clients through rolling restarts, many connections at once, a group stop with
//! requests in flight, recycling by count. Real processes on loopback, bounded in
//! time; every worker is checked gone at the end.
//!
//! `harness = false`: one scenario at a time in this single-threaded driver (its
//! client threads only connect; nothing here forks). `cargo test -p cluster-tokio
//! --test axum_example -- NAME` runs the scenarios whose names contain NAME.

#[allow(dead_code)]
#[path = "../../tests/util/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../../tests/util/proc.rs"]
mod proc;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use client::{Conn, Target};
use proc::Server;

type Outcome = Result<(), String>;

const T: Duration = Duration::from_secs(10);
const MODES: [&str; 3] = ["round-robin", "shared", "reuse-port"];

fn check(ok: bool, what: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// The example, `--workers N --mode MODE` plus `extra`, and the address it serves.
fn start(mode: &str, workers: &str, extra: &[&str]) -> Result<(Server, Target), String> {
    let mut cmd = std::process::Command::new(proc::example("axum")?);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--mode",
        mode,
    ])
    .args(extra);
    let mut srv = Server::spawn(cmd)?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    Ok((srv, target))
}

/// The workers now: pid and start time.
fn workers_of(srv: &Server) -> Vec<(u32, u64)> {
    proc::children_of(srv.pid())
        .iter()
        .filter_map(|c| Some((c.0, proc::start_time(c.0)?)))
        .collect()
}

/// Every one of `workers` is gone (bounded).
fn gone(workers: &[(u32, u64)]) -> Outcome {
    proc::wait_until("every worker to exit", T, || {
        workers
            .iter()
            .all(|&(pid, start)| proc::start_time(pid) != Some(start))
    })
}

/// SIGTERM, exit 0, every worker gone.
fn stop_and_check(mut srv: Server) -> Outcome {
    let workers = workers_of(&srv);
    srv.signal("TERM")?;
    let status = srv.wait(T)?;
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("exited with {status}:\n{stderr}")
    })?;
    check(!stderr.contains("panicked"), || stderr.clone())?;
    gone(&workers)
}

/// One request on `conn`: the worker that answered and whether it said
/// `Connection: close`.
fn ask(conn: &mut Conn, close: bool) -> Result<(u32, bool), String> {
    let extra = if close { "Connection: close\r\n" } else { "" };
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let resp = client::read_response(&mut BufReader::new(conn))?;
    check(resp.status == 200, || format!("status {}", resp.status))?;
    let worker = resp
        .header("X-Worker")
        .and_then(|v| v.parse().ok())
        .ok_or("no X-Worker")?;
    Ok((worker, resp.header("Connection") == Some("close")))
}

/// A keep-alive client until `stop`: requests on one connection, a new connection
/// when the server says it closes. Returns (answered, failures).
fn keepalive_client(t: &Target, stop: &AtomicBool, progress: &AtomicU64) -> (u64, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(t, T) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    failed.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        match ask(c, false) {
            Ok((_, closing)) => {
                ok += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                if closing {
                    conn = None;
                }
            }
            Err(e) => {
                failed.push(e);
                conn = None;
            }
        }
    }
    (ok, failed)
}

/// 64 keep-alive clients through two rolling restarts: no request fails (hyper's
/// graceful shutdown alone closed idle keep-alive connections under the clients'
/// next requests; the drain tells them to close first).
fn keepalive_reloads(mode: &str) -> Outcome {
    let (mut srv, t) = start(mode, "4", &[])?;
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let (results, reloads) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..64)
            .map(|_| s.spawn(|| keepalive_client(&t, &stop, &progress)))
            .collect();
        let mut reloads = Ok(());
        for round in 0..2 {
            let before = progress.load(Ordering::Relaxed);
            reloads = proc::wait_until("clients to make progress", T, || {
                progress.load(Ordering::Relaxed) >= before + 500
            })
            .and_then(|()| srv.signal("HUP"))
            .and_then(|()| {
                srv.expect_containing("reload finished: 4 replaced", T)
                    .map(drop)
            });
            if reloads.is_err() {
                break;
            }
            let _ = round;
        }
        let before = progress.load(Ordering::Relaxed);
        let after = proc::wait_until("clients to make progress after the reloads", T, || {
            progress.load(Ordering::Relaxed) >= before + 500
        });
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = clients
            .into_iter()
            .map(|c| c.join().unwrap_or((0, vec!["client panicked".into()])))
            .collect();
        (results, reloads.and(after))
    });
    reloads?;
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    println!(
        "    {mode}: 64 keep-alive clients, 2 reloads: {ok} answered, {} failed",
        failed.len()
    );
    check(failed.is_empty(), || {
        format!(
            "{} failed requests, e.g. {:?}",
            failed.len(),
            failed.first()
        )
    })?;
    stop_and_check(srv)
}

/// Round-robin: once every worker accepts, 64 connections opened at once, one request
/// on each, held open: the primary spreads them over the 4 workers by their credits,
/// max/min <= 1.25.
fn round_robin_balance() -> Outcome {
    let (mut srv, t) = start("round-robin", "4", &[])?;
    // `ready` says every worker listens; a worker's credits follow a moment later
    // (its runtime starts, then grants them). Connections before that would go to the
    // others, and the scheduler (fewest dispatched) would then even the counts out
    // with the next ones: wait until every worker says it accepts.
    let accepting = |srv: &Server| -> usize {
        let ids: std::collections::BTreeSet<&String> = srv
            .seen
            .iter()
            .filter(|l| l.ends_with(" accepting"))
            .collect();
        ids.len()
    };
    while accepting(&srv) < 4 {
        srv.expect_containing(" accepting", T)?;
    }
    let mut conns = (0..64)
        .map(|_| Conn::connect(&t, T).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut by_worker: BTreeMap<u32, u32> = BTreeMap::new();
    for c in &mut conns {
        *by_worker.entry(ask(c, false)?.0).or_default() += 1;
    }
    let max = by_worker.values().max().copied().unwrap_or(0);
    let min = by_worker.values().min().copied().unwrap_or(0);
    println!("    round-robin, 64 connections at once: {by_worker:?}");
    check(
        by_worker.len() == 4 && f64::from(max) <= 1.25 * f64::from(min),
        || format!("unbalanced: {by_worker:?}"),
    )?;
    drop(conns);
    stop_and_check(srv)
}

/// `SIGTERM` to the whole group (the primary and every worker, as systemd and a
/// terminal send it) while requests are half sent: each is answered with
/// `Connection: close`, and the cluster exits 0.
fn group_stop(mode: &str) -> Outcome {
    let (mut srv, t) = start(mode, "2", &[])?;
    let mut begun = Vec::new();
    for _ in 0..8 {
        let mut c = Conn::connect(&t, T).map_err(|e| e.to_string())?;
        ask(&mut c, false)?; // accepted and served once: a worker holds it
        c.write_all(b"GET / HT").map_err(|e| e.to_string())?;
        begun.push(c);
    }
    let workers = workers_of(&srv);
    let mut pids = vec![srv.pid()];
    pids.extend(workers.iter().map(|w| w.0));
    proc::signal_all(&pids, "TERM")?;
    let mut answered = 0;
    for c in &mut begun {
        c.write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let resp = client::read_response(&mut BufReader::new(&mut *c))
            .map_err(|e| format!("begun request: {e}"))?;
        check(resp.status == 200, || format!("begun request: {resp:?}"))?;
        answered += 1;
    }
    println!("    {mode}: group SIGTERM, {answered} of 8 begun requests answered");
    let status = srv.wait(T)?;
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("exited with {status}:\n{stderr}")
    })?;
    gone(&workers)
}

/// `--max-requests 30`, 2 workers, 150 requests (one per connection): all answered,
/// and workers are recycled by count although axum accepts through the listener
/// (round-robin) or on a std listener of its own (the other modes).
fn recycles(mode: &str) -> Outcome {
    let (mut srv, t) = start(mode, "2", &["--max-requests", "30"])?;
    for i in 0..150 {
        let mut c = Conn::connect(&t, T).map_err(|e| e.to_string())?;
        ask(&mut c, true).map_err(|e| format!("request {i}: {e}"))?;
    }
    let line = srv.expect_containing("replacing worker", T)?;
    println!("    {mode}: 150 answered; {line}");
    stop_and_check(srv)
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut scenarios: Vec<(String, Box<dyn Fn() -> Outcome>)> = Vec::new();
    for mode in MODES {
        let name = mode.replace('-', "_");
        scenarios.push((
            format!("axum_keepalive_reloads_{name}"),
            Box::new(move || keepalive_reloads(mode)),
        ));
        scenarios.push((
            format!("axum_group_stop_{name}"),
            Box::new(move || group_stop(mode)),
        ));
        scenarios.push((
            format!("axum_recycles_{name}"),
            Box::new(move || recycles(mode)),
        ));
    }
    scenarios.push((
        "axum_round_robin_balance".into(),
        Box::new(round_robin_balance),
    ));
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, run) in &scenarios {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("scenario {name} ...");
        let started = std::time::Instant::now();
        match run() {
            Ok(()) => {
                passed += 1;
                println!(
                    "scenario {name} ok ({:.1}s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                println!("scenario {name} FAILED: {e}");
                failed.push(name.clone());
            }
        }
    }
    println!("{passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
