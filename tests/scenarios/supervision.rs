//! Supervision with real processes and real signals: respawn and its back-off, rolling
//! restart under load, graceful shutdown, the primary's death, privilege drop, setup
//! failures, and the API (kill, disconnect, restart, scaling) driven through messages.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::check::{
    check, check_hygiene, clean_end, exited_ok, stop_and_check, Outcome, Spec,
};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

fn spec(mode: &str, workers: usize, threads: usize) -> Spec<'_> {
    Spec {
        mode,
        workers,
        listen: "127.0.0.1:0".into(),
        threads,
        env: Vec::new(),
    }
}

fn tcp(t: &Target) -> Result<std::net::SocketAddr, String> {
    match t {
        Target::Tcp(a) => Ok(*a),
        Target::Unix(p) => Err(format!("expected a TCP address, got {}", p.display())),
    }
}

/// kill -9 of a worker: the exit is reported as not asked for, a replacement is forked
/// and listens, and every current worker serves.
pub fn worker_killed_is_replaced(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 3, 2).start()?;
    proc::signal(proc::worker_pid(&srv.seen, 2)?, "KILL")?;
    let exit = srv.expect("exit 2 ", Duration::from_secs(5))?;
    check(
        exit.contains("signal 9") && exit.contains("requested=false"),
        || format!("exit report: {exit}"),
    )?;
    srv.expect("fork 4 ", Duration::from_secs(5))?;
    srv.expect("listening 4 ", Duration::from_secs(5))?;
    let load = client::load(&targets[0], 300, 4, "hi", Duration::from_secs(10));
    println!(
        "    {mode}: after the kill, {} ok, shares: {}",
        load.ok,
        load.shares()
    );
    check(load.errors.is_empty() && load.ok == 300, || {
        format!("{} ok, errors {:?}", load.ok, load.errors.first())
    })?;
    let served: Vec<u32> = load.by_worker.keys().copied().collect();
    check(served == [1, 3, 4], || {
        format!("served by {served:?}, expected workers 1, 3 and 4")
    })?;
    stop_and_check(&mut srv)
}

/// Every worker fails at start, again and again: forks are spaced by the back-off
/// (counted over a 2 s window), and the primary still answers SIGTERM at once.
pub fn crash_loop_backs_off() -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_MODE", "round-robin".into()),
        ("SC_WORKERS", "2".into()),
        ("SC_CRASH", "start".into()),
        ("SC_RESPAWN", "20:320:1000".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let window = Duration::from_secs(2);
    let started = Instant::now();
    let mut lines = Vec::new();
    while started.elapsed() < window {
        if let Ok(l) = srv.line(
            window
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
        ) {
            lines.push(l);
        }
    }
    let forks = lines.iter().filter(|l| l.starts_with("fork ")).count();
    let crashes = lines
        .iter()
        .filter(|l| l.starts_with("exit ") && l.contains("requested=false"))
        .count();
    // Without back-off a loop of 2 workers dying in about a millisecond forks
    // thousands of times in 2 s; with delays of 20 ms doubling to 320 ms, about 10.
    println!(
        "    {forks} forks and {crashes} crashes in {window:?} (back-off 20 ms doubling to 320 ms)"
    );
    check((4..=20).contains(&forks), || {
        format!("{forks} forks in {window:?}: back-off not applied")
    })?;
    check(crashes + 2 >= forks, || {
        format!("{crashes} crashes reported for {forks} forks")
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, Duration::from_secs(5))?;
    clean_end(&srv, &end)
}

/// SIGHUP under continuous load from 8 clients: every worker is replaced, one at a
/// time, and not one request fails.
pub fn rolling_restart_under_load(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 3, 4).start()?;
    let target = targets[0].clone();
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let load = std::thread::scope(|s| -> Result<client::Load, String> {
        let load = s.spawn(|| client::load_until(&target, 8, &stop, &progress));
        let outcome = (|| -> Outcome {
            proc::wait_until("load to flow", Duration::from_secs(10), || {
                progress.load(Ordering::Relaxed) >= 200
            })?;
            srv.signal("HUP")?;
            let done = srv.expect("reload-finished ", Duration::from_secs(30))?;
            check(done == "reload-finished 3 complete=true", || {
                format!("reload: {done}")
            })?;
            let after = progress.load(Ordering::Relaxed) + 200;
            proc::wait_until("load after the reload", Duration::from_secs(10), || {
                progress.load(Ordering::Relaxed) >= after
            })
        })();
        stop.store(true, Ordering::Relaxed);
        let load = load
            .join()
            .map_err(|_| "load thread panicked".to_string())?;
        outcome.map(|()| load)
    })?;
    println!(
        "    {mode}: {} requests during the reload, {} failed",
        load.ok,
        load.errors.len()
    );
    check(load.errors.is_empty(), || {
        format!(
            "{} requests failed, first: {:?}",
            load.errors.len(),
            load.errors.first()
        )
    })?;
    for old in 1..=3 {
        let exit = srv
            .seen
            .iter()
            .find(|l| l.starts_with(&format!("exit {old} ")))
            .cloned()
            .ok_or_else(|| format!("worker {old} was not replaced"))?;
        check(exit.ends_with("exit code 0 requested=true"), || {
            format!("worker {old}: {exit}")
        })?;
    }
    let after = client::load(&targets[0], 300, 4, "hi", Duration::from_secs(10));
    let served: Vec<u32> = after.by_worker.keys().copied().collect();
    check(served == [4, 5, 6], || {
        format!("after the reload served by {served:?}, expected 4, 5, 6")
    })?;
    proc::check_idle(srv.pid(), "after the reload")?;
    stop_and_check(&mut srv)
}

