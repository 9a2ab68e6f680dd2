//! The demo through what a deployment does to it: a stop while requests are under way,
//! rolling restarts under keep-alive load. Nothing a client began is lost.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::demo::{http_get, start_hello};
use crate::util::check::{check, exited_ok, Outcome};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);

/// The demo, `workers` workers of `threads` threads in `mode`, and its address.
fn hello(mode: &str, workers: &str, threads: &str) -> Result<(Server, Target), String> {
    let mut srv = start_hello(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
            "--mode",
            mode,
            "--threads",
            threads,
        ],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    Ok((srv, target))
}

/// One request on `conn` (with `Connection: close` when `close`): the worker that
/// answered, and whether the server announced it closes.
pub fn ask(conn: &mut Conn, close: bool) -> Result<(u32, bool), String> {
    http_get(conn, "/", close)?;
    let resp = client::read_response(&mut BufReader::new(conn))?;
    check(resp.status == 200, || format!("status {}", resp.status))?;
    let worker = resp
        .header("X-Worker")
        .and_then(|v| v.parse().ok())
        .ok_or("no X-Worker")?;
    Ok((worker, resp.header("Connection") == Some("close")))
}

/// The demo's workers now: pid and start time, to check later that they are gone.
pub fn workers_of(srv: &Server) -> Vec<(u32, u64)> {
    proc::children_of(srv.pid())
        .iter()
        .filter_map(|c| Some((c.0, proc::start_time(c.0)?)))
        .collect()
}

/// Every one of `workers` has exited (bounded).
pub fn gone(workers: &[(u32, u64)]) -> Outcome {
    let alive = || {
        workers
            .iter()
            .filter(|(pid, start)| proc::start_time(*pid) == Some(*start) && !proc::is_zombie(*pid))
            .count()
    };
    proc::wait_until("the workers to exit", Duration::from_secs(2), || {
        alive() == 0
    })
    .map_err(|_| format!("{} worker(s) left behind", alive()))
}

/// Closes a connection the scenario does not need, and waits for the server's end of
/// stream: by then the server has closed its descriptor too.
fn let_go(mut conn: Conn) -> Outcome {
    conn.shutdown_write().map_err(|e| e.to_string())?;
    let mut b = [0u8; 64];
    loop {
        match conn.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("letting a connection go: {e}")),
        }
    }
}

/// Whether the server ended `conn` with a clean end of stream (not a reset).
fn clean_eof(conn: &mut Conn) -> Result<(), String> {
    let mut b = [0u8; 1];
    match conn.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(_) => Err("unexpected bytes".into()),
        Err(e) => Err(format!("not a clean close: {e}")),
    }
}

