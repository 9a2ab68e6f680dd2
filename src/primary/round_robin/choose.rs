//! The choice of a credit: which worker gets the next connection (Node's
//! counterpart: `handoff` takes the first worker in `free`).
//!
//! [`choose_for`] prefers a waiting thread, which the [`Scheduler`] chooses among
//! the *workers* that have one ([`pick`]); only when no thread waits anywhere does a
//! connection go queued ahead, to the members with room in turn ([`pick_ahead`]). A
//! connection that came back from a worker goes elsewhere whenever anybody else can
//! take it.
//!
//! [`choose_for`]: RoundRobinHandle::choose_for
//! [`pick`]: RoundRobinHandle::pick
//! [`pick_ahead`]: RoundRobinHandle::pick_ahead

use super::{Member, RoundRobinHandle};
use crate::primary::scheduler::{ReadyWorker, Scheduler};
use crate::worker_id::WorkerId;

impl RoundRobinHandle {
    /// The credit to use (its position in `free`): the scheduler chooses among the
    /// *workers* that have one, listed by their oldest credit. A worker counts once
    /// however many listeners it has on this address (its `waiting` and `dispatched`
    /// are summed over them), so opening more listeners does not buy a worker a larger
    /// share. Skips the worker a connection came back from, as long as some other
    /// worker listens here (if none does, it may go back).
    ///
    /// Cost: the scan of `free` stops once every worker that can take a connection has
    /// been found, and looks each member up once, so a worker holding thousands of
    /// credits (up to [`MAX_CREDITS`](super::MAX_CREDITS)) costs a short scan, not
    /// thousands of lookups.
    fn pick(&mut self, avoid: Option<WorkerId>, scheduler: &mut dyn Scheduler) -> Option<usize> {
        let avoid = avoid.filter(|w| self.members.iter().any(|m| m.worker != *w));
        let usable = |m: &Member| {
            m.credits > 0 && !m.blocked && !m.stalled && !m.retired && Some(m.worker) != avoid
        };
        // The candidates, in the order of their oldest credit, with that credit's
        // position in `free` (scratch vectors kept across calls: no allocation).
        let (ready, at, seen) = (
            &mut self.scratch_ready,
            &mut self.scratch_at,
            &mut self.scratch_seen,
        );
        ready.clear();
        at.clear();
        seen.clear();
        let mut wanted = 0;
        for m in self.members.iter().filter(|m| usable(m)) {
            if !seen.contains(&m.worker.0) {
                seen.push(m.worker.0);
                wanted += 1;
            }
        }
        seen.clear();
        for (pos, id) in self.free.iter().enumerate() {
            if ready.len() == wanted {
                break;
            }
            if seen.contains(id) {
                continue; // this member was looked at already
            }
            seen.push(*id);
            let Some(m) = self.members.iter().find(|m| m.id == *id) else {
                continue;
            };
            if !usable(m) || ready.iter().any(|r| r.worker == m.worker) {
                continue;
            }
            let (waiting, dispatched) = self
                .members
                .iter()
                .filter(|o| o.worker == m.worker && usable(o))
                .fold((0u32, 0u64), |(w, d), o| {
                    (w.saturating_add(o.credits), d.saturating_add(o.dispatched))
                });
            at.push((pos, *id));
            ready.push(ReadyWorker {
                worker: m.worker,
                waiting,
                open: m.open,
                dispatched,
            });
        }
        let k = match ready.len() {
            0 => return None,
            1 => 0,
            n => Some(scheduler.choose(ready))
                .filter(|&k| k < n)
                .unwrap_or(0),
        };
        Some(at[k].0)
    }

    /// Where a connection goes: a waiting thread if there is one; else, queued ahead at
    /// a worker that may take one more (no worker is free: better there than in the
    /// backlog). A connection that came back from a worker goes elsewhere when anybody
    /// else can take it — after learning the other workers' credits if only its old
    /// worker's are known — and back only when nobody else can now (which can only be
    /// another listener of that worker: the one it came back from is gone).
    pub(super) fn choose_for(
        &mut self,
        avoid: Option<WorkerId>,
        scheduler: &mut dyn Scheduler,
    ) -> Option<(u32, bool)> {
        if let Some(pos) = self.pick(avoid, scheduler) {
            return self.free.remove(pos).map(|id| (id, false));
        }
        if avoid.is_some() && !self.free.is_empty() {
            self.refill();
            if let Some(pos) = self.pick(avoid, scheduler) {
                return self.free.remove(pos).map(|id| (id, false));
            }
        }
        if let Some(id) = self.pick_ahead(avoid) {
            return Some((id, true));
        }
        if avoid.is_some() {
            if let Some(pos) = self.pick(None, scheduler) {
                return self.free.remove(pos).map(|id| (id, false));
            }
            return self.pick_ahead(None).map(|id| (id, true));
        }
        None
    }

    /// When no thread waits: the member to queue a connection at, among those with
    /// room, in turn. (Not the scheduler's choice: it chooses among workers with a
    /// thread waiting; here no worker has one, and which will free up first is
    /// unknown, so every worker takes its turn.)
    fn pick_ahead(&mut self, avoid: Option<WorkerId>) -> Option<u32> {
        let avoid = avoid.filter(|w| self.members.iter().any(|m| m.worker != *w));
        let n = self.members.len();
        for k in 0..n {
            let m = &self.members[(self.rotation + k) % n];
            if m.retired
                || m.closed
                || m.stalled
                || m.blocked
                || m.queued >= self.prefetch
                || Some(m.worker) == avoid
            {
                continue;
            }
            self.rotation = (self.rotation + k + 1) % n;
            return Some(m.id);
        }
        None
    }
}
