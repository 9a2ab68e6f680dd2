//! The primary: forks the workers, answers their listen requests, runs the round-robin
//! handles, supervises (respawn, reload, scaling) and reports what happens (Node's
//! `lib/internal/cluster/primary.js`).
//!
//! # One thread, one `poll`
//!
//! `fork` copies only the calling thread, so the primary never starts a thread, and
//! the `sys` layer refuses to fork a process that has more than one: create the cluster
//! before starting threads. (One exception, on kernels before 6.16 only: a descriptor a
//! worker attaches to a record that is not an Internet socket is closed on a closer
//! thread, which makes one `close` and takes no lock, so that its `flush` can never make
//! the loop wait; see `sys/closer.rs`.) It forks with every signal blocked, so no handler of the
//! primary's can run in the child before the child has replaced it. Everything the
//! primary waits for is one `poll(2)` set (`event_loop.rs`):
//!
//! - the self-pipe its signal handlers write into, read first on every turn (and again
//!   before anything is reaped or forked);
//! - each worker's control channel (and `POLLOUT` when messages wait for room);
//! - each round-robin handle's listening socket, while a connection can go somewhere
//!   (a waiting thread, or room to queue one ahead) and none is pending;
//! - the round-robin hand-off channels, while the primary needs credits.
//!
//! Timers (a disconnect's deadline, a respawn back-off, a reload step, a paused accept)
//! become `poll`'s timeout.
//!
//! # Files
//!
//! `builder.rs` (settings and start), `event_loop.rs` (the turn: poll, signals,
//! messages), `listen.rs` (listen requests: authorise, find or create, grant, and
//! close a handle nobody holds), `lifecycle.rs` (fork, reap, keep the worker count,
//! disconnect, shut down), `respawn.rs` (back-off), `reload.rs` (rolling restart),
//! `slot.rs` (one worker), `info.rs` (the snapshots it reports), `health.rs` (liveness
//! and recycling), `upgrade/` (binary upgrade: trial, `execve` in place, take-over),
//! `handle.rs` (the one interface of the listening handles,
//! Node's `add`/`remove` and what the loop needs), and behind it `shared.rs`,
//! `round_robin/` (with `scheduler.rs`) and `reuse_port.rs` (one kind per mode),
//! `budget.rs` (each worker's share of the primary's descriptors), `vec_map.rs` (the
//! tables by worker id).
//!
//! # Trust
//!
//! A worker that dropped privileges ([`Builder::user`]) is treated as hostile, as
//! OpenSSH's privileged monitor treats its unprivileged child: every record it sends may
//! be malicious. The primary binds only addresses it allowed (`listen.rs`), removes only
//! socket files it created, by directory handle and inode (`socket_file.rs`), never
//! joins a reuse-port group it did not create (`reuse_port.rs`), never waits on anything
//! a worker controls, and refuses malformed or unexpected records by killing the
//! sender (`event_loop.rs`). The README's "Security model" lists what a compromised
//! worker can and cannot do, with the scenarios that show it.
//!
//! # Reaping
//!
//! Workers are reaped with `waitpid(pid, WNOHANG)` for each pid the primary forked, on
//! `SIGCHLD` and when a control channel reports EOF. Deliberately not `waitpid(-1)`,
//! which would also steal the exit status of children the application started itself
//! (a `std::process::Child` would then fail to `wait`). A reaped pid is forgotten at
//! once, so the primary never signals a pid the system may have given to someone else.
//!
//! **As pid 1, or a child subreaper.** The primary of a container (or of any pid
//! namespace) is its init: every process orphaned below it — a worker's child whose
//! worker exited, a daemon that double-forked — is reparented to it, and only its
//! parent can reap it. The same holds for a process that set
//! `PR_SET_CHILD_SUBREAPER`. So when `getpid()` is 1 or `PR_GET_CHILD_SUBREAPER` says
//! so, each reaping pass ends with a second one, after the per-pid pass: peek at an
//! exited child with `waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`, which leaves it
//! unreaped; if it is a worker, stop (it exited just now, and the next turn's per-pid
//! pass reaps it as a worker, with its status); otherwise reap that pid, count it
//! ([`ClusterStats::orphans_reaped`]) and peek again (at most 64 a turn). The pass
//! runs whenever the primary reaps, so an orphan's `SIGCHLD` is what brings it (with
//! [`Builder::handle_signals`]`(false)` orphans are reaped only when a worker is).
//! An orphan's exit is never an
//! [`Event::Exit`] and never counts as a worker's crash. The price: in this role a
//! `std::process::Child` the application started in the primary may be reaped by the
//! primary before the application waits for it (its `wait` then fails with
//! `ECHILD`), which is what any init does; workers are not affected (their children
//! are theirs). Outside these roles nothing changes.