/// `hello` in `mode` with 2 workers. Each worker holds an idle keep-alive connection
/// and one whose next request has begun (its first bytes sent). Then `sig` (`TERM` or
/// `INT`) to the primary, or to the primary and every worker at once (`whom` = `"all"`:
/// systemd's control-group kill, Ctrl-C in a terminal):
/// - the idle connections end with a clean end of stream, not a reset;
/// - a new connection's first request, sent after that, is answered with
///   `Connection: close`;
/// - the begun requests, completed after that, are answered with `Connection: close`;
/// - the demo exits 0 and leaves no process.
pub fn hello_graceful_stop(mode: &str, sig: &str, whom: &str) -> Outcome {
    let (mut srv, target) = hello(mode, "2", "8")?;
    // Connections, each with one request answered, sorted by the worker that holds it,
    // until both workers hold two.
    let mut held: BTreeMap<u32, Vec<Conn>> = BTreeMap::new();
    for _ in 0..64 {
        if held.len() == 2 && held.values().all(|c| c.len() >= 2) {
            break;
        }
        let mut conn = Conn::connect(&target, T).map_err(|e| e.to_string())?;
        let (w, _) = ask(&mut conn, false)?;
        let mine = held.entry(w).or_default();
        if mine.len() < 2 {
            mine.push(conn);
        } else {
            let_go(conn)?;
        }
    }
    check(
        held.len() == 2 && held.values().all(|c| c.len() == 2),
        || {
            format!(
                "64 connections did not reach both workers twice: {:?}",
                held.keys()
            )
        },
    )?;
    let (mut idle, mut begun) = (Vec::new(), Vec::new());
    for (_, mut conns) in held {
        let mut b = conns.pop().ok_or("no connection")?;
        b.write_all(b"GET / HT").map_err(|e| e.to_string())?;
        begun.push(b);
        idle.extend(conns);
    }
    let workers = workers_of(&srv);
    // And a new connection, taken by a worker (one descriptor more between them),
    // whose client has not sent its request yet. Every connection let go above is
    // closed on the server's side by now (see `let_go`), so no close can cancel the
    // new descriptor out.
    let worker_fds = || -> usize { workers.iter().map(|w| proc::fds_of(w.0).len()).sum() };
    let fds_before = worker_fds();
    let mut fresh = Conn::connect(&target, T).map_err(|e| e.to_string())?;
    proc::wait_until("a worker to accept the new connection", T, || {
        worker_fds() > fds_before
    })?;
    let mut pids = vec![srv.pid()];
    if whom == "all" {
        pids.extend(workers.iter().map(|w| w.0));
    }
    proc::signal_all(&pids, sig)?;
    // Each worker closes its idle connection once it has seen the stop.
    for c in &mut idle {
        clean_eof(c).map_err(|e| format!("idle keep-alive connection: {e}"))?;
    }
    // The new connection's first request, sent now, is answered too.
    http_get(&mut fresh, "/", false)?;
    let mut r = BufReader::new(&mut fresh);
    let resp = client::read_response(&mut r).map_err(|e| format!("new connection: {e}"))?;
    check(
        resp.status == 200 && resp.header("Connection") == Some("close"),
        || format!("new connection answered {resp:?}"),
    )?;
    let mut answered = 0;
    for c in &mut begun {
        c.write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(&mut *c);
        let resp = client::read_response(&mut r).map_err(|e| format!("begun request: {e}"))?;
        check(
            resp.status == 200 && resp.header("Connection") == Some("close"),
            || format!("begun request answered {resp:?}"),
        )?;
        check(client::closed_by_server(&mut r), || {
            "open after Connection: close".into()
        })?;
        answered += 1;
    }
    println!("    {mode}, SIG{sig} to {whom}: idle connections closed cleanly, {answered} of 2 begun requests answered");
    exited_ok(&mut srv, T)?;
    gone(&workers)
}

/// What clients saw.
#[derive(Default)]
pub struct Seen {
    pub ok: u64,
    pub closes: u64,
    pub errors: Vec<String>,
}

/// A client until `stop`: keep-alive requests on one connection, a new connection when
/// the server announces a close; with `close`, one request per connection.
pub fn client(target: &Target, close: bool, stop: &AtomicBool, progress: &AtomicU64) -> Seen {
    let mut seen = Seen::default();
    'conn: while !stop.load(Ordering::Relaxed) {
        let mut conn = match Conn::connect(target, T) {
            Ok(c) => c,
            Err(e) => {
                seen.errors.push(format!("connect: {e}"));
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match ask(&mut conn, close) {
                Ok((_, closing)) => {
                    seen.ok += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                    if closing {
                        seen.closes += 1;
                        continue 'conn;
                    }
                }
                Err(e) => {
                    seen.errors.push(e);
                    continue 'conn;
                }
            }
        }
    }
    seen
}

/// Waits until the clients have made `n` more requests (bounded).
pub fn progressed(progress: &AtomicU64, n: u64) -> Outcome {
    let start = progress.load(Ordering::Relaxed);
    proc::wait_until("the clients to make progress", T, || {
        progress.load(Ordering::Relaxed) >= start + n
    })
}