/// Waits (bounded) until a connection to `addr` is refused: the cluster's listener
/// stopped listening.
fn refused(addr: std::net::SocketAddr) -> Outcome {
    proc::wait_until(
        "new connections to be refused",
        Duration::from_secs(3),
        || matches!(TcpStream::connect(addr), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
    )
}

/// SIGTERM while a slow request runs: new connections are refused at once (while the
/// server is still up), the slow request completes, the primary exits 0.
pub fn graceful_shutdown_slow_request(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 2).start()?;
    let addr = tcp(&targets[0])?;
    std::thread::scope(|s| -> Outcome {
        let slow =
            s.spawn(|| client::ask(&Target::Tcp(addr), "sleep 2000", Duration::from_secs(10)));
        let busy = srv.expect("message ", Duration::from_secs(5))?;
        check(busy.ends_with("busy") || busy.contains(" busy "), || {
            format!("unexpected message {busy}")
        })?;
        srv.signal("TERM")?;
        refused(addr)?;
        let alive = matches!(srv.child.try_wait(), Ok(None));
        check(alive, || {
            "the server exited before the slow request finished".into()
        })?;
        let reply = slow
            .join()
            .map_err(|_| "slow client panicked".to_string())??;
        println!(
            "    {mode}: refused new connections while worker {} finished the slow request",
            reply.worker
        );
        Ok(())
    })?;
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    clean_end(&srv, &end)
}

