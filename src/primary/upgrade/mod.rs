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
//! hand-over record (`handover.rs`) says which descriptor is what. The record crosses
//! in a sealed memfd (so does nothing else); `CLUSTER_UPGRADE` names its descriptor
//! number, and the new program believes it only after the checks of `vouch.rs`
//! (written by this very process: see `handover.rs` for why). The service manager's variables the primary took out of its environment at
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
//! # Known windows
//!
//! - Between `execve` and the new program's `Builder::start`, the passed descriptors
//!   are inheritable (`FD_CLOEXEC` is set again when the record is read): a child the
//!   new program starts before `Builder::start` inherits them, and keeps the ports
//!   bound for as long as it lives. Start the cluster before starting other programs.
//! - A record the new program refuses after a real `execve` (the program file replaced
//!   again in between and `argv[0]` resolving elsewhere, or a bug) leaves it starting
//!   fresh beside the passed sockets, still open and unclaimed: its binds then fail
//!   `EADDRINUSE`, and the previous workers keep serving on what they hold. Refusing
//!   is still the safe side: believing a record nobody can vouch for is what let a
//!   stray one kill, close and run what it named.
//! - The program file is opened again at `execve`: a deploy that replaces it between
//!   the trial and the `execve` runs a program that was not tried. Who may write it is
//!   checked before the trial and again just before `execve` (`program.rs`, OpenSSH's
//!   `StrictModes`), not atomically with it.
//!
//! # Files
//!
//! `program.rs` (what runs next, and with which environment), `trial.rs` (the trial),
//! this file (the state, the timers, the hand-over and `execve`), `handover.rs` (the
//! record that crosses `execve`), `vouch.rs` (whether to believe it), `adopt.rs` (the
//! new program's side).
//!
//! [`Cluster::upgrade`]: crate::Cluster::upgrade
//! [`Event::UpgradeFailed`]: crate::Event::UpgradeFailed
//! [`Event::Upgraded`]: crate::Event::Upgraded

mod adopt;
pub(super) mod handover;
mod program;
mod trial;
pub(crate) mod vouch;

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{Cluster, HANDLED_SIGNALS};
use crate::error::Error;
use crate::event::Event;
use crate::sys::fd;
use crate::sys::process;
use crate::sys::signal;

use adopt::Adopting;
pub(super) use handover::{Handover, PassedHandle};
use handover::{PassedFile, PassedWorker};
use program::{next_env, Program};
pub(super) use trial::end_trial_here;
use trial::Trial;

/// How long the new program has, by default, to reach `Builder::start` in its trial.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// The service manager's variables the primary takes out of its environment at start
/// and gives back to the next program.
const SERVICE_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

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
    /// record if this program was started by an upgrade of this process (the variable
    /// is taken out of the environment either way).
    ///
    /// A record that fails a check of `vouch.rs` is refused whole, before any
    /// descriptor it names is claimed or closed: a warning names the check, and the
    /// program starts fresh.
    pub(super) fn at_start(timeout: Duration) -> (Upgrades, Option<Handover<OwnedFd>>) {
        let service_env = SERVICE_VARS
            .iter()
            .filter_map(|&k| Some((OsString::from(k), std::env::var_os(k)?)))
            .collect();
        let value = std::env::var_os(handover::VAR);
        std::env::remove_var(handover::VAR);
        let resolved = Program::resolve();
        let handover = value.and_then(|v| {
            let v = v.to_string_lossy();
            let path = resolved.as_ref().ok().map(|p| p.path.as_path());
            match believe(&v, path) {
                Ok(h) => Some(h),
                Err(r) => {
                    crate::log::report!(
                        "{}={} refused ({r}); nothing it names was touched; starting fresh",
                        handover::VAR,
                        vouch::shown(&v)
                    );
                    None
                }
            }
        });
        let program = match &handover {
            Some(h) => {
                let args: Vec<OsString> = std::env::args_os().collect();
                Program::at(h.program.clone(), &args)
            }
            None => resolved,
        };
        let upgrades = Upgrades {
            program,
            timeout,
            service_env,
            trial: None,
            inherited: Vec::new(),
            adopting: None,
        };
        (upgrades, handover)
    }
}

