//! The round-robin handle: the primary listens and accepts, and hands each connection to
//! a waiting worker thread (Node's `lib/internal/cluster/round_robin_handle.js`).
//!
//! Node's `RoundRobinHandle` keeps a FIFO of free workers (`free`) and a queue of
//! accepted connections (`handles`); `distribute` queues a connection, `handoff` sends
//! one to a free worker, and the worker's ack makes it free again. This module keeps that
//! shape and mends what is weak in it:
//!
//! - **Credits, not acks.** Each worker thread that blocks in `accept` first sends one
//!   `Ready` credit over its hand-off channel. `free` holds one entry per credit, oldest
//!   first, so a connection goes to the thread that has waited longest, and only to a
//!   thread that is actually waiting: a busy worker gets nothing ("round-robin" among the
//!   free, as the design notes ask for a synchronous worker).
//! - **Credits are read when needed, not when sent.** A credit costs the worker one
//!   `sendmsg`, but it does not wake the primary: hand-off channels are polled only
//!   while the primary is starved (no credit known). When the credits it knows of run
//!   out, the primary collects everything that accumulated, one `recvmmsg` per channel,
//!   and interleaves the workers' credits. Measured on 2 cores with the server in its
//!   own scheduling group, waking the primary for every credit cost about as much CPU
//!   as the whole rest of the hand-off.
//! - **Idle threads first, then a short queue.** A connection goes to a waiting thread
//!   whenever one exists. Only when every thread of every worker is busy may a worker
//!   get up to `prefetch` (default 1) connections queued ahead in its channel; the
//!   thread that finishes next takes one without going to sleep and being woken again.
//!   The ledger is exact without a message of its own: a credit from a worker first
//!   pays for a connection queued ahead for it, since the thread that sent the credit
//!   is the one that takes it. Measured on 2 cores (round-robin, 4 workers, one thread
//!   each, close mode): 43 → 36 µs of server CPU per connection.
//! - **Back-pressure.** The listener is polled only while a connection can go
//!   somewhere and none is pending. When every thread is busy and every queue full,
//!   the primary stops accepting and the kernel's backlog holds new clients (Node
//!   accepts into an unbounded array).
//! - **Nothing lost when a worker dies or closes.** The primary keeps its copy of the
//!   *worker's* end of each hand-off channel. A connection sent but not yet received sits
//!   in that end's queue; when the worker dies (or shuts the channel down because its
//!   listener closed), the primary reads the queue itself and hands the connections to
//!   other workers (Node leaks them: the client hangs with no FIN). Because recovery
//!   reads the worker's own queue, the primary can close its copy of a connection right
//!   after `sendmsg` instead of holding it until an ack. A connection that comes back is
//!   never sent straight back to the worker it came from, and after
//!   [`MAX_ATTEMPTS`] bounces it is closed rather than juggled forever.
//! - **The listener lives as long as the cluster**, also while no worker is alive, so a
//!   restart refuses nobody (Node closes it with its last worker).
//! - **A worker that stops taking connections** (stopped with `SIGSTOP`, hung, swapped
//!   out) cannot hold them hostage. A connection sent to a waiting thread is received
//!   within microseconds, so one still unreceived after [`STALL_TIMEOUT`], with no credit
//!   from that worker meanwhile, means the worker is not running: the primary takes back
//!   everything queued for it, serves it elsewhere, and sends the worker nothing more
//!   until it answers a `Probe` (or sends a credit of its own). A connection queued
//!   ahead for a worker whose threads are all busy that long goes to another worker if
//!   one has a thread waiting. The check costs one zero-timeout `poll` of the workers'
//!   ends every [`STALL_CHECK`] while connections are being handed out, and nothing
//!   while idle.
//! - **Out of descriptors** (`EMFILE`, `ENFILE`): accepting pauses with a growing delay
//!   instead of spinning on a readable listener (the libuv/Node trap), and resumes.
//! - **Never blocked in `accept`.** Each time `poll` reports the listener readable the
//!   primary calls `accept4` at most [`ACCEPT_BATCH`] times, then lets `poll` say again
//!   (level-triggered: a backlog that is still full is reported at once), so a flood of
//!   connections cannot keep it from its other work. An adopted listener (`fd:N`, as
//!   systemd passes one) shares its open file description, and so its `O_NONBLOCK`,
//!   with whoever passed it; anyone holding it may clear the flag, and a blocking
//!   `accept` with an empty backlog would then stop the whole primary (signals
//!   included, with `SA_RESTART`). So before each batch the primary checks the flag
//!   (`F_GETFL`) and sets it again if it was cleared, reporting it once. A child of
//!   the primary never clears it: a forked worker runs none of the primary's teardown
//!   (see `Cluster::release_in_child`). Another process's `fcntl` could still clear it
//!   between that check and an `accept` of the batch (a scenario that clears it while
//!   clients connect caught that window: the primary blocked in `accept` with a
//!   connection it had not handed out), so on an adopted listener each `accept` is
//!   preceded by a zero-timeout `poll`: the primary, its only acceptor, calls
//!   `accept` only when a connection is queued, and it returns at once.
//!
//! # Where each part lives
//!
//! - This file, the Node-shaped core: the handle, what `poll` watches for it, [`pump`]
//!   (Node's `distribute` + `handoff`), closing.
//! - [`members`]: the workers on the handle, [`add`] / [`remove_worker`] /
//!   [`stop_routing`] (Node's `add` / `remove`).
//! - [`accept`]: accepting without ever blocking, and pausing when out of descriptors.
//! - [`choose`]: the choice of a credit for each connection ([`choose_for`], [`pick`],
//!   [`pick_ahead`]).
//! - [`credits`]: the credit ledger, reading credits into `free` ([`refill`]).
//! - [`stall`]: stall recovery, taking back what a worker does not receive
//!   ([`check_stalls`]).
//! - `tests`: unit tests, in-process over socketpairs.
//!
//! [`add`]: RoundRobinHandle::add
//! [`remove_worker`]: RoundRobinHandle::remove_worker
//! [`stop_routing`]: RoundRobinHandle::stop_routing
//! [`pump`]: RoundRobinHandle::pump
//! [`pick`]: RoundRobinHandle::pick
//! [`choose_for`]: RoundRobinHandle::choose_for
//! [`pick_ahead`]: RoundRobinHandle::pick_ahead
//! [`refill`]: RoundRobinHandle::refill
//! [`check_stalls`]: RoundRobinHandle::check_stalls

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::addr::{ListenAddr, PeerAddr};
use crate::backoff::Doubling;
use crate::bind::Bound;
use crate::connection::StreamKind;
use crate::ipc::channel::Channel;
use crate::ipc::codec::{Message, ProtocolError};
use crate::sys::fd;

