//! The demo started by systemd's own tool for socket activation,
//! `systemd-socket-activate` (Debian's `systemd` package): it listens, waits for the
//! first connection, then execs the program with the socket as descriptor 3 and
//! `LISTEN_FDS`/`LISTEN_PID` set, so the pid it was started with is the primary's.
//! `socket_activation` (in `deploy.rs`) prepares the descriptors itself; this one
//! checks the real thing.

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::demo::http_get;
use crate::util::check::{check, exited_ok, Outcome};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);
const TOOL: &str = "systemd-socket-activate";

/// The tool's path, from `PATH`. Missing: an error under CI (`CI=true`, where
/// `.ci/run` installs it), else `None` (the scenario says it skips).
fn tool() -> Result<Option<PathBuf>, String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(TOOL))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Ok(Some(p)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => Err(format!(
            "{TOOL} is not installed (Debian's systemd package; .ci/run installs it)"
        )),
        None => Ok(None),
    }
}

/// A loopback port that was free a moment ago: bound to port 0, then closed.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `systemd-socket-activate -l 127.0.0.1:PORT hello --listen systemd --mode
/// round-robin`, once it listens; another port when the one picked was taken
/// meanwhile (`EADDRINUSE`).
fn activate(tool: &PathBuf) -> Result<(Server, SocketAddr), String> {
    let hello = proc::example("hello")?;
    let mut last = String::new();
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut cmd = Command::new(tool);
        cmd.arg("-l").arg(addr.to_string()).arg(&hello).args([
            "--listen",
            "systemd",
            "--mode",
            "round-robin",
            "--workers",
            "2",
            "--threads",
            "4",
        ]);
        // The tool tells a service manager it is ready when NOTIFY_SOCKET is set.
        cmd.env_remove("NOTIFY_SOCKET");
        let mut srv = Server::spawn(cmd)?;
        match srv.expect_containing("Listening on", T) {
            Ok(_) => return Ok((srv, addr)),
            Err(e) => {
                let _ = srv.wait(T);
                let stderr = srv.stderr();
                if !stderr.contains("in use") {
                    return Err(format!("{TOOL} did not listen on {addr}: {e}"));
                }
                last = stderr;
            }
        }
    }
    Err(format!("no free port in 5 tries: {last}"))
}

/// One `GET /` with `Connection: close`: the worker that answered.
pub fn get(target: &Target) -> Result<u32, String> {
    let mut conn = Conn::connect(target, T).map_err(|e| format!("connect: {e}"))?;
    http_get(&mut conn, "/", true)?;
    let resp = client::read_response(&mut BufReader::new(&mut conn))?;
    check(resp.status == 200, || format!("status {}", resp.status))?;
    resp.header("X-Worker")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no X-Worker".to_string())
}

/// Requests until worker `id` answers one (bounded): every one must be answered.
fn served_by(target: &Target, id: u32) -> Outcome {
    let mut seen = Vec::new();
    while !seen.contains(&id) {
        if seen.len() >= 50 {
            return Err(format!("worker {id} never answered: {seen:?}"));
        }
        seen.push(get(target)?);
    }
    Ok(())
}

/// The primary's live children (workers), recorded in `srv.workers` (pid and start
/// time) so the end checks they are gone, and a failed run kills them.
fn track_workers(srv: &mut Server, primary: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for (pid, state) in proc::children_of(primary) {
        if state == "Z" {
            continue;
        }
        if let Some(start) = proc::start_time(pid) {
            srv.workers.entry(pid).or_insert(start);
            live.push(pid);
        }
    }
    live
}