/// 16 keep-alive clients against `hello` (4 workers) in `mode` through two rolling
/// restarts: no request fails, and the workers' graceful closes (`Connection: close`)
/// are what moves the clients to the new workers.
pub fn hello_keepalive_reloads(mode: &str) -> Outcome {
    let (mut srv, target) = hello(mode, "4", "8")?;
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let (seen, reloads) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|_| s.spawn(|| client(&target, false, &stop, &progress)))
            .collect();
        let reloads = (|| -> Result<Vec<String>, String> {
            let mut done = Vec::new();
            for _ in 0..2 {
                progressed(&progress, 2000)?;
                srv.signal("HUP")?;
                done.push(srv.expect_containing("reload finished", T)?);
            }
            progressed(&progress, 2000)?;
            Ok(done)
        })();
        stop.store(true, Ordering::Relaxed);
        let seen: Vec<Seen> = clients
            .into_iter()
            .map(|c| c.join().unwrap_or_default())
            .collect();
        (seen, reloads)
    });
    let reloads = reloads?;
    let ok: u64 = seen.iter().map(|s| s.ok).sum();
    let closes: u64 = seen.iter().map(|s| s.closes).sum();
    let errors: Vec<&String> = seen.iter().flat_map(|s| &s.errors).collect();
    println!(
        "    {mode}: {ok} keep-alive requests through 2 reloads, {closes} closed by the server, {} failed",
        errors.len()
    );
    check(errors.is_empty(), || {
        format!(
            "{} failed requests: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        )
    })?;
    check(
        reloads
            .iter()
            .all(|l| l.contains("4 replaced") && !l.contains("early")),
        || format!("reloads did not replace every worker: {reloads:?}"),
    )?;
    let workers = workers_of(&srv);
    srv.signal("TERM")?;
    exited_ok(&mut srv, T)?;
    gone(&workers)
}

/// The demo's pool grows: one worker with `--threads 1`; a keep-alive client holds the
/// thread, and a second client is still answered (by a thread added for it) while the
/// first stays connected. A fixed pool would keep it waiting as long as the first
/// client stays.
pub fn hello_pool_grows(mode: &str) -> Outcome {
    let (mut srv, target) = hello(mode, "1", "1")?;
    let mut held = Conn::connect(&target, T).map_err(|e| e.to_string())?;
    ask(&mut held, false)?;
    let mut more = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::connect(&target, T).map_err(|e| e.to_string())?;
        ask(&mut c, false).map_err(|e| format!("a client beside a held one: {e}"))?;
        more.push(c);
    }
    ask(&mut held, false)?;
    println!("    {mode}: 4 keep-alive clients served at once by a worker started with 1 thread");
    let workers = workers_of(&srv);
    drop((held, more));
    srv.signal("TERM")?;
    exited_ok(&mut srv, T)?;
    gone(&workers)
}

/// One worker with one base thread; a keep-alive client asks back to back, with no
/// pause between a response and its next request. A second client's request is
/// answered while the first keeps asking (bounded: the first stops after 20,000
/// requests or once the second is answered): a busy keep-alive connection must not
/// hold the worker's `accept` (it did while each of its waits stayed under the demo's
/// 5 ms first-request grace: the second client waited until the first stopped, and in
/// the benchmark 12 of 16 keep-alive clients timed out).
pub fn hello_busy_keepalive_does_not_hold_accept(mode: &str) -> Outcome {
    let (mut srv, target) = hello(mode, "1", "1")?;
    let mut busy = Conn::connect(&target, T).map_err(|e| e.to_string())?;
    ask(&mut busy, false)?;
    let second_answered = AtomicBool::new(false);
    let (busy_asked, second) = std::thread::scope(|s| {
        let asker = s.spawn(|| -> Result<u32, String> {
            let mut n = 0;
            while n < 20_000 && !second_answered.load(Ordering::Relaxed) {
                ask(&mut busy, false)?;
                n += 1;
            }
            Ok(n)
        });
        let second = (|| -> Result<(), String> {
            let mut c = Conn::connect(&target, T).map_err(|e| e.to_string())?;
            ask(&mut c, false).map(drop)
        })();
        // Whether or not it was answered, the first client stops now.
        second_answered.store(true, Ordering::Relaxed);
        let busy_asked = asker
            .join()
            .map_err(|_| "the busy client panicked".to_string());
        (busy_asked, second)
    });
    let busy_asked = busy_asked??;
    second.map_err(|e| format!("the second client: {e}"))?;
    check(busy_asked < 20_000, || {
        "the second client was answered only after the busy one stopped (20,000 requests)".into()
    })?;
    println!("    {mode}: a second client answered while a busy keep-alive client asked ({busy_asked} requests meanwhile)");
    let workers = workers_of(&srv);
    drop(busy);
    srv.signal("TERM")?;
    exited_ok(&mut srv, T)?;
    gone(&workers)
}