/// kill -9 of the primary: every worker is gone within 2 s (PR_SET_PDEATHSIG, and EOF
/// on the control channel as a backstop).
pub fn primary_killed() -> Outcome {
    let (mut srv, _) = spec("round-robin", 3, 2).start()?;
    check(srv.workers.len() == 3, || {
        format!("workers: {:?}", srv.workers)
    })?;
    srv.signal("KILL")?;
    srv.wait(Duration::from_secs(5))?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// As root: workers run as `nobody` while serving a privileged port the root primary
/// bound; and they still die with the primary (the death signal is set after setuid).
pub fn privilege_drop() -> Outcome {
    if proc::ids_of(std::process::id()).map(|(uid, _)| uid) != Some(0) {
        println!("    skipped: not root (CI runs as root)");
        return Ok(());
    }
    let nobody = cluster::User::named("nobody").map_err(|e| e.to_string())?;
    // A free privileged port: only root can bind it, so workers could not.
    let port = (900..1024)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or("no free port below 1024")?;
    let mut s = spec("round-robin", 2, 2);
    s.listen = format!("127.0.0.1:{port}");
    s.env = vec![("SC_USER", "nobody".into())];
    let (mut srv, targets) = s.start()?;
    for (&pid, _) in srv.workers.iter() {
        let ids = proc::ids_of(pid).ok_or("no status")?;
        check(ids == (nobody.uid(), nobody.gid()), || {
            format!(
                "worker {pid} runs as {ids:?}, not nobody ({}, {})",
                nobody.uid(),
                nobody.gid()
            )
        })?;
    }
    check(proc::ids_of(srv.pid()).map(|i| i.0) == Some(0), || {
        "the primary is not root any more".into()
    })?;
    let load = client::load(&targets[0], 50, 2, "hi", Duration::from_secs(10));
    println!(
        "    workers run as nobody ({}) on port {port}: {} ok",
        nobody.uid(),
        load.ok
    );
    check(load.errors.is_empty() && load.ok == 50, || {
        format!("errors: {:?}", load.errors.first())
    })?;
    srv.signal("KILL")?;
    srv.wait(Duration::from_secs(5))?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// A worker whose setup fails (here: chdir to a missing directory) reports the step and
/// the errno, exits 78, and is retried with back-off.
pub fn setup_failure_reported() -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_WORKERS", "1".into()),
        ("SC_DIR", "/nonexistent/cluster-scenario".into()),
        ("SC_RESPAWN", "50:200:1000".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let err = srv.expect("error worker 1 ", Duration::from_secs(5))?;
    check(
        err.contains("chdir failed") && err.contains("No such file or directory"),
        || format!("report: {err}"),
    )?;
    let exit = srv.expect("exit 1 ", Duration::from_secs(5))?;
    check(
        exit.contains("exit code 78") && exit.contains("requested=false"),
        || format!("exit: {exit}"),
    )?;
    srv.expect("fork 2 ", Duration::from_secs(5))?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, Duration::from_secs(5))?;
    clean_end(&srv, &end)
}

/// The primary's API from code (asked through worker messages): restart one worker,
/// kill one, disconnect one; then SIGTTIN, SIGTTOU, and set_workers.
pub fn worker_api_and_scaling() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 3, 2).start()?;
    let t = &targets[0];
    let ask = |cmd: &str| client::ask(t, cmd, Duration::from_secs(10)).map(|r| r.text);
    let id_in = |reply: &str| -> Result<u32, String> {
        reply
            .strip_prefix("done ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("unexpected reply {reply:?}"))
    };
    // restart: a replacement listens, then the old one goes (a reload of one).
    let restarted = id_in(&ask("tell restart-other")?)?;
    let done = srv.expect("reload-finished ", Duration::from_secs(10))?;
    check(done == "reload-finished 1 complete=true", || done.clone())?;
    let exit = srv.seen_or_expect(&format!("exit {restarted} "), Duration::from_secs(5))?;
    check(exit.ends_with("requested=true"), || exit.clone())?;
    // kill: asked for, and the cluster keeps one fewer.
    let killed = id_in(&ask("tell kill-other")?)?;
    let exit = srv.seen_or_expect(&format!("exit {killed} "), Duration::from_secs(5))?;
    check(
        exit.contains("signal 9") && exit.ends_with("requested=true"),
        || exit.clone(),
    )?;
    // disconnect: graceful, asked for, one fewer again.
    let gone = id_in(&ask("tell disconnect-other")?)?;
    let exit = srv.seen_or_expect(&format!("exit {gone} "), Duration::from_secs(5))?;
    check(exit.ends_with("exit code 0 requested=true"), || {
        exit.clone()
    })?;
    check(ask("tell ping")? == "pong", || {
        "the last worker does not answer".into()
    })?;
    let live = |srv: &Server| -> BTreeSet<u32> {
        srv.seen
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("stats "))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|kv| kv.split('=').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    proc::wait_until(
        "one worker left in the stats",
        Duration::from_secs(5),
        || {
            let _ = srv.line(Duration::from_millis(20));
            live(&srv).len() == 1
        },
    )?;
    // SIGTTIN: one more; SIGTTOU: the youngest goes.
    srv.signal("TTIN")?;
    let fork = srv.expect("fork ", Duration::from_secs(5))?;
    let young: u32 = fork
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or("bad fork line")?;
    srv.expect(&format!("listening {young} "), Duration::from_secs(5))?;
    srv.signal("TTOU")?;
    let exit = srv.seen_or_expect(&format!("exit {young} "), Duration::from_secs(5))?;
    check(exit.ends_with("exit code 0 requested=true"), || {
        exit.clone()
    })?;
    // set_workers(3): two more, and all three serve.
    check(ask("tell workers 3")? == "done", || {
        "set_workers not acknowledged".into()
    })?;
    srv.expect("fork ", Duration::from_secs(5))?;
    srv.expect("fork ", Duration::from_secs(5))?;
    proc::wait_until("three workers in the stats", Duration::from_secs(5), || {
        let _ = srv.line(Duration::from_millis(20));
        live(&srv).len() == 3
    })?;
    let load = client::load(t, 300, 4, "hi", Duration::from_secs(10));
    println!(
        "    after restart, kill, disconnect, TTIN, TTOU and set_workers(3): {}",
        load.shares()
    );
    check(load.errors.is_empty() && load.by_worker.len() == 3, || {
        format!("{} / {:?}", load.shares(), load.errors.first())
    })?;
    stop_and_check(&mut srv)
}

