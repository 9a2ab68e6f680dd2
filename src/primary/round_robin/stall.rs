//! Stall recovery: taking connections back from a worker that does not receive them.
//!
//! Node has no counterpart: a connection sent to a worker that is stopped or hung waits
//! in its channel, and one sent to a worker that dies is lost (the client hangs). Here
//! [`check_stalls`] looks, every [`STALL_CHECK`] while connections are being handed
//! out, for a worker's end that has held a record for [`STALL_TIMEOUT`] with no credit
//! from that worker meanwhile; [`unstick`] takes the records back ([`take_back`] reads
//! the worker's own end of the channel, which the primary keeps), serves them elsewhere
//! ([`give_back`]) and, if the worker is not running, sends it a `Probe` ([`probe`])
//! and nothing more until it answers. [`take_back`] is also how a member that hung up
//! or died gives back what it never received (`remove_member`).
//!
//! [`check_stalls`]: RoundRobinHandle::check_stalls
//! [`unstick`]: RoundRobinHandle::unstick
//! [`give_back`]: RoundRobinHandle::give_back

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::ipc::channel::{Incoming, RecvError};
use crate::ipc::codec::Message;
use crate::sys::poll::{self, PollFd};

use super::{Member, Pending, RoundRobinHandle, STALL_CHECK, STALL_TIMEOUT};

impl RoundRobinHandle {
    /// When the workers' channels are next checked for stalls.
    pub(crate) fn check_at(&self) -> Option<Instant> {
        self.check_at
    }

