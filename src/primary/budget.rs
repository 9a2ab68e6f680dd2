//! Each worker's budget of descriptors in the primary, so that no single worker can
//! exhaust the primary.
//!
//! A worker makes the primary hold descriptors on its behalf: a round-robin hand-off
//! channel is two (the primary's end and its copy of the worker's end), a reuse-port
//! socket one, and a handle the worker's request created one more (its listening
//! socket). Without a bound, one worker asking for address after address filled the
//! primary's table (1,024 descriptors for 503 listeners) and every client timed out.
//!
//! At [`Builder::start`](crate::Builder::start) the primary raises its soft
//! `RLIMIT_NOFILE` to the hard limit. Of that limit it keeps [`reserve`] for itself
//! (stdio, the signal pipe, each worker's control channel, connections accepted and
//! not yet handed off, a `socketpair` for the next fork) and shares the rest out:
//!
//! ```text
//! budget per worker = (limit - reserve) / (2 × max(target, live workers))
//! ```
//!
//! The factor 2 leaves room for the workers that overlap during a rolling restart or
//! after a scale-up, before the old ones go. A listen request is granted only while the
//! worker's charge plus the costliest listener ([`COSTLIEST_LISTEN`]) fits its budget;
//! beyond it the worker's `Listener::bind` gets `EMFILE` with the address named, the
//! primary reports [`Event::ListenFailed`](crate::Event::ListenFailed), and the worker
//! keeps running. Node has no counterpart: its primary has no such bound.
//!
//! The check is conservative: it does not work out whether this request would create a
//! handle or join one. What a worker already holds is never taken back when the budget
//! shrinks (more workers): only new requests are refused.

use std::io;

use super::Cluster;
use crate::addr::ListenAddr;
use crate::error::ListenError;
use crate::worker_id::WorkerId;

/// The most workers a cluster keeps, whatever [`Builder::workers`](crate::Builder::workers),
/// [`Cluster::set_workers`] or `SIGTTIN` ask for (fewer when the descriptor limit is low:
/// see [`Cluster::max_workers`]). A pre-fork server on one machine has no use for more,
/// and each worker costs the primary descriptors and memory.
pub const MAX_WORKERS: usize = 1024;

/// Descriptors of the limit set aside per worker when capping the worker count: its
/// control channel, and room for a few listeners in its budget.
pub(super) const FDS_PER_WORKER: usize = 16;

/// The most workers a primary with descriptor limit `limit` keeps:
/// [`MAX_WORKERS`], and one per [`FDS_PER_WORKER`] descriptors.
pub(super) fn max_workers(limit: usize) -> usize {
    (limit / FDS_PER_WORKER).clamp(1, MAX_WORKERS)
}

/// The most descriptors one listen request can make the primary hold: a new handle's
/// socket and a round-robin hand-off channel's two ends.
pub(super) const COSTLIEST_LISTEN: usize = 3;

/// Descriptors the primary keeps for itself out of a limit of `limit`: a quarter, and
/// at least 16.
pub(super) fn reserve(limit: usize) -> usize {
    (limit / 4).max(16)
}

/// The per-worker budget for a descriptor limit of `limit` and `workers` workers.
pub(super) fn per_worker(limit: usize, workers: usize) -> usize {
    limit.saturating_sub(reserve(limit)) / (2 * workers.max(1))
}

impl Cluster {
    /// Descriptors the primary holds on `id`'s behalf now.
    fn charge(&self, id: WorkerId) -> usize {
        let created = self.workers.get(&id).map_or(0, |s| s.handles_created);
        created
            + self
                .handles
                .iter()
                .map(|h| h.handle.descriptors_of(id))
                .sum::<usize>()
    }

    /// `Ok` when worker `id` may make the primary hold another listener for `addr`;
    /// `EMFILE`, naming the address, when its budget is spent.
    pub(super) fn check_listen_budget(&self, id: WorkerId, addr: &ListenAddr) -> io::Result<()> {
        let workers = self.target.max(self.workers.len());
        let budget = per_worker(self.fd_limit, workers);
        let charge = self.charge(id);
        if charge + COSTLIEST_LISTEN > budget {
            crate::log::report!(
                "worker {id}: listen on {addr} refused: it holds {charge} of its {budget} \
                 descriptors in the primary"
            );
            return Err(ListenError::io(
                addr,
                io::Error::from_raw_os_error(libc::EMFILE),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_caps() {
        assert_eq!(max_workers(64), 4);
        assert_eq!(max_workers(1024), 64);
        assert_eq!(max_workers(1 << 20), MAX_WORKERS);
        assert_eq!(max_workers(0), 1);
    }

    #[test]
    fn budgets() {
        // The old default soft limit, two workers: 1024 - 256 = 768, / 4.
        assert_eq!(per_worker(1024, 2), 192);
        assert_eq!(per_worker(256, 2), 48);
        // A small limit keeps 16 for the primary.
        assert_eq!(per_worker(64, 1), 24);
        assert_eq!(per_worker(16, 1), 0);
        assert_eq!(per_worker(0, 0), 0);
        assert_eq!(per_worker(1 << 20, 4), ((1 << 20) - (1 << 18)) / 8);
    }
}