/// A worker still busy when the shutdown timeout runs out is killed: a connection held
/// open does not stall the shutdown past its deadline.
pub fn shutdown_deadline_kills() -> Outcome {
    let mut s = spec("round-robin", 1, 2);
    s.env = vec![("SC_SHUTDOWN_MS", "300".into())];
    let (mut srv, targets) = s.start()?;
    let t = targets[0].clone();
    std::thread::scope(|scope| -> Outcome {
        let slow = scope.spawn(|| client::ask(&t, "sleep 30000", Duration::from_secs(40)));
        srv.expect("message 1 busy", Duration::from_secs(5))?;
        srv.signal("TERM")?;
        let status = srv.wait(Duration::from_secs(10))?;
        check(status.success(), || format!("exit status {status}"))?;
        let reply = slow.join().map_err(|_| "client panicked".to_string())?;
        check(reply.is_err(), || {
            format!("the killed worker answered: {reply:?}")
        })?;
        Ok(())
    })?;
    let rest = srv.rest(Duration::from_secs(2));
    let stderr = srv.stderr();
    let exit = srv.seen_or_expect("exit 1 ", Duration::from_secs(1))?;
    check(
        exit.contains("signal 9") && exit.ends_with("requested=true"),
        || exit.clone(),
    )?;
    check_hygiene(&rest, &stderr)?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// A shutdown stopped with its workers (the whole process group: Ctrl-Z, `kill -STOP --
/// -PGID`, a frozen container) for longer than its timeout: the time stopped is given
/// back, so a worker that finishes its request within the timeout of time it actually
/// ran is not killed when the group continues. The primary continues first and says it
/// was away; then the worker answers, and the cluster exits 0.
pub fn shutdown_survives_group_stop() -> Outcome {
    let mut s = spec("round-robin", 1, 2);
    s.env = vec![("SC_SHUTDOWN_MS", "2000".into())];
    let (mut srv, targets) = s.start()?;
    let t = targets[0].clone();
    let worker = proc::worker_pid(&srv.seen, 1)?;
    let group = [srv.pid(), worker];
    std::thread::scope(|scope| -> Outcome {
        let slow = scope.spawn(|| client::ask(&t, "sleep 1500", Duration::from_secs(20)));
        srv.expect("message 1 busy", Duration::from_secs(5))?;
        srv.signal("TERM")?;
        // The shutdown has begun (the listener refuses): worker 1 has its deadline.
        let Target::Tcp(addr) = t else {
            return Err("not a TCP target".into());
        };
        refused(addr)?;
        proc::signal_all(&group, "STOP")?;
        for &pid in &group {
            proc::wait_stopped(pid, Duration::from_secs(5))?;
        }
        // The stimulus, not a synchronisation: stopped longer than the 2 s timeout.
        std::thread::sleep(Duration::from_millis(2500));
        // The primary first: it acts on its deadlines before the worker can answer.
        proc::signal(srv.pid(), "CONT")?;
        let said = srv.expect("err: ", Duration::from_secs(5))?;
        println!("    {said}");
        check(said.contains("did not run for"), || {
            format!("the primary's first word after the stop: {said}")
        })?;
        proc::signal(worker, "CONT").map_err(|e| {
            format!("worker 1 is gone: killed at its deadline as the primary continued ({e})")
        })?;
        let status = srv.wait(Duration::from_secs(10))?;
        check(status.success(), || format!("exit status {status}"))?;
        let reply = slow.join().map_err(|_| "client panicked".to_string())?;
        check(reply.is_ok(), || {
            format!("the request begun before the shutdown was not answered: {reply:?}")
        })
    })?;
    let rest = srv.rest(Duration::from_secs(2));
    let stderr = srv.stderr();
    let exit = srv.seen_or_expect("exit 1 ", Duration::from_secs(1))?;
    check(!exit.contains("signal"), || {
        format!("the worker was killed: {exit}")
    })?;
    check_hygiene(&rest, &stderr)?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// With `Respawn::never()` a crashed worker is not replaced: the cluster shrinks.
pub fn respawn_never() -> Outcome {
    let mut s = spec("round-robin", 2, 2);
    s.env = vec![("SC_RESPAWN", "never".into())];
    let (mut srv, targets) = s.start()?;
    proc::signal(proc::worker_pid(&srv.seen, 1)?, "KILL")?;
    srv.expect("exit 1 ", Duration::from_secs(5))?;
    // The primary answers a message only after the turn that handled the exit, so
    // any replacement fork would be printed before this reply arrives.
    let pong = client::ask(&targets[0], "tell ping", Duration::from_secs(5))?;
    check(pong.text == "pong" && pong.worker == 2, || {
        format!("{pong:?}")
    })?;
    let forks = srv.seen.iter().filter(|l| l.starts_with("fork ")).count();
    check(forks == 2, || {
        format!("{forks} forks: the crashed worker was replaced")
    })?;
    stop_and_check(&mut srv)
}

/// Working directory and silenced stdio are applied in each worker.
pub fn worker_settings() -> Outcome {
    let dir = std::env::temp_dir();
    let mut s = spec("shared", 2, 2);
    s.env = vec![
        ("SC_DIR", dir.display().to_string()),
        ("SC_SILENT", "1".into()),
    ];
    let (mut srv, targets) = s.start()?;
    let cwd = client::ask(&targets[0], "cwd", Duration::from_secs(5))?;
    check(cwd.text == dir.display().to_string(), || {
        format!("worker cwd {:?}, expected {}", cwd.text, dir.display())
    })?;
    client::ask(
        &targets[0],
        "stderr written-by-a-silenced-worker",
        Duration::from_secs(5),
    )?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    check(!end.stderr.contains("written-by-a-silenced-worker"), || {
        "a silenced worker's stderr got through".into()
    })?;
    clean_end(&srv, &end)
}

/// A stop told twice is one stop; another stop signal is "kill now". SIGTERM while a
/// slow request (10 s) runs, then SIGTERM again at once (as `timeout(1)` and
/// supervisors send it): the primary says it is the same graceful stop and keeps
/// waiting; then SIGINT: the workers are killed, the slow request ends unanswered, and
/// the primary exits long before the request would have finished.
pub fn stop_escalation() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 2).start()?;
    let addr = tcp(&targets[0])?;
    std::thread::scope(|s| -> Outcome {
        let slow =
            s.spawn(|| client::ask(&Target::Tcp(addr), "sleep 10000", Duration::from_secs(20)));
        srv.expect("message ", Duration::from_secs(5))?;
        srv.signal("TERM")?;
        srv.signal("TERM")?;
        refused(addr)?;
        check(matches!(srv.child.try_wait(), Ok(None)), || {
            "the repeated SIGTERM ended the graceful stop".into()
        })?;
        srv.signal("INT")?;
        let reply = slow
            .join()
            .map_err(|_| "slow client panicked".to_string())?;
        check(reply.is_err(), || {
            format!("the slow request was answered after SIGINT: {reply:?}")
        })?;
        Ok(())
    })?;
    let end = exited_ok(&mut srv, Duration::from_secs(5))?;
    let said = "SIGTERM again within 1s: the same graceful stop";
    check(end.stderr.contains(said), || {
        format!("no {said:?} in the stderr:\n{}", end.stderr)
    })?;
    println!(
        "    SIGTERM twice: one graceful stop; then SIGINT: killed, the slow request unanswered"
    );
    clean_end(&srv, &end)
}

