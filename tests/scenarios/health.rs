//! Worker health (issue 11): hung workers killed and replaced in every mode, application
//! heartbeats, recycling by count under load (through `hello`, with keep-alive and
//! `Connection: close` clients) and by memory (`hello`'s `/leak`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::demo::{http_get, start_hello};
use crate::util::check::{all_ok, check, exited_ok, spec, stop_and_check, Outcome};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(5);

/// The lines a server printed that start with `prefix`.
fn lines_with<'a>(srv: &'a Server, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    srv.seen.iter().filter(move |l| l.starts_with(prefix))
}

/// `SIGSTOP` a worker with a 1 s worker timeout: it is killed (`SIGKILL`, reported
/// with its silence) and its replacement listens within 2 s of the stop; a load that
/// runs meanwhile loses nothing (in reuse-port mode the connections queued on the
/// stopped worker's socket wait, and the replacement serves them); nothing leaks.
pub fn hung_worker_replaced(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 2, &[("SC_TIMEOUT_MS", "1000")]).start()?;
    all_ok(&client::load(&targets[0], 20, 2, "hi", T), 20, "warm-up")?;
    let w1 = proc::worker_pid(&srv.seen, 1)?;
    proc::signal(w1, "STOP")?;
    proc::wait_stopped(w1, T)?;
    let stopped = Instant::now();
    let target = targets[0].clone();
    let during = std::thread::scope(|s| -> Result<client::Load, String> {
        // Clients that run while worker 1 is stopped and while it is replaced.
        let load = s.spawn(|| client::load(&target, 60, 4, "hi", Duration::from_secs(10)));
        let outcome = (|| -> Outcome {
            let bound = Duration::from_secs(2);
            let replacing = srv.expect("replacing 1 ", bound)?;
            println!("    {mode}: {replacing}");
            check(replacing.contains(&format!(" {w1} unresponsive")), || {
                format!("replacing line: {replacing}")
            })?;
            let exit = srv.expect("exit 1 ", bound.saturating_sub(stopped.elapsed()))?;
            check(
                exit.contains("signal 9") && exit.contains("requested=false"),
                || format!("exit: {exit}"),
            )?;
            srv.expect("listening 3 ", bound.saturating_sub(stopped.elapsed()))?;
            // `WorkerInfo::replaced_because` of the replacement.
            srv.seen_or_expect("cause 3 unresponsive", T)?;
            let took = stopped.elapsed();
            println!("    {mode}: stopped worker killed and replaced in {took:.2?}");
            check(took <= bound, || format!("replaced after {took:?}"))
        })();
        let load = load.join().map_err(|_| "load panicked".to_string())?;
        outcome.map(|()| load)
    })?;
    all_ok(&during, 60, "while worker 1 was stopped and replaced")?;
    println!("    {mode}: during: {}", during.shares());
    check(!during.by_worker.contains_key(&1), || {
        "the stopped worker answered".into()
    })?;
    if mode == "reuse-port" {
        // Half the 4-tuples hash to worker 1's socket: those clients waited in its
        // queue and the replacement, which takes the socket over, served them.
        check(during.by_worker.contains_key(&3), || {
            format!(
                "the replacement served none of the queued clients: {}",
                during.shares()
            )
        })?;
    }
    let after = client::load(&targets[0], 100, 4, "hi", T);
    all_ok(&after, 100, "after the replacement")?;
    check(
        after.by_worker.keys().copied().collect::<Vec<_>>() == [2, 3],
        || format!("after: {}", after.shares()),
    )?;
    stop_and_check(&mut srv)?;
    let end = srv.seen.last().cloned().unwrap_or_default();
    check(lines_with(&srv, "replacing ").count() == 1, || {
        "more than one replacement".into()
    })?;
    check(
        srv.seen
            .iter()
            .any(|l| l.starts_with("dropped ") && l.contains("health_kills=1")),
        || format!("stats: {end}"),
    )
}