use super::scheduler::{ReadyWorker, Scheduler};
use crate::sys::socket;
use crate::worker_id::WorkerId;

mod accept;
mod choose;
mod credits;
mod members;
mod stall;
#[cfg(test)]
mod tests;

/// How often a connection may come back (its worker died or closed before receiving
/// it) before the primary gives up on it and closes it.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// The most `accept4` calls per report of the listener's readiness (see the module
/// docs): large enough that a burst is taken in few turns, small enough that one turn
/// stays short.
pub(crate) const ACCEPT_BATCH: u32 = 64;

/// Listeners one worker may hold on one address (each is a channel with two
/// descriptors in the primary); more get `EMFILE`. A server needs one per address
/// (its threads share it); a few more are allowed for code that binds twice.
pub(crate) const MAX_LISTENERS_PER_WORKER: usize = 16;

/// The most credits one worker may hold on one address, over all its listeners there:
/// more threads than this waiting in `accept` on one address in one worker is taken for
/// a protocol violation (and `pick`'s scan of the credits stays short).
pub(crate) const MAX_CREDITS: u32 = 4096;

/// How long a connection may sit unreceived in the channel of a worker that sends no
/// credit meanwhile before the worker counts as stalled.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the workers' channels are checked for unreceived connections, while
/// connections are being handed out or a worker is stalled.
pub(crate) const STALL_CHECK: Duration = Duration::from_millis(250);