    /// Checks, when due, whether a worker leaves connections unreceived (see the module
    /// docs): one zero-timeout `poll` of every worker's end. A member whose end has held
    /// something since the last checks, with no credit from it meanwhile, is looked at
    /// after [`STALL_TIMEOUT`] ([`unstick`](Self::unstick)). A stalled member whose probe
    /// could not be sent is probed again.
    pub(crate) fn check_stalls(&mut self, now: Instant) {
        if !self.check_at.is_some_and(|t| t <= now) {
            return;
        }
        self.check_at = None;
        self.refill(); // fresh credit counts: a credit is a sign of life
        let queued: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .members
                .iter()
                .map(|m| PollFd::new(m.worker_end.as_fd(), false))
                .collect();
            match poll::poll(&mut fds, Some(Duration::ZERO)) {
                Ok(_) => fds.iter().map(|f| f.readable()).collect(),
                Err(_) => {
                    self.check_at = Some(now + STALL_CHECK);
                    return;
                }
            }
        };
        let mut watch = false;
        let mut stuck = Vec::new();
        for (m, queued) in self.members.iter_mut().zip(queued) {
            if m.stalled {
                if !m.probed && m.credits > 0 {
                    probe(m);
                }
                watch = true; // its answer is read at the next check
                continue;
            }
            if m.retired || m.closed || !queued {
                m.stuck_since = None;
                continue;
            }
            match m.stuck_since {
                Some((since, seen)) if seen == m.credits_seen => {
                    if now.saturating_duration_since(since) >= STALL_TIMEOUT {
                        stuck.push(m.id);
                    } else {
                        watch = true;
                    }
                }
                _ => {
                    m.stuck_since = Some((now, m.credits_seen));
                    watch = true;
                }
            }
        }
        for id in stuck {
            self.unstick(id);
            watch = true;
        }
        if watch {
            self.check_at = Some(now + STALL_CHECK);
        }
    }

    /// A member's channel has held records for [`STALL_TIMEOUT`] with no credit from
    /// it. Takes them back (un-counting those hand-offs in the ledger) and tells the
    /// two cases apart by the ledger:
    ///
    /// - **More records than were queued ahead**: one was sent to a thread that waited
    ///   for it and never received it, so the worker is not running (stopped, hung).
    ///   The connections go to other workers; the member is stalled: its credits are
    ///   kept out of `free`, and one `Probe` goes to it, which a thread answers with a
    ///   credit once the worker runs again.
    /// - **Only connections queued ahead waited**: the worker runs, its threads are all
    ///   busy. If another worker has a thread waiting now, the connections go there
    ///   (not counted as a bounce); otherwise they go back into this worker's channel,
    ///   where they were, rather than wait in the primary.
    fn unstick(&mut self, id: u32) {
        let Some(m) = self.members.iter_mut().find(|m| m.id == id) else {
            return;
        };
        m.stuck_since = None;
        let queued_ahead = m.queued;
        let (back, records) = take_back(m);
        for _ in 0..records {
            // Un-send: the ledger as if the record had never gone out.
            if m.queued > 0 {
                m.queued -= 1;
            } else {
                m.credits = m.credits.saturating_add(1);
            }
        }
        let worker = m.worker;
        if records > queued_ahead {
            m.stalled = true;
            probe(m);
            crate::log::report!(
                "{}: worker {} left a connection unreceived for {} ms (stopped or hung?); {} connection(s) go to other workers, and nothing more to it until it answers",
                self.local,
                worker,
                // (As u64: a u128 would bring its own formatting code, for a constant.)
                STALL_TIMEOUT.as_millis() as u64,
                back.len()
            );
            self.free.retain(|&f| f != id);
            self.give_back(id, back, true);
            return;
        }
        let elsewhere = self.free.iter().any(|&f| {
            self.members
                .iter()
                .any(|o| o.id == f && o.worker != worker && !o.stalled)
        });
        if elsewhere {
            self.give_back(id, back, false);
            return;
        }
        // Nobody else is free: back where they were, in order.
        let mut rest = Vec::new();
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            for p in back {
                let msg = Message::NewConn {
                    peer: p.peer.clone(),
                    attempts: p.attempts.min(u32::from(u8::MAX)) as u8,
                };
                if !rest.is_empty() || m.primary_end.try_send(&msg, Some(p.fd.as_fd())).is_err() {
                    rest.push(p);
                    continue;
                }
                m.queued += 1;
            }
        }
        if !rest.is_empty() {
            self.give_back(id, rest, false);
        }
    }

    /// Connections taken back from a live member, to be handed out again: no longer
    /// counted as dispatched to it.
    fn give_back(&mut self, id: u32, back: Vec<Pending>, bounced: bool) {
        let n = back.len() as u32;
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.dispatched = m.dispatched.saturating_sub(u64::from(n));
            m.open = m.open.saturating_sub(n);
            if n > 0 {
                self.returned.push((m.worker, u64::from(n)));
            }
        }
        self.requeue(back, bounced);
    }
}

/// Sends a stalled member one `Probe` against one of its credits (a thread that waits
/// with nothing to receive answers it). Retried at the next check if the channel has
/// no room now.
fn probe(m: &mut Member) {
    if m.credits == 0 {
        return; // no thread waits with nothing: its own next credit will come
    }
    match m.primary_end.try_send(&Message::Probe, None) {
        Ok(()) => {
            m.credits -= 1;
            m.probed = true;
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM)
            ) => {}
        Err(_) => m.closed = true,
    }
}

/// Receives, from the worker's end of a member's channel, every record the worker has
/// not: the connections, oldest first, and how many records there were (probes
/// included; a record that fails to decode is dropped, closing any descriptor it had).
pub(super) fn take_back(m: &Member) -> (Vec<Pending>, u32) {
    let mut back = Vec::new();
    let mut records = 0u32;
    let mut buf = [0u8; 256];
    loop {
        match m.worker_end.recv(&mut buf, true) {
            Ok(Incoming::Message(Message::NewConn { peer, attempts }, Some(fd))) => {
                records += 1;
                back.push(Pending {
                    fd,
                    peer,
                    bounced_from: Some(m.worker),
                    attempts: u32::from(attempts),
                });
            }
            Ok(Incoming::Message(..) | Incoming::FdLost(_)) | Err(RecvError::Protocol(_)) => {
                records += 1
            }
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Incoming::Eof) | Err(RecvError::Io(_)) => break,
        }
    }
    (back, records)
}
