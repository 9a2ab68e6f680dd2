//! The gate: the set of threads inside `accept(2)` on one listener, and how
//! [`close`](super::Listener::close) interrupts them.
//!
//! Closing a descriptor does not wake a thread blocked on it, and a socket that other
//! workers share cannot be shut down. So each accepting thread holds a [`Ticket`] while
//! it is inside `accept(2)`, and [`Gate::interrupt_all`] signals every registered thread
//! with [`INTERRUPT_SIGNAL`](crate::sys::signal::INTERRUPT_SIGNAL) (no `SA_RESTART`)
//! until none is left inside; a thread that was signalled has the pending signal
//! delivered when its ticket drops, before it returns to application code (see the
//! module docs of [`listener`](super)). Node has no counterpart: its accept never
//! blocks a thread (libuv stops watching the handle when it closes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::addr::ListenAddr;
use crate::sys::process::{self, Tid};
use crate::sys::signal;

/// The set of threads inside `accept(2)` on one listener, and its closed flag.
#[derive(Debug, Default)]
pub(super) struct Gate {
    closed: AtomicBool,
    inside: Mutex<Vec<Inside>>,
}

#[derive(Debug)]
struct Inside {
    tid: Tid,
    signalled: bool,
}

/// A thread's registration inside a [`Gate`]; dropping it leaves.
pub(super) struct Ticket<'a> {
    gate: &'a Gate,
    tid: Tid,
}

/// The calling thread's id. Not cached: a cache in thread-local storage would survive
/// `fork` into the child's main thread, which has another id.
fn current_tid() -> Tid {
    process::gettid()
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Vec<Inside>> {
        self.inside.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers the calling thread; `None` when the gate is closed.
    pub(super) fn enter(&self) -> Option<Ticket<'_>> {
        let tid = current_tid();
        let mut inside = self.lock();
        if self.is_closed() {
            return None;
        }
        inside.push(Inside {
            tid,
            signalled: false,
        });
        Some(Ticket { gate: self, tid })
    }

    /// Closes the gate; `false` when it was already closed.
    pub(super) fn close(&self) -> bool {
        let _inside = self.lock();
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Signals every registered thread until none is left inside (bounded: after 5 s
    /// of trying, gives up and says so; threads that block the signal cannot be woken).
    pub(super) fn interrupt_all(&self, local: &ListenAddr) {
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            {
                let mut inside = self.lock();
                if inside.is_empty() {
                    return;
                }
                for t in inside.iter_mut() {
                    t.signalled = true;
                    let _ = process::signal_thread(t.tid, signal::INTERRUPT_SIGNAL);
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                crate::log::report!(
                    "threads still blocked in accept on {local} after 5 s of signals \
                     (is SIGURG blocked?); giving up"
                );
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let signalled = {
            let mut inside = self.gate.lock();
            match inside.iter().position(|t| t.tid == self.tid) {
                Some(i) => inside.swap_remove(i).signalled,
                None => false,
            }
        };
        if signalled {
            // The signal was sent while we were registered; have it delivered now, so
            // it cannot interrupt the application's next call instead.
            signal::deliver_pending();
        }
    }
}
