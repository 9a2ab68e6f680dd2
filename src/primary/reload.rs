//! Rolling restart (`SIGHUP`, [`Cluster::reload`](crate::Cluster::reload)): every worker is
//! replaced, one at a time, and each replacement listens before the worker it replaces
//! is asked to disconnect, so the address is never without a worker ready to take its
//! connections (what Node's cluster leaves to the application; unicorn and gunicorn
//! do the same dance on `SIGHUP`/`USR2`).
//!
//! For each old worker, in turn:
//!
//! 1. fork a new worker;
//! 2. wait until it listens on as many addresses as the old one did (or, for a worker
//!    without listeners, until it is online);
//! 3. ask the old one to disconnect: it stops accepting (round-robin: the primary stops
//!    routing to it at once, and takes back what it had sent and the worker had not
//!    received), finishes its connections, exits;
//! 4. when it is gone, go on with the next.
//!
//! If a replacement exits before it listens, or does not listen within the timeout,
//! the reload stops there: the workers not yet replaced keep serving, and the failure
//! is reported. A broken new configuration never takes the old workers down.
//!
//! The new workers are forks of the primary, so they run the primary's code: a reload
//! renews worker processes (and picks up whatever the worker function reads when it
//! starts, such as a configuration the primary re-read on `Event::ReloadStarted`); it
//! does not load a new binary.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::worker_id::WorkerId;

/// What the reload needs to know about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Exited (or never existed).
    Gone,
    /// Alive: whether it said it is online, and on how many addresses it listens.
    Alive { online: bool, listening: usize },
    /// Alive, but asked to go (disconnecting, killed, or being replaced by someone
    /// else): not to be replaced again, and not a replacement to wait for.
    Leaving,
}

/// What the reload asks of the cluster.
pub(crate) trait Host {
    /// Fork one new worker.
    fn spawn(&mut self) -> Result<WorkerId, Error>;
    /// The worker's state.
    fn seen(&self, id: WorkerId) -> Seen;
    /// Ask the worker to disconnect; it is being replaced (the target count stays).
    fn disconnect(&mut self, id: WorkerId);
}

/// How far the reload has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Still replacing.
    Running,
    /// Every worker was replaced (`replaced` of them).
    Finished { replaced: usize },
    /// It stopped early; the workers not yet replaced keep running.
    Aborted { replaced: usize, reason: String },
}

#[derive(Debug)]
enum Phase {
    /// The new worker is starting: waiting until it listens on `want` addresses.
    WaitNew { want: usize },
    /// The old worker is disconnecting: waiting until it is gone.
    WaitOld,
}

#[derive(Debug)]
struct Step {
    old: WorkerId,
    new: WorkerId,
    deadline: Instant,
    phase: Phase,
}

/// A rolling restart in progress.
#[derive(Debug)]
pub(crate) struct Reload {
    queue: VecDeque<WorkerId>,
    step: Option<Step>,
    replaced: usize,
    timeout: Duration,
}

impl Reload {
    /// Replaces `old`, in that order; a replacement that is not listening after
    /// `timeout` stops the reload.
    pub(crate) fn new(old: Vec<WorkerId>, timeout: Duration) -> Reload {
        Reload {
            queue: old.into(),
            step: None,
            replaced: 0,
            timeout,
        }
    }