mod budget;
mod builder;
mod datagram;
mod event_loop;
mod handle;
mod health;
mod held;
mod info;
mod lifecycle;
mod listen;
mod notify;
mod preflight;
mod reload;
mod respawn;
mod reuse_port;
mod round_robin;
mod scheduler;
mod shared;
mod slot;
mod uids;
mod upgrade;
mod vec_map;
mod vitals;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::event::{Event, Replacement, Signal};
use crate::ipc::codec::{Message, MAX_MESSAGE_LEN};
use crate::mode::Mode;
use crate::options::ListenOptions;
use crate::settings::WorkerSettings;
use crate::sock_type::SockType;
use crate::socket_file::SocketFile;
use crate::sys::process::{self, Pid};
use crate::sys::signal::SignalPipe;
use crate::worker::WorkerFn;
use crate::worker_id::WorkerId;

pub use budget::MAX_WORKERS;
pub use builder::{
    Builder, DEFAULT_ACCEPT_WINDOW, DEFAULT_MESSAGE_LIMIT, DEFAULT_PREFETCH,
    DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use info::{ClusterStats, WorkerInfo};
pub use respawn::Respawn;
pub use scheduler::{FewestDispatched, Fifo, LeastConnections, ReadyWorker, Scheduler};
pub use upgrade::DEFAULT_UPGRADE_TIMEOUT;

use handle::Handle;
use health::{Health, Jitter};
use notify::Notifier;
use reload::Reload;
use respawn::CrashStreak;
use slot::{Phase, Slot};
use vec_map::VecMap;

/// The signals the primary handles (and resets to `SIG_DFL` in each worker).
///
/// `SIGTTIN`/`SIGTTOU` follow unicorn and gunicorn. Their default action stops a
/// background process that touches its terminal; with handlers installed, a primary
/// run in the background of a terminal with `stty tostop` would take a write to the
/// terminal as "one worker fewer". `SIGUSR2` (binary upgrade) follows nginx, unicorn
/// and HAProxy.
const HANDLED_SIGNALS: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGCHLD,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR2,
];

/// Settings fixed when the cluster starts: what the [`Builder`] collects, besides the
/// worker count, the mode and signal handling, which it resolves at `start`.
#[derive(Debug)]
struct Config {
    shutdown_timeout: Duration,
    accept_window: Duration,
    respawn: Respawn,
    settings: WorkerSettings,
    scheduler: Box<dyn Scheduler>,
    prefetch: u32,
    /// The only addresses workers may listen on, if restricted.
    /// With each, the options a listener on it is created with when workers are
    /// untrusted (`user` set): then a request with other options is refused.
    allowed: Option<Vec<(ListenAddr, ListenOptions)>>,
    /// With `allowed`: the only addresses workers may bind datagram sockets on.
    allowed_datagrams: Vec<ListenAddr>,
    /// Messages a second one worker may send (0: any number).
    message_limit: u32,
    /// Tell a service manager (`NOTIFY_SOCKET`) how the cluster is doing.
    notify: bool,
    /// Descriptors every worker keeps (`Builder::keep_fd`), held open by the primary
    /// for the cluster's life; every other descriptor is closed in a worker.
    kept: Vec<std::os::fd::OwnedFd>,
    /// Liveness and recycling (`health.rs`).
    health: Health,
}

/// Where the cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopping { deadline: Instant },
    Stopped,
}

#[derive(Debug)]
struct HandleEntry {
    /// The number workers name it by (listen replies, `Listening`, `ListenerClosed`):
    /// never reused while the cluster runs, so a late message cannot name another.
    id: u32,
    /// The address workers asked for (port 0 stays 0: one handle for all of them).
    key: ListenAddr,
    /// With the address, the key: a stream listener or a datagram socket.
    sock: SockType,
    handle: Handle,
    /// The workers listening on it, and what each holds: when the last lets go for
    /// good, the handle closes (see `listen.rs`).
    holders: VecMap<WorkerId, Hold>,
    /// The Unix socket file this handle created, removed when the handle closes.
    socket_file: Option<SocketFile>,
}

/// What one worker holds of one handle.
#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    /// Listeners granted and not yet closed: at most [`Hold::MAX_GRANTS`].
    granted: u32,
    /// Of those, how many the worker said listen (`Listening`): never more than
    /// granted, so a worker cannot count itself listening on what it was not given.
    listening: u32,
}

