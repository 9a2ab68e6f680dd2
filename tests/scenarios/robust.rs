//! Faults and bad input, with real processes: rogue workers, stopped workers, silent
//! clients, clients that leave early, reaped pids, `fork` failing (`RLIMIT_NPROC`),
//! descriptors running out (`RLIMIT_NOFILE`, set on the running process with
//! prlimit(1)), and 64 workers on two cores. Each ends with the usual hygiene check.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::check::{
    all_ok, check, rogue_killed, rogue_refused_or_killed, spec, stop_and_check, Outcome,
};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(5);

/// Every worker id that answered, in order.
fn served_by(load: &client::Load) -> Vec<u32> {
    load.by_worker.keys().copied().collect()
}

/// A worker that breaks the protocol (`how`: garbage, an oversized record, an unknown
/// kind, a descriptor where none belongs, a flood of valid messages) is reported,
/// killed and replaced; the other worker serves throughout; no descriptor leaks (the
/// primary's hygiene line). A descriptor where none belongs is refused at the worker's
/// `sendmsg` on Linux 6.16+ (`EPERM`, the worker serves on); `contained` acts as on an
/// older kernel, where it reaches the primary.
pub fn rogue_worker(how: &str, contained: bool) -> Outcome {
    // The flood: "thousands of messages a second", against a limit of 20,000 (the
    // default, 100,000, is above what a worker that messages per request sends).
    let mut env = vec![("SC_ROGUE", how), ("SC_MSG_LIMIT", "20000")];
    if contained {
        env.push(("CLUSTER_TEST_NO_PASSRIGHTS", "1"));
    }
    let (mut srv, targets) = spec("round-robin", 2, 2, &env).start()?;
    if how == "fd" && !contained && cluster::descriptors_refused_for_tests() {
        rogue_refused_or_killed(&mut srv, how, true, T)?;
        let load = client::load(&targets[0], 200, 4, "hi", T);
        all_ok(&load, 200, how)?;
        return stop_and_check(&mut srv);
    }
    rogue_killed(&mut srv, how, T)?;
    srv.seen_or_expect("listening 3 ", T)?;
    let load = client::load(&targets[0], 200, 4, "hi", T);
    all_ok(&load, 200, how)?;
    check(served_by(&load) == [2, 3], || {
        format!("{how}: served by {:?}, expected 2 and 3", served_by(&load))
    })?;
    stop_and_check(&mut srv)
}

/// A worker stopped with SIGSTOP: every connection is still served (round-robin takes
/// back what it sent the stopped worker and routes around it; in shared mode the
/// stopped worker's threads are off the accept queue). After SIGCONT it serves again.
pub fn stopped_worker(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 1, &[]).start()?;
    // Both workers have taken connections (and so wait for more) before the stop. On a
    // loaded machine one worker's thread may reach `accept` well after the other's, so
    // warm up in rounds (bounded) until both have served.
    let mut warmed = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let warm = client::load(&targets[0], 10, 2, "hi", T);
        all_ok(&warm, 10, "warm-up")?;
        warmed.extend(served_by(&warm));
        if warmed.len() == 2 {
            break;
        }
    }
    check(warmed.len() == 2, || {
        format!("200 warm-up connections served by {warmed:?} only")
    })?;
    let w1 = proc::worker_pid(&srv.seen, 1)?;
    proc::signal(w1, "STOP")?;
    proc::wait_stopped(w1, T)?;
    let load = client::load(&targets[0], 40, 2, "hi", Duration::from_secs(10));
    // Messages for the stopped worker pile up in its channel, then in the primary's
    // outbox: the primary never blocks on it and keeps answering.
    let broadcasts = client::load(
        &targets[0],
        500,
        2,
        "tell broadcast for-everyone",
        Duration::from_secs(10),
    );
    let cont = proc::signal(w1, "CONT");
    all_ok(&load, 40, "while worker 1 is stopped")?;
    all_ok(&broadcasts, 500, "broadcasts while worker 1 is stopped")?;
    cont?;
    check(served_by(&load) == [2], || {
        format!("while stopped: served by {:?}", served_by(&load))
    })?;
    if mode == "round-robin" {
        let line = srv.expect_containing("worker 1 left a connection unreceived", T)?;
        println!("    {line}");
    }
    // Bounded: ask until worker 1 answers again.
    let mut back = false;
    for _ in 0..200 {
        if client::ask(&targets[0], "hi", T)?.worker == 1 {
            back = true;
            break;
        }
    }
    check(back, || "worker 1 never served again after SIGCONT".into())?;
    if mode == "round-robin" {
        srv.expect_containing("worker 1 takes connections again", T)?;
    }
    stop_and_check(&mut srv)
}