/// The record the memfd that `value` names holds, checked (see `vouch.rs`) and then
/// claimed; the memfd is closed once the record is believed.
fn believe(
    value: &str,
    resolved: Option<&std::path::Path>,
) -> Result<Handover<OwnedFd>, vouch::Refused> {
    let (memfd, bytes) = vouch::read_memfd(value)?;
    let refused = |check, detail| vouch::Refused { check, detail };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| refused("parse", "the record is not UTF-8".into()))?;
    let raw = Handover::parse(text).map_err(|e| refused("parse", e))?;
    vouch::vouch(&raw, memfd, resolved)?;
    let claimed = raw.claim().map_err(|e| refused("claim", e))?;
    drop(fd::take_inherited(memfd));
    Ok(claimed)
}

impl Cluster {
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

    /// The primary was away for `lost` (see `Cluster::paused`): the trial's deadline
    /// moves on by as much.
    pub(super) fn postpone_trial(&mut self, lost: Duration) {
        if let Some(t) = &mut self.upgrades.trial {
            t.deadline = crate::deadline::after(t.deadline, lost);
        }
    }

    /// Timers: the trial's deadline, the new workers' slowness, the end of an upgrade.
    pub(super) fn upgrade_tick(&mut self, now: Instant) {
        self.trial_tick(now);
        self.adoption_tick(now);
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
        if self.state != super::State::Running {
            self.upgrade_failed("the cluster is stopping".into());
            return;
        }
        // A worker whose control channel closed is exiting (or misbehaving: it gets
        // killed at its deadline). Its channel cannot be passed on, so it is ended and
        // reaped now, not left behind by the next program.
        for s in self.workers.values_mut().filter(|s| s.eof) {
            if !s.killed {
                s.killed = true;
                let _ = process::kill(s.pid, libc::SIGKILL);
            }
            let _ = process::wait(s.pid);
        }
        self.reap_due = true;
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

    /// The hand-over record as it stands, with the descriptors it names (`unsent`: the
    /// round-robin connections taken out to cross with their listener).
    fn record<'a>(
        &'a self,
        program: &Program,
        unsent: &'a [(u32, Vec<OwnedFd>)],
    ) -> (Handover<std::os::fd::RawFd>, Vec<BorrowedFd<'a>>) {
        let mut passed: Vec<BorrowedFd<'_>> = Vec::new();
        let mut record = Handover {
            pid: self.pid,
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
        (record, passed)
    }

    /// The record's text for the trial, which checks that the new program can read it
    /// (the descriptor numbers are this process's; the trial claims none).
    fn record_for_trial(&self, program: &Program) -> String {
        self.record(program, &[]).0.encode()
    }

    /// Builds the record, lets its descriptors cross, and `execve`s; undoes all of it
    /// if `execve` fails.
    fn hand_over_and_exec(&self, unsent: &[(u32, Vec<OwnedFd>)]) -> Result<(), String> {
        let program = self.upgrades.program.as_ref().map_err(Clone::clone)?;
        // Checked again: the file may have been replaced since the trial.
        program::check_owner_and_mode(&program.path)?;
        let (record, mut passed) = self.record(program, unsent);
        // The record crosses in a sealed memfd; the environment names its number.
        let memfd = fd::sealed_memfd("cluster-upgrade", record.encode().as_bytes())
            .map_err(|e| format!("write the hand-over record into a memfd: {e}"))?;
        passed.push(memfd.as_fd());
        let number = memfd.as_raw_fd().to_string();
        let env = next_env(
            &self.upgrades.service_env,
            &[(handover::VAR, OsStr::new(&number))],
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
}
