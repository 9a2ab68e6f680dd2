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

// ------------------------------------------------------------------ what an upgrade believes

/// Hex, as the hand-over record writes paths.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One request to the demo, answered.
fn served(target: &Target) -> Outcome {
    let mut conn =
        crate::util::client::Conn::connect(target, T).map_err(|e| format!("connect: {e}"))?;
    crate::hello_deploy::ask(&mut conn, true).map(|_| ())
}

/// A process that is not the server's: `sleep 600`, the driver's child.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Result<Bystander, String> {
        std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .map(Bystander)
            .map_err(|e| format!("spawn sleep: {e}"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Still running (not reaped, not a zombie: the driver reaps only in `drop`).
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 19, item 5: a fresh start of the scenario server (round-robin, 2 workers,
/// holding its own log file as descriptor 3, `SC_KEEP`) with a hostile
/// `CLUSTER_UPGRADE` in its environment, one per run: a worker whose pid is a
/// bystander process (a `sleep` the driver started; a pid of -1 would have been the
/// same `kill`, to every process) and whose channel is the log's descriptor; `next
/// 4294967295`; a program of the attacker's at the next `SIGUSR2`; and the log's
/// descriptor number alone. Each is refused with a warning naming the failed check,
/// and then: the bystander still runs, the primary's descriptor 3 is still the log and
/// a worker's `log` line reaches the file, requests are served, the `SIGUSR2` tries
/// the server's own program (the attacker's never runs), and the server stops clean.
pub fn upgrade_record_stray() -> Outcome {
    let dir = Scratch::new("stray")?;
    let log = dir.0.join("app.log");
    let marker = dir.0.join("pwned");
    let evil = dir.0.join("evil");
    {
        use std::os::unix::fs::PermissionsExt;
        let script = format!("#!/bin/sh\necho ran > '{}'\nexit 1\n", marker.display());
        std::fs::write(&evil, script).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let me_hex = hex(me.as_os_str().as_encoded_bytes());
    let mut bystander = Bystander::start()?;
    let cases = [
        (
            "worker pid 0 (kill(0): the primary's process group, its own under setsid, with a \
             sleep in it)",
            format!("cluster-upgrade-1;program {me_hex};next 2 1;worker 1 0 3"),
        ),
        (
            "a bystander's pid, the log as its channel",
            format!(
                "cluster-upgrade-1;program {me_hex};next 2 1;worker 1 {} 3",
                bystander.pid()
            ),
        ),
        (
            "next 4294967295",
            format!("cluster-upgrade-1;program {me_hex};next 4294967295 1"),
        ),
        (
            "another program",
            format!(
                "cluster-upgrade-1;program {};next 2 1",
                hex(evil.as_os_str().as_encoded_bytes())
            ),
        ),
        ("the log's descriptor number", "3".to_string()),
    ];
    let mut problems = Vec::new();
    for (what, record) in &cases {
        let _ = std::fs::remove_file(&log);
        let found = stray_record(record, &log, &me, &marker, &mut bystander);
        let found = found.unwrap_or_else(|e| vec![e]);
        problems.extend(found.into_iter().map(|p| format!("{what}: {p}")));
    }
    check(problems.is_empty(), || problems.join("\n    "))
}

/// One run of `upgrade_record_stray`: everything found wrong (after a failure that
/// leaves nothing else to look at, what was found so far).
fn stray_record(
    record: &str,
    log: &Path,
    me: &Path,
    marker: &Path,
    bystander: &mut Bystander,
) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    let mut found = |ok: bool, p: String| {
        if !ok {
            problems.push(p);
        }
    };
    let env = [
        ("SC_MODE", "round-robin".to_string()),
        ("SC_WORKERS", "2".into()),
        ("SC_THREADS", "1".into()),
        ("SC_KEEP", log.display().to_string()),
        ("CLUSTER_UPGRADE", record.to_string()),
    ];
    // With a worker pid of 0, a `kill` of it signals the primary's process group: the
    // server then runs in a session of its own (`setsid`), with a `sleep` in its group
    // that the shell started before it became the server.
    let group = record.contains(";worker 1 0 ");
    let wrapper: &[&str] = if group {
        &[
            "setsid",
            "sh",
            "-c",
            "sleep 600 </dev/null >/dev/null 2>&1 & exec \"$0\"",
        ]
    } else {
        &[]
    };
    let mut srv = Server::spawn(proc::self_command_under(wrapper, &env))?;
    let ready = srv.expect("ready ", T);
    let mut in_group = None;
    if group {
        let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let waited = proc::wait_until("the sleep in the group", T, || {
            in_group = proc::children_of(srv.pid())
                .into_iter()
                .find(|(p, _)| comm(*p).trim_end() == "sleep")
                .and_then(|(p, _)| Some((p, proc::start_time(p)?)));
            in_group.is_some()
        });
        waited?;
    }
    let group_alive = |g: Option<(u32, u64)>| {
        g.map_or(true, |(p, t)| {
            proc::start_time(p) == Some(t) && !proc::is_zombie(p)
        })
    };
    let alive = bystander.alive();
    found(
        alive,
        format!("the bystander (pid {}) was killed", bystander.pid()),
    );
    let ready = match ready.and_then(|r| Target::parse(&r["ready ".len()..])) {
        Ok(t) => t,
        Err(e) => {
            let _ = srv.signal("KILL");
            let _ = srv.wait(T);
            let stderr = srv.stderr();
            let last: Vec<&str> = stderr.lines().rev().take(3).collect();
            found(false, format!("no ready: {e}; stderr ends {last:?}"));
            end_group(in_group);
            return Ok(problems);
        }
    };
    // The primary still holds its log as descriptor 3.
    let held = proc::fd_targets(srv.pid())
        .into_iter()
        .find(|(n, _)| *n == 3)
        .map(|(_, l)| l);
    found(
        held.as_deref() == Some(&*log.display().to_string()),
        format!("the primary's descriptor 3 is {held:?}, not the log"),
    );
    // Requests are served, and a worker's line reaches the log through its copy.
    let line = format!("line-{}", srv.pid());
    match crate::util::client::ask(&ready, &format!("log {line}"), T) {
        Ok(r) => found(r.text == "logged", format!("log: {}", r.text)),
        Err(e) => found(false, format!("log request: {e}")),
    }
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    found(logged.contains(&line), format!("the log holds {logged:?}"));
    // The next SIGUSR2 tries this program, not the record's.
    let _ = srv.signal("USR2");
    match srv.expect_containing("UpgradeStarted", T) {
        Ok(started) => found(
            started.contains(&*me.display().to_string()),
            format!("SIGUSR2: {started}"),
        ),
        Err(e) => found(false, format!("SIGUSR2: {e}")),
    }
    if let Err(e) = srv.expect_containing("Upgraded", T) {
        found(false, format!("the upgrade to itself: {e}"));
    }
    found(!marker.exists(), "the record's program ran".into());
    let alive = bystander.alive();
    found(
        alive,
        format!("the bystander (pid {}) was killed", bystander.pid()),
    );
    found(
        group_alive(in_group),
        format!("the sleep in the primary's group ({in_group:?}) was killed"),
    );
    match srv.seen_or_expect_containing("CLUSTER_UPGRADE=", Duration::from_secs(1)) {
        Ok(w) if w.contains("refused (check") => println!("    {w}"),
        Ok(w) => found(false, format!("warning {w:?}")),
        Err(e) => found(false, format!("no warning: {e}")),
    }
    let _ = srv.signal("TERM");
    match exited_ok(&mut srv, T) {
        // (With the group's `sleep`, the primary has a child that is not its own doing.)
        Ok(end) if !group => {
            if let Err(e) = crate::util::check::clean_end(&srv, &end) {
                found(false, e);
            }
        }
        Ok(end) => found(!end.stderr.contains("panicked"), end.stderr),
        Err(e) => found(false, e),
    }
    if let Err(e) = srv.check_workers_gone(T) {
        found(false, e);
    }
    end_group(in_group);
    Ok(problems)
}

/// Ends the `sleep` of `stray_record`'s process group (by pid, if still the same).
fn end_group(g: Option<(u32, u64)>) {
    if let Some((p, t)) = g {
        if proc::start_time(p) == Some(t) {
            let _ = proc::signal(p, "KILL");
        }
    }
}

/// Issue 19, item 6: `CLUSTER_UPGRADE_TRIAL` in a fresh start of the demo, pointing at
/// descriptor 3 (a file a wrapper opened for appending, as a shell's `3>>file` does)
/// or at descriptor 9 (not open): each is ignored with a warning naming the failed
/// check, the demo starts and serves, and nothing is written into the file.
pub fn upgrade_trial_stray() -> Outcome {
    let dir = Scratch::new("trial-stray")?;
    dir.deploy_build(1)?;
    let file = dir.0.join("three");
    for n in ["3", "9"] {
        std::fs::write(&file, b"").map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "exec 3>>\"$0\"; exec \"$@\""]);
        cmd.arg(&file).arg(dir.program());
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "2"]);
        cmd.env_remove("CLUSTER_SCHED_POLICY");
        cmd.env("CLUSTER_UPGRADE_TRIAL", n);
        let mut srv = Server::spawn(cmd)?;
        let ready = match srv.expect("ready ", T) {
            Ok(r) => r,
            Err(e) => {
                let status = srv.wait(T)?;
                let written = std::fs::read(&file).unwrap_or_default();
                return Err(format!(
                    "CLUSTER_UPGRADE_TRIAL={n}: the demo did not start ({e}): it ended with \
                     {status}, having written {:?} into descriptor 3",
                    String::from_utf8_lossy(&written)
                ));
            }
        };
        let target = Target::parse(&ready["ready ".len()..])?;
        let warning = srv.seen_or_expect_containing("CLUSTER_UPGRADE_TRIAL=", T)?;
        check(warning.contains("ignored (check"), || warning.clone())?;
        println!("    CLUSTER_UPGRADE_TRIAL={n}: {warning}");
        served(&target).map_err(|e| format!("CLUSTER_UPGRADE_TRIAL={n}: {e}"))?;
        let written = std::fs::read(&file).map_err(|e| e.to_string())?;
        check(written.is_empty(), || {
            format!(
                "CLUSTER_UPGRADE_TRIAL={n}: {:?} written into descriptor 3",
                String::from_utf8_lossy(&written)
            )
        })?;
        let workers = workers_of(&srv);
        srv.signal("TERM")?;
        exited_ok(&mut srv, T)?;
        gone(&workers)?;
    }
    Ok(())
}