/// Round-robin: clients that connect and send nothing, or trickle a byte now and then,
/// cost the primary nothing: it holds none of their descriptors (it never reads from
/// client sockets) and stays idle while they hang on, also with more of them than
/// worker threads (the rest wait in the kernel's backlog, or queued ahead in a busy
/// worker's channel, where they stay while no other worker is free).
pub fn silent_clients() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 4, &[]).start()?;
    let Target::Tcp(addr) = targets[0] else {
        return Err("expected TCP".into());
    };
    all_ok(&client::load(&targets[0], 20, 2, "hi", T), 20, "warm-up")?;
    let primary = srv.pid();
    let fds_before = proc::fds_of(primary);
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?);
    }
    // Trickle: a byte to each of the first few, without a newline.
    for s in silent.iter_mut().take(4) {
        s.write_all(b"h").map_err(|e| e.to_string())?;
    }
    proc::check_idle(primary, "primary with 20 silent clients")?;
    for s in silent.iter_mut().take(4) {
        s.write_all(b"i").map_err(|e| e.to_string())?;
    }
    // No descriptor the primary did not have before (bounded: one it holds for an
    // instant, a connection between its accept and its hand-off on a loaded machine,
    // may be in either snapshot).
    let new_fds = || -> Vec<i32> {
        proc::fds_of(primary)
            .into_iter()
            .filter(|f| !fds_before.contains(f))
            .collect()
    };
    let settled = proc::wait_until("the primary to hold no new descriptor", T, || {
        new_fds().is_empty()
    });
    check(settled.is_ok(), || {
        format!(
            "the primary holds descriptors it did not before the silent clients: {:?} (before: {fds_before:?})",
            new_fds()
        )
    })?;
    drop(silent);
    all_ok(
        &client::load(&targets[0], 100, 4, "hi", Duration::from_secs(10)),
        100,
        "after the silent clients left",
    )?;
    stop_and_check(&mut srv)
}

/// Clients that read a little of a long answer and close: the worker's next write
/// fails (EPIPE or ECONNRESET), it never dies of SIGPIPE, and neither does the primary.
/// (Rust's runtime already ignores SIGPIPE in this server; the crate ignores it in
/// every worker too, for programs whose `main` is not Rust's, which this test cannot
/// build without `unsafe`.)
pub fn client_leaves_early(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 2, &[]).start()?;
    for _ in 0..40 {
        let mut c = Conn::connect(&targets[0], T).map_err(|e| e.to_string())?;
        // 64 MiB: more than the loopback buffers hold, so the worker is still writing
        // when the reset comes.
        c.write_all(b"stream 65536\n").map_err(|e| e.to_string())?;
        let mut first = [0u8; 1024];
        c.read_exact(&mut first).map_err(|e| e.to_string())?;
        // Dropped with unread data: the kernel answers the worker's next segment with
        // a reset.
    }
    let load = client::load(&targets[0], 100, 4, "hi", T);
    all_ok(&load, 100, "after the early leavers")?;
    check(served_by(&load) == [1, 2], || {
        format!(
            "served by {:?}: a worker was replaced (died of SIGPIPE?); seen {:?}",
            served_by(&load),
            srv.seen
        )
    })?;
    check(!srv.seen.iter().any(|l| l.starts_with("exit ")), || {
        format!("a worker exited: {:?}", srv.seen)
    })?;
    stop_and_check(&mut srv)
}

/// Round-robin, every thread busy: a connection queued ahead for a worker whose only
/// thread is busy for 3 s is served by the other worker as soon as that one is free
/// (moved after about a second if it was queued behind the long request), and nobody
/// is reported as stalled.
pub fn busy_worker_connection_moves() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 1, &[]).start()?;
    let warm = client::load(&targets[0], 10, 2, "hi", T);
    all_ok(&warm, 10, "warm-up")?;
    let long = ask_later(&targets[0], "sleep 3000");
    let busy_long = srv.expect_containing(" busy ", T)?;
    let short = ask_later(&targets[0], "sleep 500");
    srv.expect_containing(" busy ", T)?;
    let next = client::ask(&targets[0], "hi", Duration::from_secs(10))?;
    let long = long.join().map_err(|_| "client thread panicked")??;
    short.join().map_err(|_| "client thread panicked")??;
    check(next.worker != long.worker, || {
        format!(
            "the queued connection waited for worker {} ({busy_long}) instead of going to the free one",
            long.worker
        )
    })?;
    check(
        !srv.seen
            .iter()
            .any(|l| l.contains("left a connection unreceived")),
        || format!("a busy worker was reported as stalled: {:?}", srv.seen),
    )?;
    stop_and_check(&mut srv)
}