/// One worker listener's hand-off channel, seen from the primary.
#[derive(Debug)]
struct Member {
    id: u32,
    worker: WorkerId,
    /// The primary's end: connections go out, credits come in.
    primary_end: Channel,
    /// The worker's end, kept to take back what the worker never received.
    worker_end: Channel,
    credits: u32,
    /// Connections open in the worker, as its last credit said.
    open: u32,
    /// Its share counter: connections this handle sent it, counted from the average of
    /// the others when it joined.
    dispatched: u64,
    /// Connections sent ahead, with no thread waiting for them (at most `prefetch`).
    queued: u32,
    /// The last send found the channel full (`EAGAIN`): nothing goes to it until `poll`
    /// says there is room.
    blocked: bool,
    /// The worker is disconnecting: its credits are read and ignored.
    retired: bool,
    /// Its channel reported EOF or failed: to be removed.
    closed: bool,
    /// It sent something that breaks the protocol: reported (once), retired, kept
    /// until its worker, killed for it, is reaped.
    faulted: bool,
    /// Credits received from it so far: a change shows it is alive.
    credits_seen: u64,
    /// Since when its channel has held an unreceived record, and `credits_seen` then.
    stuck_since: Option<(Instant, u64)>,
    /// It left a connection unreceived for [`STALL_TIMEOUT`]: it gets nothing (its
    /// credits are kept out of `free`) until a credit from it arrives.
    stalled: bool,
    /// A `Probe` was sent to it while stalled (some of its threads were waiting, so it
    /// was not merely busy): reported when it runs again.
    probed: bool,
}

/// A connection the primary accepted (or took back) and has not handed off yet.
#[derive(Debug)]
struct Pending {
    fd: OwnedFd,
    peer: PeerAddr,
    /// The worker it last went to, if it came back.
    bounced_from: Option<WorkerId>,
    attempts: u32,
}

impl Pending {
    /// Closes a connection no worker will serve, without ever waiting in `close`. One
    /// that came back from a worker's channel may have been copied by that worker
    /// (`MSG_PEEK` on the record duplicates the descriptor), which could have set
    /// `SO_LINGER` on it and filled its send buffer: the primary's close, the last one,
    /// would then block for the linger time. Lingering off first: the close returns at
    /// once, and the kernel still ends the connection gracefully (the client sees EOF).
    ///
    /// A Unix connection is closed on a closer thread
    /// ([`crate::sys::closer::close_untrusted`]): its client, any local process, may
    /// have sent descriptors into it (`SCM_RIGHTS`, which no flag of the primary's can
    /// refuse ahead of the accept), and the last close of the connection releases them,
    /// a lingering socket or a FUSE file among them, in the closing thread. Only
    /// connections no worker takes come here, so the thread is rare.
    fn let_go(self) {
        if let PeerAddr::Unix(_) = self.peer {
            crate::sys::closer::close_own_socket(self.fd);
            return;
        }
        if self.bounced_from.is_some() {
            let _ = socket::set_linger(self.fd.as_fd(), None);
        }
    }
}