/// The primary and its workers stopped *together* for longer than the worker timeout
/// (a terminal's Ctrl-Z, `kill -STOP -- -PGID`: workers are in the primary's process
/// group) and continued: no worker is taken for hung. The primary notices that it did
/// not run itself (it says so on stderr), and that time is not the workers' silence;
/// every worker still serves, none is replaced.
pub fn group_stop_is_not_a_hang() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 2, &[("SC_TIMEOUT_MS", "1000")]).start()?;
    all_ok(&client::load(&targets[0], 20, 2, "hi", T), 20, "warm-up")?;
    let workers = [
        proc::worker_pid(&srv.seen, 1)?,
        proc::worker_pid(&srv.seen, 2)?,
    ];
    let group = [srv.pid(), workers[0], workers[1]];
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let during = std::thread::scope(|s| -> Result<client::Load, String> {
        // Clients that keep asking through the stop (the kernel queues their
        // connections meanwhile): every one is answered once the group continues, none
        // lost to the primary's stall recovery, which then sees connections that went
        // unreceived for longer than its 1 s limit.
        let load = s.spawn(|| client::load_until(&targets[0], 4, &stop, &progress));
        let outcome = (|| -> Outcome {
            proc::wait_until("the first answers", T, || {
                progress.load(Ordering::Relaxed) > 0
            })?;
            proc::signal_all(&group, "STOP")?;
            for &pid in &group {
                proc::wait_stopped(pid, T)?;
            }
            // The stimulus, not a synchronisation: the group stays stopped one and a
            // half worker timeouts.
            std::thread::sleep(Duration::from_millis(1500));
            let before = progress.load(Ordering::Relaxed);
            proc::signal_all(&group, "CONT")?;
            let said = srv.expect("err: ", T)?;
            println!("    {said}");
            check(said.contains("did not run for"), || {
                format!("the primary's first word after the stop: {said}")
            })?;
            proc::wait_until("100 answers after the group continued", T, || {
                progress.load(Ordering::Relaxed) >= before + 100
            })
        })();
        stop.store(true, Ordering::Relaxed);
        let load = load.join().map_err(|_| "load panicked".to_string())?;
        outcome.map(|()| load)
    })?;
    check(during.errors.is_empty(), || {
        format!(
            "through the group stop: {} failed: {:?}",
            during.errors.len(),
            during.errors
        )
    })?;
    let after = client::load(&targets[0], 100, 4, "hi", T);
    all_ok(&after, 100, "after the group continued")?;
    check(
        after.by_worker.keys().copied().collect::<Vec<_>>() == [1, 2],
        || format!("after: {}", after.shares()),
    )?;
    stop_and_check(&mut srv)?;
    let replaced: Vec<&String> = lines_with(&srv, "replacing ").collect();
    check(replaced.is_empty(), || {
        format!("workers taken for hung after a group stop: {replaced:?}")
    })
}

/// Heartbeats (`SC_HEARTBEAT_MS=600`, the test server's heartbeat thread calls
/// `Worker::heartbeat` five times per timeout): under load for several timeouts no
/// worker is touched; once one worker's application stops calling it, that worker
/// (and no other) is killed, reported, and replaced.
pub fn heartbeat_replaces_hung_application() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 2, &[("SC_HEARTBEAT_MS", "600")]).start()?;
    let target = targets[0].clone();
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let started = Instant::now();
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| client::load_until(&target, 4, &stop, &progress));
        // Four timeouts' worth of load (and at least 400 requests).
        let waited = proc::wait_until("load to flow", Duration::from_secs(20), || {
            progress.load(Ordering::Relaxed) >= 400 && started.elapsed() >= 4 * 600 * MS
        });
        stop.store(true, Ordering::Relaxed);
        let load = load.join().unwrap_or_default();
        waited.map(|()| load)
    })?;
    check(load.ok > 0 && load.errors.is_empty(), || {
        format!("load: {} ok, {:?}", load.ok, load.errors.first())
    })?;
    let _ = srv.rest(Duration::from_millis(50));
    check(lines_with(&srv, "replacing ").next().is_none(), || {
        "a heartbeating worker was replaced".into()
    })?;
    check(lines_with(&srv, "exit ").next().is_none(), || {
        "a worker exited under load".into()
    })?;
    // One worker's application stops its heartbeats.
    let hung = client::ask(&targets[0], "hang-heartbeat", T)?.worker;
    let replacing = srv.expect(&format!("replacing {hung} "), T)?;
    println!("    {replacing}");
    check(replacing.contains("no-heartbeat"), || replacing.clone())?;
    let exit = srv.expect(&format!("exit {hung} "), T)?;
    check(
        exit.contains("signal 9") && exit.contains("requested=false"),
        || exit.clone(),
    )?;
    srv.expect("listening 3 ", T)?;
    let other = 3 - hung;
    let after = client::load(&targets[0], 100, 4, "hi", T);
    all_ok(&after, 100, "after the replacement")?;
    check(
        after.by_worker.keys().copied().collect::<BTreeSet<_>>() == BTreeSet::from([other, 3]),
        || format!("after: {}", after.shares()),
    )?;
    check(lines_with(&srv, "replacing ").count() == 1, || {
        "another worker was replaced".into()
    })?;
    stop_and_check(&mut srv)
}

