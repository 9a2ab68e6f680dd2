//! Processes: start a server under test, read its output lines with deadlines, signal it
//! by pid, and check that nothing it started is left behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running server process whose stdout is read line by line.
pub struct Server {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    /// Worker pid → start time (from `/proc/PID/stat`), as announced on stdout.
    pub workers: BTreeMap<u32, u64>,
    /// Whether the pids in `fork ID PID` lines are this process's to look up (not when
    /// the server runs in a pid namespace of its own: see `pids_in_own_namespace`).
    announced_pids: bool,
}

/// The command that runs this test binary again, as a cluster primary.
pub fn self_command(scenario_env: &[(&str, String)]) -> Command {
    self_command_under(&[], scenario_env)
}

/// Like `self_command`, run by `wrapper` (a program and its arguments up to the
/// command it runs, e.g. `prlimit --nofile=64:256 --`), if not empty.
pub fn self_command_under(wrapper: &[&str], scenario_env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.env("CLUSTER_SCENARIO_SERVER", "1");
    for (k, v) in scenario_env {
        cmd.env(k, v);
    }
    cmd
}

/// The path of a built example. `cargo test` builds the examples next to the test
/// binaries; when only this test was built (`cargo test --test scenarios`), it is built
/// here with the cargo that runs the tests.
pub fn example(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or("no target dir")?;
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .map_err(|e| format!("cargo build --example {name}: {e}"))?;
        if !st.success() {
            return Err(format!("cargo build --example {name} failed"));
        }
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not built", path.display()))
    }
}

impl Server {
    pub fn spawn(cmd: Command) -> Result<Server, String> {
        Server::spawn_with_stdin(cmd, Stdio::null())
    }

    /// Like `spawn`, with `stdin` as the child's descriptor 0 (for instance a listening
    /// socket to adopt as `fd:0`).
    pub fn spawn_with_stdin(mut cmd: Command, stdin: Stdio) -> Result<Server, String> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(stdin);
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // stderr is kept whole for the end, and its lines also reach `line`/`expect`
        // with an "err: " prefix, so a test can wait for what a server reports there.
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let mut r = BufReader::new(&mut stderr);
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                all.push_str(&line);
                let _ = tx_err.send(format!("err: {}", line.trim_end()));
                line.clear();
            }
            all
        });
        Ok(Server {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr: Some(stderr),
            workers: BTreeMap::new(),
            announced_pids: true,
        })
    }

    /// The server runs in a pid namespace of its own: the pids it announces are not
    /// this process's pids (they may name unrelated processes here), so they are not
    /// recorded in `workers`. The scenario fills `workers` itself, with host pids.
    pub fn pids_in_own_namespace(&mut self) {
        self.announced_pids = false;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn note(&mut self, line: &str) {
        // "fork ID PID" lines announce workers: remember their start times.
        let mut parts = line.split_whitespace();
        if self.announced_pids && parts.next() == Some("fork") {
            if let Some(pid) = parts.nth(1).and_then(|p| p.parse::<u32>().ok()) {
                if let Some(start) = start_time(pid) {
                    self.workers.insert(pid, start);
                }
            }
        }
    }

    /// The next stdout line, or an error after `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Result<String, String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.note(&l);
                self.seen.push(l.clone());
                Ok(l)
            }
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "no output line within {timeout:?}; seen: {:?}",
                self.seen
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("stdout closed; seen: {:?}", self.seen))
            }
        }
    }

    /// Reads lines (stdout, and stderr as `err: …`) until one matches; returns it.
    /// `what` describes the match for the error.
    pub fn expect_where(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no line {what} within {timeout:?}; seen: {:?}",
                    self.seen
                ));
            }
            let l = self.line(left)?;
            if matches(&l) {
                return Ok(l);
            }
        }
    }

    /// Like `expect_where`, but a line already seen counts too (for a line that names
    /// one event, such as `exit 3 `, which may have come before the line last waited
    /// for).
    fn seen_or_expect_where(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        match self.seen.iter().find(|l| matches(l)) {
            Some(l) => Ok(l.clone()),
            None => self.expect_where(what, timeout, matches),
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let what = format!("starting with {prefix:?}");
        self.expect_where(&what, timeout, |l| l.starts_with(prefix))
    }

    /// Reads lines until one contains `needle`.
    pub fn expect_containing(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let what = format!("containing {needle:?}");
        self.expect_where(&what, timeout, |l| l.contains(needle))
    }

    /// `expect`, or a line already seen.
    pub fn seen_or_expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let what = format!("starting with {prefix:?}");
        self.seen_or_expect_where(&what, timeout, |l| l.starts_with(prefix))
    }

    /// `expect_containing`, or a line already seen.
    pub fn seen_or_expect_containing(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let what = format!("containing {needle:?}");
        self.seen_or_expect_where(&what, timeout, |l| l.contains(needle))
    }

    /// Every remaining stdout line until EOF (bounded).
    pub fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.note(&l);
                    self.seen.push(l.clone());
                    out.push(l);
                }
                Err(_) => return out,
            }
        }
    }

    pub fn signal(&self, sig: &str) -> Result<(), String> {
        signal(self.pid(), sig)
    }

    /// Waits for the process to exit (bounded); kills it by pid when the deadline passes.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let mut exited = None;
        let child = &mut self.child;
        let _ = wait_until("the server to exit", timeout, || {
            exited = child
                .try_wait()
                .map_err(|e| format!("wait: {e}"))
                .transpose();
            exited.is_some()
        });
        exited.unwrap_or_else(|| {
            let _ = self.child.kill();
            let _ = self.child.wait();
            Err(format!(
                "server pid {} did not exit within {timeout:?}; killed",
                self.pid()
            ))
        })
    }

    /// The whole stderr (after the process exited).
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Every worker announced on stdout is gone (same pid and start time no longer
    /// exists), checked for up to `timeout`.
    pub fn check_workers_gone(&self, timeout: Duration) -> Result<(), String> {
        let alive = || -> Vec<u32> {
            self.workers
                .iter()
                .filter(|(pid, start)| start_time(**pid) == Some(**start) && !is_zombie(**pid))
                .map(|(pid, _)| *pid)
                .collect()
        };
        wait_until("the workers to exit", timeout, || alive().is_empty())
            .map_err(|_| format!("worker processes left behind: {:?}", alive()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed scenario must not leave its server running: kill by pid, then the
        // workers it announced (they die with it anyway via PR_SET_PDEATHSIG).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (pid, start) in &self.workers {
            if start_time(*pid) == Some(*start) {
                let _ = signal(*pid, "KILL");
            }
        }
    }
}

/// Sends a signal by pid with kill(1) (test code stays free of `unsafe`).
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    signal_all(&[pid], sig)
}

