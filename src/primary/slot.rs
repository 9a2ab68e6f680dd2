//! The primary's record of one worker process: pid, control channel, what is waiting to
//! be sent to it, and where it is in its life.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::vitals::Vitals;
use crate::ipc::channel::Channel;
use crate::ipc::codec::Message;
use crate::sys::fd;
use crate::sys::process::Pid;
use crate::worker_id::WorkerId;

/// How many user messages may wait for a worker that does not read its channel, before
/// [`Cluster::send`](crate::Cluster::send) refuses more.
pub(crate) const OUTBOX_LIMIT: usize = 1024;

/// How many records of any kind may wait for a worker that does not read; past this,
/// sends fail, and a worker that keeps asking (listen requests) without reading the
/// answers is killed as unresponsive.
pub(crate) const OUTBOX_HARD_LIMIT: usize = 4 * OUTBOX_LIMIT;

/// How many records carrying a descriptor (listen replies) may wait for a worker that
/// does not read: each holds a copy of a listening socket in the primary. A worker has
/// one listen request in flight per thread that calls `Listener::bind`; one that keeps
/// asking without reading the answers is killed as unresponsive after this many,
/// rather than filling the primary's descriptor table with copies.
pub(crate) const OUTBOX_FD_LIMIT: usize = 8;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Forked; has not said `Online` yet.
    Starting,
    /// Running.
    Online,
    /// Asked to disconnect; killed at `deadline` if still alive.
    Disconnecting {
        /// When it gets `SIGKILL`.
        deadline: Instant,
    },
}

/// One worker, as the primary sees it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: WorkerId,
    pub(crate) pid: Pid,
    pub(crate) control: Channel,
    /// Records the worker's queue had no room for, sent when `poll` says it has.
    outbox: VecDeque<(Vec<u8>, Option<OwnedFd>)>,
    pub(crate) phase: Phase,
    /// The primary asked it to go (Node's `exitedAfterDisconnect`).
    pub(crate) requested: bool,
    /// Its control channel reported EOF (it is exiting).
    pub(crate) eof: bool,
    /// `SIGKILL` was sent.
    pub(crate) killed: bool,
    /// Connections handed to it (round-robin).
    pub(crate) dispatched: u64,
    /// Connections it accepted, as it last reported.
    pub(crate) accepted: u64,
    /// Connections it has open, as it last reported.
    pub(crate) open: u32,
    /// On how many addresses it listens.
    pub(crate) listening: usize,
    /// The handles it was ever granted (their ids, ascending, each once): those it
    /// leaves empty when it exits may close.
    pub(crate) granted: Vec<u32>,
    /// When it was forked.
    pub(crate) forked_at: Instant,
    /// The uid it runs as, with `User::per_worker_uids` (see `uids.rs`).
    pub(crate) uid: Option<u32>,
    /// Its setup (chdir, setuid, …) failed: a young death whatever its uptime.
    pub(crate) setup_failed: bool,
    /// It sent `Online` (once; setup failures come before it).
    pub(crate) said_online: bool,
    /// The current one-second window of its messages: its start, and the count.
    window: (Instant, u32),
    /// Listening handles its requests created (charged to its descriptor budget).
    pub(crate) handles_created: usize,
    /// It runs the program this process ran before a binary upgrade: it is asked to
    /// finish once the new program's workers listen.
    pub(crate) previous_program: bool,
    /// What the health checks know of it (`health.rs`).
    pub(crate) vitals: Vitals,
}

impl Slot {
    pub(crate) fn new(id: WorkerId, pid: Pid, control: Channel) -> Slot {
        Slot {
            id,
            pid,
            control,
            outbox: VecDeque::new(),
            handles_created: 0,
            previous_program: false,
            phase: Phase::Starting,
            requested: false,
            eof: false,
            killed: false,
            dispatched: 0,
            accepted: 0,
            open: 0,
            listening: 0,
            granted: Vec::new(),
            forked_at: Instant::now(),
            uid: None,
            setup_failed: false,
            said_online: false,
            window: (Instant::now(), 0),
            vitals: Vitals::new(Instant::now(), None),
        }
    }

    /// Counts one message from the worker; false once it sent more than `limit` in the
    /// current one-second window (`limit` 0: no limit).
    pub(crate) fn admit(&mut self, now: Instant, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let (start, count) = &mut self.window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count <= limit
    }

    /// Sends without ever blocking the primary: what the worker's queue cannot take now
    /// waits in the outbox (with its own copy of `fd`) until `poll` reports room.
    ///
    /// # Errors
    ///
    /// The OS error when the channel is broken (the worker is gone: reaping follows).
    pub(crate) fn send(
        &mut self,
        msg: &Message<'_>,
        pass: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        if self.outbox.is_empty() {
            match self.control.try_send(msg, pass) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let fds_waiting = || self.outbox.iter().filter(|(_, fd)| fd.is_some()).count();
        if self.outbox.len() >= OUTBOX_HARD_LIMIT
            || (pass.is_some() && fds_waiting() >= OUTBOX_FD_LIMIT)
        {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the worker does not read its channel",
            ));
        }
        let mut record = Vec::new();
        msg.encode(&mut record);
        let copy = match pass {
            Some(fd) => Some(fd::dup_cloexec(fd)?),
            None => None,
        };
        self.outbox.push_back((record, copy));
        Ok(())
    }

    /// Whether user messages are piling up for a worker that does not read them.
    pub(crate) fn outbox_full(&self) -> bool {
        self.outbox.len() >= OUTBOX_LIMIT
    }

    /// Whether anything waits to be sent (poll for `POLLOUT` then).
    pub(crate) fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Sends what waits, in order, until the queue is full again.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while let Some((record, fd)) = self.outbox.front() {
            match self
                .control
                .send_encoded(record, fd.as_ref().map(|f| f.as_fd()), true)
            {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