/// A round-robin handle: one listening socket and the workers listening on it.
#[derive(Debug)]
pub(crate) struct RoundRobinHandle {
    local: ListenAddr,
    kind: StreamKind,
    listener: Option<OwnedFd>,
    /// `poll` reported the listener readable and `accept` has not yet said `EAGAIN`.
    readable: bool,
    /// `accept4` calls since `poll` last reported the listener readable (at most
    /// [`ACCEPT_BATCH`]).
    batch: u32,
    /// Accepting is paused until then (out of descriptors).
    paused_until: Option<Instant>,
    pause: Doubling,
    /// The accept window: after a turn that accepted, the listener is left alone this
    /// long so the next connections are accepted in one batch (see `accept_window`).
    window: Duration,
    /// The listener is left alone until then (the window after the last batch).
    quiet_until: Option<Instant>,
    /// How many connections may wait in a worker's channel when no worker has a
    /// thread free (see the module docs).
    prefetch: u32,
    members: Vec<Member>,
    next_member: u32,
    /// One entry per credit, oldest first (Node's `free`).
    free: VecDeque<u32>,
    /// Accepted or taken-back connections waiting for a credit (Node's `handles`).
    pending: VecDeque<Pending>,
    /// Connections closed after [`MAX_ATTEMPTS`] bounces or at shutdown.
    dropped: u64,
    /// Workers that sent invalid records, for the primary to kill.
    faults: Vec<(WorkerId, ProtocolError)>,
    /// Connections taken back from live workers since the last call of
    /// [`take_returned`](Self::take_returned): not dispatched to them after all.
    returned: Vec<(WorkerId, u64)>,
    /// Reused by `pick`: the scheduler's candidates, and each one's (position of its
    /// oldest credit in `free`, member id).
    scratch_ready: Vec<ReadyWorker>,
    scratch_at: Vec<(usize, u32)>,
    /// Reused by `pick`: workers, then members, already looked at.
    scratch_seen: Vec<u32>,
    /// Reused by `refill`: each member's new credits, before interleaving.
    scratch_fresh: Vec<(u32, u32)>,
    /// Where `pick_ahead` starts looking next.
    rotation: usize,
    /// When the workers' channels are next checked for stalls (armed by a hand-off).
    check_at: Option<Instant>,
    /// The listener was adopted (`fd:N`): it was made non-blocking here, a flag its
    /// original holder shares; it is made blocking again when this handle lets go.
    adopted: bool,
    /// Someone cleared the adopted listener's `O_NONBLOCK` and it was reported (once).
    flag_restored: bool,
}

impl RoundRobinHandle {
    /// Starts listening on a freshly bound, non-blocking socket.
    pub(crate) fn new(
        bound: Bound,
        backlog: i32,
        window: Duration,
        prefetch: u32,
    ) -> io::Result<RoundRobinHandle> {
        socket::listen(bound.fd.as_fd(), backlog)?;
        Ok(RoundRobinHandle {
            local: bound.local,
            kind: bound.kind,
            listener: Some(bound.fd),
            readable: false,
            batch: 0,
            paused_until: None,
            pause: Doubling::out_of_resources(),
            window,
            quiet_until: None,
            prefetch,
            members: Vec::new(),
            next_member: 1,
            free: VecDeque::new(),
            pending: VecDeque::new(),
            dropped: 0,
            faults: Vec::new(),
            returned: Vec::new(),
            scratch_ready: Vec::new(),
            scratch_at: Vec::new(),
            scratch_seen: Vec::new(),
            scratch_fresh: Vec::new(),
            rotation: 0,
            check_at: None,
            adopted: bound.adopted,
            flag_restored: false,
        })
    }

    /// The bound address.
    pub(crate) fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// The listener, when it should be polled: open, not paused, with a free credit
    /// and nothing pending (otherwise the kernel backlog holds the clients).
    pub(crate) fn listener_to_poll(&self, now: Instant) -> Option<BorrowedFd<'_>> {
        if !self.can_dispatch() || !self.pending.is_empty() || self.resume_at(now).is_some() {
            return None;
        }
        self.listener.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether a connection could go somewhere now: a thread waits, or a worker may
    /// have one queued ahead.
    fn can_dispatch(&self) -> bool {
        !self.free.is_empty() || self.members.iter().any(|m| self.may_queue(m))
    }

    fn may_queue(&self, m: &Member) -> bool {
        !m.retired && !m.closed && !m.stalled && m.queued < self.prefetch
    }

