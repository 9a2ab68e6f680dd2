//! Binary upgrade (`SIGUSR2`, [`Cluster::upgrade`]): the primary runs the program file
//! now at the path it was started from, in its own process, and the new program's
//! workers take over the very same listening sockets. nginx, unicorn and HAProxy
//! upgrade on `SIGUSR2`; Node's cluster has no counterpart (a new build means a
//! restart, and clients are refused meanwhile).
//!
//! # The shape: in place, after a trial
//!
//! The primary `execve`s the new program itself, so it keeps its pid: a service
//! manager's main pid, a container's pid 1 and a pid file stay right, and nothing has
//! to hand a `MAINPID` over. (nginx instead starts the new primary as a child, which
//! must then outlive the old one: impossible for pid 1 of a container, whose exit ends
//! the container.) The cost of in place is that once `execve` has succeeded there is no
//! old primary to fall back to. So the new program is first run as a *trial*: a child
//! `execve`s the file at the start path with `CLUSTER_UPGRADE_TRIAL=N` set; the program
//! runs as it would, up to [`Builder::start`](crate::Builder::start), which checks its
//! settings, writes `ok MODE` on descriptor `N` and exits without starting anything. A
//! program that cannot run, crashes or exits before `start`, refuses its settings, or
//! does not get there within the upgrade timeout, fails the trial: the primary keeps
//! serving as it was, says why ([`Event::UpgradeFailed`], and on stderr), and a later
//! `SIGUSR2` can try again. Only after a passed trial does the primary `execve` in
//! place. (Code the program runs before `Builder::start` therefore runs twice.)
//!
//! # What crosses `execve`
//!
//! Every listening socket (and, in round-robin, the connections accepted and not yet
//! handed out), each mapped to its listen key, and the primary's end of every worker's
//! control channel: their `FD_CLOEXEC` is cleared just before `execve`, and the
//! hand-over record (`handover.rs`) in `CLUSTER_UPGRADE` says which descriptor is
//! what. The service manager's variables the primary took out of its environment at
//! start (`NOTIFY_SOCKET`, the watchdog's) are given back. The signals the primary
//! handles are blocked across `execve` (a `SIGHUP` to a program that has not yet
//! installed its handlers would end it); the new primary unblocks them once its own
//! are in place, and what came meanwhile is delivered then.
//!
//! # In the new program
//!
//! `Builder::start` reads the record and claims its descriptors. A worker that asks to
//! listen on a key the previous program served gets that very socket, with its
//! backlog (and reuse-port, each worker's socket of the group, as a reload's
//! replacement does): no rebind, no `EADDRINUSE`, port 0 stays the same port. The
//! previous program's workers become slots of the new primary, already asked to go
//! (they do not count towards the worker count), so it forks a full set of new ones.
//! Until those listen, the old ones keep serving (in shared and reuse-port mode they
//! accept by themselves; in round-robin they serve what they hold, and new clients wait
//! in the backlog); once every new worker listens, the old ones are told to disconnect
//! and finish what they hold, within the shutdown timeout. When the last is gone,
//! [`Event::Upgraded`]; keys nobody asked for are closed then. No code of the previous
//! program keeps running after that.
//!
//! [`Cluster::upgrade`]: crate::Cluster::upgrade
//! [`Event::UpgradeFailed`]: crate::Event::UpgradeFailed
//! [`Event::Upgraded`]: crate::Event::Upgraded

mod handover;

use std::ffi::{CString, OsStr, OsString};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::handle::Handle;
use super::slot::{Phase, Slot};
use super::{Cluster, State, HANDLED_SIGNALS};
use crate::addr::ListenAddr;
use crate::error::Error;
use crate::event::Event;
use crate::ipc::channel::Channel;
use crate::mode::Mode;
use crate::socket_file::SocketFile;
use crate::sys::fd;
use crate::sys::process::{self, Fork, Pid, WaitStatus};
use crate::sys::signal;
use crate::worker_id::WorkerId;

pub(super) use handover::{Handover, Kind, PassedHandle};
use handover::{PassedFile, PassedWorker};

