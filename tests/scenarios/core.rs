//! The two modes end to end: balance, port 0, address families, several listeners,
//! errors, a worker killed mid-hand-off, adopted descriptors.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::util::check::{check, clean_end, exited_ok, stop_and_check, Outcome, Spec};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

/// 4 workers, 2,000 connections from 8 clients: all served, every worker used, all on
/// one port (port 0 resolved once), every received descriptor close-on-exec.
pub fn balance(mode: &str) -> Outcome {
    let spec = Spec {
        mode,
        workers: 4,
        listen: "127.0.0.1:0".into(),
        threads: 4,
        env: Vec::new(),
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
    // The primary's per-worker counters: what each worker reports it accepted (both
    // modes, about once a second) adds up to every connection; in round-robin mode
    // what the primary dispatched does too.
    let counters = |line: &str| -> (u64, u64) {
        line.split_whitespace().skip(1).fold((0, 0), |(d, a), kv| {
            let mut v = kv.split('=').nth(1).unwrap_or("0/0").split('/');
            let mut n = || v.next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            (d + n(), a + n())
        })
    };
    let mut last = (0, 0);
    proc::wait_until(
        "the workers' reported counts",
        Duration::from_secs(5),
        || {
            if let Ok(l) = srv.line(Duration::from_millis(50)) {
                if l.starts_with("stats ") {
                    last = counters(&l);
                }
            }
            last.1 == 2000
        },
    )?;
    println!(
        "    {mode}: counters: dispatched {}, accepted {}",
        last.0, last.1
    );
    if mode == "round-robin" {
        check(last.0 == 2000, || format!("dispatched {} of 2000", last.0))?;
    }
    proc::check_idle(srv.pid(), mode)?;
    stop_and_check(&mut srv)
}

/// IPv6, a Unix socket (over a stale socket file), and both in one worker: every worker
/// serves on each; the socket file is removed afterwards.
pub fn families(mode: &str) -> Outcome {
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
        env: Vec::new(),
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
pub fn addr_in_use(mode: &str) -> Outcome {
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
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    let expected = format!("cannot listen on {addr}: Address already in use (os error 98)");
    check(end.stderr.contains(&expected), || {
        format!("worker error not found ({expected}) in:\n{}", end.stderr)
    })?;
    clean_end(&srv, &end)
}

/// Round-robin: a worker is stopped (SIGSTOP) while connections are handed out, so the
/// ones sent to it sit unreceived in its channel; then it is killed. Every client must
/// still be served, by the other worker, and none may hang.
pub fn rr_worker_killed() -> Outcome {
    let spec = Spec {
        mode: "round-robin",
        workers: 2,
        listen: "127.0.0.1:0".into(),
        threads: 4,
        env: Vec::new(),
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
                    .and_then(|v| v.split('/').next()?.parse().ok())
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
pub fn adopted_fd(mode: &str) -> Outcome {
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

/// One workload through every mode (and both round-robin schedulers): every request
/// served, every worker used. The shares are printed; nothing about speed is asserted
/// (that is the `compare` example's job).
pub fn every_mode() -> Outcome {
    let configs = [
        ("shared", "default"),
        ("round-robin", "default"),
        ("round-robin", "fifo"),
        ("round-robin", "least-connections"),
        ("reuse-port", "default"),
    ];
    for (mode, scheduler) in configs {
        let spec = Spec {
            mode,
            workers: 4,
            listen: "127.0.0.1:0".into(),
            threads: 2,
            env: vec![("SC_SCHEDULER", scheduler.to_string())],
        };
        let (mut srv, targets) = spec.start()?;
        let load = client::load(&targets[0], 1000, 8, "hi", Duration::from_secs(10));
        println!(
            "    {mode} ({scheduler}): {} ok, shares: {}",
            load.ok,
            load.shares()
        );
        check(load.errors.is_empty() && load.ok == 1000, || {
            format!("{mode}: {} ok, errors {:?}", load.ok, load.errors.first())
        })?;
        check(load.by_worker.len() == 4, || {
            format!("{mode}: not every worker served: {}", load.shares())
        })?;
        check(load.not_cloexec == 0, || {
            format!("{mode}: descriptor without FD_CLOEXEC")
        })?;
        stop_and_check(&mut srv)?;
    }
    Ok(())
}

/// Reuse-port: a worker is stopped while clients connect (those hashed to its socket
/// wait in its queue), then killed. Its socket outlives it: the respawned worker takes
/// it over and serves them; no client is reset or left hanging.
pub fn reuse_port_crash_keeps_queue() -> Outcome {
    let spec = Spec {
        mode: "reuse-port",
        workers: 2,
        listen: "127.0.0.1:0".into(),
        threads: 2,
        env: vec![("SC_RESPAWN", "10:100:0".into())],
    };
    let (mut srv, targets) = spec.start()?;
    let victim = proc::worker_pid(&srv.seen, 1)?;
    proc::signal(victim, "STOP")?;
    proc::wait_stopped(victim, Duration::from_secs(5))?;
    let clients = 24;
    let replies = std::thread::scope(|s| -> Result<Vec<client::Reply>, String> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let t = targets[0].clone();
                s.spawn(move || client::ask(&t, "hi", Duration::from_secs(15)))
            })
            .collect();
        // Those hashed to worker 2's socket are answered; wait for some, then kill 1.
        proc::wait_until(
            "worker 2 to serve its share",
            Duration::from_secs(10),
            || handles.iter().filter(|h| h.is_finished()).count() >= 3,
        )?;
        let waiting = handles.iter().filter(|h| !h.is_finished()).count();
        println!("    {waiting} of {clients} clients wait on the stopped worker's socket");
        proc::signal(victim, "KILL")?;
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "client panicked".to_string())?)
            .collect()
    })?;
    let by: std::collections::BTreeMap<u32, usize> =
        replies.iter().fold(Default::default(), |mut m, r| {
            *m.entry(r.worker).or_default() += 1;
            m
        });
    println!("    all {clients} served: {by:?}");
    check(!by.contains_key(&1), || {
        "the stopped worker answered".into()
    })?;
    check(by.contains_key(&3), || {
        "the respawned worker served nobody".into()
    })?;
    stop_and_check(&mut srv)
}

