//! Which worker gets the next connection in round-robin mode — "round-robin is just one
//! of the algorithms, of course, it can be replaced with others" (the seed). Node's
//! cluster has one order and no hook; here the choice is a [`Scheduler`].
//!
//! The primary only ever chooses among workers that have a thread waiting in `accept`
//! (a credit), so every scheduler dispatches to a worker that is free; the scheduler
//! decides which free one. Three are built in:
//!
//! - [`FewestDispatched`] (the default): the free worker that has been handed the
//!   fewest connections, the one that has waited longest among equals. Measured on 2
//!   cores, 4 workers, `Connection: close`: max/min share 1.00, against 1.09 for FIFO,
//!   at the same CPU cost.
//! - [`Fifo`] (Node's order): the worker whose waiting thread has waited longest. Each
//!   thread returns to the back of the line when it asks again, so a worker's share
//!   follows how often it asks, that is, how much CPU the system gives it.
//! - [`LeastConnections`]: the worker with the fewest connections open. Workers count a
//!   connection as open while its [`Connection`](crate::Connection) lives and report the
//!   count with each credit (no message of its own), so the figure is as fresh as the
//!   worker's last request for work. Wins when connections live long and unevenly
//!   (keep-alive, streaming); in close mode it behaves like FIFO.
//!
//! **Whose count.** `dispatched` is the primary's own count; `open` is the worker's
//! word. The primary cannot count open connections itself: in round-robin it hands a
//! connection over and never sees it close. So [`LeastConnections`] believes what a
//! worker reports, and a worker that under-reports (a compromised one, say `open` 0
//! always) is chosen whenever it has a thread waiting: it draws more connections than
//! its share (each still only when it asks for one, at most one per waiting thread).
//! No bound the primary knows would tell a lie from the truth: a worker's count covers
//! every listener it has, and what this one handed it may have closed long ago. With
//! workers that are not trusted ([`Builder::user`](crate::Builder::user)),
//! keep the default [`FewestDispatched`], which counts in the primary only.

use crate::worker_id::WorkerId;

/// A worker that can take a connection now, as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadyWorker {
    /// The worker.
    pub worker: WorkerId,
    /// How many of its threads wait for a connection on this listener.
    pub waiting: u32,
    /// How many connections it has open, as it last reported.
    pub open: u32,
    /// How many connections this listener has handed it, counted from the average of
    /// the other workers when it joined (so a worker that joins late — respawned,
    /// added, a reload's replacement — starts even with the rest).
    pub dispatched: u64,
}

/// Chooses the worker for each connection in round-robin mode
/// ([`Builder::scheduler`](crate::Builder::scheduler)).
///
/// ```
/// use cluster::round_robin::{ReadyWorker, Scheduler};
///
/// /// Always the worker that has been handed the fewest connections.
/// #[derive(Debug)]
/// struct FewestDispatched;
///
/// impl Scheduler for FewestDispatched {
///     fn choose(&mut self, ready: &[ReadyWorker]) -> usize {
///         (0..ready.len()).min_by_key(|&i| ready[i].dispatched).unwrap_or(0)
///     }
/// }
///
/// let builder = cluster::Cluster::builder().scheduler(FewestDispatched);
/// # drop(builder);
/// ```
pub trait Scheduler: std::fmt::Debug {
    /// Picks one of `ready` (never empty), which lists the workers with a thread
    /// waiting, the one that has waited longest first. Returns its index; an index out
    /// of range counts as 0.
    fn choose(&mut self, ready: &[ReadyWorker]) -> usize;
}

/// Node's order: the worker that has waited longest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl Scheduler for Fifo {
    fn choose(&mut self, _ready: &[ReadyWorker]) -> usize {
        0
    }
}

/// The worker with the fewest open connections; among equals, the one that has waited
/// longest. The counts are the workers' own reports (see the module docs: a worker
/// that under-reports draws more connections; the default [`FewestDispatched`] counts
/// in the primary).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastConnections;

impl Scheduler for LeastConnections {
    fn choose(&mut self, ready: &[ReadyWorker]) -> usize {
        (0..ready.len()).min_by_key(|&i| ready[i].open).unwrap_or(0)
    }
}

/// The free worker this listener has handed the fewest connections; among equals, the
/// one that has waited longest (the default). Evens out the shares when workers run at
/// different speeds, which FIFO follows (a worker that gets more CPU asks more often).
#[derive(Debug, Clone, Copy, Default)]
pub struct FewestDispatched;

impl Scheduler for FewestDispatched {
    fn choose(&mut self, ready: &[ReadyWorker]) -> usize {
        (0..ready.len())
            .min_by_key(|&i| ready[i].dispatched)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u32, open: u32) -> ReadyWorker {
        ReadyWorker {
            worker: WorkerId(id),
            waiting: 1,
            open,
            dispatched: 0,
        }
    }

    /// A worker that says it has nothing open is LeastConnections' choice whatever
    /// it was handed; FewestDispatched, which counts in the primary, is not fooled.
    #[test]
    fn a_liar_draws_least_connections_not_fewest_dispatched() {
        let honest = |id, n| ReadyWorker {
            worker: WorkerId(id),
            waiting: 1,
            open: n,
            dispatched: u64::from(n),
        };
        let liar = ReadyWorker {
            worker: WorkerId(9),
            waiting: 1,
            open: 0,
            dispatched: 500,
        };
        let ready = [honest(1, 3), liar, honest(2, 4)];
        assert_eq!(LeastConnections.choose(&ready), 1);
        assert_eq!(FewestDispatched.choose(&ready), 0);
    }

    #[test]
    fn built_ins() {
        let ready = [w(3, 5), w(1, 2), w(2, 2)];
        assert_eq!(Fifo.choose(&ready), 0);
        assert_eq!(
            LeastConnections.choose(&ready),
            1,
            "fewest open, oldest among equals"
        );
    }
}