    /// The next time `advance` must run even if nothing happens: the deadline for the
    /// replacement to listen, while waiting for it. (While waiting for the old worker to
    /// exit there is none: its disconnect deadline kills it, and its exit wakes the
    /// loop.)
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.step {
            Some(Step {
                deadline,
                phase: Phase::WaitNew { .. },
                ..
            }) => Some(*deadline),
            _ => None,
        }
    }

    /// The primary was away for `lost` (see `Cluster::paused`): the replacement's time
    /// to listen moves on by as much.
    pub(crate) fn postpone(&mut self, lost: Duration) {
        if let Some(step) = &mut self.step {
            step.deadline = crate::deadline::after(step.deadline, lost);
        }
    }

    /// Whether a step is under way (else the next `advance` starts one).
    pub(crate) fn stepping(&self) -> bool {
        self.step.is_some()
    }

    /// Adds workers to replace after those already queued (a restart asked for while
    /// a reload runs).
    pub(crate) fn enqueue(&mut self, old: &[WorkerId]) {
        for id in old {
            let stepping = self.step.as_ref().is_some_and(|s| s.old == *id);
            if !stepping && !self.queue.contains(id) {
                self.queue.push_back(*id);
            }
        }
    }

    /// The worker that `new` replaces, while the step that forked it runs.
    pub(crate) fn replacing(&self, new: WorkerId) -> Option<WorkerId> {
        self.step.as_ref().filter(|s| s.new == new).map(|s| s.old)
    }

    /// Does what can be done now.
    pub(crate) fn advance(&mut self, host: &mut dyn Host, now: Instant) -> Progress {
        loop {
            let Some(step) = &mut self.step else {
                let Some(old) = self.queue.pop_front() else {
                    return Progress::Finished {
                        replaced: self.replaced,
                    };
                };
                let want = match host.seen(old) {
                    // It exited meanwhile (respawn covers it), or is already on its way
                    // out and replaced (a recycle, `Cluster::disconnect`).
                    Seen::Gone | Seen::Leaving => continue,
                    Seen::Alive { listening, .. } => listening,
                };
                match host.spawn() {
                    Ok(new) => {
                        self.step = Some(Step {
                            old,
                            new,
                            deadline: crate::deadline::after(now, self.timeout),
                            phase: Phase::WaitNew { want },
                        });
                        continue;
                    }
                    Err(e) => {
                        return Progress::Aborted {
                            replaced: self.replaced,
                            reason: format!("cannot fork a replacement for worker {old}: {e}"),
                        }
                    }
                }
            };
            match step.phase {
                Phase::WaitNew { want } => match host.seen(step.new) {
                    Seen::Gone | Seen::Leaving => {
                        return Progress::Aborted {
                            replaced: self.replaced,
                            reason: format!(
                                "replacement worker {} exited before it was listening; worker {} keeps running",
                                step.new, step.old
                            ),
                        };
                    }
                    Seen::Alive { online, listening } => {
                        let ready = if want == 0 { online } else { listening >= want };
                        if ready {
                            host.disconnect(step.old);
                            step.phase = Phase::WaitOld;
                            continue;
                        }
                        if now >= step.deadline {
                            host.disconnect(step.new);
                            return Progress::Aborted {
                                replaced: self.replaced,
                                reason: format!(
                                    "replacement worker {} was not listening after {}; worker {} keeps running",
                                    step.new, crate::deadline::Shown(self.timeout), step.old
                                ),
                            };
                        }
                        return Progress::Running;
                    }
                },
                Phase::WaitOld => {
                    if host.seen(step.old) != Seen::Gone {
                        return Progress::Running;
                    }
                    self.replaced += 1;
                    self.step = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A cluster on paper.
    #[derive(Default)]
    struct Fake {
        next: u32,
        workers: BTreeMap<WorkerId, (bool, usize)>,
        disconnected: Vec<WorkerId>,
        fail_spawn: bool,
    }

    impl Host for Fake {
        fn spawn(&mut self) -> Result<WorkerId, Error> {
            if self.fail_spawn {
                return Err(Error::Config("no fork".into()));
            }
            self.next += 1;
            let id = WorkerId(100 + self.next);
            self.workers.insert(id, (false, 0));
            Ok(id)
        }
        fn seen(&self, id: WorkerId) -> Seen {
            match self.workers.get(&id) {
                None => Seen::Gone,
                Some(&(online, listening)) => Seen::Alive { online, listening },
            }
        }
        fn disconnect(&mut self, id: WorkerId) {
            self.disconnected.push(id);
        }
    }

    #[test]
    fn replaces_one_at_a_time_new_listening_before_old_goes() {
        let now = Instant::now();
        let mut h = Fake::default();
        h.workers.insert(WorkerId(1), (true, 2));
        h.workers.insert(WorkerId(2), (true, 2));
        let mut r = Reload::new(vec![WorkerId(1), WorkerId(2)], Duration::from_secs(5));
        assert_eq!(r.advance(&mut h, now), Progress::Running);
        assert_eq!(h.next, 1, "one replacement forked");
        // Listening on one of two addresses is not enough.
        h.workers.insert(WorkerId(101), (true, 1));
        assert_eq!(r.advance(&mut h, now), Progress::Running);
        assert!(h.disconnected.is_empty());
        h.workers.insert(WorkerId(101), (true, 2));
        assert_eq!(r.advance(&mut h, now), Progress::Running);
        assert_eq!(h.disconnected, [WorkerId(1)]);
        assert_eq!(
            h.next, 1,
            "no second replacement before the first old worker is gone"
        );
        h.workers.remove(&WorkerId(1));
        assert_eq!(r.advance(&mut h, now), Progress::Running);
        assert_eq!(h.next, 2);
        h.workers.insert(WorkerId(102), (true, 2));
        r.advance(&mut h, now);
        h.workers.remove(&WorkerId(2));
        assert_eq!(r.advance(&mut h, now), Progress::Finished { replaced: 2 });
    }

    #[test]
    fn a_replacement_that_dies_or_hangs_stops_the_reload() {
        let now = Instant::now();
        let mut h = Fake::default();
        h.workers.insert(WorkerId(1), (true, 1));
        let mut r = Reload::new(vec![WorkerId(1)], Duration::from_secs(5));
        r.advance(&mut h, now);
        h.workers.remove(&WorkerId(101));
        assert!(matches!(
            r.advance(&mut h, now),
            Progress::Aborted { replaced: 0, .. }
        ));
        assert!(h.disconnected.is_empty(), "the old worker keeps running");

        let mut r = Reload::new(vec![WorkerId(1)], Duration::from_secs(5));
        r.advance(&mut h, now);
        let late = now + Duration::from_secs(6);
        assert!(matches!(r.advance(&mut h, late), Progress::Aborted { .. }));
        assert_eq!(
            h.disconnected,
            [WorkerId(102)],
            "the hung replacement is sent away"
        );

        h.fail_spawn = true;
        let mut r = Reload::new(vec![WorkerId(1)], Duration::from_secs(5));
        assert!(matches!(r.advance(&mut h, now), Progress::Aborted { .. }));
    }

    #[test]
    fn workers_without_listeners_are_replaced_once_online() {
        let now = Instant::now();
        let mut h = Fake::default();
        h.workers.insert(WorkerId(1), (true, 0));
        let mut r = Reload::new(vec![WorkerId(1), WorkerId(9)], Duration::from_secs(5));
        r.advance(&mut h, now);
        assert!(h.disconnected.is_empty());
        h.workers.insert(WorkerId(101), (true, 0));
        r.advance(&mut h, now);
        assert_eq!(h.disconnected, [WorkerId(1)]);
        h.workers.remove(&WorkerId(1));
        // Worker 9 is already gone: skipped.
        assert_eq!(r.advance(&mut h, now), Progress::Finished { replaced: 1 });
    }
}