/// Node's `test-cluster-kill-infinite-loop`: a worker in an endless loop is
/// `worker.kill()`ed, and Node asserts its `exit` comes (with the signal that ended
/// it). Here worker 1 of two busy-loops once its listeners close and never returns;
/// `Cluster::kill(1, Signal::Term)` asks it to go, and when it has not exited by the
/// shutdown timeout (300 ms) it is killed: its exit reports signal 9, asked for, and
/// the cluster keeps serving with the other worker. Before, `kill` with `SIGTERM`
/// set no deadline and the worker spun on for good.
pub fn kill_infinite_loop() -> Outcome {
    let mut s = spec("round-robin", 2, 2);
    s.env = vec![("SC_SHUTDOWN_MS", "300".into())];
    let (mut srv, targets) = s.start()?;
    let t = &targets[0];
    // Until worker 1 answers `spin 1` (bounded: each connection goes to one worker).
    let mut spinning = None;
    for _ in 0..50 {
        let r = client::ask(t, "spin 1", Duration::from_secs(5))?;
        if r.worker == 1 {
            spinning = Some(r.worker);
            break;
        }
    }
    let id = spinning.ok_or("worker 1 never answered `spin`")?;
    // The primary's reply may not reach the asker: worker 1 itself may carry the
    // request, and it stops waiting for replies once it is asked to go. The exit is
    // what counts.
    client::ask(t, &format!("tell term {id}"), Duration::from_secs(5))?;
    let exit = srv.expect(&format!("exit {id} "), Duration::from_secs(10))?;
    println!("    {exit}");
    check(
        exit.contains("signal 9") && exit.ends_with("requested=true"),
        || exit.clone(),
    )?;
    let load = client::load(t, 20, 2, "hi", Duration::from_secs(5));
    check(load.ok == 20, || {
        format!("{} of 20 after the kill", load.ok)
    })?;
    stop_and_check(&mut srv)
}
