//! Binary upgrade of the demo (`SIGUSR2`), as a deploy does it: a new build replaces
//! the program file, the running primary tries it and runs it in place. Under load,
//! with keep-alive and with `Connection: close`, in each mode, nothing fails and
//! afterwards every serving process runs the new file; a new program that exits or
//! hangs at start-up is refused, and the running one keeps serving.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::deploy::until_state;
use crate::hello_deploy::{client, gone, progressed, workers_of, Seen};
use crate::util::check::{check, exited_ok, Outcome};
use crate::util::client::Target;
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(20);

/// A directory of its own for one scenario's program file, removed at the end.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch, String> {
        let dir =
            std::env::temp_dir().join(format!("cluster-upgrade-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(Scratch(dir))
    }

    pub fn program(&self) -> PathBuf {
        self.0.join("hello")
    }

    /// Puts `content` at the program path the way a deploy does: written beside it,
    /// then renamed over it (the running program's file is then deleted, not changed).
    fn deploy(&self, content: &[u8]) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let next = self.0.join("hello.next");
        std::fs::write(&next, content).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::rename(&next, self.program()).map_err(|e| e.to_string())
    }

    /// A build of the demo: the built example, with `build` appended (an ELF file runs
    /// the same with bytes after its end), so each build is a file of its own.
    pub fn deploy_build(&self, build: u32) -> Result<(), String> {
        let mut bytes = std::fs::read(proc::example("hello")?).map_err(|e| e.to_string())?;
        bytes.extend_from_slice(format!("\nbuild {build}\n").as_bytes());
        self.deploy(&bytes)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo started from `program` (4 workers in `mode`, its default threads), and its
/// address.
fn start(
    program: &Path,
    mode: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<(Server, Target), String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "4", "--mode", mode]);
    cmd.args(extra);
    cmd.env_remove("CLUSTER_SCHED_POLICY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut srv = Server::spawn(cmd)?;
    let ready = srv.expect("ready ", T)?;
    let target = Target::parse(&ready["ready ".len()..])?;
    Ok((srv, target))
}

/// The file process `pid` runs: its inode, and whether the kernel calls it deleted.
fn runs(pid: u32) -> Result<(u64, bool), String> {
    let link = format!("/proc/{pid}/exe");
    let ino = std::fs::metadata(&link)
        .map_err(|e| format!("{link}: {e}"))?
        .ino();
    let deleted = std::fs::read_link(&link)
        .map(|p| p.to_string_lossy().ends_with(" (deleted)"))
        .unwrap_or(true);
    Ok((ino, deleted))
}

/// The primary and each of its workers run the file now at `program`.
fn all_run(srv: &Server, program: &Path) -> Outcome {
    let want = std::fs::metadata(program).map_err(|e| e.to_string())?.ino();
    let mut pids = vec![srv.pid()];
    pids.extend(workers_of(srv).iter().map(|w| w.0));
    for pid in pids {
        let (ino, deleted) = runs(pid)?;
        check(ino == want && !deleted, || {
            format!(
                "pid {pid} runs inode {ino} (deleted: {deleted}), not {} ({want})",
                program.display()
            )
        })?;
    }
    Ok(())
}

/// 16 clients that run until the closure returns; what they saw, and its result.
fn under_load<R>(
    target: &Target,
    close: bool,
    during: impl FnOnce(&AtomicU64) -> Result<R, String>,
) -> (Seen, Result<R, String>) {
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|_| s.spawn(|| client(target, close, &stop, &progress)))
            .collect();
        let result = during(&progress);
        stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for c in clients {
            let seen = c.join().unwrap_or_default();
            all.ok += seen.ok;
            all.closes += seen.closes;
            all.errors.extend(seen.errors);
        }
        (all, result)
    })
}

fn no_failures(seen: &Seen, what: &str) -> Outcome {
    check(seen.errors.is_empty(), || {
        format!(
            "{what}: {} of {} requests failed: {:?}",
            seen.errors.len(),
            seen.ok + seen.errors.len() as u64,
            &seen.errors[..seen.errors.len().min(5)]
        )
    })
}

