//! What the primary reports: [`Event`]s about workers (Node's `cluster.on('fork' | 'online'
//! | 'listening' | 'message' | 'disconnect' | 'exit')`).

use std::fmt;
use std::io;
use std::time::Duration;

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::worker_id::WorkerId;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (0 after its worker function returned `Ok`, 1 after
    /// `Err`, 101 after a panic).
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// A signal to send a worker with [`Cluster::kill`](crate::Cluster::kill) (Node's
/// `worker.kill(signal)`, which takes the signal's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: the worker takes it as the end of its life (the default action).
    Term,
    /// `SIGKILL`: cannot be caught.
    Kill,
    /// `SIGINT`.
    Int,
    /// `SIGQUIT`.
    Quit,
    /// `SIGHUP`.
    Hup,
    /// `SIGUSR1`, for the application's own use.
    Usr1,
    /// `SIGUSR2`, for the application's own use.
    Usr2,
    /// `SIGSTOP`: the worker stops until `SIGCONT`.
    Stop,
    /// `SIGCONT`.
    Cont,
}

impl Signal {
    /// The signal's number (`libc::SIGTERM`, …).
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Hup => "SIGHUP",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Stop => "SIGSTOP",
            Signal::Cont => "SIGCONT",
        })
    }
}

/// Why the primary replaced a worker on its own (the worker-health knobs of the
/// [`Builder`](crate::Builder)): reported with [`Event::Replacing`] and kept in
/// [`WorkerInfo::replaced_because`](crate::WorkerInfo::replaced_because) of the worker
/// that took its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replacement {
    /// The worker's control thread did not answer the primary's ping for `silent`
    /// ([`Builder::worker_timeout`](crate::Builder::worker_timeout)): the process is
    /// stopped, or wedged. It was killed with `SIGKILL`.
    Unresponsive {
        /// How long it had been silent.
        silent: Duration,
    },
    /// The application did not call [`Worker::heartbeat`](crate::Worker::heartbeat)
    /// for `silent` ([`Builder::heartbeat_timeout`](crate::Builder::heartbeat_timeout)).
    /// It was killed with `SIGKILL`.
    NoHeartbeat {
        /// How long since its last heartbeat (or its start).
        silent: Duration,
    },
    /// The worker accepted `accepted` connections, at least its `limit`
    /// ([`Builder::max_connections`](crate::Builder::max_connections) plus its
    /// jitter). It was replaced gracefully, like one step of a reload.
    MaxConnections {
        /// Connections it had accepted when the primary noticed.
        accepted: u64,
        /// Its limit.
        limit: u64,
    },
    /// The worker's resident set was `rss` bytes, above `limit`
    /// ([`Builder::max_rss`](crate::Builder::max_rss)). It was replaced gracefully.
    MaxRss {
        /// Its resident set size, in bytes, when the primary read it, with the memory
        /// files it held open unmapped (memfd, tmpfs).
        rss: u64,
        /// The limit, in bytes.
        limit: u64,
    },
}

impl Replacement {
    /// Whether the worker was killed (`SIGKILL`, liveness) rather than replaced the
    /// graceful way (recycling).
    pub fn killed(self) -> bool {
        matches!(
            self,
            Replacement::Unresponsive { .. } | Replacement::NoHeartbeat { .. }
        )
    }
}

impl fmt::Display for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u128 = 1 << 20;
        const NANOS: u128 = 1_000_000_000;
        match *self {
            Replacement::Unresponsive { silent } => write!(
                f,
                "unresponsive: no answer to the primary's ping for {} s",
                Tenths(silent.as_nanos(), NANOS)
            ),
            Replacement::NoHeartbeat { silent } => write!(
                f,
                "no heartbeat: the application was silent for {} s",
                Tenths(silent.as_nanos(), NANOS)
            ),
            Replacement::MaxConnections { accepted, limit } => {
                write!(f, "max connections: {accepted} accepted, limit {limit}")
            }
            Replacement::MaxRss { rss, limit } => write!(
                f,
                "max rss: {} MiB resident, limit {} MiB",
                Tenths(rss.into(), MIB),
                Tenths(limit.into(), MIB)
            ),
        }
    }
}

/// `n / d` with one decimal, rounded half to even: what `{:.1}` prints for the
/// quotient as an `f64`, without the float formatting code (about 20 KiB of the
/// release binary, used nowhere else).
struct Tenths(u128, u128);

impl fmt::Display for Tenths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Tenths(n, d) = *self;
        let (mut q, r) = (n.saturating_mul(10) / d, n.saturating_mul(10) % d);
        if r * 2 > d || (r * 2 == d && q % 2 == 1) {
            q += 1;
        }
        // Printed as u64 (a u128 would bring its own formatting code): a duration of
        // over 584 years would show as u64::MAX seconds.
        let whole = u64::try_from(q / 10).unwrap_or(u64::MAX);
        write!(f, "{whole}.{}", (q % 10) as u8)
    }
}

