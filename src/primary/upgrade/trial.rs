//! An upgrade's trial: the new program run in a child, told by `CLUSTER_UPGRADE_TRIAL`
//! to stop at `Builder::start` and report `ok MODE` on a pipe. A trial that reports
//! lets the primary `execve` in place; one that cannot run, ends first, or hangs past
//! the upgrade timeout fails the upgrade, and the running program keeps serving.
//!
//! The variable names a sealed memfd (as the hand-over record's, see `handover.rs`)
//! whose first line is `cluster-upgrade-trial PID FD INODE`: the primary's pid, and the
//! descriptor and pipe inode of the report pipe; the rest is the record the program
//! would get, for it to read. A program believes it is a trial only when the memfd is
//! one (sealed, this user's), its parent is that pid, and descriptor `FD` is the write
//! end of that very pipe. Before, the variable alone was believed: in a fresh start,
//! `CLUSTER_UPGRADE_TRIAL` made the program exit at once, silently (status 1), or with
//! `=3` write `ok MODE` into whatever descriptor 3 was and exit 0. Now such a stray
//! variable gets a warning that names the failed check, and the program starts as it
//! would without it. (A primary built before this version hands its trial a pipe and
//! the record in the environment: the new program then starts normally in its trial,
//! never reports, and the trial ends at the upgrade timeout; the old primary keeps
//! serving. Crossing to this version takes a restart.)

use std::ffi::{CString, OsStr};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Instant;

use super::handover::Handover;
use super::program::{self, next_env, Program, TRIAL_VAR};
use super::vouch::{read_memfd, Refused};
use super::Cluster;
use crate::error::Error;
use crate::event::Event;
use crate::mode::Mode;
use crate::primary::{State, HANDLED_SIGNALS};
use crate::sys::fd;
use crate::sys::process::{self, Fork, Pid, WaitStatus};
use crate::sys::signal;

/// A trial run of the new program (see the module docs).
#[derive(Debug)]
pub(super) struct Trial {
    pub(super) pid: Pid,
    /// The read end of the pipe the trial reports on.
    pub(super) output: OwnedFd,
    pub(super) got: Vec<u8>,
    pub(super) deadline: Instant,
}

/// The first word of the trial memfd's first line.
const TRIAL_HEADER: &str = "cluster-upgrade-trial";

/// In `Builder::start`, once the settings are checked: if this process is an upgrade's
/// trial (see the module docs for what says so), reports `ok MODE` to the primary that
/// started it and exits, starting nothing. A stray `CLUSTER_UPGRADE_TRIAL` is taken out
/// of the environment with a warning, and the program goes on.
pub(in crate::primary) fn end_trial_here(mode: Mode) {
    let Some(value) = std::env::var_os(TRIAL_VAR) else {
        return;
    };
    std::env::remove_var(TRIAL_VAR);
    let value = value.to_string_lossy();
    let (report, record) = match vouched_trial(&value) {
        Ok(r) => r,
        Err(r) => {
            crate::log::report!(
                "{TRIAL_VAR}={} ignored ({r}): this is no upgrade's trial; starting normally",
                super::vouch::shown(&value)
            );
            return;
        }
    };
    let code = match fd::take_inherited(report) {
        Ok(out) => {
            let mut out = std::fs::File::from(out);
            // The record the next program would get: readable here, or the upgrade
            // stops now rather than after execve.
            let written = match Handover::parse(&record) {
                Ok(_) => writeln!(out, "ok {mode}"),
                Err(e) => writeln!(out, "bad record: {e}"),
            };
            i32::from(written.is_err())
        }
        Err(_) => 1,
    };
    let _ = std::io::stdout().flush();
    process::exit_now(code);
}

/// The report pipe's descriptor and the record, from the memfd `value` names, once
/// the memfd, the parent and the pipe are checked.
fn vouched_trial(value: &str) -> Result<(RawFd, String), Refused> {
    let refuse = |check, detail| Refused { check, detail };
    let (_, bytes) = read_memfd(value)?;
    let text = String::from_utf8(bytes).map_err(|_| refuse("parse", "not UTF-8".into()))?;
    let (first, record) = text.split_once('\n').unwrap_or((&text, ""));
    let words: Vec<&str> = first.split(' ').collect();
    let [TRIAL_HEADER, pid, report, ino] = words[..] else {
        return Err(refuse("parse", format!("not a {TRIAL_HEADER} memfd")));
    };
    let number = |s: &str| crate::number::parse::<i64>(s);
    let (Some(pid), Some(report), Some(ino)) = (number(pid), number(report), number(ino)) else {
        return Err(refuse("parse", format!("a bad first line {first:?}")));
    };
    let parent = process::getppid();
    if pid != i64::from(parent) {
        return Err(refuse(
            "parent",
            format!("written by pid {pid}, this process's parent is {parent}"),
        ));
    }
    let report = RawFd::try_from(report)
        .ok()
        .filter(|&n| n > 2)
        .ok_or_else(|| refuse("report pipe", format!("{report} is not a descriptor")))?;
    let pipe = fd::look_at(report, |f| {
        let st = fd::fstat(f)?;
        Ok::<_, std::io::Error>((st, fd::access_mode(f)?))
    });
    match pipe {
        Ok(Ok((st, access)))
            if st.kind == libc::S_IFIFO
                && i64::try_from(st.ino) == Ok(ino)
                && access == libc::O_WRONLY =>
        {
            Ok((report, record.to_owned()))
        }
        Ok(Ok(_)) => Err(refuse(
            "report pipe",
            format!("descriptor {report} is not the write end of pipe {ino}"),
        )),
        Ok(Err(e)) | Err(e) => Err(refuse("report pipe", format!("descriptor {report}: {e}"))),
    }
}