impl Hold {
    /// The most listeners (or datagram sockets) one worker holds of one handle at
    /// once: as many as a round-robin or reuse-port handle gives it
    /// ([`MAX_LISTENERS_PER_WORKER`](round_robin::MAX_LISTENERS_PER_WORKER)). A shared
    /// handle costs the primary no descriptor per grant, so nothing else bounds its
    /// count: without this, a worker asking for the same address over and over
    /// wrapped the `u32` after 2³² grants (and the next close underflowed it).
    const MAX_GRANTS: u32 = round_robin::MAX_LISTENERS_PER_WORKER as u32;

    /// Whether one more grant fits.
    fn may_grant(&self) -> bool {
        self.granted < Hold::MAX_GRANTS
    }

    /// Counts one more grant; `false`, counting nothing, once [`Hold::MAX_GRANTS`]
    /// are held.
    fn grant(&mut self) -> bool {
        if !self.may_grant() {
            return false;
        }
        self.granted += 1;
        true
    }
}

impl HandleEntry {
    fn local(&self) -> &ListenAddr {
        self.handle.local()
    }
}

/// A running cluster: the primary's handle on its workers.
///
/// Drive it with [`next_event`](Cluster::next_event): the primary does its work (hands
/// off connections, answers listen requests, reaps, respawns, reloads) inside that
/// call. Dropping a cluster that has not stopped kills its workers and waits for them.
///
/// Not `Send`: a cluster lives on the primary's one thread (`fork` copies only the
/// calling thread, so the primary must not start others while it forks).
pub struct Cluster {
    mode: Mode,
    config: Config,
    worker_fn: Rc<WorkerFn>,
    workers: VecMap<WorkerId, Slot>,
    handles: Vec<HandleEntry>,
    /// The id the next handle gets.
    next_handle: u32,
    /// The service manager, when `NOTIFY_SOCKET` names one (`notify.rs`).
    notifier: Option<Notifier>,
    next_id: u32,
    /// How many workers to keep running.
    target: usize,
    backoff: CrashStreak,
    reload: Option<Reload>,
    /// The recycle under way (`health.rs`): one step of a reload, for one worker.
    recycle: Option<Reload>,
    /// Why it runs.
    recycle_reason: Option<Replacement>,
    /// Workers killed by a health check, whose replacements are still to be forked:
    /// why, for each (`WorkerInfo::replaced_because`).
    respawn_causes: VecDeque<Replacement>,
    /// What `spawn` records as the new worker's `replaced_because`.
    next_cause: Option<Replacement>,
    /// Draws each worker's connection-limit jitter.
    jitter: Jitter,
    /// A reload was asked for while one ran: start again when it ends.
    reload_again: bool,
    /// The reload just started: its first step waits one turn (see `begin_restart`).
    reload_held: bool,
    signals: Option<SignalPipe>,
    events: VecDeque<Event>,
    state: State,
    /// The stop signal that began the shutdown, and when: the same one again within
    /// [`event_loop::REPEAT_WINDOW`] is the same stop (see `on_signal`).
    stop_signal: Option<(i32, Instant)>,
    /// Where control records are received: room for the largest, resident only as far
    /// as records reach (`sys::mem`).
    buf: crate::sys::mem::ZeroedBuf,
    /// The poll lists of the last turn (`event_loop.rs`).
    poll_scratch: event_loop::PollScratch,
    /// When the last turn's poll returned: how long the primary was away is measured
    /// from it (`Cluster::paused`).
    polled: Option<Instant>,
    reap_due: bool,
    /// Orphans were left for the next turn (`reap_orphans` reached its bound).
    orphans_due: bool,
    pid: Pid,
    stats: ClusterStats,
    /// The soft `RLIMIT_NOFILE` after `start` raised it: the workers' descriptor
    /// budgets derive from it (see `budget.rs`).
    fd_limit: usize,
    /// Binary upgrades: the program to run, a trial under way, what a previous
    /// program passed (`upgrade/`).
    upgrades: upgrade::Upgrades,
}

