//! One interface for the three kinds of listening handle (Node's `SharedHandle` and
//! `RoundRobinHandle`, which `primary.js` drives through the same `add`/`remove`): the
//! primary's loop, its listen requests and its lifecycle call these methods and never
//! look at which kind a handle is. The kinds differ in what they need from the loop:
//!
//! - a shared handle ([`SharedHandle`]) only hands out its socket;
//! - a reuse-port handle ([`ReusePortHandle`]) hands each worker a socket of its own and
//!   keeps them across respawns;
//! - a round-robin handle ([`RoundRobinHandle`]) is the one in the data path: it has
//!   descriptors for `poll` (its listener, its members' channels), timers (a paused
//!   accept, the stall check), connections to hand out after every turn (`pump`), and
//!   workers to report for breaking the protocol;
//! - a datagram handle ([`DatagramHandle`]) hands out a datagram socket: one shared, or
//!   one per worker in reuse-port mode, kept across respawns like reuse-port's.
//!
//! The matching on kinds happens here, once per method.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::datagram::DatagramHandle;
use super::reuse_port::ReusePortHandle;
use super::round_robin::RoundRobinHandle;
use super::scheduler::Scheduler;
use super::shared::SharedHandle;
use super::upgrade::handover::Kind;
use crate::addr::ListenAddr;
use crate::bind::Bound;
use crate::ipc::codec::{ProtocolError, Transport};
use crate::mode::Mode;
use crate::options::ListenOptions;
use crate::worker_id::WorkerId;

/// A listening handle of one of the three kinds.
#[derive(Debug)]
pub(super) enum Handle {
    Shared(SharedHandle),
    // Boxed: by far the largest, and there are few handles.
    RoundRobin(Box<RoundRobinHandle>),
    ReusePort(ReusePortHandle),
    Datagram(DatagramHandle),
}

/// What a descriptor a handle asked `poll` to watch stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    /// The listening socket (round-robin: a connection to accept).
    Listener,
    /// A worker's hand-off channel (round-robin: credits, room, a hang-up).
    Member,
}

/// How a new handle is set up (what the cluster's settings say).
#[derive(Debug, Clone, Copy)]
pub(super) struct Setup<'a> {
    pub(super) options: &'a ListenOptions,
    pub(super) accept_window: Duration,
    pub(super) prefetch: u32,
    /// Workers run as another user ([`Builder::user`](super::Builder::user)): each
    /// gets a datagram socket of its own (see `datagram.rs`).
    pub(super) untrusted: bool,
}

impl Handle {
    /// Wraps a freshly bound socket as a handle of `mode`'s kind.
    pub(super) fn new(
        mode: Mode,
        adopted: bool,
        bound: Bound,
        setup: Setup<'_>,
    ) -> io::Result<Handle> {
        Ok(match mode {
            Mode::Shared => Handle::Shared(SharedHandle::new(bound, adopted)),
            Mode::ReusePort => Handle::ReusePort(ReusePortHandle::new(bound, setup.options)),
            Mode::RoundRobin => Handle::RoundRobin(Box::new(RoundRobinHandle::new(
                bound,
                setup.options.backlog,
                setup.accept_window,
                setup.prefetch,
            )?)),
        })
    }