/// Issue 19, item 11: the demo serves from a program file; a new build is deployed
/// with mode 0777 (writable by anybody), then as root one that belongs to `nobody`:
/// each `SIGUSR2` is refused with an error naming the path and the reason, no trial
/// runs, the same workers keep serving; the same build at 0755, root's, upgrades.
pub fn upgrade_program_writable() -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("writable")?;
    dir.deploy_build(1)?;
    let (mut srv, target) = start(&dir.program(), "round-robin", &[], &[])?;
    let old = workers_of(&srv);
    let program = dir.program();
    dir.deploy_build(2)?;
    let chmod = |mode| {
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    };
    chmod(0o777)?;
    let mut refusals = vec![("mode 0777", "writable by its group and others")];
    if proc::is_root() {
        refusals.push(("owned by nobody", "neither root nor"));
    } else {
        println!("    not root: the owner case is skipped (only root can give a file away)");
    }
    for (what, reason) in refusals {
        if what == "owned by nobody" {
            chmod(0o755)?;
            let st = std::process::Command::new("chown")
                .args(["nobody"])
                .arg(&program)
                .status()
                .map_err(|e| e.to_string())?;
            check(st.success(), || "chown nobody failed".into())?;
        }
        srv.signal("USR2")?;
        let error = srv
            .expect_containing("upgrade", T)
            .map_err(|e| format!("{what}: {e}"))?;
        check(
            error.contains(reason) && error.contains(&*program.display().to_string()),
            || format!("{what}: {error}"),
        )?;
        println!("    {what}: {error}");
        check(workers_of(&srv) == old, || {
            format!("{what}: the workers changed")
        })?;
        served(&target).map_err(|e| format!("{what}: {e}"))?;
    }
    // Root's (or this user's), 0755: upgrades.
    dir.deploy_build(2)?;
    srv.signal("USR2")?;
    srv.expect_containing("upgrade finished", T)?;
    gone(&old)?;
    all_run(&srv, &dir.program())?;
    let new = workers_of(&srv);
    srv.signal("TERM")?;
    exited_ok(&mut srv, T)?;
    gone(&new)
}