/// The environment variable that makes `Builder::start` a trial (see the module docs).
pub(crate) const TRIAL_VAR: &str = "CLUSTER_UPGRADE_TRIAL";

/// How long the new program has, by default, to reach `Builder::start` in its trial.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// The service manager's variables the primary takes out of its environment at start
/// and gives back to the next program.
const SERVICE_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The program to run at an upgrade, resolved once, at start.
#[derive(Debug)]
pub(super) struct Program {
    path: PathBuf,
    c_path: CString,
    argv: Vec<CString>,
}

impl Program {
    /// The absolute path `argv[0]` named when the process started (searched in `PATH`
    /// when it has no `/`), and the arguments. Not `/proc/self/exe`: once a deploy has
    /// replaced the file, that names the old, deleted one.
    fn resolve() -> Result<Program, String> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let arg0 = args.first().ok_or("the process has no argv[0]")?;
        let path = find_program(Path::new(arg0))?;
        Program::at(path, &args)
    }

    fn at(path: PathBuf, args: &[OsString]) -> Result<Program, String> {
        let c_path = fd::c_path(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| "an argument holds a NUL byte".to_string())?;
        Ok(Program { path, c_path, argv })
    }
}

/// `arg0` made absolute: joined to the working directory when it holds a `/`, else the
/// first executable file of that name in `PATH`.
fn find_program(arg0: &Path) -> Result<PathBuf, String> {
    let cwd = || std::env::current_dir().map_err(|e| format!("working directory: {e}"));
    if arg0.as_os_str().as_bytes().contains(&b'/') {
        // (`components` drops the `.` of `./prog`.)
        return Ok(if arg0.is_absolute() {
            arg0.to_path_buf()
        } else {
            cwd()?.join(arg0).components().collect()
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(arg0);
        if is_executable(&candidate) {
            return Ok(if candidate.is_absolute() {
                candidate
            } else {
                cwd()?.join(candidate)
            });
        }
    }
    Err(format!("{} is not in PATH", arg0.display()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A trial run of the new program (see the module docs).
#[derive(Debug)]
struct Trial {
    pid: Pid,
    /// The read end of the pipe the trial reports on.
    output: OwnedFd,
    got: Vec<u8>,
    deadline: Instant,
}

/// The previous program's workers, while they finish.
#[derive(Debug)]
struct Adopting {
    since: Instant,
    previous: usize,
    /// Every new worker listened and the previous ones were told to go.
    retired: bool,
    /// The new workers were reported slow (once).
    reported_slow: bool,
}

/// The primary's upgrade state.
#[derive(Debug)]
pub(super) struct Upgrades {
    program: Result<Program, String>,
    timeout: Duration,
    /// The service manager's variables, as they were at start.
    service_env: Vec<(OsString, OsString)>,
    trial: Option<Trial>,
    /// Handles the previous program passed that no worker has asked for yet.
    inherited: Vec<PassedHandle<OwnedFd>>,
    adopting: Option<Adopting>,
}

impl Upgrades {
    /// At `Builder::start`, before the notifier takes the service manager's variables
    /// out of the environment: the program to run at an upgrade, and the hand-over
    /// record if this program was started by one (taken out of the environment).
    ///
    /// # Errors
    ///
    /// The record is unusable: an upgrade's previous program left sockets and workers
    /// this one cannot name, so it does not start.
    pub(super) fn at_start(
        timeout: Duration,
    ) -> Result<(Upgrades, Option<Handover<OwnedFd>>), Error> {
        let service_env = SERVICE_VARS
            .iter()
            .filter_map(|&k| Some((OsString::from(k), std::env::var_os(k)?)))
            .collect();
        let record = std::env::var_os(handover::VAR);
        std::env::remove_var(handover::VAR);
        let handover = match record {
            Some(text) => Some(Handover::decode(&text.to_string_lossy()).map_err(|e| {
                Error::Config(format!(
                    "{}: the hand-over record is unusable: {e}",
                    handover::VAR
                ))
            })?),
            None => None,
        };
        let program = match &handover {
            Some(h) => {
                let args: Vec<OsString> = std::env::args_os().collect();
                Program::at(h.program.clone(), &args)
            }
            None => Program::resolve(),
        };
        let upgrades = Upgrades {
            program,
            timeout,
            service_env,
            trial: None,
            inherited: Vec::new(),
            adopting: None,
        };
        Ok((upgrades, handover))
    }
}

/// In `Builder::start`, once the settings are checked: if this process is an upgrade's
/// trial, reports `ok MODE` to the primary that started it and exits, starting nothing.
pub(super) fn end_trial_here(mode: Mode) {
    let Some(n) = std::env::var_os(TRIAL_VAR) else {
        return;
    };
    let code = match n.to_str().and_then(|s| s.parse::<i32>().ok()) {
        Some(n) => match fd::take_inherited(n) {
            Ok(out) => {
                let mut out = std::fs::File::from(out);
                i32::from(writeln!(out, "ok {mode}").is_err())
            }
            Err(_) => 1,
        },
        None => 1,
    };
    let _ = std::io::stdout().flush();
    process::exit_now(code);
}

/// Runs in the forked trial child: the new program, told it is a trial.
fn run_trial(
    program: &Program,
    env: &[CString],
    report: BorrowedFd<'_>,
    mask: &signal::SigMask,
) -> ! {
    let _ = signal::reset_in_child(HANDLED_SIGNALS, mask);
    let _ = process::own_process_group(0);
    let _ = fd::set_cloexec(report, false);
    let e = process::execve(&program.c_path, &program.argv, env);
    let mut out =
        std::fs::File::from(fd::dup_cloexec(report).unwrap_or_else(|_| process::exit_now(127)));
    let _ = writeln!(out, "exec: {e}");
    process::exit_now(127)
}

/// The environment for the next program: this one's, without the upgrade's variables,
/// with the service manager's given back, and `extra`.
fn next_env(service_env: &[(OsString, OsString)], extra: (&str, &OsStr)) -> Vec<CString> {
    let skip =
        |k: &OsStr| k == handover::VAR || k == TRIAL_VAR || service_env.iter().any(|(s, _)| s == k);
    std::env::vars_os()
        .filter(|(k, _)| !skip(k))
        .chain(service_env.iter().cloned())
        .chain(std::iter::once((
            OsString::from(extra.0),
            extra.1.to_owned(),
        )))
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect()
}

impl Cluster {
    /// `SIGUSR2` / [`Cluster::upgrade`]: starts the trial of the program at the start
    /// path.
    pub(super) fn begin_upgrade(&mut self) -> Result<(), Error> {
        let busy = if self.state != State::Running {
            Some("the cluster is stopping".to_string())
        } else if self.upgrades.trial.is_some() {
            Some("an upgrade is already being tried".to_string())
        } else if let Some(a) = &self.upgrades.adopting {
            Some(format!(
                "the last upgrade is still finishing ({} worker(s) of the previous program \
                 running)",
                a.previous
            ))
        } else if self.reload.is_some() {
            Some("a reload is running".to_string())
        } else {
            None
        };
        if let Some(why) = busy {
            return Err(Error::Upgrade(why));
        }
        let program = match &self.upgrades.program {
            Ok(p) => p,
            Err(e) => return Err(Error::Upgrade(format!("no program to run: {e}"))),
        };
        let (output, report) =
            fd::pipe_nonblocking().map_err(|e| Error::io("create the trial's pipe", e))?;
        let env = next_env(
            &self.upgrades.service_env,
            (TRIAL_VAR, OsStr::new(&report.as_raw_fd().to_string())),
        );
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mask = signal::block_all().map_err(|e| Error::io("block signals to fork", e))?;
        let forked = process::fork();
        let pid = match forked {
            Ok(Fork::Child) => run_trial(program, &env, report.as_fd(), &mask),
            Ok(Fork::Parent(pid)) => {
                let _ = signal::set_mask(&mask);
                pid
            }
            Err(e) => {
                let _ = signal::set_mask(&mask);
                return Err(Error::io("fork the upgrade's trial", e));
            }
        };
        // Also here: whichever of the two runs first, the group exists before a kill.
        let _ = process::own_process_group(pid);
        drop(report);
        let path = program.path.clone();
        self.upgrades.trial = Some(Trial {
            pid,
            output,
            got: Vec::new(),
            deadline: crate::deadline::after(Instant::now(), self.upgrades.timeout),
        });
        if let Some(n) = &mut self.notifier {
            n.reloading();
        }
        self.events
            .push_back(Event::UpgradeStarted { program: path });
        Ok(())
    }

    /// The trial's pid while one runs (it is not an orphan to reap).
    pub(super) fn trial_pid(&self) -> Option<Pid> {
        self.upgrades.trial.as_ref().map(|t| t.pid)
    }

    /// The trial's pipe, for `poll`.
    pub(super) fn trial_fd(&self) -> Option<BorrowedFd<'_>> {
        self.upgrades.trial.as_ref().map(|t| t.output.as_fd())
    }

    /// The next instant the upgrade has something to do at.
    pub(super) fn upgrade_timer(&self) -> Option<Instant> {
        let trial = self.upgrades.trial.as_ref().map(|t| t.deadline);
        let slow = self
            .upgrades
            .adopting
            .as_ref()
            .filter(|a| !a.retired && !a.reported_slow)
            .map(|a| crate::deadline::after(a.since, self.upgrades.timeout));
        trial.into_iter().chain(slow).min()
    }

    /// The trial's pipe is readable: its report, or its end.
    pub(super) fn on_trial_output(&mut self) {
        let Some(t) = &mut self.upgrades.trial else {
            return;
        };
        let mut buf = [0u8; 256];
        let ended = loop {
            match fd::read(t.output.as_fd(), &mut buf) {
                Ok(0) => break true,
                Ok(n) if t.got.len() < 4096 => t.got.extend_from_slice(&buf[..n]),
                Ok(_) => break true,
                Err(_) => break false, // EAGAIN: more later
            }
        };
        if !t.got.contains(&b'\n') && !ended {
            return;
        }
        let t = self.upgrades.trial.take().expect("a trial");
        let status = end_trial(t.pid);
        let got = String::from_utf8_lossy(&t.got);
        let line = got.lines().next().unwrap_or("");
        let outcome = match line.strip_prefix("ok ").map(str::parse::<Mode>) {
            Some(Ok(mode)) => self.compatible(mode),
            Some(Err(_)) => Err(format!("the new program reported {line:?}")),
            None => Err(match line.strip_prefix("exec: ") {
                Some(e) => format!("cannot run {}: {e}", self.program_path()),
                None => format!(
                    "the new program {} ended before Builder::start ({})",
                    self.program_path(),
                    describe(status)
                ),
            }),
        };
        match outcome {
            Ok(()) => self.exec_next(),
            Err(why) => self.upgrade_failed(why),
        }
    }

    fn program_path(&self) -> String {
        match &self.upgrades.program {
            Ok(p) => p.path.display().to_string(),
            Err(_) => "(none)".into(),
        }
    }

    /// Whether this cluster's sockets can go to a program that runs `mode`: round-robin
    /// and shared use one socket per address, reuse-port one per worker.
    fn compatible(&self, mode: Mode) -> Result<(), String> {
        if (mode == Mode::ReusePort) == (self.mode == Mode::ReusePort) {
            Ok(())
        } else {
            Err(format!(
                "the new program runs mode {mode}, this one {}: a change to or from \
                 reuse-port needs a restart",
                self.mode
            ))
        }
    }

    /// Timers: the trial's deadline, the new workers' slowness, the end of an upgrade.
    pub(super) fn upgrade_tick(&mut self, now: Instant) {
        if let Some(t) = &self.upgrades.trial {
            if t.deadline <= now {
                let t = self.upgrades.trial.take().expect("a trial");
                end_trial(t.pid);
                let why = format!(
                    "the new program {} did not reach Builder::start within {:?}",
                    self.program_path(),
                    self.upgrades.timeout
                );
                self.upgrade_failed(why);
            }
        }
        let Some(a) = &mut self.upgrades.adopting else {
            return;
        };
        let left = self.workers.values().filter(|s| s.previous_program).count();
        if !a.retired
            && !a.reported_slow
            && now >= crate::deadline::after(a.since, self.upgrades.timeout)
        {
            a.reported_slow = true;
            let why = format!(
                "the new program's workers do not all listen after {:?}; the previous \
                 program's {left} worker(s) keep serving",
                self.upgrades.timeout
            );
            crate::log::report!("upgrade: {why}");
            self.events.push_back(Event::UpgradeFailed {
                error: Error::Upgrade(why),
            });
        }
        if a.retired && left == 0 {
            let previous = a.previous;
            self.upgrades.adopting = None;
            self.release_inherited();
            self.events.push_back(Event::Upgraded {
                previous_workers: previous,
            });
        }
    }

    fn upgrade_failed(&mut self, why: String) {
        crate::log::report!("upgrade failed: {why}; this program keeps serving");
        if let Some(n) = &mut self.notifier {
            n.reloading_done();
        }
        self.notify_if_ready();
        self.events.push_back(Event::UpgradeFailed {
            error: Error::Upgrade(why),
        });
    }

    /// The trial passed: hands everything over and `execve`s the new program in
    /// place. Returns only if `execve` failed, with everything as it was.
    fn exec_next(&mut self) {
        // Round-robin connections accepted and not handed out cross with the sockets.
        let unsent: Vec<(u32, Vec<OwnedFd>)> = self
            .handles
            .iter_mut()
            .map(|h| (h.id, h.handle.take_unsent()))
            .collect();
        let result = self.hand_over_and_exec(&unsent);
        for (id, conns) in unsent {
            if let Some(i) = self.handle_index(id) {
                self.handles[i].handle.adopt_unsent(conns);
            }
        }
        if let Err(e) = result {
            self.upgrade_failed(e);
        }
    }

    /// Builds the record, lets its descriptors cross, and `execve`s; undoes all of it
    /// if `execve` fails.
    fn hand_over_and_exec(&self, unsent: &[(u32, Vec<OwnedFd>)]) -> Result<(), String> {
        let program = self.upgrades.program.as_ref().map_err(Clone::clone)?;
        let mut passed: Vec<BorrowedFd<'_>> = Vec::new();
        let mut record = Handover {
            program: program.path.clone(),
            next_worker: self.next_id,
            next_handle: self.next_handle,
            handles: Vec::new(),
            workers: Vec::new(),
        };
        for h in &self.handles {
            let Some((kind, fds)) = h.handle.passed_fds() else {
                continue; // closed
            };
            let conns = unsent
                .iter()
                .find(|(id, _)| *id == h.id)
                .map(|(_, c)| c.as_slice())
                .unwrap_or_default();
            let all: Vec<BorrowedFd<'_>> = fds
                .into_iter()
                .chain(conns.iter().map(|c| c.as_fd()))
                .collect();
            let file = h.socket_file.as_ref().map(|f| {
                let (dir, name, id) = f.parts();
                passed.push(dir);
                PassedFile {
                    dir: dir.as_raw_fd(),
                    name: name.to_owned(),
                    id,
                }
            });
            record.handles.push(PassedHandle {
                key: h.key.clone(),
                local: h.local().clone(),
                kind,
                fds: all.iter().map(|f| f.as_raw_fd()).collect(),
                file,
            });
            passed.extend(all);
        }
        for s in self.workers.values().filter(|s| !s.eof) {
            record.workers.push(PassedWorker {
                id: s.id.0,
                pid: s.pid,
                control: s.control.as_fd().as_raw_fd(),
            });
            passed.push(s.control.as_fd());
        }
        let text = record.encode();
        let env = next_env(
            &self.upgrades.service_env,
            (handover::VAR, OsStr::new(&text)),
        );
        crate::log::report!("upgrade: running {}", program.path.display());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let crossing = passed.iter().try_for_each(|&f| fd::set_cloexec(f, false));
        let blocked = signal::set_blocked(HANDLED_SIGNALS, true);
        let error = match (crossing, blocked) {
            (Ok(()), Ok(())) => process::execve(&program.c_path, &program.argv, &env),
            (Err(e), _) | (_, Err(e)) => e,
        };
        // Still here: nothing crossed.
        let _ = signal::set_blocked(HANDLED_SIGNALS, false);
        for f in passed {
            let _ = fd::set_cloexec(f, true);
        }
        Err(format!("execve {}: {error}", program.path.display()))
    }

    /// In `Builder::start` of the program an upgrade started: takes over the previous
    /// program's workers and sockets (see the module docs).
    pub(super) fn adopt_previous(&mut self, h: Handover<OwnedFd>) {
        let now = Instant::now();
        let previous = h.workers.len();
        for w in h.workers {
            let id = WorkerId(w.id);
            let mut slot = Slot::new(id, w.pid, Channel::from_fd(w.control));
            slot.phase = Phase::Online;
            slot.said_online = true;
            slot.requested = true;
            slot.previous_program = true;
            self.workers.insert(id, slot);
        }
        self.next_id = self.next_id.max(h.next_worker);
        self.next_handle = self.next_handle.max(h.next_handle);
        self.upgrades.inherited = h.handles;
        self.upgrades.adopting = Some(Adopting {
            since: now,
            previous,
            retired: false,
            reported_slow: false,
        });
        // Some may have finished before this program could reap them.
        self.reap_due = true;
        crate::log::report!(
            "upgrade: {} running, taking over {previous} worker(s) and {} listener(s)",
            self.program_path(),
            self.upgrades.inherited.len()
        );
    }

    /// The socket the previous program served `key` on, if it passed one: the handle
    /// to serve it with in this program, and its socket file.
    pub(super) fn claim_inherited(
        &mut self,
        key: &ListenAddr,
        datagram: bool,
        mode: Mode,
        setup: super::handle::Setup<'_>,
    ) -> Option<std::io::Result<(Handle, Option<SocketFile>)>> {
        let i = self
            .upgrades
            .inherited
            .iter()
            .position(|p| p.key == *key && p.kind.is_datagram() == datagram)?;
        let p = self.upgrades.inherited.swap_remove(i);
        let file = p.file.map(|f| SocketFile::from_parts(f.dir, f.name, f.id));
        let adopted = matches!(key, ListenAddr::Fd(_) | ListenAddr::Systemd(_));
        Some(Handle::from_passed(mode, adopted, p.kind, p.local, p.fds, setup).map(|h| (h, file)))
    }

    /// Every new worker listens: the previous program's workers are told to finish.
    pub(super) fn retire_previous(&mut self) {
        let Some(a) = &mut self.upgrades.adopting else {
            return;
        };
        if a.retired {
            return;
        }
        a.retired = true;
        let deadline = crate::deadline::after(Instant::now(), self.config.shutdown_timeout);
        let previous: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|s| s.previous_program)
            .map(|s| s.id)
            .collect();
        for id in previous {
            self.disconnect_until(id, deadline);
        }
    }

    /// Closes the sockets the previous program passed that this one never asked for,
    /// and removes their socket files.
    pub(super) fn release_inherited(&mut self) {
        for p in self.upgrades.inherited.drain(..) {
            crate::log::report!("upgrade: {} is not served any more: closed", p.key);
            if let Some(f) = p.file {
                SocketFile::from_parts(f.dir, f.name, f.id).remove();
            }
        }
    }
}

/// Ends a trial (it may still run: a program that closed its report and went on) and
/// reaps it; how it ended.
fn end_trial(pid: Pid) -> Option<WaitStatus> {
    // Exited already, or the group's leader: SIGKILL to both is harmless.
    let _ = process::kill_group(pid, libc::SIGKILL);
    let _ = process::kill(pid, libc::SIGKILL);
    process::wait(pid).ok()
}

fn describe(status: Option<WaitStatus>) -> String {
    match status {
        Some(WaitStatus::Exited(c)) => format!("exited with status {c}"),
        Some(WaitStatus::Signaled(s)) => format!("killed by signal {s}"),
        None => "its status is unknown".into(),
    }
}
