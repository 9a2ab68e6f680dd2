//! The round-robin handle: the primary listens and accepts, and hands each connection to
//! a waiting worker thread (Node's `lib/internal/cluster/round_robin_handle.js`).
//!
//! Node's `RoundRobinHandle` keeps a FIFO of free workers (`free`) and a queue of
//! accepted connections (`handles`); `distribute` queues a connection, `handoff` sends
//! one to a free worker, and the worker's ack makes it free again. This file keeps that
//! shape and mends what is weak in it:
//!
//! - **Credits, not acks.** Each worker thread that blocks in `accept` first sends one
//!   `Ready` credit over its hand-off channel. `free` holds one entry per credit, oldest
//!   first, so a connection goes to the thread that has waited longest, and only to a
//!   thread that is actually waiting: a busy worker gets nothing ("round-robin" among the
//!   free, as the design notes ask for a synchronous worker).
//! - **Back-pressure.** The listener is polled only while a credit is free and no
//!   connection is pending. When every worker is busy, the primary stops accepting and
//!   the kernel's backlog holds new clients (Node accepts into an unbounded array).
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
//! - **Out of descriptors** (`EMFILE`, `ENFILE`): accepting pauses with a growing delay
//!   instead of spinning on a readable listener (the libuv/Node trap), and resumes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::addr::{ListenAddr, PeerAddr};
use crate::bind::Bound;
use crate::connection::StreamKind;
use crate::ipc::channel::{Channel, Incoming, RecvError};
use crate::ipc::codec::{Message, ProtocolError};
use crate::sys::socket;
use crate::WorkerId;

/// How often a connection may come back (its worker died or closed before receiving
/// it) before the primary gives up on it and closes it.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// The most credits one hand-off channel may hold: more threads than this waiting in
/// `accept` on one listener of one worker is taken for a protocol violation.
pub(crate) const MAX_CREDITS: u32 = 4096;

const PAUSE_START: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(500);

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

/// What reading a member's channel found.
#[derive(Debug)]
pub(crate) enum MemberStatus {
    /// Credits (possibly none) were added.
    Ok,
    /// The worker shut its end down or is gone; the member was removed and what it had
    /// not received was taken back.
    Closed,
    /// The worker sent something invalid; it must be killed.
    Protocol(WorkerId, ProtocolError),
}

/// A round-robin handle: one listening socket and the workers listening on it.
#[derive(Debug)]
pub(crate) struct RoundRobinHandle {
    local: ListenAddr,
    kind: StreamKind,
    listener: Option<OwnedFd>,
    /// `poll` reported the listener readable and `accept` has not yet said `EAGAIN`.
    readable: bool,
    /// Accepting is paused until then (out of descriptors).
    paused_until: Option<Instant>,
    pause: Duration,
    members: Vec<Member>,
    next_member: u32,
    /// One entry per credit, oldest first (Node's `free`).
    free: VecDeque<u32>,
    /// Accepted or taken-back connections waiting for a credit (Node's `handles`).
    pending: VecDeque<Pending>,
    /// Connections closed after [`MAX_ATTEMPTS`] bounces or at shutdown.
    dropped: u64,
}

impl RoundRobinHandle {
    /// Starts listening on a freshly bound, non-blocking socket.
    pub(crate) fn new(bound: Bound, backlog: i32) -> io::Result<RoundRobinHandle> {
        socket::listen(bound.fd.as_fd(), backlog)?;
        Ok(RoundRobinHandle {
            local: bound.local,
            kind: bound.kind,
            listener: Some(bound.fd),
            readable: false,
            paused_until: None,
            pause: PAUSE_START,
            members: Vec::new(),
            next_member: 1,
            free: VecDeque::new(),
            pending: VecDeque::new(),
            dropped: 0,
        })
    }

    /// The bound address.
    pub(crate) fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// Adds a hand-off channel for `worker`; returns the member id and the worker's
    /// end, to send in the listen reply.
    pub(crate) fn add(&mut self, worker: WorkerId) -> io::Result<(u32, BorrowedFd<'_>)> {
        let (primary_end, worker_end) = Channel::pair()?;
        let id = self.next_member;
        self.next_member = self.next_member.wrapping_add(1).max(1);
        self.members.push(Member {
            id,
            worker,
            primary_end,
            worker_end,
            credits: 0,
        });
        let last = self.members.len() - 1; // just pushed
        Ok((id, self.members[last].worker_end.as_fd()))
    }