/// Issue 19, item 5 (the size limit): the scenario server (round-robin, 1 worker)
/// listening on 250 Unix sockets whose paths are 100 bytes long (a cluster keeps at
/// most 256 handles), upgraded in place by `SIGUSR2`. Its hand-over record (each
/// handle's key and address, and its socket file) is about 160 KiB: more than one
/// environment string
/// may hold (`MAX_ARG_STRLEN`, 128 KiB), so while the record travelled in the
/// environment the trial's `execve` failed `E2BIG`. In a memfd it crosses: the upgrade
/// finishes, the first and last sockets are served by the new worker, and the server
/// stops clean.
pub fn upgrade_many_unix_listeners() -> Outcome {
    let dir = Scratch::new("many")?;
    let width = 100 - dir.0.as_os_str().len() - 1;
    let paths: Vec<String> = (0..250)
        .map(|i| format!("unix:{}", dir.0.join(format!("{i:0>width$}")).display()))
        .collect();
    let env = [
        ("SC_MODE", "round-robin".to_string()),
        ("SC_WORKERS", "1".into()),
        ("SC_THREADS", "1".into()),
        ("SC_LISTEN", paths.join(",")),
    ];
    let mut srv = Server::spawn(proc::self_command(&env))?;
    srv.expect("ready ", T)?;
    let first = Target::parse(&paths[0])?;
    let last = Target::parse(&paths[249])?;
    let before = crate::util::client::ask(&last, "hi", T)?;
    srv.signal("USR2")?;
    srv.expect_containing("Upgraded", T)
        .map_err(|e| format!("250 long Unix paths: the upgrade did not finish: {e}"))?;
    for t in [&first, &last] {
        let r = crate::util::client::ask(t, "hi", T)?;
        check(r.pid != before.pid, || {
            format!("{t:?} answered by pid {}, the previous worker", r.pid)
        })?;
    }
    println!("    250 Unix listeners of 100-byte paths: upgraded in place, served after");
    crate::util::check::stop_and_check(&mut srv)
}