/// The demo in `mode` under 16 clients (keep-alive, or `Connection: close`): a new
/// build is deployed over the program file, then `SIGUSR2`. No request fails; the
/// primary keeps its pid and its descriptor count; the previous workers are gone;
/// every serving process runs the new file; the port is the same; exit 0 at the end.
pub fn upgrade_under_load(mode: &str, close: bool) -> Outcome {
    let dir = Scratch::new(&format!("{mode}-{close}"))?;
    dir.deploy_build(1)?;
    let (mut srv, target) = start(&dir.program(), mode, &[], &[])?;
    let primary = srv.pid();
    let old = workers_of(&srv);
    let fds_before = proc::fds_of(primary).len();
    let (seen, result) = under_load(&target, close, |progress| {
        progressed(progress, 2000)?;
        dir.deploy_build(2)?;
        let from = srv.seen.len();
        srv.signal("USR2")?;
        let finished = srv.expect_containing("upgrade finished", T)?;
        let ready_again = match srv.seen[from..].iter().find(|l| l.starts_with("ready ")) {
            Some(l) => l.clone(),
            None => srv.expect("ready ", T)?,
        };
        progressed(progress, 2000)?;
        Ok((finished, ready_again))
    });
    let (finished, ready_again) = result?;
    let how = if close {
        "Connection: close"
    } else {
        "keep-alive"
    };
    println!(
        "    {mode}, {how}: {} requests through the upgrade, {} failed; {finished}",
        seen.ok,
        seen.errors.len()
    );
    no_failures(&seen, how)?;
    check(
        srv.pid() == primary && proc::parent_of(primary).is_some(),
        || "the primary changed".into(),
    )?;
    gone(&old).map_err(|e| format!("previous program: {e}"))?;
    check(
        Target::parse(&ready_again["ready ".len()..])? == target,
        || format!("the new program serves {ready_again}, not the same address"),
    )?;
    all_run(&srv, &dir.program())?;
    let new = workers_of(&srv);
    check(new.len() == 4, || {
        format!("{} workers after the upgrade", new.len())
    })?;
    let fds_after = proc::fds_of(primary).len();
    check(fds_after == fds_before, || {
        format!("the primary held {fds_before} descriptors before, {fds_after} after")
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    // The previous workers saw their primary's end of the hand-off channels close:
    // an end, not an error to report.
    let complaints: Vec<&str> = end
        .stderr
        .lines()
        .filter(|l| l.contains("accept") || l.contains("panicked"))
        .collect();
    check(complaints.is_empty(), || {
        format!("errors reported: {complaints:?}")
    })?;
    gone(&new)
}

/// A new program that fails at start-up, under keep-alive load (round-robin): one that
/// exits, one that cannot be run, one that hangs past `--upgrade-timeout 1`. Each is
/// reported, its trial leaves no process, the workers serving stay the same and no
/// request fails; then a real build upgrades.
pub fn upgrade_refused() -> Outcome {
    let dir = Scratch::new("refused")?;
    dir.deploy_build(1)?;
    let (mut srv, target) = start(
        &dir.program(),
        "round-robin",
        &["--upgrade-timeout", "1"],
        &[],
    )?;
    let old = workers_of(&srv);
    let mut reports = Vec::new();
    let (seen, result) = under_load(&target, false, |progress| {
        let broken: [(&[u8], &str); 3] = [
            (
                b"#!/bin/sh\nexit 3\n",
                "ended before Builder::start (exited with status 3)",
            ),
            (b"not a program\n", "cannot run"),
            (
                b"#!/bin/sh\nexec sleep 60\n",
                "did not reach Builder::start within 1s",
            ),
        ];
        for (content, report) in broken {
            progressed(progress, 500)?;
            dir.deploy(content)?;
            srv.signal("USR2")?;
            reports.push(srv.expect_containing(report, T)?);
            check(workers_of(&srv) == old, || {
                format!("the workers changed after a refused upgrade ({report})")
            })?;
        }
        progressed(progress, 500)?;
        dir.deploy_build(2)?;
        srv.signal("USR2")?;
        srv.expect_containing("upgrade finished", T)?;
        progressed(progress, 500)
    });
    result?;
    for r in &reports {
        println!("    {r}");
    }
    no_failures(&seen, "through refused upgrades")?;
    gone(&old)?;
    all_run(&srv, &dir.program())?;
    let new = workers_of(&srv);
    srv.signal("TERM")?;
    exited_ok(&mut srv, T)?;
    gone(&new)
}

/// With `NOTIFY_SOCKET`: `RELOADING=1` when the upgrade starts, `READY=1` from the new
/// program with the same `MAINPID`; a refused upgrade says `READY=1` again too.
pub fn upgrade_notify() -> Outcome {
    let dir = Scratch::new("notify")?;
    dir.deploy_build(1)?;
    let path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let env = [("NOTIFY_SOCKET", path.to_str().ok_or("path")?)];
    let (mut srv, _) = start(&dir.program(), "shared", &[], &env)?;
    let mut pings = 0;
    let main_pid = format!("MAINPID={}", srv.pid());
    let ready = until_state(&sock, "READY=1", &mut pings)?;
    check(ready.contains(&main_pid), || ready.clone())?;
    dir.deploy(b"#!/bin/sh\nexit 1\n")?;
    srv.signal("USR2")?;
    until_state(&sock, "RELOADING=1", &mut pings)?;
    until_state(&sock, "READY=1", &mut pings)?;
    dir.deploy_build(2)?;
    srv.signal("USR2")?;
    until_state(&sock, "RELOADING=1", &mut pings)?;
    let again = until_state(&sock, "READY=1", &mut pings)?;
    check(again.contains(&main_pid), || again.clone())?;
    srv.expect_containing("upgrade finished", T)?;
    let workers = workers_of(&srv);
    srv.signal("TERM")?;
    until_state(&sock, "STOPPING=1", &mut pings)?;
    println!("    READY=1, refused: RELOADING=1 READY=1, upgraded: RELOADING=1 READY=1 ({again:?}), STOPPING=1");
    exited_ok(&mut srv, T)?;
    gone(&workers)
}

/// `SIGTERM` while an upgrade's trial runs (a new program that hangs at start-up): the
/// trial is ended and reaped with the cluster, nothing is exec'd on the way out, and
/// the demo exits 0 leaving no process (before, the trial outlived the primary, or,
/// had it reported, the stopping primary exec'd the new program).
pub fn upgrade_stopped_during_trial() -> Outcome {
    let dir = Scratch::new("stopped")?;
    dir.deploy_build(1)?;
    let (mut srv, _) = start(&dir.program(), "shared", &["--upgrade-timeout", "30"], &[])?;
    let workers = workers_of(&srv);
    dir.deploy(b"#!/bin/sh\nexec sleep 60\n")?;
    srv.signal("USR2")?;
    srv.expect_containing("upgrade: trying", T)?;
    // The trial: the primary's one child that is not a worker.
    let mut trial = None;
    proc::wait_until("the trial to start", T, || {
        trial = proc::children_of(srv.pid())
            .into_iter()
            .map(|c| c.0)
            .find(|p| !workers.iter().any(|w| w.0 == *p))
            .and_then(|p| Some((p, proc::start_time(p)?)));
        trial.is_some()
    })?;
    let trial = trial.ok_or("no trial")?;
    srv.signal("TERM")?;
    let status = srv.wait(T)?;
    // Checked before reading the demo's output to its end: a trial left running would
    // hold the output pipe open.
    gone(&[trial]).map_err(|e| format!("the trial (pid {}): {e}", trial.0))?;
    let stderr = srv.stderr();
    check(status.success(), || format!("exit {status}: {stderr}"))?;
    check(!stderr.contains("upgrade: running"), || {
        format!("the stopping primary ran the new program: {stderr}")
    })?;
    println!(
        "    SIGTERM during the trial: trial pid {} ended with the cluster, exit 0",
        trial.0
    );
    gone(&workers)
}