/// Round-robin: one worker with 700 threads, 700 clients at once. More credits than
/// the hand-off channel holds records: a full channel (EAGAIN) must only make the
/// primary wait for room, never give up on the worker. Every client is served.
pub fn rr_burst_fills_the_channel() -> Outcome {
    let spec = Spec {
        mode: "round-robin",
        workers: 1,
        listen: "127.0.0.1:0".into(),
        threads: 700,
        env: vec![("SC_RESPAWN", "never".into())],
    };
    let (mut srv, targets) = spec.start()?;
    let load = client::load(&targets[0], 700, 700, "sleep 200", Duration::from_secs(30));
    println!(
        "    700 clients at once on one worker with 700 threads: {} ok",
        load.ok
    );
    check(load.errors.is_empty() && load.ok == 700, || {
        format!(
            "{} ok, {} errors, first: {:?}",
            load.ok,
            load.errors.len(),
            load.errors.first()
        )
    })?;
    check(!srv.seen.iter().any(|l| l.starts_with("exit ")), || {
        "the worker exited".into()
    })?;
    stop_and_check(&mut srv)
}

/// `Builder::listen_only`: a worker asking for another address gets `EACCES`, and the
/// primary reports it.
pub fn listen_only_refuses_others() -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_WORKERS", "1".into()),
        ("SC_LISTEN", "127.0.0.1:0".into()),
        ("SC_ALLOW", "127.0.0.1:1".into()),
        ("SC_RESPAWN", "never".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let failed = srv.expect("listen-failed ", Duration::from_secs(10))?;
    check(
        failed.contains("127.0.0.1:0") && failed.contains("allowed listen addresses"),
        || failed.clone(),
    )?;
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    check(end.stderr.contains("Permission denied"), || {
        format!("worker error: {}", end.stderr)
    })?;
    clean_end(&srv, &end)
}
