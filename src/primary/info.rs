//! What the primary reports about its workers and itself: [`WorkerInfo`] (from
//! [`Cluster::workers`](super::Cluster::workers)) and [`ClusterStats`] (from
//! [`Cluster::stats`](super::Cluster::stats)).

use std::time::Duration;

use crate::event::Replacement;
use crate::worker_id::WorkerId;

/// A snapshot of one worker, from [`Cluster::workers`](super::Cluster::workers).
/// Non-exhaustive: fields may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The worker's id.
    pub id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// Whether it has said it is online.
    pub online: bool,
    /// Whether it was asked to disconnect.
    pub disconnecting: bool,
    /// On how many addresses it listens.
    pub listening: usize,
    /// Connections the primary handed to it (round-robin mode).
    pub dispatched: u64,
    /// Connections its listeners returned, as it last reported (about once a second,
    /// and when it exits; every mode).
    pub accepted: u64,
    /// Connections it has open, as it last reported.
    pub open: u32,
    /// How long ago it was forked.
    pub uptime: Duration,
    /// Its resident set size in bytes, as the primary last read it from
    /// `/proc/PID/statm` (about once a second); with
    /// [`Builder::max_rss`](super::Builder::max_rss), plus the memory files it holds
    /// open unmapped (what the limit is compared with). Read only when a health knob that
    /// wakes the primary is set ([`Builder::max_rss`](super::Builder::max_rss), [`Builder::worker_timeout`](super::Builder::worker_timeout),
    /// [`Builder::heartbeat_timeout`](super::Builder::heartbeat_timeout)); `None` otherwise, and before the first read.
    pub rss: Option<u64>,
    /// Why the worker this one replaced was replaced, when the primary did it on its
    /// own (a health knob); `None` for a worker forked at start, to grow the
    /// cluster, to replace a crash, or in a reload.
    pub replaced_because: Option<Replacement>,
}

/// Counters over the cluster's life, from [`Cluster::stats`](super::Cluster::stats).
/// Non-exhaustive: counters may be added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Workers forked.
    pub forks: u64,
    /// Forks that failed (`EAGAIN`, `ENOMEM`, …).
    pub fork_failures: u64,
    /// Workers that exited (crashed or asked to).
    pub exits: u64,
    /// Workers that exited without being asked to.
    pub crashes: u64,
    /// Round-robin connections the primary accepted but had to close without a worker
    /// serving them: those that came back from dying workers more than three times,
    /// and those pending when a shutdown closed the listener.
    pub dropped_connections: u64,
    /// Workers killed because they did not answer the primary's ping or stopped
    /// calling [`Worker::heartbeat`](crate::Worker::heartbeat).
    pub health_kills: u64,
    /// Recycles started ([`Builder::max_connections`](super::Builder::max_connections), [`Builder::max_rss`](super::Builder::max_rss)).
    pub recycles: u64,
    /// Exited children the primary reaped that were not its workers. When the primary
    /// is pid 1 (a container's init) or a child subreaper (`PR_SET_CHILD_SUBREAPER`),
    /// processes orphaned below it are reparented to it, and it reaps those that exit,
    /// so none stays a zombie; their exits are never reported as a worker's. Always 0
    /// in any other process.
    pub orphans_reaped: u64,
}