/// Sends a signal to every pid in one kill(1) call, back to back, as a service
/// manager's control-group kill does (the first is the primary). A worker that exited
/// in between (the primary, signalled first, may already have let an idle worker go)
/// needs no signal: kill(1) then fails for it, which is not an error here.
pub fn signal_all(pids: &[u32], sig: &str) -> Result<(), String> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    let gone = |pid: u32| !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    let exited_worker = pids.iter().skip(1).any(|p| gone(*p));
    if st.success() || (exited_worker && pids.first().is_some_and(|p| !gone(*p))) {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pids:?} failed"))
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The process's start time in clock ticks (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Waits (bounded) until every thread of `pid` is stopped (state `T`): `kill -STOP`
/// returns before the threads have actually stopped.
pub fn wait_stopped(pid: u32, timeout: Duration) -> Result<(), String> {
    // The state letter of each thread (empty if the process is gone).
    let states = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .filter_map(|s| {
                s.rfind(')')
                    .and_then(|i| s.get(i + 2..i + 3))
                    .map(str::to_string)
            })
            .collect()
    };
    wait_until("every thread to stop", timeout, || {
        let st = states();
        !st.is_empty() && st.iter().all(|s| s == "T" || s == "t")
    })
    .map_err(|_| format!("pid {pid} did not stop: thread states {:?}", states()))
}

/// Whether the process is a zombie.
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) == Some("Z"))
}

/// The pids whose parent is `parent`, with their state letter.
pub fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                out.push((pid, f[0].clone()));
            }
        }
    }
    out
}

/// The descriptors open in this process.
pub fn open_fds() -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    // The directory handle itself was listed and is closed now.
    out.retain(|n| std::fs::symlink_metadata(format!("/proc/self/fd/{n}")).is_ok());
    out.sort_unstable();
    out
}

/// Whether descriptor `fd` of this process has FD_CLOEXEC (from /proc/self/fdinfo).
pub fn is_cloexec(fd: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & 0o2000000 != 0)
}