/// `hello --listen systemd --mode round-robin` under `systemd-socket-activate`: the
/// connection that made the tool start it is served, and `ready` names the activated
/// address; a worker killed by pid is replaced and the replacement serves; `SIGHUP`
/// replaces both workers while two clients keep sending requests, none of which fails;
/// `SIGTERM`: exit 0, no process left.
pub fn systemd_socket_activate() -> Outcome {
    let Some(tool) = tool()? else {
        println!("    skipped: {TOOL} is not installed (Debian's systemd package; CI installs it)");
        return Ok(());
    };
    let (mut srv, addr) = activate(&tool)?;
    let target = Target::Tcp(addr);
    // The first connection starts the program; it waits in the backlog meanwhile.
    let first = get(&target)?;
    let ready = srv.expect("ready ", T)?;
    check(ready == format!("ready {addr}"), || {
        format!("activated on {addr}, the demo says {ready:?}")
    })?;
    let primary = srv.pid();
    let exe = std::fs::read_link(format!("/proc/{primary}/exe")).map_err(|e| e.to_string())?;
    check(exe.file_name().is_some_and(|n| n == "hello"), || {
        format!("pid {primary} (started as {TOOL}) runs {exe:?}, not hello")
    })?;
    let mut workers = Vec::new();
    proc::wait_until("two workers", T, || {
        workers = track_workers(&mut srv, primary);
        workers.len() == 2
    })
    .map_err(|e| format!("{e}: {workers:?}"))?;

    // A worker killed by pid: replaced (worker 3), and the replacement serves.
    proc::signal(workers[0], "KILL")?;
    srv.expect_containing("crashed, respawning", T)?;
    let started = srv.expect_containing("worker 3 started", T)?;
    let respawned: Option<u32> = started
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok());
    check(
        respawned.is_some_and(|p| proc::parent_of(p) == Some(primary)),
        || format!("{started:?}: not a child of the primary {primary}"),
    )?;
    served_by(&target, 3)?;
    track_workers(&mut srv, primary);

    // A rolling restart under two closed-loop clients: every request answered.
    let before: Vec<u32> = srv.workers.keys().copied().collect();
    let stop = AtomicBool::new(false);
    let (results, reload) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut errors) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match get(&target) {
                            Ok(_) => ok += 1,
                            Err(e) => errors.push(e),
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        let reload = srv
            .signal("HUP")
            .and_then(|()| srv.expect_containing("reload finished", T));
        stop.store(true, Ordering::Relaxed);
        let results: Vec<(u64, Vec<String>)> = clients
            .into_iter()
            .map(|c| c.join().unwrap_or((0, vec!["client panicked".into()])))
            .collect();
        (results, reload)
    });
    let reload = reload?;
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    check(
        reload.contains("2 replaced") && !reload.contains("early"),
        || format!("not a full reload: {reload}"),
    )?;
    check(errors.is_empty(), || {
        format!(
            "{} of {} requests failed through the reload: {:?}",
            errors.len(),
            ok + errors.len() as u64,
            &errors[..errors.len().min(5)]
        )
    })?;
    // Only the new workers (4 and 5) serve; the old processes are gone.
    for id in [4, 5] {
        served_by(&target, id)?;
    }
    for _ in 0..10 {
        let w = get(&target)?;
        check(w == 4 || w == 5, || {
            format!("worker {w} answered after the reload")
        })?;
    }
    let now = track_workers(&mut srv, primary);
    check(now.iter().all(|p| !before.contains(p)), || {
        format!("workers before the reload {before:?}, after {now:?}")
    })?;
    println!(
        "    {TOOL} -l {addr}: first request by worker {first}; killed pid {}, {started:?}; reload: {ok} requests, 0 failed",
        workers[0]
    );

    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    check(!end.stderr.contains("panicked"), || {
        format!("a process panicked:\n{}", end.stderr)
    })?;
    // Nothing the crate had to recover from (it reports that as `cluster: …`): an
    // adopted socket's flags, say, changed by a worker.
    let reports: Vec<&str> = end
        .stderr
        .lines()
        .filter(|l| l.starts_with("cluster: "))
        .collect();
    check(reports.is_empty(), || {
        format!("the cluster reported problems: {reports:?}")
    })?;
    srv.check_workers_gone(Duration::from_secs(2))
}