    /// A datagram handle for `key` in `mode`: a reuse-port group for UDP in reuse-port
    /// mode and, with untrusted workers, in every mode; else one socket bound with
    /// `bind` and shared (see `datagram.rs`). Untrusted workers get no shared socket
    /// (a Unix path, an adopted descriptor): `Unsupported`, naming the address.
    pub(super) fn new_datagram(
        mode: Mode,
        key: &ListenAddr,
        untrusted: bool,
        bind: impl FnOnce() -> io::Result<Bound>,
    ) -> io::Result<Handle> {
        Ok(Handle::Datagram(match (mode, key) {
            (_, ListenAddr::Tcp(_)) if untrusted => DatagramHandle::group(key, true)?,
            (Mode::ReusePort, ListenAddr::Tcp(_)) => DatagramHandle::group(key, false)?,
            _ if untrusted => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{key}: workers that run as another user get no shared datagram \
                         socket (only UDP can be one socket per worker)"
                    ),
                ))
            }
            _ => DatagramHandle::shared(bind()?),
        }))
    }

    /// A handle of `mode`'s kind over the sockets a previous program passed across a
    /// binary upgrade (`passed`, of kind `was`; see `upgrade/handover.rs` for what
    /// `fds` holds). Shared and round-robin take each other's socket (its blocking
    /// flag set to suit); reuse-port takes only reuse-port's group (a trial refuses
    /// the upgrade otherwise).
    pub(super) fn from_passed(
        mode: Mode,
        adopted: bool,
        was: Kind,
        local: ListenAddr,
        fds: Vec<OwnedFd>,
        setup: Setup<'_>,
    ) -> io::Result<Handle> {
        let mut fds = fds.into_iter();
        let first = fds
            .next()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let rest: Vec<OwnedFd> = fds.collect();
        let mismatch = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{local}: a {was:?} socket cannot serve mode {mode}"),
            )
        };
        if let Kind::Datagram | Kind::DatagramGroup = was {
            // A datagram handle serves any mode with what it was (a group stays a
            // group, and a shared socket shared: nobody listens or accepts on either).
            let all = std::iter::once(first).chain(rest).collect();
            let group = was == Kind::DatagramGroup;
            return Ok(Handle::Datagram(DatagramHandle::adopt(
                local,
                group,
                all,
                setup.untrusted,
            )?));
        }
        Ok(match (mode, was) {
            (_, Kind::Datagram | Kind::DatagramGroup) => return Err(mismatch()),
            (Mode::ReusePort, Kind::ReusePort) => {
                Handle::ReusePort(ReusePortHandle::adopt(local, setup.options, first, rest))
            }
            (Mode::ReusePort, _) | (_, Kind::ReusePort) => return Err(mismatch()),
            (Mode::Shared, _) => {
                // Accepting workers block in `accept`; connections the previous
                // primary had not handed out have nobody to go to: they close.
                crate::sys::fd::set_nonblocking(first.as_fd(), false)?;
                Handle::Shared(SharedHandle::adopt(local, first, adopted))
            }
            (Mode::RoundRobin, _) => {
                crate::sys::fd::set_nonblocking(first.as_fd(), true)?;
                let kind = crate::bind::kind_of_socket(first.as_fd())?;
                let bound = Bound {
                    fd: first,
                    local,
                    kind,
                    socket_file: None,
                    adopted,
                };
                let mut h = RoundRobinHandle::new(
                    bound,
                    setup.options.backlog,
                    setup.accept_window,
                    setup.prefetch,
                )?;
                h.adopt_pending(rest);
                Handle::RoundRobin(Box::new(h))
            }
        })
    }

    /// For a binary upgrade: the handle's kind and the sockets that cross `execve` (see
    /// `upgrade/handover.rs`), without the connections [`take_unsent`](Self::take_unsent)
    /// took; `None` once closed.
    pub(super) fn passed_fds(&self) -> Option<(Kind, Vec<BorrowedFd<'_>>)> {
        match self {
            Handle::Shared(h) => Some((Kind::Shared, vec![h.socket()?])),
            Handle::RoundRobin(h) => Some((Kind::RoundRobin, vec![h.listener_fd()?])),
            Handle::ReusePort(h) => Some((Kind::ReusePort, h.passed_fds()?)),
            Handle::Datagram(h) => {
                let (group, fds) = h.passed_fds()?;
                let kind = if group {
                    Kind::DatagramGroup
                } else {
                    Kind::Datagram
                };
                Some((kind, fds))
            }
        }
    }

    /// For a binary upgrade: the connections accepted and not handed out (round-robin).
    pub(super) fn take_unsent(&mut self) -> Vec<OwnedFd> {
        match self {
            Handle::RoundRobin(h) => h.take_pending(),
            Handle::Shared(_) | Handle::ReusePort(_) | Handle::Datagram(_) => Vec::new(),
        }
    }

    /// What [`take_unsent`](Self::take_unsent) took, back (the `execve` failed).
    pub(super) fn adopt_unsent(&mut self, conns: Vec<OwnedFd>) {
        if let Handle::RoundRobin(h) = self {
            h.adopt_pending(conns);
        }
    }

    /// The bound address (port 0 resolved).
    pub(super) fn local(&self) -> &ListenAddr {
        match self {
            Handle::Shared(h) => h.local(),
            Handle::RoundRobin(h) => h.local(),
            Handle::ReusePort(h) => h.local(),
            Handle::Datagram(h) => h.local(),
        }
    }

    /// Whether this is a datagram handle (what `Listening` reports, and the key's other
    /// half).
    pub(super) fn is_datagram(&self) -> bool {
        matches!(self, Handle::Datagram(_))
    }

    /// Node's `add`: what `worker` listens through, to send in its listen reply (a
    /// socket, or a hand-off channel). `replacing`: the worker it replaces in a reload,
    /// whose reuse-port socket it takes over.
    pub(super) fn add(
        &mut self,
        worker: WorkerId,
        replacing: Option<WorkerId>,
    ) -> io::Result<(Transport, BorrowedFd<'_>)> {
        match self {
            Handle::Shared(h) => h
                .socket()
                .map(|fd| (Transport::Socket, fd))
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ESHUTDOWN)),
            Handle::RoundRobin(h) => h.add(worker).map(|(_, fd)| (Transport::Handoff, fd)),
            Handle::ReusePort(h) => h.grant(worker, replacing).map(|fd| (Transport::Socket, fd)),
            Handle::Datagram(h) => h
                .grant(worker, replacing)
                .map(|fd| (Transport::Datagram, fd)),
        }
    }

    /// Node's `remove`: `worker` has exited. Round-robin takes back what it had not
    /// received; reuse-port keeps its sockets for whoever comes next, as long as the
    /// cluster keeps `target` workers.
    pub(super) fn remove(&mut self, worker: WorkerId, target: usize) {
        match self {
            Handle::Shared(_) => {}
            Handle::RoundRobin(h) => h.remove_worker(worker),
            Handle::ReusePort(h) => {
                h.worker_gone(worker);
                h.prune(target);
            }
            Handle::Datagram(h) => h.worker_gone(worker, target),
        }
    }

    /// No new connections for `worker`, at once (it is going).
    pub(super) fn stop_routing(&mut self, worker: WorkerId) {
        if let Handle::RoundRobin(h) = self {
            h.stop_routing(worker);
        }
    }

    /// Descriptors the handle holds for `worker` (its share of the primary's budget).
    pub(super) fn descriptors_of(&self, worker: WorkerId) -> usize {
        match self {
            Handle::Shared(_) => 0,
            Handle::RoundRobin(h) => h.descriptors_of(worker),
            Handle::ReusePort(h) => h.descriptors_of(worker),
            Handle::Datagram(h) => h.descriptors_of(worker),
        }
    }

    /// The descriptors to `poll` this turn, with what to watch each for (readable,
    /// writable), appended to `out`.
    pub(super) fn watch<'a>(
        &'a self,
        now: Instant,
        out: &mut dyn FnMut(BorrowedFd<'a>, bool, bool, Watch),
    ) {
        if let Handle::RoundRobin(h) = self {
            if let Some(fd) = h.listener_to_poll(now) {
                out(fd, true, false, Watch::Listener);
            }
            for (fd, r, w) in h.member_fds() {
                out(fd, r, w, Watch::Member);
            }
        }
    }

    /// `poll` reported one of the descriptors of [`watch`](Handle::watch).
    pub(super) fn on_ready(&mut self, what: Watch, readable: bool, writable: bool) {
        if let Handle::RoundRobin(h) = self {
            match what {
                Watch::Listener => h.set_readable(),
                Watch::Member => {
                    if writable {
                        h.on_member_writable();
                    }
                    if readable {
                        h.on_member_readable();
                    }
                }
            }
        }
    }

    /// The handle's next timer (a paused accept, a stall check).
    pub(super) fn next_timer(&self, now: Instant) -> Option<Instant> {
        match self {
            Handle::RoundRobin(h) => match (h.resume_at(now), h.check_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Handle::Shared(_) | Handle::ReusePort(_) | Handle::Datagram(_) => None,
        }
    }

    /// After each turn: the stall check when due. Returns the connections taken back
    /// from live workers (not dispatched to them after all), by worker.
    pub(super) fn tick(&mut self, now: Instant) -> Vec<(WorkerId, u64)> {
        match self {
            Handle::RoundRobin(h) => {
                h.check_stalls(now);
                h.take_returned()
            }
            Handle::Shared(_) | Handle::ReusePort(_) | Handle::Datagram(_) => Vec::new(),
        }
    }

    /// Hands out what can be handed out (Node's `distribute`); `on_dispatch` hears of
    /// each hand-off. Returns the workers that broke the protocol meanwhile.
    pub(super) fn pump(
        &mut self,
        now: Instant,
        scheduler: &mut dyn Scheduler,
        on_dispatch: &mut dyn FnMut(WorkerId),
    ) -> Vec<(WorkerId, ProtocolError)> {
        match self {
            Handle::RoundRobin(h) => {
                if h.wants_pump() {
                    h.pump(now, scheduler, on_dispatch);
                }
                h.take_faults()
            }
            Handle::Shared(_) | Handle::ReusePort(_) | Handle::Datagram(_) => Vec::new(),
        }
    }

    /// Cluster shutdown: stop taking connections, so clients are refused (round-robin
    /// hands what is pending to the workers that can still take it). Returns how many
    /// accepted connections had to be closed.
    pub(super) fn shut(
        &mut self,
        now: Instant,
        scheduler: &mut dyn Scheduler,
        on_dispatch: &mut dyn FnMut(WorkerId),
    ) -> u64 {
        match self {
            Handle::Shared(h) => {
                h.close();
                0
            }
            Handle::ReusePort(h) => {
                h.close();
                0
            }
            Handle::Datagram(h) => {
                h.close();
                0
            }
            Handle::RoundRobin(h) => h.close_listener(now, scheduler, on_dispatch),
        }
    }

    /// The end of the handle while the cluster runs (nobody serves its address any
    /// more): stop listening, so clients are refused. Returns the connections it
    /// dropped over its life.
    pub(super) fn close(&mut self) -> u64 {
        match self {
            Handle::Shared(h) => {
                h.close();
                0
            }
            Handle::ReusePort(h) => {
                h.close();
                0
            }
            Handle::Datagram(h) => {
                h.close();
                0
            }
            Handle::RoundRobin(h) => h.dropped(),
        }
    }

    /// Accepted connections closed without a worker serving them (round-robin).
    pub(super) fn dropped(&self) -> u64 {
        match self {
            Handle::RoundRobin(h) => h.dropped(),
            Handle::Shared(_) | Handle::ReusePort(_) | Handle::Datagram(_) => 0,
        }
    }
}