/// A client that keeps sending after the server closed its keep-alive connection at a
/// stop (a byte every 10 ms) does not hold the stop up: the worker drains it for a
/// bounded time, finishes, prints its count and the demo exits 0 (before the bound, the
/// worker was killed at the 4 s shutdown deadline).
pub fn hello_stop_not_held_by_trickle() -> Outcome {
    let (mut srv, target) = hello("shared", "1", "1")?;
    let mut conn = Conn::connect(&target, T).map_err(|e| e.to_string())?;
    ask(&mut conn, false)?;
    let workers = workers_of(&srv);
    srv.signal("TERM")?;
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if conn.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10)); // the trickle's pace
            }
        });
        let status = srv.wait(T);
        done.store(true, Ordering::Relaxed);
        status
    })?;
    let stderr = srv.stderr();
    println!("    the demo exited with {status} while a client trickled bytes");
    check(status.success(), || format!("exit {status}: {stderr}"))?;
    check(stderr.contains("worker 1: served "), || {
        format!("the worker did not finish by itself: {stderr}")
    })?;
    gone(&workers)
}

/// `timeout --preserve-status -s TERM 2 hello`, ten at once: `timeout(1)` signals the
/// demo's primary, then its whole process group, so the primary gets `SIGTERM` twice
/// within microseconds. That is one stop: every worker exits on its own (the demo
/// says "exited with exit code 0"), none is killed by a signal, and the demo exits 0.
/// Before, the second `SIGTERM` meant "kill now": workers were `SIGKILL`ed in 2 runs
/// of 3.
pub fn hello_stop_told_twice() -> Outcome {
    let hello = proc::example("hello")?;
    let mut runs = Vec::new();
    for _ in 0..10 {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["--preserve-status", "-s", "TERM", "2"])
            .arg(&hello)
            .args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .env_remove("CLUSTER_SCHED_POLICY");
        runs.push(Server::spawn(cmd)?);
    }
    let mut workers = Vec::new();
    for srv in &mut runs {
        srv.expect("ready ", T)?;
        // The demo is timeout's child; its workers, the demo's.
        let demo = proc::children_of(srv.pid())
            .first()
            .map(|c| c.0)
            .ok_or("timeout has no child")?;
        workers.extend(
            proc::children_of(demo)
                .iter()
                .filter_map(|c| Some((c.0, proc::start_time(c.0)?))),
        );
    }
    // Every run waited for before any is judged, so a failure leaves none behind.
    let ends: Vec<_> = runs.iter_mut().map(|srv| exited_ok(srv, T)).collect();
    let mut exits = 0;
    for end in ends {
        let end = end?;
        let killed: Vec<&String> = end
            .rest
            .iter()
            .filter(|l| l.contains("exited with signal"))
            .collect();
        check(killed.is_empty(), || {
            format!(
                "workers killed by a signal: {killed:?}; stderr:\n{}",
                end.stderr
            )
        })?;
        exits += end
            .rest
            .iter()
            .filter(|l| l.contains("exited with exit code 0"))
            .count();
    }
    println!("    10 runs: {exits} worker exits, all with exit code 0");
    check(exits == 20, || format!("{exits} of 20 worker exits seen"))?;
    gone(&workers)
}
