//! The primary as pid 1, as in a container: processes orphaned below it are reparented
//! to it, and it reaps them (no tini needed) without taking them for workers.
//!
//! The server runs as pid 1 of a new pid namespace, `unshare --pid --fork
//! --kill-child --mount-proc` (util-linux; needs root, which CI has): `unshare` forks
//! the primary into the namespace, mounts a `/proc` of that namespace for it (so its
//! own hygiene check reads its own children), and kills it if `unshare` dies. The pids
//! the server prints are the namespace's; this driver finds the host pids through
//! `/proc` (the primary is `unshare`'s one child, the workers are the primary's).

use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, Outcome};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);

/// Records the primary's children (host pids) as workers, so the end checks that they
/// are gone and a failed run kills them.
fn track_workers(srv: &mut Server, primary: u32) {
    for (pid, _) in proc::children_of(primary) {
        if let Some(start) = proc::start_time(pid) {
            srv.workers.entry(pid).or_insert(start);
        }
    }
}

/// A worker leaves two orphans (one exited already, one that exits with it) and exits
/// with code 3; the primary, pid 1 of its namespace, reaps both (no zombie left as its
/// child, `orphans 2` at the end), reports the worker's exit once with its own status
/// and replaces it, and nothing else is taken for a worker's exit. Then SIGTERM: exit
/// 0, the usual hygiene (inside the namespace: no child left, descriptors as before),
/// every worker gone.
pub fn pid1_reaps_orphans() -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (unshare --pid needs root; CI runs as root)");
        return Ok(());
    }
    let env = [
        ("SC_MODE", "round-robin".to_string()),
        ("SC_WORKERS", "2".to_string()),
        ("SC_LISTEN", "127.0.0.1:0".to_string()),
        ("SC_THREADS", "2".to_string()),
    ];
    let wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];
    let mut srv = Server::spawn(proc::self_command_under(&wrapper, &env))?;
    srv.pids_in_own_namespace();
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let unshare = srv.pid();
    let mut primary = 0;
    proc::wait_until("unshare's child", T, || {
        match proc::children_of(unshare).as_slice() {
            [(pid, _)] => {
                primary = *pid;
                true
            }
            _ => false,
        }
    })?;
    let nspid = proc::status_field(primary, "NSpid").unwrap_or_default();
    check(nspid.ends_with(" 1"), || {
        format!("the primary (host pid {primary}) is not pid 1 of its namespace: NSpid {nspid:?}")
    })?;
    track_workers(&mut srv, primary);

    let reply = client::ask(&target, "orphans", T)?;
    check(reply.text.starts_with("orphans "), || {
        format!("worker {}: {}", reply.worker, reply.text)
    })?;
    let exit = srv.expect("exit ", T)?;
    check(
        exit.starts_with(&format!("exit {} ", reply.worker))
            && exit.contains("exit code 3")
            && exit.contains("requested=false"),
        || {
            format!(
                "worker {} left orphans and exited with 3: {exit}",
                reply.worker
            )
        },
    )?;
    // The replacement listens and serves.
    srv.expect("listening 3 ", T)?;
    track_workers(&mut srv, primary);
    let mut served_by = Vec::new();
    while !served_by.contains(&3) && served_by.len() < 50 {
        served_by.push(client::ask(&target, "hi", T)?.worker);
    }
    check(served_by.contains(&3), || {
        format!("worker 3 never served: {served_by:?}")
    })?;
    // No zombie left among the primary's children: the orphans were reaped.
    let zombies = || -> Vec<u32> {
        proc::children_of(primary)
            .into_iter()
            .filter(|(_, state)| state == "Z")
            .map(|(pid, _)| pid)
            .collect()
    };
    proc::wait_until("the orphans to be reaped", T, || zombies().is_empty()).map_err(|e| {
        format!(
            "{e}: zombie children of the primary (host pids) {:?}; the worker said {:?} \
                 (namespace pids)",
            zombies(),
            reply.text
        )
    })?;

    proc::signal(primary, "TERM")?;
    let end = exited_ok(&mut srv, T)?;
    // Every line of the run (`rest` added the last ones to `seen`).
    let all = &srv.seen;
    let crashes: Vec<&String> = all
        .iter()
        .filter(|l| l.starts_with("exit ") && l.contains("requested=false"))
        .collect();
    let forks = all.iter().filter(|l| l.starts_with("fork ")).count();
    let orphans = end.rest.iter().find(|l| l.starts_with("orphans "));
    println!(
        "    pid 1: {} ({}), {forks} forks, {} worker exit(s) not asked for, {:?} reaped",
        reply.text,
        nspid,
        crashes.len(),
        orphans
    );
    check(crashes.len() == 1 && forks == 3, || {
        format!("one crash, one replacement expected: crashes {crashes:?}, {forks} forks")
    })?;
    check(orphans.is_some_and(|l| l == "orphans 2"), || {
        format!("the primary should count 2 orphans reaped: {orphans:?}")
    })?;
    clean_end(&srv, &end)
}