const MS: Duration = Duration::from_millis(1);

/// A worker this scenario stopped: killed by pid when the scenario ends, if the same
/// process is still there (a stopped process cannot act on the `SIGTERM` its primary's
/// death sends it, and `hello` announces no workers for the driver to clean up).
struct KillIfStillThere {
    pid: u32,
    start: Option<u64>,
}

impl KillIfStillThere {
    fn new(pid: u32) -> KillIfStillThere {
        KillIfStillThere {
            pid,
            start: proc::start_time(pid),
        }
    }
}

impl Drop for KillIfStillThere {
    fn drop(&mut self) {
        if self.start.is_some() && proc::start_time(self.pid) == self.start {
            let _ = proc::signal(self.pid, "KILL");
        }
    }
}

/// How many children of `pid` are alive (not zombies). The list comes from one read of
/// `/proc/PID/task/PID/children` (the primary forks from its only thread), a snapshot:
/// a scan of `/proc` is not one, and with pids wrapping around (`pid_max` 32768) it
/// can miss a worker forked during the scan at a lower pid than one that exits
/// during it.
fn live_children(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|&p| !proc::is_zombie(p))
        .count()
}

/// Starts `hello` with `args` on 127.0.0.1:0 and returns it and its address.
fn hello(args: &[&str]) -> Result<(Server, Target), String> {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut srv = start_hello(&all, &[])?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    Ok((srv, target))
}

/// One HTTP client that keeps going until `stop`: a new connection each time, with
/// `keep_alive` requests on it (the last with `Connection: close`; earlier if the
/// server answers `Connection: close`, as a worker that is leaving does). Counts
/// requests and connections; returns the errors.
fn http_client(
    target: &Target,
    keep_alive: usize,
    stop: &AtomicBool,
    requests: &AtomicU64,
    connections: &AtomicU64,
) -> Vec<String> {
    let mut errors = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match Conn::connect(target, T) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("connect: {e}"));
                continue;
            }
        };
        connections.fetch_add(1, Ordering::Relaxed);
        for i in 0..keep_alive {
            let last = i + 1 == keep_alive;
            let got = http_get(&mut conn, "/", last).and_then(|()| {
                client::read_response(&mut BufReader::new(&mut conn)).and_then(|r| {
                    if r.status == 200 {
                        Ok(r.header("Connection") == Some("close"))
                    } else {
                        Err(format!("status {}", r.status))
                    }
                })
            });
            match got {
                Ok(closing) => {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if closing {
                        break;
                    }
                }
                Err(e) => {
                    errors.push(format!("request {} of a connection: {e}", i + 1));
                    break;
                }
            }
        }
    }
    errors
}