/// Once a worker is reaped, the primary refuses to signal it: asking to kill or
/// disconnect it again is `NoSuchWorker`, whatever process may now have its pid.
pub fn reaped_pid_not_signalled() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 2, 2, &[("SC_RESPAWN", "never")]).start()?;
    proc::signal(proc::worker_pid(&srv.seen, 2)?, "KILL")?;
    srv.expect("exit 2 ", T)?;
    for cmd in ["tell kill 2", "tell disconnect 2", "tell restart 2"] {
        let r = client::ask(&targets[0], cmd, T)?;
        check(r.text == "error no live worker 2", || {
            format!("{cmd}: answered {:?}", r.text)
        })?;
    }
    stop_and_check(&mut srv)
}

/// `fork` fails (EAGAIN: `RLIMIT_NPROC` lowered on the running primary, which runs as
/// `nobody` because the limit does not bind root): the primary reports each failure,
/// retries with back-off without spinning, and serves with the worker it has; once the
/// limit is lifted the replacement is forked.
pub fn fork_failure() -> Outcome {
    let staged = StagedBinary::new()?;
    let mut cmd = staged.command()?;
    for (k, v) in [
        ("SC_MODE", "round-robin"),
        ("SC_WORKERS", "2"),
        ("SC_THREADS", "2"),
        ("SC_LISTEN", "127.0.0.1:0"),
    ] {
        cmd.env(k, v);
    }
    let mut srv = Server::spawn(cmd)?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let primary = srv.pid();
    let before = proc::soft_limit(primary, "nproc")?;
    proc::set_soft_limit(primary, "nproc", "1")?;
    proc::signal(proc::worker_pid(&srv.seen, 2)?, "KILL")?;
    srv.expect("exit 2 ", T)?;
    let first = srv.expect_containing("fork worker 3", T)?;
    srv.expect_containing("fork worker 3", T)?; // retried
    println!("    {first}");
    let load = client::load(&target, 50, 2, "hi", T);
    all_ok(&load, 50, "with one worker and fork failing")?;
    check(served_by(&load) == [1], || {
        format!("served by {:?}", served_by(&load))
    })?;
    proc::check_idle(primary, "primary retrying fork")?;
    proc::set_soft_limit(primary, "nproc", &before)?;
    srv.expect("listening 3 ", Duration::from_secs(15))?;
    let load = client::load(&target, 100, 4, "hi", T);
    all_ok(&load, 100, "after the limit was lifted")?;
    check(served_by(&load) == [1, 3], || {
        format!("after: served by {:?}", served_by(&load))
    })?;
    stop_and_check(&mut srv)
}

/// A copy of this test binary that an unprivileged user can run (when the tests run as
/// root, the build directory may be closed to others), removed on drop.
struct StagedBinary {
    dir: PathBuf,
}