    /// When the listener is polled again, if it is left alone for now (a pause after
    /// running out of descriptors, or the accept window).
    /// Only instants still ahead count: a timer that has passed is disarmed (else the
    /// primary's `poll` would get a zero timeout on every turn and spin).
    /// (Two plain comparisons: asked several times a turn, and an iterator chain
    /// over the pair cost about 200 instructions a connection when not inlined.)
    pub(crate) fn resume_at(&self, now: Instant) -> Option<Instant> {
        let ahead = |t: Option<Instant>| t.filter(|&t| t > now);
        match (ahead(self.paused_until), ahead(self.quiet_until)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets timers that have passed.
    fn expire_timers(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        if self.quiet_until.is_some_and(|t| t <= now) {
            self.quiet_until = None;
        }
    }

    /// Every member's channel for `poll`, with what to watch it for: input (credits)
    /// only while the primary needs one — nothing can be dispatched, or connections
    /// wait — so that otherwise credits wait unread and cost no wake-up; output while
    /// the channel was full; and always, implicitly, its hang-up, so a worker that
    /// closes its listener gives back what it had not received at once.
    pub(crate) fn member_fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, bool, bool)> {
        let want_credits = !self.can_dispatch() || !self.pending.is_empty();
        self.members
            .iter()
            .map(move |m| (m.primary_end.as_fd(), want_credits, m.blocked))
    }

    /// `poll` reported a member's channel writable again.
    pub(crate) fn on_member_writable(&mut self) {
        for m in &mut self.members {
            m.blocked = false;
        }
    }

    /// `poll` reported the listener readable.
    pub(crate) fn set_readable(&mut self) {
        self.readable = true;
        self.batch = 0;
    }

    /// Whether `pump` has something to do.
    pub(crate) fn wants_pump(&self) -> bool {
        self.readable || !self.pending.is_empty()
    }

    /// `poll` reported a member's channel readable (credits while the primary needs
    /// them, or a hang-up): collect every member's credits, remove those that hung up.
    pub(crate) fn on_member_readable(&mut self) {
        self.refill();
    }

    /// Workers that sent invalid records since the last call; the primary kills them.
    pub(crate) fn take_faults(&mut self) -> Vec<(WorkerId, ProtocolError)> {
        std::mem::take(&mut self.faults)
    }

    /// Connections taken back from live workers since the last call, per worker: the
    /// primary un-counts them from the workers' dispatched counters.
    pub(crate) fn take_returned(&mut self) -> Vec<(WorkerId, u64)> {
        std::mem::take(&mut self.returned)
    }

    /// Hands connections to free credits: pending ones first, then freshly accepted
    /// ones, until credits, pending connections or the backlog run out. Node's
    /// `distribute` + `handoff`. `on_dispatch` is told the worker of each hand-off.
    pub(crate) fn pump(
        &mut self,
        now: Instant,
        scheduler: &mut dyn Scheduler,
        on_dispatch: &mut dyn FnMut(WorkerId),
    ) {
        self.expire_timers(now);
        let mut accepted = false;
        loop {
            // No known credit: collect the ones that accumulated before accepting more.
            if self.free.is_empty() && !self.refill() && !self.can_dispatch() {
                break;
            }
            let conn = match self.pending.pop_front() {
                Some(p) => p,
                None => match self.accept_one(now) {
                    Some(p) => {
                        accepted = true;
                        p
                    }
                    None => break,
                },
            };
            let Some((id, ahead)) = self.choose_for(conn.bounced_from, scheduler) else {
                self.pending.push_front(conn); // nowhere to go now: wait for a credit
                break;
            };
            let Some(i) = self.members.iter().position(|m| m.id == id) else {
                self.pending.push_front(conn);
                continue;
            };
            let m = &mut self.members[i];
            let msg = Message::NewConn {
                peer: conn.peer.clone(),
                attempts: conn.attempts.min(u32::from(u8::MAX)) as u8,
            };
            match m.primary_end.try_send(&msg, Some(conn.fd.as_fd())) {
                Ok(()) => {
                    if ahead {
                        m.queued += 1;
                    } else {
                        m.credits = m.credits.saturating_sub(1);
                    }
                    m.dispatched += 1;
                    m.open = m.open.saturating_add(1); // until its next credit says better
                    on_dispatch(m.worker);
                    self.check_at.get_or_insert(now + STALL_CHECK);
                    // `conn.fd` drops here: the descriptor in flight keeps the
                    // connection alive, and the worker's queue can be taken back.
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::ENOBUFS | libc::ETOOMANYREFS)
                    ) =>
                {
                    // The channel is full (more credits than its buffer holds records),
                    // or the kernel is short of buffers or of in-flight descriptors:
                    // keep the connection and the credit, wait for room.
                    m.blocked = true;
                    if !ahead {
                        self.free.push_front(id);
                    }
                    self.pending.push_front(conn);
                    break;
                }
                Err(_) => {
                    // EPIPE, ECONNRESET: the worker shut its end down or is gone. Take
                    // back what it had not received, and try elsewhere.
                    self.pending.push_front(conn);
                    self.remove_member(id);
                }
            }
        }
        if accepted && !self.window.is_zero() {
            self.quiet_until = Some(crate::deadline::after(now, self.window));
        }
    }