/// Recycling by count under load (`hello --max-requests 200`, 2 workers): 16
/// closed-loop clients, 8 with `Connection: close` and 8 keep-alive (10 requests per
/// connection), until 3000 connections. No request fails; the recycles match the
/// arithmetic: every recycled worker served at least 200 connections, every worker
/// that served 200 was recycled unless it was still serving at the stop, there are at
/// most total/200 recycles and at least a quarter of that, and every worker that left
/// was recycled. (Recycles run one at a time, each a fork, a listen and the old
/// worker's drain, so a load faster than that makes workers wait their turn past 200:
/// the count is then below total/200.)
/// Sampling `/proc` throughout, the primary never has fewer than 2 live workers.
pub fn recycle_by_count_under_load(mode: &str) -> Outcome {
    let (limit, workers, total) = (200u64, 2usize, 3000u64);
    let (mut srv, target) = hello(&[
        "--workers",
        "2",
        "--threads",
        "8",
        "--mode",
        mode,
        "--max-requests",
        "200",
    ])?;
    let primary = srv.pid();
    let stop = AtomicBool::new(false);
    let (requests, connections) = (AtomicU64::new(0), AtomicU64::new(0));
    let fewest = AtomicUsize::new(usize::MAX);
    let samples = AtomicU64::new(0);
    let errors = std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|i| {
                let (t, stop, req, conns) = (&target, &stop, &requests, &connections);
                s.spawn(move || http_client(t, if i % 2 == 0 { 1 } else { 10 }, stop, req, conns))
            })
            .collect();
        // The sampler: live (non-zombie) children of the primary, every few ms.
        let sampler = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let live = live_children(primary);
                fewest.fetch_min(live, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5)); // the sampling rate
            }
        });
        let waited = proc::wait_until("3000 connections", Duration::from_secs(60), || {
            connections.load(Ordering::Relaxed) >= total
        });
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let mut errors: Vec<String> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_else(|_| vec!["client panicked".into()]))
            .collect();
        if let Err(e) = waited {
            errors.push(e);
        }
        errors
    });
    let (reqs, conns) = (
        requests.load(Ordering::Relaxed),
        connections.load(Ordering::Relaxed),
    );
    let fewest = fewest.load(Ordering::Relaxed);
    srv.signal("TERM")?;
    exited_ok(&mut srv, Duration::from_secs(15))?;
    // "worker N: served X connections", one per worker that ever ran.
    // (Anywhere in a line: the primary's and the workers' writes to the one stderr
    // pipe may interleave.)
    let served: BTreeMap<u32, u64> = srv
        .seen
        .iter()
        .filter_map(|l| {
            let (before, after) = l.split_once(": served ")?;
            let id = before.rsplit("worker ").next()?;
            Some((id.parse().ok()?, after.split(' ').next()?.parse().ok()?))
        })
        .collect();
    let recycled: BTreeSet<u32> = srv
        .seen
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("err: hello: replacing worker ")?;
            rest.contains("max connections")
                .then(|| rest.split(' ').next()?.parse().ok())?
        })
        .collect();
    let sum: u64 = served.values().sum();
    println!(
        "    {mode}: {reqs} requests on {conns} connections, 0 failed of them: {}; \
         {} recycles; served {served:?}; fewest live workers {fewest} in {} samples",
        errors.is_empty(),
        recycled.len(),
        samples.load(Ordering::Relaxed)
    );
    check(errors.is_empty(), || {
        format!("{} failed, first: {:?}", errors.len(), errors.first())
    })?;
    check(sum == conns, || {
        format!(
            "the workers served {sum} connections, the clients made {conns}: {:?}",
            srv.seen
        )
    })?;
    let reached: BTreeSet<u32> = served
        .iter()
        .filter(|(_, &n)| n >= limit)
        .map(|(&w, _)| w)
        .collect();
    check(recycled.is_subset(&reached), || {
        format!("recycled {recycled:?}, but only {reached:?} reached {limit}")
    })?;
    check(reached.difference(&recycled).count() <= workers, || {
        format!("{reached:?} reached {limit}, only {recycled:?} were recycled")
    })?;
    // At most one recycle per `limit` connections, and at least a quarter of that
    // (one at a time, each waiting for the last one's old worker to be gone: the
    // slowest runs measured kept up with half); and every worker that left had been
    // recycled (nothing else replaced a worker).
    let r = recycled.len() as u64;
    check(r * limit <= conns && r >= conns / limit / 4, || {
        format!("{r} recycles for {conns} connections at {limit} each")
    })?;
    check(r as usize + workers >= served.len(), || {
        format!(
            "{} workers ran, {r} recycled, {workers} at the end",
            served.len()
        )
    })?;
    check(fewest >= workers, || {
        format!("only {fewest} live workers at one sample")
    })?;
    proc::wait_until("the workers to be gone", T, || {
        proc::children_of(primary).is_empty()
    })
}