/// The pid of worker `id`, from the server's `fork ID PID` lines.
pub fn worker_pid(seen: &[String], id: u32) -> Result<u32, String> {
    seen.iter()
        .find_map(|l| l.strip_prefix(&format!("fork {id} ")))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("no fork line for worker {id}"))
}

/// The real uid and gid of a process (from /proc/PID/status).
pub fn ids_of(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Waits (bounded) until `cond` holds, checking every few milliseconds: the one place
/// the tests pause, and always for a condition, never for a fixed time.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// CPU time (utime + stime, all threads) of a process so far, in clock ticks (10 ms).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Checks that the process uses (almost) no CPU while nothing happens: at most 0.2 s
/// over a 1 s idle window. A busy loop uses the whole second.
pub fn check_idle(pid: u32, what: &str) -> Result<(), String> {
    let before = cpu_ticks(pid).ok_or("no /proc stat")?;
    // The measurement window itself (CPU used while nothing happens), not a wait for
    // anything to happen.
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid).ok_or("no /proc stat")? - before;
    if used > 20 {
        return Err(format!(
            "{what}: the idle process used {used} ticks of CPU in 1 s (a busy loop?)"
        ));
    }
    Ok(())
}

/// The descriptor numbers open in process `pid` (from /proc/PID/fd).
pub fn fds_of(pid: u32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The lowest descriptor number free in `pid`: with `RLIMIT_NOFILE` set to it, the
/// process can open nothing more (a new descriptor takes the lowest free number).
pub fn lowest_free_fd(pid: u32) -> i32 {
    let fds = fds_of(pid);
    (0..).find(|n| !fds.contains(n)).unwrap_or(0)
}

/// prlimit(1) for process `pid`, run as the owner of `pid` when that is not us: without
/// `CAP_SYS_RESOURCE` (which a container's root may lack) only a process of the same
/// user may change another's limits.
fn prlimit_for(pid: u32) -> Command {
    match ids_of(pid) {
        Some((uid, gid)) if is_root() && uid != 0 => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--", "prlimit"]);
            c
        }
        _ => Command::new("prlimit"),
    }
}

/// Sets the soft limit of `resource` (`nofile`, `nproc`) of a running process, with
/// prlimit(1); the hard limit stays.
pub fn set_soft_limit(pid: u32, resource: &str, soft: &str) -> Result<(), String> {
    let st = prlimit_for(pid)
        .arg(format!("--pid={pid}"))
        .arg(format!("--{resource}={soft}:"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("prlimit (util-linux): {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("prlimit --pid={pid} --{resource}={soft}: failed"))
    }
}

/// The soft limit of `resource` (`nofile`, `nproc`) of a running process.
pub fn soft_limit(pid: u32, resource: &str) -> Result<String, String> {
    let out = prlimit_for(pid)
        .arg(format!("--pid={pid}"))
        .arg(format!("--{resource}"))
        .args(["--noheadings", "--output=SOFT"])
        .output()
        .map_err(|e| format!("prlimit (util-linux): {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !v.is_empty() {
        Ok(v)
    } else {
        Err(format!(
            "prlimit --pid={pid} --{resource}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (real uid 0).
pub fn is_root() -> bool {
    ids_of(std::process::id()).is_some_and(|(uid, _)| uid == 0)
}

/// Each open descriptor of `pid` and what it refers to (the `/proc/PID/fd` link:
/// a path, `pipe:[…]`, `socket:[…]`).
pub fn fd_targets(pid: u32) -> Vec<(i32, String)> {
    fds_of(pid)
        .into_iter()
        .filter_map(|n| {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{n}")).ok()?;
            Some((n, link.display().to_string()))
        })
        .collect()
}

/// The file status flags of descriptor `fd` of `pid` (octal `flags:` in fdinfo).
pub fn fd_flags(pid: u32, fd: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// Where a process stands towards terminals: its process group, session and
/// controlling terminal (fields 5, 6 and 7 of /proc/PID/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobIds {
    pub group: u32,
    pub session: u32,
    /// `tty_nr`: 0 for none.
    pub tty: u64,
}

/// The process group, session and controlling terminal of a process.
pub fn job_ids(pid: u32) -> Option<JobIds> {
    let f = stat_fields(pid)?;
    Some(JobIds {
        group: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        tty: f.get(4)?.parse().ok()?,
    })
}

/// The parent pid of a process (field 4 of /proc/PID/stat).
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// A field of /proc/PID/status (`Uid`, `CapEff`, `NoNewPrivs`, …), without its name.
pub fn status_field(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}
