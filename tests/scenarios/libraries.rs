//! Serving through a library that accepts by itself (tokio here, as axum, hyper,
//! tiny_http and actix-web do): the worker takes a std listener from
//! `Listener::try_clone_std`, stops when `Worker::disconnect_fd` is readable, and
//! counts what it accepts with `Listener::note_accepted`. In round-robin there is no
//! listener to take: asking is an error that names the mode, not a hang.

use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, spec, Outcome};
use crate::util::client;

const T: Duration = Duration::from_secs(10);

/// Shared and reuse-port, 2 workers on tokio (`SC_STD_TOKIO`), recycled every 40
/// connections (`SC_MAX_CONN`): 100 requests all answered, the workers' counters
/// count them (`stats` lines), recycling by count happens although the crate never
/// accepted a connection itself; a rolling restart and then `SIGTERM` end every
/// worker through its disconnect descriptor ("disconnect seen"), well within a
/// shutdown timeout of 60 s that a worker deaf to the disconnect would wait out, and
/// the cluster exits 0 with nothing leaked.
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
    srv.signal("HUP")?;
    srv.expect("reload-finished ", T)?;
    let again = client::load(t, 20, 2, "hi", T);
    check(again.ok == 20, || {
        format!(
            "after the reload: {} of 20: {:?}",
            again.ok,
            again.errors.first()
        )
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    let seen = end
        .rest
        .iter()
        .filter(|l| l.contains("disconnect seen"))
        .count();
    check(seen >= 2, || {
        format!("{seen} workers saw the disconnect: {:?}", end.rest)
    })?;
    println!("    {mode}: 120 answered through tokio; recycled by count; {counted}; {seen} disconnects seen");
    clean_end(&srv, &end)
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