/// Recycling by count, as the primary sees it (the test server, `SC_MAX_CONN=50`, 2
/// workers, 600 connections from 8 clients): after every event of the run, until the
/// stop, at least 2 workers listen and are not disconnecting (each replacement listens
/// before the worker it replaces is asked to go), recycles happened, and no request
/// failed.
pub fn recycle_keeps_n_serving(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 2, &[("SC_MAX_CONN", "50")]).start()?;
    let load = client::load(&targets[0], 600, 8, "hi", T);
    all_ok(&load, 600, "while recycling")?;
    // A marker in the primary's output (its `message ID ping` line): what it printed
    // before is the run, what follows the stop.
    client::ask(&targets[0], "tell ping", T)?;
    let marker = srv.expect_containing(" ping", T)?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    crate::util::check::clean_end(&srv, &end)?;
    let stopping = srv.seen.iter().position(|l| *l == marker).unwrap_or(0);
    let before_stop = &srv.seen[..stopping];
    let serving: Vec<usize> = before_stop
        .iter()
        .filter_map(|l| l.strip_prefix("serving ")?.parse().ok())
        .collect();
    let recycled = srv
        .seen
        .iter()
        .filter(|l| l.starts_with("replacing ") && l.contains("max-connections"))
        .count();
    println!(
        "    {mode}: {recycled} recycles, serving counts {:?}",
        serving.iter().collect::<BTreeSet<_>>()
    );
    check(recycled >= 2, || format!("{recycled} recycles"))?;
    check(serving.iter().all(|&n| n >= 2), || {
        format!("fewer than 2 workers serving at some point: {serving:?}")
    })
}

/// Recycling by memory (`hello --max-rss 16`, 2 workers, each a few MiB at start):
/// three `GET /leak` on one keep-alive connection grow that worker by 24 MiB; the primary recycles it (logged
/// with the reason), the replacement serves, and the other worker is untouched (same
/// pid, no replacement).
pub fn recycle_by_memory() -> Outcome {
    let (mut srv, target) = hello(&["--workers", "2", "--threads", "2", "--max-rss", "16"])?;
    let before: Vec<u32> = proc::children_of(srv.pid()).iter().map(|c| c.0).collect();
    let mut conn = Conn::connect(&target, T).map_err(|e| e.to_string())?;
    let mut leaker = None;
    for i in 0..3 {
        http_get(&mut conn, "/leak", i == 2)?;
        let r = client::read_response(&mut BufReader::new(&mut conn))?;
        check(r.status == 200, || format!("/leak: {r:?}"))?;
        leaker = r.header("X-Worker").and_then(|w| w.parse::<u32>().ok());
    }
    drop(conn);
    let leaker = leaker.ok_or("no X-Worker")?;
    let line = srv.expect("err: hello: replacing worker ", T)?;
    println!("    {line}");
    check(
        line.starts_with(&format!("err: hello: replacing worker {leaker} "))
            && line.contains("max rss"),
        || format!("expected worker {leaker} replaced for its rss: {line}"),
    )?;
    let exit = srv.expect(&format!("err: hello: worker {leaker} exited"), T)?;
    check(exit.contains("exit code 0 (asked to)"), || exit.clone())?;
    let other = 3 - leaker;
    let after = (0..20)
        .map(|_| -> Result<u32, String> {
            let mut c = Conn::connect(&target, T).map_err(|e| e.to_string())?;
            http_get(&mut c, "/", true)?;
            let r = client::read_response(&mut BufReader::new(&mut c))?;
            r.header("X-Worker")
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| "no X-Worker".to_string())
        })
        .collect::<Result<BTreeSet<u32>, String>>()?;
    check(!after.contains(&leaker), || {
        format!("the recycled worker still served: {after:?}")
    })?;
    let now: Vec<u32> = proc::children_of(srv.pid()).iter().map(|c| c.0).collect();
    let kept: Vec<&u32> = before.iter().filter(|p| now.contains(p)).collect();
    check(kept.len() == 1, || {
        format!("workers before {before:?}, after {now:?}: the other one should remain")
    })?;
    srv.signal("TERM")?;
    exited_ok(&mut srv, Duration::from_secs(10))?;
    check(
        lines_with(&srv, "err: hello: replacing worker ").count() == 1
            && !srv
                .seen
                .iter()
                .any(|l| l.starts_with(&format!("err: hello: replacing worker {other} "))),
        || format!("worker {other} was replaced too"),
    )
}