    /// The listener, when it should be polled: open, not paused, with a free credit
    /// and nothing pending (otherwise the kernel backlog holds the clients).
    pub(crate) fn listener_to_poll(&self, now: Instant) -> Option<BorrowedFd<'_>> {
        if self.free.is_empty()
            || !self.pending.is_empty()
            || self.paused_until.is_some_and(|t| t > now)
        {
            return None;
        }
        self.listener.as_ref().map(|fd| fd.as_fd())
    }

    /// When accepting resumes after a pause, if paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Each member's id and the primary's end of its channel, for `poll`.
    pub(crate) fn member_fds(&self) -> impl Iterator<Item = (u32, BorrowedFd<'_>)> {
        self.members.iter().map(|m| (m.id, m.primary_end.as_fd()))
    }

    /// `poll` reported the listener readable.
    pub(crate) fn set_readable(&mut self) {
        self.readable = true;
    }

    /// Whether `pump` has something to do.
    pub(crate) fn wants_pump(&self) -> bool {
        !self.free.is_empty() && (self.readable || !self.pending.is_empty())
    }

    /// Reads a member's channel until it is empty: credits, or its hang-up.
    pub(crate) fn on_member_readable(&mut self, member: u32, buf: &mut [u8]) -> MemberStatus {
        let Some(i) = self.members.iter().position(|m| m.id == member) else {
            return MemberStatus::Ok;
        };
        loop {
            let m = &mut self.members[i];
            match m.primary_end.recv(buf, true) {
                Ok(Incoming::Message(Message::Ready { count }, None)) => {
                    let credits = m.credits.saturating_add(count);
                    if credits > MAX_CREDITS {
                        return MemberStatus::Protocol(
                            m.worker,
                            ProtocolError::Malformed {
                                kind: "ready",
                                reason: "more credits than any worker has threads",
                            },
                        );
                    }
                    m.credits = credits;
                    let id = m.id;
                    self.free.extend(std::iter::repeat(id).take(count as usize));
                }
                Ok(Incoming::Message(other, _fd)) => {
                    return MemberStatus::Protocol(
                        m.worker,
                        ProtocolError::Unexpected { kind: other.name() },
                    );
                }
                Ok(Incoming::Eof) => {
                    self.remove_member(member);
                    return MemberStatus::Closed;
                }
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return MemberStatus::Ok
                }
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(RecvError::Io(_)) => {
                    self.remove_member(member);
                    return MemberStatus::Closed;
                }
                Err(RecvError::Protocol(e)) => return MemberStatus::Protocol(m.worker, e),
            }
        }
    }

    /// The worker is disconnecting: no new connections for it, at once. Its channels
    /// stay until it shuts them down or dies, so nothing sent to it is lost.
    pub(crate) fn stop_routing(&mut self, worker: WorkerId) {
        let ids: Vec<u32> = self
            .members
            .iter()
            .filter(|m| m.worker == worker)
            .map(|m| m.id)
            .collect();
        self.free.retain(|id| !ids.contains(id));
        for m in self.members.iter_mut().filter(|m| m.worker == worker) {
            m.credits = 0;
        }
    }

    /// The worker is gone: remove its members, taking back what it never received.
    pub(crate) fn remove_worker(&mut self, worker: WorkerId) {
        let ids: Vec<u32> = self
            .members
            .iter()
            .filter(|m| m.worker == worker)
            .map(|m| m.id)
            .collect();
        for id in ids {
            self.remove_member(id);
        }
    }

    fn remove_member(&mut self, id: u32) {
        let Some(i) = self.members.iter().position(|m| m.id == id) else {
            return;
        };
        let m = self.members.swap_remove(i);
        self.free.retain(|&f| f != id);
        // Take back every connection still queued at the worker's end, oldest first,
        // and put them before the ones accepted since (they are older).
        let mut back = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match m.worker_end.recv(&mut buf, true) {
                Ok(Incoming::Message(Message::NewConn { peer }, Some(fd))) => back.push(Pending {
                    fd,
                    peer,
                    bounced_from: Some(m.worker),
                    attempts: 0,
                }),
                Ok(Incoming::Message(..)) | Err(RecvError::Protocol(_)) => continue, // dropped (closes any fd)
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Incoming::Eof) | Err(RecvError::Io(_)) => break,
            }
        }
        for mut p in back.into_iter().rev() {
            p.attempts += 1;
            if p.attempts > MAX_ATTEMPTS {
                self.dropped += 1;
                continue; // dropping closes it: the client sees EOF, not a hang
            }
            self.pending.push_front(p);
        }
    }

    /// Hands connections to free credits: pending ones first, then freshly accepted
    /// ones, until credits, pending connections or the backlog run out. Node's
    /// `distribute` + `handoff`. `on_dispatch` is told the worker of each hand-off.
    pub(crate) fn pump(&mut self, now: Instant, on_dispatch: &mut dyn FnMut(WorkerId)) {
        while !self.free.is_empty() {
            let conn = match self.pending.pop_front() {
                Some(p) => p,
                None => match self.accept_one(now) {
                    Some(p) => p,
                    None => break,
                },
            };
            let Some(pos) = self.pick(conn.bounced_from) else {
                self.pending.push_front(conn); // only its old worker is free: wait
                break;
            };
            let Some(id) = self.free.remove(pos) else {
                break;
            };
            let Some(i) = self.members.iter().position(|m| m.id == id) else {
                self.pending.push_front(conn);
                continue;
            };
            let m = &mut self.members[i];
            let msg = Message::NewConn {
                peer: conn.peer.clone(),
            };
            match m.primary_end.try_send(&msg, Some(conn.fd.as_fd())) {
                Ok(()) => {
                    m.credits = m.credits.saturating_sub(1);
                    on_dispatch(m.worker);
                    // `conn.fd` drops here: the descriptor in flight keeps the
                    // connection alive, and the worker's queue can be taken back.
                }
                Err(_) => {
                    // EPIPE: the worker shut its end down; EAGAIN cannot happen with
                    // credits but is handled the same. Take back, try elsewhere.
                    self.pending.push_front(conn);
                    self.remove_member(id);
                }
            }
        }
    }

    /// The oldest credit, skipping those of the worker a connection came back from, as
    /// long as some other worker listens here (if none does, it may go back).
    fn pick(&self, avoid: Option<WorkerId>) -> Option<usize> {
        let worker_of = |id: &u32| self.members.iter().find(|m| m.id == *id).map(|m| m.worker);
        match avoid {
            Some(w) if self.members.iter().any(|m| m.worker != w) => self
                .free
                .iter()
                .position(|id| worker_of(id).is_some_and(|x| x != w)),
            _ => (!self.free.is_empty()).then_some(0),
        }
    }

    /// Accepts one connection if the listener has one.
    fn accept_one(&mut self, now: Instant) -> Option<Pending> {
        if !self.readable || self.paused_until.is_some_and(|t| t > now) {
            return None;
        }
        let listener = self.listener.as_ref()?;
        loop {
            match socket::accept(listener.as_fd()) {
                Ok((fd, peer)) => {
                    self.pause = PAUSE_START;
                    self.paused_until = None;
                    let peer = match self.kind {
                        StreamKind::Tcp => peer
                            .inet()
                            .map(PeerAddr::Tcp)
                            .unwrap_or(PeerAddr::Unix(None)),
                        StreamKind::Unix => PeerAddr::Unix(peer.unix_path()),
                    };
                    return Some(Pending {
                        fd,
                        peer,
                        bounced_from: None,
                        attempts: 0,
                    });
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        if self.pause == PAUSE_START {
                            eprintln!("cluster: accept on {}: {e}; pausing", self.local);
                        }
                        self.paused_until = Some(now + self.pause);
                        self.pause = (self.pause * 2).min(PAUSE_MAX);
                        self.readable = false;
                        return None;
                    }
                    _ => {
                        // EAGAIN: the backlog is empty. Anything else: wait for poll.
                        self.readable = false;
                        return None;
                    }
                },
            }
        }
    }

    /// Stops accepting for good (shutdown): closes the listening socket, hands what is
    /// pending to free credits, and closes the rest. Returns how many were closed.
    pub(crate) fn close_listener(
        &mut self,
        now: Instant,
        on_dispatch: &mut dyn FnMut(WorkerId),
    ) -> u64 {
        self.readable = false;
        self.listener = None;
        self.pump(now, on_dispatch);
        let closed = self.pending.len() as u64;
        self.pending.clear();
        self.dropped += closed;
        closed
    }

    /// Connections closed because they bounced too often or were pending at shutdown.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}