impl StagedBinary {
    fn new() -> Result<StagedBinary, String> {
        let dir = std::env::temp_dir().join(format!("cluster-scenarios-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let staged = StagedBinary { dir };
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        std::fs::copy(&exe, staged.exe()).map_err(|e| format!("copy {}: {e}", exe.display()))?;
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(staged.dir.clone(), 0o755), (staged.exe(), 0o755)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        Ok(staged)
    }

    fn exe(&self) -> PathBuf {
        self.dir.join("scenarios")
    }

    /// The scenario server, as `nobody` when we are root (setpriv(1)), else as we are.
    fn command(&self) -> Result<Command, String> {
        let mut cmd = if proc::is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c.arg(self.exe());
            c
        } else {
            Command::new(self.exe())
        };
        cmd.current_dir("/").env("CLUSTER_SCENARIO_SERVER", "1");
        Ok(cmd)
    }
}

impl Drop for StagedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ask` on a thread: a client that waits (bounded) while the server is starved.
fn ask_later(target: &Target, cmd: &str) -> std::thread::JoinHandle<Result<client::Reply, String>> {
    let (target, cmd) = (target.clone(), cmd.to_string());
    std::thread::spawn(move || client::ask(&target, &cmd, Duration::from_secs(20)))
}

/// Round-robin primary out of descriptors (`RLIMIT_NOFILE` at its lowest free
/// number): `accept` fails with EMFILE, the primary says so once, pauses instead of
/// spinning on the readable listener, and serves the waiting client once descriptors
/// are available again.
pub fn primary_out_of_fds() -> Outcome {
    out_of_fds("round-robin", "primary", |srv| Ok(srv.pid()))
}

/// A shared-mode worker out of descriptors: its threads back off instead of spinning,
/// say so, and serve the waiting client once descriptors are available again.
pub fn worker_out_of_fds() -> Outcome {
    out_of_fds("shared", "worker", |srv| proc::worker_pid(&srv.seen, 1))
}

/// One worker; the process `whose` picks runs out of descriptors while a client waits;
/// it must report EMFILE, stay idle, and serve the client once the limit is lifted.
fn out_of_fds(mode: &str, what: &str, whose: fn(&Server) -> Result<u32, String>) -> Outcome {
    let (mut srv, targets) = spec(mode, 1, 2, &[]).start()?;
    all_ok(&client::load(&targets[0], 10, 1, "hi", T), 10, "warm-up")?;
    let pid = whose(&srv)?;
    let before = proc::soft_limit(pid, "nofile")?;
    proc::set_soft_limit(pid, "nofile", &proc::lowest_free_fd(pid).to_string())?;
    let waiting = ask_later(&targets[0], "hi");
    let said = srv.expect_containing("Too many open files", T);
    let idle = proc::check_idle(pid, &format!("{what} out of descriptors"));
    proc::set_soft_limit(pid, "nofile", &before)?;
    println!("    {}", said?);
    idle?;
    let reply = waiting.join().map_err(|_| "client thread panicked")??;
    check(reply.worker == 1, || format!("served by {}", reply.worker))?;
    stop_and_check(&mut srv)
}

/// A round-robin worker out of descriptors receives a connection: the kernel cannot
/// install it (MSG_CTRUNC) and closes it, so the client sees the connection end rather
/// than hang; the worker reports it and backs off without spinning; the primary keeps
/// no copy (its descriptors are unchanged); once descriptors are available the worker
/// serves again.
pub fn worker_ctrunc() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 1, 1, &[]).start()?;
    all_ok(&client::load(&targets[0], 10, 1, "hi", T), 10, "warm-up")?;
    // A message through the primary: it answers in a turn after the one that handed
    // this connection out, so its copy of every connection so far is closed (under
    // load the last warm-up connection's copy could still be open, between its
    // `sendmsg` and its `close`, when the descriptors were listed).
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text == "pong", || format!("{pong:?}"))?;
    let primary = srv.pid();
    let worker = proc::worker_pid(&srv.seen, 1)?;
    let primary_fds = proc::fds_of(primary);
    let before = proc::soft_limit(worker, "nofile")?;
    proc::set_soft_limit(worker, "nofile", &proc::lowest_free_fd(worker).to_string())?;
    let lost = client::ask(&targets[0], "hi", Duration::from_secs(10));
    let said = srv.expect_containing("MSG_CTRUNC", T);
    let idle = proc::check_idle(worker, "worker after MSG_CTRUNC");
    let primary_fds_after = proc::fds_of(primary);
    proc::set_soft_limit(worker, "nofile", &before)?;
    println!("    {}", said?);
    idle?;
    // Closed (EOF) or reset, depending on the kernel's timing; not a hang (timeout).
    check(
        lost.as_ref()
            .is_err_and(|e| e.contains("closed") || e.contains("reset")),
        || format!("the undeliverable connection: {lost:?}"),
    )?;
    check(primary_fds_after == primary_fds, || {
        format!("the primary's descriptors changed: {primary_fds:?} -> {primary_fds_after:?}")
    })?;
    all_ok(
        &client::load(&targets[0], 20, 2, "hi", Duration::from_secs(10)),
        20,
        "after the limit was lifted",
    )?;
    stop_and_check(&mut srv)
}

/// 64 workers (one thread each) on two cores: all start, every one serves, all shut
/// down cleanly.
pub fn many_workers(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 64, 1, &[]).start()?;
    let load = client::load(&targets[0], 1280, 8, "hi", Duration::from_secs(10));
    all_ok(&load, 1280, "64 workers")?;
    check(load.by_worker.len() == 64, || {
        format!(
            "{} of 64 workers served: {}",
            load.by_worker.len(),
            load.shares()
        )
    })?;
    stop_and_check(&mut srv)
}
