//! The workers' lives, seen from the primary: fork (Node's `cluster.fork`), reap, keep
//! the target count (respawn with back-off, scale up and down), replace (reload), ask
//! to disconnect with a deadline, shut down.
//!
//! The count: a worker is *live* from its fork until the primary asks it to go
//! (disconnect, kill, reload, scale down) or it is reaped. The loop keeps the number of
//! live workers at the target. A crashed worker stays live until it is reaped, so its
//! replacement is forked only then, when the back-off knows about the crash; a worker
//! asked to go stops being live at once, so its replacement (reload) or its absence
//! (scale down, `disconnect`, `kill`) is accounted for right away.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::reload::{self, Progress, Reload, Seen};
use super::slot::{Phase, Slot};
use super::{Cluster, State, HANDLED_SIGNALS};
use crate::error::Error;
use crate::event::{Event, ExitStatus};
use crate::ipc::channel::Channel;
use crate::ipc::codec::Message;
use crate::sys::process::{self, Fork, Pid, WaitStatus};
use crate::sys::signal;
use crate::worker::{self, ChildStart};
use crate::worker_id::WorkerId;

/// Orphans reaped at most per turn of the loop (see `Cluster::reap_orphans`).
const ORPHANS_PER_TURN: usize = 64;

impl Cluster {
    /// Forks one worker.
    pub(super) fn spawn(&mut self) -> Result<WorkerId, Error> {
        let id = WorkerId(self.next_id);
        let uid = self.pick_uid(id)?;
        let connection_limit = self.draw_connection_limit();
        let (mine, theirs) = Channel::pair_with_worker()
            .map_err(|e| Error::io(format!("create channel for worker {id}"), e))?;
        // Whatever sits in stdout's buffer would otherwise be printed twice.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        // Every signal blocked across fork: see `signal::block_all`.
        let mask = signal::block_all().map_err(|e| Error::io("block signals to fork", e))?;
        let forked = process::fork();
        match forked {
            Ok(Fork::Child) => {
                // Nothing here may return into the primary's code: a panic is caught and
                // becomes exit code 101, like one in the worker function.
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    drop(mine);
                    let f = self.worker_fn.clone();
                    let mut settings = self.config.settings.clone();
                    if let (Some(uid), Some(user)) = (uid, &mut settings.user) {
                        *user = user.with_uid(uid);
                    }
                    let primary = self.pid;
                    let kept = std::mem::take(&mut self.config.kept);
                    self.release_in_child();
                    let start = ChildStart {
                        id,
                        control: theirs,
                        primary,
                        reset_signals: HANDLED_SIGNALS,
                        mask,
                        settings,
                        kept,
                        connection_limit,
                    };
                    worker::run_child(start, &*f)
                }))
                .unwrap_or(101);
                process::exit_now(code)
            }
            Ok(Fork::Parent(pid)) => {
                let _ = signal::set_mask(&mask);
                drop(theirs);
                self.next_id += 1;
                self.stats.forks += 1;
                let mut slot = Slot::new(id, pid, mine);
                slot.uid = uid;
                slot.vitals.connection_limit = connection_limit;
                slot.vitals.replaced_because = self.next_cause;
                self.workers.insert(id, slot);
                self.events.push_back(Event::Fork {
                    worker: id,
                    pid: pid as u32,
                });
                Ok(id)
            }
            Err(e) => {
                let _ = signal::set_mask(&mask);
                self.stats.fork_failures += 1;
                Err(Error::io(format!("fork worker {id}"), e))
            }
        }
    }

    /// The uid worker `id` runs as, with `User::per_worker_uids`: see `uids.rs`.
    fn pick_uid(&self, id: WorkerId) -> Result<Option<u32>, Error> {
        let Some((first, last)) = self
            .config
            .settings
            .user
            .as_ref()
            .and_then(|u| u.uid_range())
        else {
            return Ok(None);
        };
        let held = self.workers.values().filter_map(|s| s.uid);
        match super::uids::pick(first, last, held) {
            Some(uid) => Ok(Some(uid)),
            None => Err(Error::Config(format!(
                "fork worker {id}: every uid of the range {first}-{last} is taken by a \
                 worker not yet reaped; waiting for one to exit"
            ))),
        }
    }

    /// In a freshly forked child: lets go of this copy of everything the primary owns
    /// *without running any of its teardown*. A `Drop` here would act on state the
    /// child shares with the primary: a file status flag belongs to the open file
    /// description, which both hold (dropping a round-robin handle made an adopted
    /// listener blocking again, and the primary then sat in `accept4` for good); a
    /// shutdown would signal workers or remove socket files. So the structures are
    /// forgotten (`mem::forget`), their descriptors are closed by the worker's sweep
    /// (`close_range`, step 1 in `worker/mod.rs`), and the only thing undone is
    /// process-local: the signal handlers from before the cluster come back. The child
    /// never drops the `Cluster` itself either: it leaves with `_exit`.
    fn release_in_child(&mut self) {
        std::mem::forget(std::mem::take(&mut self.workers));
        std::mem::forget(std::mem::take(&mut self.handles));
        std::mem::forget(std::mem::take(&mut self.events));
        std::mem::forget(self.reload.take());
        std::mem::forget(self.recycle.take());
        if let Some(pipe) = self.signals.take() {
            pipe.leave_in_child();
        }
    }

    /// Workers counted against the target: forked, not asked to go, not reaped.
    pub(super) fn live_count(&self) -> usize {
        self.workers.values().filter(|s| !s.requested).count()
    }

    /// Keeps the cluster in shape: advances a reload, forks up to the target (with
    /// back-off after crashes), retires the youngest workers above it.
    pub(super) fn maintain(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        self.advance_reload(now);
        let live = self.live_count();
        if live < self.target {
            for _ in live..self.target {
                if !self.backoff.may_fork(now) {
                    break;
                }
                // A worker a health check killed: its replacement says why.
                self.next_cause = self.respawn_causes.pop_front();
                let spawned = self.spawn();
                self.next_cause = None;
                match spawned {
                    Ok(_) => self.backoff.forked(&self.config.respawn, now),
                    Err(e) => {
                        self.events.push_back(Event::Error(e));
                        self.backoff.young_death(&self.config.respawn, now);
                    }
                }
                if self.backoff.backing_off() {
                    break; // one fork per back-off delay
                }
            }
        } else if live > self.target && self.reload.is_none() && self.recycle.is_none() {
            // Retire the youngest: the oldest have warm caches and settled state.
            let extra = live - self.target;
            let youngest: Vec<WorkerId> = self
                .workers
                .values()
                .rev()
                .filter(|s| !s.requested)
                .take(extra)
                .map(|s| s.id)
                .collect();
            let deadline = crate::deadline::after(now, self.config.shutdown_timeout);
            for id in youngest {
                self.disconnect_until(id, deadline);
            }
        }
    }

    // ----------------------------------------------------------------- reload

    pub(super) fn begin_reload(&mut self) {
        if self.reload.is_some() {
            self.reload_again = true; // every worker again, once this one ends
            return;
        }
        let old: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|s| !s.requested)
            .map(|s| s.id)
            .collect();
        self.begin_restart(old);
    }

    /// Starts replacing `old` (or queues another round if a reload is running). The
    /// first fork happens on a later turn, after the application has seen
    /// `ReloadStarted` and could prepare (re-read its configuration).
    pub(super) fn begin_restart(&mut self, old: Vec<WorkerId>) {
        if self.state != State::Running {
            return;
        }
        if let Some(r) = &mut self.reload {
            r.enqueue(&old);
            return;
        }
        self.reload = Some(Reload::new(old, self.config.shutdown_timeout));
        self.reload_held = true;
        self.events.push_back(Event::ReloadStarted);
        if let Some(n) = &mut self.notifier {
            n.reloading();
        }
    }

    fn advance_reload(&mut self, now: Instant) {
        if self.reload_held {
            self.reload_held = false; // let the application see ReloadStarted first
            return;
        }
        let Some(mut r) = self.reload.take() else {
            return;
        };
        let progress = r.advance(&mut ReloadHost { cluster: self, now }, now);
        match progress {
            Progress::Running => self.reload = Some(r),
            Progress::Finished { replaced } => {
                self.events.push_back(Event::ReloadFinished {
                    replaced,
                    complete: true,
                });
                self.notify_reloaded();
                if std::mem::take(&mut self.reload_again) {
                    self.begin_reload();
                }
            }
            Progress::Aborted { replaced, reason } => {
                self.reload_again = false;
                self.events.push_back(Event::Error(Error::Reload(reason)));
                self.events.push_back(Event::ReloadFinished {
                    replaced,
                    complete: false,
                });
                self.notify_reloaded();
            }
        }
    }

    /// A reload ended: `READY=1` again, once every worker listens.
    fn notify_reloaded(&mut self) {
        if let Some(n) = &mut self.notifier {
            n.reloading_done();
        }
        self.notify_if_ready();
    }

    // ----------------------------------------------------------------- going away

    /// The worker leaves for good: one worker fewer is kept.
    pub(super) fn retire(&mut self, id: WorkerId) -> Result<(), Error> {
        let slot = self.workers.get_mut(&id).ok_or(Error::NoSuchWorker(id))?;
        if !slot.requested {
            self.target = self.target.saturating_sub(1);
        }
        slot.requested = true;
        Ok(())
    }

    /// Asks a worker to disconnect; kills it at `deadline` if it is still alive.
    pub(super) fn disconnect_until(&mut self, id: WorkerId, deadline: Instant) {
        self.stop_routing(id);
        let Some(slot) = self.workers.get_mut(&id) else {
            return;
        };
        slot.requested = true;
        if matches!(slot.phase, Phase::Disconnecting { .. }) {
            return;
        }
        slot.phase = Phase::Disconnecting { deadline };
        if slot.eof || slot.send(&Message::Disconnect, None).is_err() {
            // It is going anyway; the deadline still applies if it lingers.
            self.reap_due = true;
        }
    }

    /// Graceful shutdown; see [`Cluster::shutdown`].
    pub(super) fn begin_shutdown(&mut self) {
        if self.state != State::Running {
            return;
        }
        let now = Instant::now();
        let deadline = crate::deadline::after(now, self.config.shutdown_timeout);
        self.state = State::Stopping { deadline };
        // An upgrade being tried would otherwise exec the new program on the way out.
        self.abandon_trial(true);
        if let Some(n) = &mut self.notifier {
            n.stopping();
        }
        // A recycle stops where it is: its replacement, if forked, is disconnected below
        // with everyone else.
        self.recycle = None;
        self.recycle_reason = None;
        if let Some(r) = self.reload.take() {
            drop(r);
            self.events.push_back(Event::ReloadFinished {
                replaced: 0,
                complete: false,
            });
        }
        let workers = &mut self.workers;
        let scheduler = &mut *self.config.scheduler;
        for entry in &mut self.handles {
            let closed = entry.handle.shut(now, scheduler, &mut |w| {
                if let Some(s) = workers.get_mut(&w) {
                    s.dispatched += 1;
                }
            });
            if closed > 0 {
                crate::log::report!("shutdown closed {closed} connection(s) no worker could take");
            }
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.disconnect_until(id, deadline);
        }
        self.finish_if_done();
    }

    /// Reaps every worker that has exited.
    pub(super) fn reap(&mut self, now: Instant) {
        let ids: Vec<(WorkerId, Pid)> = self.workers.values().map(|s| (s.id, s.pid)).collect();
        for (id, pid) in ids {
            let status = match process::try_wait(pid) {
                Ok(None) => continue,
                Ok(Some(WaitStatus::Exited(c))) => ExitStatus::Code(c),
                Ok(Some(WaitStatus::Signaled(s))) => ExitStatus::Signal(s),
                // ECHILD: somebody else reaped it (a waitpid(-1) elsewhere in the
                // process). It is gone; its status is unknown.
                Err(_) => ExitStatus::Code(-1),
            };
            self.on_exit(id, pid, status, now);
        }
        self.reap_orphans();
    }

    /// As pid 1 or a child subreaper, reaps children the primary did not fork:
    /// processes orphaned anywhere below it (a worker's child whose worker exited) are
    /// reparented to it and would stay zombies for ever. Each exited child is peeked at
    /// first without being reaped (`WNOWAIT`); a worker ends the pass (it is reaped by
    /// the per-pid pass on the next turn, with its status, as a worker), anything else
    /// is reaped and counted (`ClusterStats::orphans_reaped`), never reported as a
    /// worker's exit. At most [`ORPHANS_PER_TURN`] a turn, so children dying as fast as
    /// they are reaped cannot hold the loop; the rest wait for the next turn.
    fn reap_orphans(&mut self) {
        self.orphans_due = false;
        let adopts = self.pid == 1 || process::is_child_subreaper().unwrap_or(false);
        if !adopts {
            return;
        }
        for _ in 0..ORPHANS_PER_TURN {
            let pid = match process::peek_exited_child() {
                Ok(Some(pid)) => pid,
                Ok(None) | Err(_) => return,
            };
            if self.workers.values().any(|s| s.pid == pid) || self.trial_pid() == Some(pid) {
                // Exited since the per-pid pass; its SIGCHLD (or its channel's EOF)
                // brings the next turn. (An upgrade's trial is reaped, with its
                // status, when its report pipe closes.)
                return;
            }
            match process::try_wait(pid) {
                Ok(Some(_)) => self.stats.orphans_reaped += 1,
                // Gone already, or not exited after all: nothing of ours.
                Ok(None) | Err(_) => return,
            }
        }
        self.orphans_due = true;
    }

    fn on_exit(&mut self, id: WorkerId, pid: Pid, status: ExitStatus, now: Instant) {
        let Some(slot) = self.workers.remove(&id) else {
            return;
        };
        self.stats.exits += 1;
        if let Some(reason) = slot.vitals.killed_for {
            self.stats.health_kills += 1;
            if !slot.requested && self.state == State::Running && self.config.respawn.enabled {
                self.respawn_causes.push_back(reason);
            }
        }
        if !slot.requested {
            self.stats.crashes += 1;
            if self.state == State::Running {
                let policy = &self.config.respawn;
                if !policy.enabled {
                    self.target = self.target.saturating_sub(1);
                } else if slot.setup_failed {
                    self.backoff.young_death(policy, now);
                } else {
                    let uptime = now.saturating_duration_since(slot.forked_at);
                    self.backoff.crashed(policy, uptime, now);
                }
            }
        }
        // Node's `remove`, on every handle. Round-robin takes back what the worker had
        // not received; reuse-port sockets outlive their worker (see `reuse_port.rs`):
        // the next worker takes it over, unless the cluster now keeps fewer workers.
        let target = self.target;
        for h in &mut self.handles {
            h.handle.remove(id, target);
        }
        // A crash is replaced (unless respawn is off); anything asked for is not.
        let replaced = !slot.requested && self.config.respawn.enabled;
        self.release_holder(id, &slot.granted, replaced);
        if !slot.eof {
            self.events.push_back(Event::Disconnect { worker: id });
        }
        self.events.push_back(Event::Exit {
            worker: id,
            pid: pid as u32,
            status,
            requested: slot.requested,
        });
    }

    /// The primary was away for `lost` (see `Cluster::paused`): every disconnect
    /// deadline (a shutdown's is each worker's) moves on by as much.
    pub(super) fn postpone_disconnects(&mut self, lost: Duration) {
        for s in self.workers.values_mut() {
            if let Phase::Disconnecting { deadline } = &mut s.phase {
                *deadline = crate::deadline::after(*deadline, lost);
            }
        }
    }

    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        for s in self.workers.values_mut() {
            if let Phase::Disconnecting { deadline } = s.phase {
                if deadline <= now && !s.killed {
                    s.killed = true;
                    let _ = process::kill(s.pid, libc::SIGKILL);
                    self.reap_due = true;
                }
            }
        }
    }

    pub(super) fn kill_all(&mut self) {
        for s in self.workers.values_mut() {
            s.requested = true;
            if !s.killed {
                s.killed = true;
                let _ = process::kill(s.pid, libc::SIGKILL);
            }
        }
        self.reap_due = true;
    }

    pub(super) fn finish_if_done(&mut self) {
        if matches!(self.state, State::Stopping { .. }) && self.workers.is_empty() {
            self.state = State::Stopped;
            self.release_handles();
        }
    }

    /// Closes every handle and removes the socket files they created.
    pub(super) fn release_handles(&mut self) {
        for h in std::mem::take(&mut self.handles) {
            self.retire_handle(h);
        }
        self.release_inherited();
    }
}

/// The reload's view of the cluster (a recycle's too, see `health.rs`).
pub(super) struct ReloadHost<'a> {
    pub(super) cluster: &'a mut Cluster,
    pub(super) now: Instant,
}

impl reload::Host for ReloadHost<'_> {
    fn spawn(&mut self) -> Result<WorkerId, Error> {
        self.cluster.spawn()
    }

    fn seen(&self, id: WorkerId) -> Seen {
        match self.cluster.workers.get(&id) {
            None => Seen::Gone,
            Some(s) if s.requested || s.killed => Seen::Leaving,
            Some(s) => Seen::Alive {
                online: s.phase != Phase::Starting,
                listening: s.listening,
            },
        }
    }

    fn disconnect(&mut self, id: WorkerId) {
        let deadline = crate::deadline::after(self.now, self.cluster.config.shutdown_timeout);
        self.cluster.disconnect_until(id, deadline);
    }
}
