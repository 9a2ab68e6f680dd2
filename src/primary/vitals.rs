//! What the primary knows of one worker's health: when it last answered a ping, its
//! application's heartbeat, its resident memory, its recycle limit, and why it or the
//! worker it replaced was replaced. Kept in the worker's [`Slot`](super::slot::Slot);
//! the checks that read it are in `health.rs`.

use std::time::{Duration, Instant};

use super::held::Held;
use crate::event::Replacement;

/// The longest wait between two pings, and between two reads of a worker's RSS.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the primary knows of one worker's health.
#[derive(Debug)]
pub(crate) struct Vitals {
    /// The last `Pong` (or the fork).
    pub(super) heard: Instant,
    /// The application's heartbeat silence the last `Pong` reported.
    pub(super) heartbeat: Duration,
    /// A `Ping` is out, unanswered.
    pub(super) ping_out: bool,
    /// When the next `Ping` goes.
    pub(super) next_ping: Instant,
    /// When the RSS is read next.
    pub(super) next_sample: Instant,
    /// The last RSS read, in bytes (with `max_rss`, plus the memory files it holds).
    pub(crate) rss: Option<u64>,
    /// The memory files found among its descriptors (`held.rs`), with `max_rss`.
    pub(super) held: Held,
    /// Replaced once it has accepted this many connections.
    pub(crate) connection_limit: Option<u64>,
    /// A recycle of this worker has been decided (it is not picked again).
    pub(super) recycling: bool,
    /// Why the worker it replaces was replaced, if the primary replaced it on its own.
    pub(crate) replaced_because: Option<Replacement>,
    /// This worker was killed for this reason: its replacement inherits it.
    pub(crate) killed_for: Option<Replacement>,
}

impl Vitals {
    pub(crate) fn new(now: Instant, connection_limit: Option<u64>) -> Vitals {
        Vitals {
            heard: now,
            heartbeat: Duration::ZERO,
            ping_out: false,
            next_ping: now,
            next_sample: now,
            rss: None,
            held: Held::default(),
            connection_limit,
            recycling: false,
            replaced_because: None,
            killed_for: None,
        }
    }

    /// A `Pong` came.
    pub(crate) fn heard(&mut self, now: Instant, heartbeat_ms: u32, every: Option<Duration>) {
        self.heard = now;
        self.heartbeat = Duration::from_millis(u64::from(heartbeat_ms));
        if std::mem::replace(&mut self.ping_out, false) {
            self.next_ping = crate::deadline::after(now, every.unwrap_or(SAMPLE_EVERY));
        }
    }
}
