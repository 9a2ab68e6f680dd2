//! The credit ledger: reading the workers' `Ready` credits into `free`.
//!
//! Node's counterpart is the reply to each hand-off in `RoundRobinHandle.handoff`: the
//! worker's ack puts it back into `free` (`this.free.set(worker.id, worker)`). Here a
//! worker thread sends a credit *before* it waits, and the primary reads credits only
//! when it needs one (see the module docs of [`round_robin`](super)): [`refill`]
//! collects what accumulated on every channel, interleaves it across members, lets a
//! credit pay first for a connection queued ahead, caps a worker's credits at
//! [`MAX_CREDITS`], and removes members that hung up.
//!
//! [`refill`]: RoundRobinHandle::refill

use std::io;

use crate::ipc::channel::Incoming;
use crate::ipc::codec::{Message, ProtocolError};
use crate::sys::scm::{BATCH, BATCH_RECORD};

use super::{RoundRobinHandle, MAX_CREDITS};

impl RoundRobinHandle {
    /// Reads every credit that accumulated on every member's channel, and appends them
    /// to `free` interleaved across members (one of each in turn), so a batch does not
    /// favour one worker. Members that hung up are removed; protocol errors are kept
    /// for [`take_faults`](Self::take_faults). Returns whether a credit is free now.
    pub(super) fn refill(&mut self) -> bool {
        let mut bufs = [[0u8; BATCH_RECORD]; BATCH];
        let mut fresh = std::mem::take(&mut self.scratch_fresh);
        fresh.clear();
        for i in 0..self.members.len() {
            // The worker's credits on its other listeners here: the cap is per worker.
            let worker = self.members[i].worker;
            let others = self
                .members
                .iter()
                .enumerate()
                .filter(|&(j, o)| j != i && o.worker == worker && !o.retired)
                .fold(0u32, |n, (_, o)| n.saturating_add(o.credits));
            let m = &mut self.members[i];
            // The credits already in `free` (a stalled member's are kept out of it).
            let before = if m.stalled { 0 } else { m.credits };
            let mut arrived = 0u32;
            let batch = m.primary_end.batch_len();
            loop {
                let mut fault = None;
                let mut eof = false;
                let mut added = 0u32;
                let mut open = None;
                let got = m.primary_end.recv_many(&mut bufs, &mut |r| match r {
                    Ok(Incoming::Message(Message::Ready { count, open: o }, None)) => {
                        added = added.saturating_add(count);
                        open = Some(o);
                    }
                    Ok(Incoming::Message(other, fd)) => {
                        // A worker's descriptor (only on kernels before 6.16, which
                        // cannot refuse it), never one the primary expects here:
                        // disposed of without the loop waiting (`sys::closer`).
                        if let Some(fd) = fd {
                            crate::sys::scm::dispose(fd, crate::sys::scm::Peer::Untrusted);
                        }
                        fault.get_or_insert(ProtocolError::Unexpected { kind: other.name() });
                    }
                    Ok(Incoming::Eof) => eof = true,
                    // (`recv_many` reports every MSG_CTRUNC as an error; kept total.)
                    Ok(Incoming::FdLost(_)) => {
                        fault.get_or_insert(ProtocolError::ControlTruncated);
                    }
                    Err(e) => {
                        fault.get_or_insert(e);
                    }
                });
                // A credit first pays for a connection queued ahead for this worker: the
                // thread that sent it takes that one without waiting.
                let absorbed = added.min(m.queued);
                m.queued -= absorbed;
                m.credits = m.credits.saturating_add(added - absorbed);
                m.credits_seen += u64::from(added);
                arrived = arrived.saturating_add(added);
                if let Some(o) = open {
                    m.open = o;
                }
                if m.credits.saturating_add(others) > MAX_CREDITS {
                    fault.get_or_insert(ProtocolError::Malformed {
                        kind: "ready",
                        reason: "more credits than any worker has threads",
                    });
                }
                if let Some(e) = fault {
                    // Reported once, and the worker is killed on this turn; its
                    // channel stays until it is reaped (`remove_worker`), so it is
                    // killed before it can see its listener end and leave on its own.
                    if !std::mem::replace(&mut m.faulted, true) {
                        self.faults.push((m.worker, e));
                    }
                    m.retired = true;
                }
                if eof {
                    m.closed = true;
                }
                match got {
                    Ok(n) if n == batch && !m.closed && !m.retired => continue, // maybe more queued
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        m.closed = true;
                        break;
                    }
                }
            }
            if m.stalled && arrived > 0 && !m.closed {
                // It runs again: its credits, old and new, go back into `free`.
                m.stalled = false;
                if std::mem::take(&mut m.probed) {
                    crate::log::report!(
                        "{}: worker {} takes connections again",
                        self.local,
                        m.worker
                    );
                }
            }
            if m.retired {
                m.credits = 0;
            } else if !m.stalled && m.credits > before {
                fresh.push((m.id, m.credits - before));
            }
        }
        // Interleave: one credit of each member in turn.
        while !fresh.is_empty() {
            fresh.retain_mut(|(id, n)| {
                self.free.push_back(*id);
                *n -= 1;
                *n > 0
            });
        }
        self.scratch_fresh = fresh;
        let closed: Vec<u32> = self
            .members
            .iter()
            .filter(|m| m.closed)
            .map(|m| m.id)
            .collect();
        for id in closed {
            self.remove_member(id);
        }
        !self.free.is_empty()
    }
}