/// Runs in the forked trial child: the new program, told it is a trial.
fn run_trial(
    program: &Program,
    env: &[CString],
    report: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    mask: &signal::SigMask,
) -> ! {
    let _ = signal::reset_in_child(HANDLED_SIGNALS, mask);
    let _ = process::own_process_group(0);
    let _ = fd::set_cloexec(report, false);
    let _ = fd::set_cloexec(memfd, false);
    let e = process::execve(&program.c_path, &program.argv, env);
    let mut out =
        std::fs::File::from(fd::dup_cloexec(report).unwrap_or_else(|_| process::exit_now(127)));
    let _ = writeln!(out, "exec: {e}");
    process::exit_now(127)
}

impl Cluster {
    /// `SIGUSR2` / [`Cluster::upgrade`]: starts the trial of the program at the start
    /// path.
    pub(in crate::primary) fn begin_upgrade(&mut self) -> Result<(), Error> {
        let busy = if self.state != State::Running {
            Some("the cluster is stopping".to_string())
        } else if self.upgrades.trial.is_some() {
            Some("an upgrade is already being tried".to_string())
        } else if let Some(a) = self.upgrades.adopting.as_ref().filter(|a| !a.reported_slow) {
            // (Once its new workers were reported slow, a new upgrade may replace it:
            // both generations are passed on and retired by the next program.)
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
        program::check_owner_and_mode(&program.path).map_err(Error::Upgrade)?;
        let (output, report) =
            fd::pipe_nonblocking().map_err(|e| Error::io("create the trial's pipe", e))?;
        // The memfd that tells the new program it is this primary's trial, and which
        // descriptor is its report pipe (see the module docs).
        let ino = fd::fstat(report.as_fd())
            .map_err(|e| Error::io("fstat the trial's pipe", e))?
            .ino;
        let text = format!(
            "{TRIAL_HEADER} {} {} {ino}\n{}",
            self.pid,
            report.as_raw_fd(),
            self.record_for_trial(program)
        );
        let memfd = fd::sealed_memfd("cluster-upgrade-trial", text.as_bytes())
            .map_err(|e| Error::io("write the trial's memfd", e))?;
        let env = next_env(
            &self.upgrades.service_env,
            &[(TRIAL_VAR, OsStr::new(&memfd.as_raw_fd().to_string()))],
        );
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mask = signal::block_all().map_err(|e| Error::io("block signals to fork", e))?;
        let forked = process::fork();
        let pid = match forked {
            Ok(Fork::Child) => run_trial(program, &env, report.as_fd(), memfd.as_fd(), &mask),
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
        drop(memfd);
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

    /// The cluster stops (or drops) while a trial runs: the trial is ended and reaped,
    /// and the upgrade reported failed (`report`: not when dropping).
    pub(in crate::primary) fn abandon_trial(&mut self, report: bool) {
        let Some(t) = self.upgrades.trial.take() else {
            return;
        };
        end_trial(t.pid);
        if report {
            self.upgrade_failed("the cluster is stopping".into());
        }
    }

    /// The trial's pid while one runs (it is not an orphan to reap).
    pub(in crate::primary) fn trial_pid(&self) -> Option<Pid> {
        self.upgrades.trial.as_ref().map(|t| t.pid)
    }

    /// The trial's pipe, for `poll`.
    pub(in crate::primary) fn trial_fd(&self) -> Option<BorrowedFd<'_>> {
        self.upgrades.trial.as_ref().map(|t| t.output.as_fd())
    }

    /// The trial's pipe is readable: its report, or its end.
    pub(in crate::primary) fn on_trial_output(&mut self) {
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
            None if line.starts_with("bad record: ") => Err(format!(
                "the new program {} cannot read this one's hand-over record ({})",
                self.program_path(),
                &line["bad record: ".len()..]
            )),
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

    pub(super) fn program_path(&self) -> String {
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

    /// The trial's deadline.
    pub(super) fn trial_tick(&mut self, now: Instant) {
        let Some(t) = &self.upgrades.trial else {
            return;
        };
        if t.deadline > now {
            return;
        }
        let t = self.upgrades.trial.take().expect("a trial");
        end_trial(t.pid);
        let why = format!(
            "the new program {} did not reach Builder::start within {}",
            self.program_path(),
            crate::deadline::Shown(self.upgrades.timeout)
        );
        self.upgrade_failed(why);
    }
}

/// Ends a trial (it may still run: a program that closed its report and went on) and
/// reaps it; how it ended.
pub(super) fn end_trial(pid: Pid) -> Option<WaitStatus> {
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
