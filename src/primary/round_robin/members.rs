//! The workers on a round-robin handle (Node's `RoundRobinHandle.add` and `.remove`):
//! a hand-off channel (a *member*) for each listener a worker opens, taken out of the
//! routing when the worker disconnects, and removed when it is gone, with every
//! connection it never received taken back and queued again (Node leaks them).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::{stall, Member, Pending, RoundRobinHandle, MAX_ATTEMPTS, MAX_LISTENERS_PER_WORKER};
use crate::ipc::channel::Channel;
use crate::worker_id::WorkerId;

impl RoundRobinHandle {
    /// Descriptors this handle holds for `worker`: both ends of each of its hand-off
    /// channels (its share of the primary's descriptor budget).
    pub(crate) fn descriptors_of(&self, worker: WorkerId) -> usize {
        2 * self.members.iter().filter(|m| m.worker == worker).count()
    }

    /// Adds a hand-off channel for `worker`; returns the member id and the worker's
    /// end, to send in the listen reply.
    pub(crate) fn add(&mut self, worker: WorkerId) -> io::Result<(u32, BorrowedFd<'_>)> {
        if self.members.iter().filter(|m| m.worker == worker).count() >= MAX_LISTENERS_PER_WORKER {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let (primary_end, worker_end) = Channel::pair_with_worker()?;
        let id = self.next_member;
        self.next_member = self.next_member.wrapping_add(1).max(1);
        // A newcomer's share counter starts at the average, so a scheduler that evens
        // out the counts does not hand it everything until it has caught up.
        let dispatched = match self.members.len() as u64 {
            0 => 0,
            n => self.members.iter().map(|m| m.dispatched).sum::<u64>() / n,
        };
        self.members.push(Member {
            id,
            worker,
            primary_end,
            worker_end,
            credits: 0,
            open: 0,
            dispatched,
            queued: 0,
            blocked: false,
            retired: false,
            closed: false,
            faulted: false,
            credits_seen: 0,
            stuck_since: None,
            stalled: false,
            probed: false,
        });
        let last = self.members.len() - 1; // just pushed
        Ok((id, self.members[last].worker_end.as_fd()))
    }

    /// The ids of `worker`'s members.
    fn members_of(&self, worker: WorkerId) -> Vec<u32> {
        self.members
            .iter()
            .filter(|m| m.worker == worker)
            .map(|m| m.id)
            .collect()
    }

    /// The worker is disconnecting: no new connections for it, at once. Its channels
    /// stay until it shuts them down or dies, so nothing sent to it is lost.
    pub(crate) fn stop_routing(&mut self, worker: WorkerId) {
        let ids = self.members_of(worker);
        self.free.retain(|id| !ids.contains(id));
        for m in self.members.iter_mut().filter(|m| m.worker == worker) {
            m.credits = 0;
            m.retired = true;
        }
    }

    /// The worker is gone: remove its members, taking back what it never received.
    pub(crate) fn remove_worker(&mut self, worker: WorkerId) {
        for id in self.members_of(worker) {
            self.remove_member(id);
        }
    }

    pub(super) fn remove_member(&mut self, id: u32) {
        let Some(i) = self.members.iter().position(|m| m.id == id) else {
            return;
        };
        let m = self.members.swap_remove(i);
        self.free.retain(|&f| f != id);
        let (back, _) = stall::take_back(&m);
        self.requeue(back, true);
    }

    /// Puts connections taken back from a worker before the ones accepted since (they
    /// are older). `bounced`: the worker is gone or not running, and this counts as one
    /// of a connection's [`MAX_ATTEMPTS`]; those that bounced too often are closed.
    pub(super) fn requeue(&mut self, back: Vec<Pending>, bounced: bool) {
        for mut p in back.into_iter().rev() {
            p.attempts += u32::from(bounced);
            if p.attempts > MAX_ATTEMPTS {
                self.dropped += 1;
                p.let_go(); // the client sees EOF, not a hang
                continue;
            }
            self.pending.push_front(p);
        }
    }
}