/// Something that happened in the cluster, from [`Cluster::next_event`](crate::Cluster::next_event).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A worker process was forked (Node's `fork`).
    Fork {
        /// The new worker.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker is running its worker function (Node's `online`).
    Online {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker listens on `addr` (Node's `listening`); port 0 is resolved.
    Listening {
        /// The worker.
        worker: WorkerId,
        /// The bound address.
        addr: ListenAddr,
    },
    /// The worker receives datagrams on `addr` (a [`Datagram`](crate::Datagram): the
    /// datagram sibling of `Listening`, Node's `listening` of a `dgram` socket); port 0
    /// is resolved. Counts as listening for readiness and reloads.
    Receiving {
        /// The worker.
        worker: WorkerId,
        /// The bound address.
        addr: ListenAddr,
    },
    /// The primary could not create the listener a worker asked for; the worker's
    /// listen call got the same error.
    ListenFailed {
        /// The worker that asked.
        worker: WorkerId,
        /// The address.
        addr: ListenAddr,
        /// The error, naming the address.
        error: io::Error,
    },
    /// The worker sent a message ([`Worker::send`](crate::Worker::send)).
    Message {
        /// The sender.
        worker: WorkerId,
        /// The payload.
        data: Vec<u8>,
    },
    /// The worker's control channel closed (Node's `disconnect`): it exited, or is
    /// about to.
    Disconnect {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker process ended (Node's `exit`).
    Exit {
        /// The worker.
        worker: WorkerId,
        /// Its process id (already reaped: do not signal it).
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// Whether the primary had asked it to go (disconnect, shutdown, kill): Node's
        /// `worker.exitedAfterDisconnect`. `false` means it crashed or was killed from
        /// outside.
        requested: bool,
    },
    /// A reload (rolling restart) begins: `SIGHUP`, [`Cluster::reload`](crate::Cluster::reload)
    /// or [`Cluster::restart`](crate::Cluster::restart). The first replacement is forked
    /// after this event has been returned, so the primary can prepare what new workers
    /// should see (re-read a configuration the worker function reads).
    ReloadStarted,
    /// The reload ended: `replaced` workers were replaced; `complete` is false when it
    /// stopped early (a replacement failed to listen, or the cluster shut down), and
    /// then an [`Event::Error`] says why.
    ReloadFinished {
        /// How many workers were replaced.
        replaced: usize,
        /// Whether every worker was replaced.
        complete: bool,
    },
    /// A binary upgrade begins (`SIGUSR2` or [`Cluster::upgrade`](crate::Cluster::upgrade)):
    /// the program at `program`, the path this one was started from, is being tried.
    /// If the trial passes, the primary runs it in place (same pid); the next events
    /// then come from the new program's cluster, ending with [`Event::Upgraded`].
    UpgradeStarted {
        /// The program file tried.
        program: std::path::PathBuf,
    },
    /// A binary upgrade failed ([`Error::Upgrade`] says why: the new program exited or
    /// hung before `Builder::start`, could not run, or its workers do not listen). The
    /// workers that served before keep serving; a later upgrade may be tried.
    UpgradeFailed {
        /// Why.
        error: Error,
    },
    /// In the program a binary upgrade started: its workers listen and the previous
    /// program's workers have all finished and exited; no code of the previous program
    /// runs any more.
    Upgraded {
        /// How many workers of the previous program were retired.
        previous_workers: usize,
    },
    /// The primary is replacing `worker` on its own, for `reason` (a health knob of
    /// the [`Builder`](crate::Builder)). A liveness failure
    /// ([`Replacement::killed`]) has already been sent `SIGKILL`; its `Exit` follows
    /// (`requested: false`, like a crash, so its replacement is forked under the
    /// respawn back-off). A recycle forks the replacement first and asks `worker` to
    /// disconnect once the replacement listens; at most one recycle runs at a time.
    Replacing {
        /// The worker being replaced.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
        /// Why.
        reason: Replacement,
    },
    /// Something failed and the primary recovered (a worker broke the protocol and was
    /// killed, a send failed, …); the cluster keeps running.
    Error(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replacement reasons read as they did when they were formatted as `f64`.
    #[test]
    fn tenths_as_float_formatting() {
        let mib = 1u64 << 20;
        for rss in (0..40 * mib).step_by(4096).chain([u64::MAX >> 11, 1 << 52]) {
            let r = Replacement::MaxRss { rss, limit: mib };
            let f = rss as f64 / mib as f64;
            assert_eq!(
                r.to_string(),
                format!("max rss: {f:.1} MiB resident, limit 1.0 MiB")
            );
        }
        for ms in [
            0, 1, 49, 51, 99, 100, 149, 151, 999, 1_000, 1_949, 30_000, 86_400_123,
        ] {
            let silent = Duration::from_millis(ms);
            let r = Replacement::Unresponsive { silent };
            assert_eq!(
                r.to_string(),
                format!(
                    "unresponsive: no answer to the primary's ping for {:.1} s",
                    silent.as_secs_f64()
                )
            );
        }
    }
}