/// A worker that does not take its messages is not hung: with a 500 ms worker timeout,
/// the primary floods worker 1 (as `inbox_bounded` does) until its inbox is full and its
/// control thread stops reading the channel, pings included; for six timeouts more it
/// is left alone (its control thread says it is alive unasked while it waits for room)
/// and serves throughout.
pub fn timeout_spares_full_inbox() -> Outcome {
    let (mut srv, targets) = spec(
        "round-robin",
        1,
        2,
        &[("SC_TIMEOUT_MS", "500"), ("SC_SHUTDOWN_MS", "1000")],
    )
    .start()?;
    let mut refused = false;
    for _ in 0..30 {
        client::ask(&targets[0], "tell flood 100 64", T)?;
        let line = srv.expect("flooded ", T)?;
        if !line.contains("error=none") {
            refused = true;
            break;
        }
    }
    check(refused, || "the worker's inbox never filled".into())?;
    let full = Instant::now();
    let mut served = 0u64;
    proc::wait_until(
        "six timeouts with a full inbox",
        Duration::from_secs(20),
        || {
            served += client::load(&targets[0], 4, 2, "hi", T).ok;
            full.elapsed() >= 6 * 500 * MS
        },
    )?;
    let _ = srv.rest(Duration::from_millis(100));
    // `WorkerInfo::rss`, sampled because a worker timeout is set: a plausible size
    // (above 64 KiB; its inbox alone holds 4 MiB).
    let rss: u64 = lines_with(&srv, "rss 1 ")
        .next()
        .and_then(|l| l.split(' ').nth(2)?.parse().ok())
        .ok_or("no rss reading for worker 1")?;
    check(rss > 64 << 10, || format!("worker 1's rss: {rss} bytes"))?;
    println!(
        "    {served} requests served over {:.1?} with a full inbox",
        full.elapsed()
    );
    check(lines_with(&srv, "replacing ").next().is_none(), || {
        format!(
            "a worker with a full inbox was taken for hung: {:?}",
            lines_with(&srv, "replacing ").next()
        )
    })?;
    check(lines_with(&srv, "exit ").next().is_none(), || {
        "the worker exited".into()
    })?;
    stop_and_check(&mut srv)
}

/// `hello`'s health flags: `--max-requests 20 --max-requests-jitter 10` recycles every
/// worker after 20 to 30 connections (each drawn its own: not all the same), logged
/// with the reason; `--timeout 1` kills a stopped worker, logged as unresponsive; bad
/// values are refused with exit code 2, naming the value.
pub fn hello_health_flags() -> Outcome {
    let (mut srv, target) = hello(&[
        "--workers",
        "2",
        "--threads",
        "2",
        "--timeout",
        "1",
        "--max-requests",
        "20",
        "--max-requests-jitter",
        "10",
    ])?;
    // One client at a time: a worker's overshoot is the few connections it takes
    // while its replacement starts.
    for _ in 0..300 {
        let mut c = Conn::connect(&target, T).map_err(|e| e.to_string())?;
        http_get(&mut c, "/", true)?;
        let r = client::read_response(&mut BufReader::new(&mut c))?;
        check(r.status == 200, || format!("{r:?}"))?;
    }
    let limits: Vec<u64> = {
        let _ = srv.rest(Duration::from_millis(200));
        srv.seen
            .iter()
            .filter_map(|l| {
                l.split_once("max connections: ")?
                    .1
                    .split_once("limit ")?
                    .1
                    .parse()
                    .ok()
            })
            .collect()
    };
    println!("    {} recycles, limits {limits:?}", limits.len());
    check(limits.len() >= 5, || {
        format!("only {} recycles", limits.len())
    })?;
    check(limits.iter().all(|l| (20..=30).contains(l)), || {
        format!("limits outside 20..=30: {limits:?}")
    })?;
    check(limits.iter().any(|&l| l != limits[0]), || {
        format!("no jitter: {limits:?}")
    })?;
    let victim = *proc::children_of(srv.pid())
        .iter()
        .map(|(p, _)| p)
        .max()
        .ok_or("no worker")?;
    let _cleanup = KillIfStillThere::new(victim);
    proc::signal(victim, "STOP")?;
    let line = srv.expect_containing(&format!("(pid {victim}): unresponsive"), T)?;
    println!("    {line}");
    srv.signal("TERM")?;
    exited_ok(&mut srv, Duration::from_secs(10))?;
    for (flag, value) in [
        ("--timeout", "0"),
        ("--timeout", "soon"),
        ("--max-requests", "0"),
        ("--max-requests-jitter", "-1"),
        ("--max-rss", "lots"),
    ] {
        let mut bad = start_hello(&["--listen", "127.0.0.1:0", flag, value], &[])?;
        let status = bad.wait(Duration::from_secs(10))?;
        let stderr = bad.stderr();
        check(
            status.code() == Some(2) && stderr.contains(&format!("{value:?}")),
            || format!("{flag} {value}: exit {status}, stderr {stderr}"),
        )?;
    }
    Ok(())
}