    /// Stops accepting for good (shutdown): closes the listening socket, hands what is
    /// pending to free credits, and closes the rest. Returns how many were closed.
    pub(crate) fn close_listener(
        &mut self,
        now: Instant,
        scheduler: &mut dyn Scheduler,
        on_dispatch: &mut dyn FnMut(WorkerId),
    ) -> u64 {
        self.readable = false;
        self.release_listener();
        self.pump(now, scheduler, on_dispatch);
        let closed = self.pending.len() as u64;
        for p in self.pending.drain(..) {
            p.let_go();
        }
        self.dropped += closed;
        closed
    }

    /// The listening socket, while open (a binary upgrade passes it on).
    pub(crate) fn listener_fd(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(|l| l.as_fd())
    }

    /// For a binary upgrade: the connections accepted and not yet handed out, taken out
    /// of the queue to cross `execve` with the listener (given back with
    /// [`adopt_pending`](Self::adopt_pending) if the `execve` fails).
    pub(crate) fn take_pending(&mut self) -> Vec<OwnedFd> {
        self.pending.drain(..).map(|p| p.fd).collect()
    }

    /// Connections accepted by the previous program (or by this one before a failed
    /// `execve`) and not handed out: queued ahead of anything accepted since.
    pub(crate) fn adopt_pending(&mut self, conns: Vec<OwnedFd>) {
        for fd in conns.into_iter().rev() {
            let addr = socket::peer_addr(fd.as_fd())
                .unwrap_or_else(|_| crate::sys::sockaddr::SockAddr::zeroed());
            self.pending.push_front(Pending {
                peer: crate::accept::peer_of(self.kind, &addr),
                fd,
                bounced_from: None,
                attempts: 0,
            });
        }
    }

    /// Lets go of the listening socket (an adopted one back to blocking first).
    fn release_listener(&mut self) {
        if let Some(listener) = self.listener.take() {
            if self.adopted {
                let _ = fd::set_nonblocking(listener.as_fd(), false);
            }
            // A Unix listener's backlog may hold what local clients sent.
            crate::sys::closer::close_own_socket(listener);
        }
    }

    /// Connections closed because they bounced too often or were pending at shutdown,
    /// and those still pending now (closed when the handle goes).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped + self.pending.len() as u64
    }
}

impl Drop for RoundRobinHandle {
    /// Restores an adopted listener's blocking flag (closes nothing itself: the fields
    /// do that). Only ever in the primary: a forked worker forgets its copy of the
    /// handles without dropping them, since the flag it would clear belongs to the
    /// open file description the primary is still accepting on.
    fn drop(&mut self) {
        self.release_listener();
        for p in self.pending.drain(..) {
            p.let_go();
        }
    }
}