/// The error message for a worker count above the cap.
fn too_many_workers(n: usize, max: usize, fd_limit: usize) -> String {
    format!(
        "{n} workers asked for; at most {max} (MAX_WORKERS {}, and one per {} of the \
         primary's {fd_limit} descriptors)",
        budget::MAX_WORKERS,
        budget::FDS_PER_WORKER
    )
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("mode", &self.mode)
            .field("state", &self.state)
            .field("target", &self.target)
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A [`Builder`] with the defaults.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The cluster's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Waits for the next event; `None` once the cluster has stopped (after
    /// [`shutdown`](Cluster::shutdown) or a signal, every worker has exited and every
    /// event has been returned).
    ///
    /// # Errors
    ///
    /// Only when `poll` itself fails, which means a bug; recoverable trouble comes as
    /// [`Event::Error`].
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.state == State::Stopped {
                return Ok(None);
            }
            self.turn(None)?;
        }
    }

    /// Like [`next_event`](Cluster::next_event), but returns `Ok(None)` after `timeout`
    /// too; tell the two apart with [`is_stopped`](Cluster::is_stopped).
    ///
    /// # Errors
    ///
    /// As for `next_event`.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let deadline = crate::deadline::after(Instant::now(), timeout);
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let now = Instant::now();
            if self.state == State::Stopped || now >= deadline {
                return Ok(None);
            }
            self.turn(Some(deadline - now))?;
        }
    }

    /// Whether every worker has exited after a shutdown.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Starts a graceful shutdown (what `SIGTERM` and `SIGINT` do): the listeners stop
    /// taking connections (round-robin handles close their socket; a shared socket
    /// closes with the last worker's copy), every worker is asked to disconnect, and
    /// those still alive after the shutdown timeout are killed. Keep calling
    /// `next_event` until it returns `None`.
    pub fn shutdown(&mut self) {
        self.begin_shutdown();
    }

    /// Replaces every worker, one at a time, each replacement listening before the
    /// worker it replaces disconnects (what `SIGHUP` does): see [`Event::ReloadStarted`]
    /// and [`Event::ReloadFinished`]. While one runs, another request restarts it when
    /// it ends.
    pub fn reload(&mut self) {
        self.begin_reload();
    }

    /// Binary upgrade (what `SIGUSR2` does): runs the program file now at the path this
    /// one was started from, in place of this one (same pid), handing it every
    /// listening socket and worker; the new program's workers take the sockets over,
    /// and this program's workers finish what they hold once those listen. The new
    /// program is first tried (it must reach [`Builder::start`] within the
    /// [`upgrade timeout`](Builder::upgrade_timeout)); if it does not, this one keeps
    /// serving. Returns at once: the outcome comes as [`Event::UpgradeStarted`], then
    /// [`Event::UpgradeFailed`], or (from the new program) [`Event::Upgraded`]. See the
    /// README's "Deploying" section.
    ///
    /// # Errors
    ///
    /// [`Error::Upgrade`] when one cannot start now: another is being tried or still
    /// finishing, a reload runs, the cluster is stopping, or the start path could not
    /// be resolved; [`Error::Io`] when the trial cannot be forked.
    pub fn upgrade(&mut self) -> Result<(), Error> {
        self.begin_upgrade()
    }

    /// Keeps `n` workers from now on (at least 1): forks more, or asks the youngest to
    /// disconnect. `SIGTTIN` / `SIGTTOU` do `n + 1` / `n - 1` (`SIGTTIN` at the cap
    /// reports an [`Event::Error`] and changes nothing).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `n` is above [`max_workers`](Cluster::max_workers); the
    /// count stays as it was.
    pub fn set_workers(&mut self, n: usize) -> Result<(), Error> {
        let max = budget::max_workers(self.fd_limit);
        if n > max {
            return Err(Error::Config(too_many_workers(n, max, self.fd_limit)));
        }
        uids::check_count(n, self.config.settings.user.as_ref()).map_err(Error::Config)?;
        self.target = n.max(1);
        Ok(())
    }

    /// The most workers this cluster keeps: [`MAX_WORKERS`], and one
    /// per 16 descriptors of the primary's `RLIMIT_NOFILE` (as raised by `start`), so
    /// that every worker keeps a descriptor budget in the primary; with
    /// [`User::per_worker_uids`](crate::User::per_worker_uids), half the uids of the
    /// range (a successor runs beside each worker it replaces).
    pub fn max_workers(&self) -> usize {
        let uids = uids::max_workers(self.config.settings.user.as_ref());
        budget::max_workers(self.fd_limit).min(uids.unwrap_or(usize::MAX))
    }

    /// How many workers the cluster keeps.
    pub fn target_workers(&self) -> usize {
        self.target
    }

    /// Asks one worker to disconnect and go (Node's `worker.disconnect()`): no new
    /// connections go to it, its listeners close, it finishes what it has and exits;
    /// after the shutdown timeout it is killed. The cluster keeps one worker fewer.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id.
    pub fn disconnect(&mut self, id: WorkerId) -> Result<(), Error> {
        self.retire(id)?;
        let deadline = crate::deadline::after(Instant::now(), self.config.shutdown_timeout);
        self.disconnect_until(id, deadline);
        Ok(())
    }

    /// Replaces one worker gracefully: a new worker is forked, and once it listens
    /// this one is asked to disconnect (one step of a reload).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id.
    pub fn restart(&mut self, id: WorkerId) -> Result<(), Error> {
        if !self.workers.contains_key(&id) {
            return Err(Error::NoSuchWorker(id));
        }
        self.begin_restart(vec![id]);
        Ok(())
    }

    /// Sends `signal` to a worker (Node's `worker.kill()`). Its exit counts as asked
    /// for, and the cluster keeps one worker fewer. Like Node's, it is also a
    /// disconnect (no connection is routed to it any more, and it is told to go), with
    /// its deadline: a worker still alive after the shutdown timeout (one spinning in
    /// a loop, or stopped by `Signal::Stop`) is killed with `SIGKILL`, and its
    /// [`Event::Exit`] says so.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id; [`Error::Io`] when
    /// `kill` fails.
    pub fn kill(&mut self, id: WorkerId, signal: Signal) -> Result<(), Error> {
        self.retire(id)?;
        let slot = self.workers.get_mut(&id).ok_or(Error::NoSuchWorker(id))?;
        process::kill(slot.pid, signal.number())
            .map_err(|e| Error::io(format!("kill worker {id} with {signal}"), e))?;
        if signal != Signal::Kill {
            let deadline = crate::deadline::after(Instant::now(), self.config.shutdown_timeout);
            self.disconnect_until(id, deadline);
        }
        Ok(())
    }

    /// Sends `data` to a worker, which reads it with [`Worker::recv`](crate::Worker::recv).
    ///
    /// Never blocks: when the worker does not read, messages wait in the primary, up to
    /// a limit.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] above [`MAX_MESSAGE_LEN`]
    /// bytes (nothing sent, nothing broken); [`Error::NoSuchWorker`]; [`Error::Io`]
    /// with `WouldBlock` when too many messages already wait for this worker, or the OS
    /// error when its channel is broken.
    pub fn send(&mut self, id: WorkerId, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLarge { len: data.len() });
        }
        let slot = self.workers.get_mut(&id).ok_or(Error::NoSuchWorker(id))?;
        if slot.outbox_full() {
            return Err(Error::io(
                format!("send to worker {id}"),
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the worker is not reading its messages",
                ),
            ));
        }
        slot.send(&Message::User(data), None)
            .map_err(|e| Error::io(format!("send to worker {id}"), e))
    }

    /// Sends `data` to every live worker that is not disconnecting; returns how many
    /// got it.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] (nothing sent). A worker that cannot take it is
    /// skipped (its trouble shows up as its exit).
    pub fn broadcast(&mut self, data: &[u8]) -> Result<usize, Error> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLarge { len: data.len() });
        }
        let ids: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|s| !s.eof && !matches!(s.phase, Phase::Disconnecting { .. }))
            .map(|s| s.id)
            .collect();
        Ok(ids
            .into_iter()
            .filter(|&id| self.send(id, data).is_ok())
            .count())
    }

    /// The live workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        self.workers
            .values()
            .map(|s| WorkerInfo {
                id: s.id,
                pid: s.pid as u32,
                online: s.phase != Phase::Starting,
                disconnecting: matches!(s.phase, Phase::Disconnecting { .. }),
                listening: s.listening,
                dispatched: s.dispatched,
                accepted: s.accepted,
                open: s.open,
                uptime: now.saturating_duration_since(s.forked_at),
                rss: s.vitals.rss,
                replaced_because: s.vitals.replaced_because,
            })
            .collect()
    }

    /// Counters over the cluster's life.
    pub fn stats(&self) -> ClusterStats {
        let mut s = self.stats.clone();
        s.dropped_connections += self.handles.iter().map(|h| h.handle.dropped()).sum::<u64>();
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nor an upgrade's trial.
        self.abandon_trial(false);
        // Never leave a worker behind: kill what is alive, and reap it.
        for s in self.workers.values_mut() {
            if !s.killed {
                let _ = process::kill(s.pid, libc::SIGKILL);
            }
            let _ = process::wait(s.pid);
        }
        self.workers.clear();
        self.release_handles();
        // `signals` drops after this, restoring the previous handlers.
    }
}
