//! Serving through a library that accepts by itself (tokio here, as axum, hyper,
//! tiny_http and actix-web do): the worker takes a std listener from
//! `Listener::try_clone_std`, stops when `Worker::disconnect_fd` is readable, and
//! counts what it accepts with `Listener::note_accepted`. In round-robin there is no
//! listener to take: asking is an error that names the mode, not a hang.

use std::time::Duration;

use crate::hello_deploy::{gone, workers_of};
use crate::systemd_activate::get;
use crate::util::check::{check, clean_end, exited_ok, spec, Outcome};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);

/// Shared and reuse-port, 2 workers on tokio (`SC_STD_TOKIO`). First recycled every
/// 40 connections (`SC_MAX_CONN`): 100 requests all answered, the workers' counters
/// count them (`stats` lines), recycling by count happens although the crate never
/// accepted a connection itself. Then, in a cluster of its own (a reload overlapping a
/// recycle in reuse-port mode resets a few queued connections, a bug of the
/// reuse-port handle's socket places that is not this scenario's subject), a rolling
/// restart: 20 more answered. Each time `SIGTERM` ends every worker through its
/// disconnect descriptor ("disconnect seen"), well within a shutdown timeout of 60 s
/// that a worker deaf to the disconnect would wait out, and the cluster exits 0 with
/// nothing leaked.
pub fn std_listener_tokio(mode: &str) -> Outcome {
    let env = [
        ("SC_STD_TOKIO", "1"),
        ("SC_MAX_CONN", "40"),
        ("SC_SHUTDOWN_MS", "60000"),
    ];
    let (mut srv, targets) = spec(mode, 2, 2, &env).start()?;
    let t = &targets[0];
    let load = client::load(t, 100, 4, "hi", T);
    check(load.ok == 100, || {
        format!("{} of 100 answered: {:?}", load.ok, load.errors.first())
    })?;
    // Recycled by count: the primary saw the connections tokio accepted.
    srv.expect_containing("max-connections", T)?;
    let counted = srv.expect_where("stats counting connections", T, |l| {
        l.starts_with("stats ")
            && l.split_whitespace()
                .skip(1)
                .filter_map(|w| w.split('/').nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
                > 0
    })?;
    let seen = stopped_through_disconnect(&mut srv)?;

    let env = [("SC_STD_TOKIO", "1"), ("SC_SHUTDOWN_MS", "60000")];
    let (mut srv, targets) = spec(mode, 2, 2, &env).start()?;
    let t = &targets[0];
    srv.signal("HUP")?;
    srv.expect("reload-finished ", T)?;
    let again = client::load(t, 20, 2, "hi", T);
    check(again.ok == 20, || {
        format!("after the reload: {} of 20: {:?}", again.ok, again.errors)
    })?;
    let seen_after = stopped_through_disconnect(&mut srv)?;
    println!(
        "    {mode}: 100 answered through tokio, recycled by count ({counted}); 20 after a \
         reload; {seen} and {seen_after} disconnects seen"
    );
    Ok(())
}

/// `SIGTERM`: exit 0, no process or descriptor left, and at least two workers said
/// they saw the disconnect through their descriptor; how many did.
fn stopped_through_disconnect(srv: &mut Server) -> Result<usize, String> {
    srv.signal("TERM")?;
    let end = exited_ok(srv, T)?;
    let seen = end
        .rest
        .iter()
        .filter(|l| l.contains("disconnect seen"))
        .count();
    check(seen >= 2, || {
        format!("{seen} workers saw the disconnect: {:?}", end.rest)
    })?;
    clean_end(srv, &end)?;
    Ok(seen)
}

/// Round-robin: `try_clone_std` is refused, naming the mode and what to use (the
/// worker says so, then serves the crate's way).
pub fn std_listener_round_robin_refused() -> Outcome {
    let env = [("SC_STD_TOKIO", "1")];
    let (mut srv, targets) = spec("round-robin", 1, 2, &env).start()?;
    let refused = srv.seen_or_expect("std-listener-refused ", T)?;
    check(
        refused.contains("is round-robin (Mode::RoundRobin)")
            && refused.contains("Mode::Shared or Mode::ReusePort"),
        || refused.clone(),
    )?;
    let load = client::load(&targets[0], 10, 2, "hi", T);
    check(load.ok == 10, || format!("{} of 10", load.ok))?;
    println!("    {refused}");
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    clean_end(&srv, &end)
}

/// The `tiny_http` example, `--mode MODE`, 2 workers, on TCP and on a Unix socket:
/// 20 requests answered by both workers, then a rolling restart, after which the
/// Unix socket file is still there (tiny_http's `Drop` removed it at the first
/// reload before the example forgot its server) and both addresses still serve;
/// `SIGTERM`: exit 0, no process left.
pub fn tiny_http_example(mode: &str) -> Outcome {
    let dir = std::env::temp_dir().join(format!("cluster-tiny-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("tiny.sock");
    for listen in [
        "127.0.0.1:0".to_string(),
        format!("unix:{}", sock.display()),
    ] {
        let mut srv = start_example(
            "tiny_http",
            &["--listen", &listen, "--workers", "2", "--mode", mode],
        )?;
        let ready = srv.expect("ready ", T)?;
        let target = Target::parse(&ready["ready ".len()..])?;
        let workers = workers_of(&srv);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(get(&target)?);
        }
        srv.signal("HUP")?;
        srv.expect_containing("reload finished: 2 replaced", T)?;
        if listen.starts_with("unix:") {
            check(sock.exists(), || {
                format!("{} is gone after the reload", sock.display())
            })?;
        }
        let after = (0..10)
            .map(|_| get(&target))
            .collect::<Result<Vec<_>, _>>()?;
        println!(
            "    {mode}, {listen}: answered by workers {seen:?}, after the reload by {after:?}"
        );
        check(after.iter().all(|w| *w > 2), || {
            format!("answered after the reload by the old workers: {after:?}")
        })?;
        srv.signal("TERM")?;
        exited_ok(&mut srv, T)?;
        gone(&workers)?;
    }
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}

/// The `tiny_http` example in round-robin: refused at start (exit 2), naming the
/// modes that work.
pub fn tiny_http_round_robin_refused() -> Outcome {
    let mut srv = start_example(
        "tiny_http",
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--mode",
            "round-robin",
        ],
    )?;
    let status = srv.wait(T)?;
    let stderr = srv.stderr();
    check(status.code() == Some(2), || {
        format!("exit {status}: {stderr}")
    })?;
    check(
        stderr.contains("round-robin mode cannot serve tiny_http")
            && stderr.contains("--mode shared or --mode reuse-port"),
        || stderr.clone(),
    )?;
    println!("    {}", stderr.trim());
    Ok(())
}

/// One of this crate's examples, started with `args`.
fn start_example(name: &str, args: &[&str]) -> Result<Server, String> {
    let mut cmd = std::process::Command::new(proc::example(name)?);
    cmd.args(args).env_remove("CLUSTER_SCHED_POLICY");
    Server::spawn(cmd)
}
