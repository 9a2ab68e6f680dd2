//! Worker health: hung workers killed and replaced, workers recycled by count and by
//! memory (gunicorn's `--timeout` and `max_requests`, unicorn's `timeout`, Puma's
//! `worker_timeout`, Passenger's `max_memory`; Node's cluster has none of them).
//!
//! # Liveness
//!
//! With [`Builder::worker_timeout`](crate::Builder::worker_timeout) (or [`Builder::heartbeat_timeout`](crate::Builder::heartbeat_timeout)) set, the primary
//! sends each worker a `Ping` every quarter of the shorter timeout (at most once a
//! second), one at a time: the next goes only after the `Pong`. The worker's *control
//! thread* answers (`worker/control.rs`), not the application, so the answer says the
//! process runs and its runtime is not wedged; a process stopped with `SIGSTOP`, or
//! one whose every thread is stuck (the control thread included), stays silent.
//!
//! - *Silence* is the time since the last `Pong` (or the fork). Past `worker_timeout`
//!   the worker is killed.
//! - Each `Pong` carries how long ago the application last called
//!   [`Worker::heartbeat`](crate::Worker::heartbeat) (or the worker started). The
//!   heartbeat silence now is that, plus the time since the `Pong` (a worker that stops
//!   answering also stops heartbeating). Past `heartbeat_timeout` the worker is
//!   killed. This is gunicorn's model for applications with a main loop.
//!
//! A timed-out worker gets `SIGKILL` at once (a stopped process cannot act on
//! `SIGTERM`, and one that does not answer would not finish gracefully either), and
//! no new connection is routed to it. Its exit is not counted as asked for: it is
//! replaced like a crash, under the respawn back-off, so a hang loop cannot become a
//! fork loop; round-robin takes back the connections it had not received (Node's
//! `remove`, on every handle, at its exit). Workers already disconnecting are left to
//! their disconnect deadline.
//!
//! # Recycling
//!
//! [`Builder::max_connections`](crate::Builder::max_connections) (with a jitter drawn per worker, so that workers forked
//! together do not leave together) and [`Builder::max_rss`](crate::Builder::max_rss) mark a worker for
//! *recycling*. A recycle is one step of a reload (`reload.rs`, the same state
//! machine): fork the replacement, wait until it listens where the old one did, then
//! ask the old one to disconnect (it finishes what it holds), and wait until it is
//! gone. At most one recycle runs at a time, and none starts while a reload runs, so
//! at most one worker is ever between states and capacity never dips below the
//! target. The count comes from the worker's own counter of accepted connections: the
//! worker reports it at once when it reaches its limit (it knows the limit from its
//! fork), and otherwise about once a second. The resident set is read from
//! `/proc/PID/statm` about once a second; with `max_rss`, the memory files the worker
//! holds open without mapping them (memfd, tmpfs) are added (`held.rs`). Recycling by
//! memory cleans up after leaks; it contains nothing (a cgroup's `memory.max` does).
//!
//! # What it costs
//!
//! Nothing unless a knob is set. Liveness: one `Ping`/`Pong` pair per worker per
//! interval (a `sendmsg` and a `recvmsg` on each side). Memory: one `/proc` read per
//! worker per second; with `max_rss`, also `status` and up to 256 of its descriptors
//! looked at (a `readlink` each, more for files on a memory mount). Count: one compare per accepted connection in the worker, and a
//! fork per `max_connections` connections.

use std::time::{Duration, Instant};

use super::reload::{Progress, Reload};
use super::slot::{Phase, Slot};
use super::vitals::SAMPLE_EVERY;
use super::{Cluster, State};
use crate::error::Error;
use crate::event::{Event, Replacement};
use crate::ipc::codec::Message;
use crate::sys::process;
use crate::worker_id::WorkerId;

/// The shortest wait between two pings.
const MIN_PING_EVERY: Duration = Duration::from_millis(10);

/// The worker-health settings ([`Builder`](super::Builder)'s `worker_timeout`,
/// `heartbeat_timeout`, `max_connections`, `max_connections_jitter`, `max_rss`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    pub(crate) worker_timeout: Option<Duration>,
    pub(crate) heartbeat_timeout: Option<Duration>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) jitter: u64,
    pub(crate) max_rss: Option<u64>,
}

impl Health {
    /// Refuses settings that would replace every worker as soon as it starts.
    pub(crate) fn check(&self) -> Result<(), Error> {
        for (name, d) in [
            ("worker_timeout", self.worker_timeout),
            ("heartbeat_timeout", self.heartbeat_timeout),
        ] {
            if let Some(d) = d.filter(|&d| d < MIN_PING_EVERY) {
                return Err(Error::Config(format!(
                    "{name} {} is under {}: every worker would be killed as it starts",
                    crate::deadline::Shown(d),
                    crate::deadline::Shown(MIN_PING_EVERY)
                )));
            }
        }
        if self.max_rss == Some(0) {
            return Err(Error::Config(
                "max_rss 0: every worker would be recycled as it starts".into(),
            ));
        }
        Ok(())
    }

    /// How often a worker is pinged, if at all: a quarter of the shorter timeout,
    /// between 10 ms and 1 s.
    fn ping_every(&self) -> Option<Duration> {
        let shortest = match (self.worker_timeout, self.heartbeat_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shortest / 4).clamp(MIN_PING_EVERY, SAMPLE_EVERY))
    }

    /// Whether the primary samples each worker's RSS (`max_rss`, or any liveness
    /// timeout: the primary wakes up for those anyway).
    fn samples_rss(&self) -> bool {
        self.max_rss.is_some() || self.ping_every().is_some()
    }
}

/// A small pseudo-random generator (splitmix64) for the jitter: no dependency, and
/// nothing here needs more than workers that do not all draw the same number.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn seeded() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(nanos ^ (u64::from(process::getpid().unsigned_abs()) << 32))
    }

    /// A number in `0..=max`.
    fn draw(&mut self, max: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        match max.checked_add(1) {
            Some(n) => z % n,
            None => z,
        }
    }
}

impl Cluster {
    /// The connection limit of a worker about to be forked: `max_connections` plus a
    /// jitter drawn in `0..=jitter`.
    pub(super) fn draw_connection_limit(&mut self) -> Option<u64> {
        let h = &self.config.health;
        let (n, j) = (h.max_connections?, h.jitter);
        Some(n.saturating_add(self.jitter.draw(j)).max(1))
    }

    /// The primary was away for `lost` (see `Cluster::paused`): that time is not any
    /// worker's silence. A terminal's Ctrl-Z (`SIGTSTP`), `kill -STOP -- -PGID` or a
    /// frozen container stop the primary and its workers together, and afterwards every
    /// worker would otherwise be past its timeout and killed before its answer to the
    /// last ping could arrive.
    pub(super) fn postpone_health(&mut self, lost: Duration) {
        if self.config.health.ping_every().is_none() {
            return;
        }
        for s in self.workers.values_mut() {
            s.vitals.heard = crate::deadline::after(s.vitals.heard, lost);
        }
    }

    /// A `Pong` from worker `id`.
    pub(super) fn on_pong(&mut self, id: WorkerId, heartbeat_ms: u32, now: Instant) {
        let every = self.config.health.ping_every();
        if let Some(s) = self.workers.get_mut(&id) {
            s.vitals.heard(now, heartbeat_ms, every);
        }
    }

    /// The earliest health timer: a ping, a timeout, an RSS read.
    pub(super) fn health_timer(&self) -> Option<Instant> {
        let h = &self.config.health;
        if self.state != State::Running {
            return None;
        }
        let every = h.ping_every();
        let sample = h.samples_rss();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in self.workers.values().filter(|s| watched(s)) {
            if every.is_some() && !s.vitals.ping_out {
                consider(s.vitals.next_ping);
            }
            if let Some(t) = h.worker_timeout {
                consider(crate::deadline::after(s.vitals.heard, t));
            }
            if let Some(t) = h.heartbeat_timeout {
                let since = t.saturating_sub(s.vitals.heartbeat);
                consider(crate::deadline::after(s.vitals.heard, since));
            }
            if sample {
                consider(s.vitals.next_sample);
            }
        }
        next
    }

    /// Pings, kills the workers that timed out, reads RSS, and starts or advances a
    /// recycle. Runs on every turn of the loop, before `maintain`.
    pub(super) fn check_health(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        let health = self.config.health.clone();
        let every = health.ping_every();
        let mut timed_out = Vec::new();
        let mut gone = false;
        for s in self.workers.values_mut().filter(|s| watched(s)) {
            let backed_up = s.wants_write();
            let v = &mut s.vitals;
            if let Some(t) = health.worker_timeout {
                let silent = now.saturating_duration_since(v.heard);
                if silent >= t {
                    timed_out.push((s.id, Replacement::Unresponsive { silent }));
                    continue;
                }
            }
            if let Some(t) = health.heartbeat_timeout {
                let silent = v.heartbeat + now.saturating_duration_since(v.heard);
                if silent >= t {
                    timed_out.push((s.id, Replacement::NoHeartbeat { silent }));
                    continue;
                }
            }
            if let Some(every) = every {
                // Not behind records the worker has not taken yet (it is not reading
                // its channel: it answers when it does, or says it is alive unasked
                // while its inbox is full), so pings never pile up in its outbox.
                if !v.ping_out && now >= v.next_ping && !backed_up {
                    v.ping_out = true;
                    v.next_ping = crate::deadline::after(now, every);
                    // A full outbox or a broken channel: the worker is not reading, or
                    // gone; its silence (or its reaping) settles it.
                    if s.send(&Message::Ping, None).is_err() {
                        gone = true;
                    }
                }
            }
            if health.samples_rss() && now >= s.vitals.next_sample {
                s.vitals.next_sample = crate::deadline::after(now, SAMPLE_EVERY);
                let rss = process::resident_bytes(s.pid).ok();
                // With `max_rss`, the memory files it holds count too (`held.rs`).
                let held = match (rss, health.max_rss) {
                    (Some(_), Some(_)) => process::fd_table_size(s.pid)
                        .map_or(0, |table| s.vitals.held.sample(s.pid, table)),
                    _ => 0,
                };
                s.vitals.rss = rss.map(|r| r.saturating_add(held));
            }
        }
        if gone {
            self.reap_due = true;
        }
        for (id, reason) in timed_out {
            self.kill_unhealthy(id, reason);
        }
        self.advance_recycle(now);
        if self.recycle.is_none() && self.reload.is_none() {
            if let Some((id, reason)) = self.recycle_candidate() {
                self.begin_recycle(id, reason, now);
            }
        }
    }

    /// Kills a worker that failed a liveness check; it is replaced like a crash.
    fn kill_unhealthy(&mut self, id: WorkerId, reason: Replacement) {
        self.stop_routing(id);
        let Some(s) = self.workers.get_mut(&id) else {
            return;
        };
        s.killed = true;
        s.vitals.killed_for = Some(reason);
        let _ = process::kill(s.pid, libc::SIGKILL);
        let pid = s.pid as u32;
        self.events.push_back(Event::Replacing {
            worker: id,
            pid,
            reason,
        });
        self.reap_due = true;
    }

    /// The first worker, by id, due for a recycle, and why.
    fn recycle_candidate(&self) -> Option<(WorkerId, Replacement)> {
        let max_rss = self.config.health.max_rss;
        self.workers.values().find_map(|s| {
            if !watched(s) || s.requested || s.vitals.recycling || s.phase != Phase::Online {
                return None;
            }
            if let Some(limit) = s.vitals.connection_limit {
                if s.accepted >= limit {
                    let accepted = s.accepted;
                    return Some((s.id, Replacement::MaxConnections { accepted, limit }));
                }
            }
            match (s.vitals.rss, max_rss) {
                (Some(rss), Some(limit)) if rss > limit => {
                    Some((s.id, Replacement::MaxRss { rss, limit }))
                }
                _ => None,
            }
        })
    }

    fn begin_recycle(&mut self, id: WorkerId, reason: Replacement, now: Instant) {
        let Some(s) = self.workers.get_mut(&id) else {
            return;
        };
        s.vitals.recycling = true;
        self.stats.recycles += 1;
        self.events.push_back(Event::Replacing {
            worker: id,
            pid: s.pid as u32,
            reason,
        });
        self.recycle = Some(Reload::new(vec![id], self.config.shutdown_timeout));
        self.recycle_reason = Some(reason);
        self.advance_recycle(now);
    }

    /// Advances the recycle under way, if any (the same steps as a reload's).
    fn advance_recycle(&mut self, now: Instant) {
        let Some(mut r) = self.recycle.take() else {
            return;
        };
        self.next_cause = self.recycle_reason;
        let progress = r.advance(
            &mut super::lifecycle::ReloadHost { cluster: self, now },
            now,
        );
        self.next_cause = None;
        match progress {
            Progress::Running => self.recycle = Some(r),
            Progress::Finished { .. } => self.recycle_reason = None,
            Progress::Aborted { reason, .. } => {
                self.recycle_reason = None;
                self.events
                    .push_back(Event::Error(Error::Reload(format!("recycle: {reason}"))));
            }
        }
    }

    /// The recycle's next timer (its replacement's deadline to listen).
    pub(super) fn recycle_timer(&self, now: Instant) -> Option<Instant> {
        let r = self.recycle.as_ref()?;
        if r.stepping() {
            r.deadline()
        } else {
            Some(now)
        }
    }
}

/// Whether a worker's health is watched: alive, talking, not on its way out, and
/// forked by this program (a binary upgrade's previous program's workers are leaving:
/// the shutdown timeout bounds them, and they need not speak this program's pings).
fn watched(s: &Slot) -> bool {
    !s.eof && !s.killed && !s.previous_program && !matches!(s.phase, Phase::Disconnecting { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_come_at_a_quarter_of_the_shorter_timeout_within_bounds() {
        let mut h = Health::default();
        assert_eq!(h.ping_every(), None);
        assert!(!h.samples_rss());
        h.worker_timeout = Some(Duration::from_secs(1));
        assert_eq!(h.ping_every(), Some(Duration::from_millis(250)));
        h.heartbeat_timeout = Some(Duration::from_millis(400));
        assert_eq!(h.ping_every(), Some(Duration::from_millis(100)));
        h.worker_timeout = Some(Duration::from_millis(1));
        assert_eq!(h.ping_every(), Some(MIN_PING_EVERY));
        h.worker_timeout = Some(Duration::MAX);
        h.heartbeat_timeout = None;
        assert_eq!(h.ping_every(), Some(SAMPLE_EVERY));
    }

    #[test]
    fn settings_that_replace_every_worker_at_once_are_refused() {
        let ok = Health {
            worker_timeout: Some(MIN_PING_EVERY),
            heartbeat_timeout: Some(Duration::MAX),
            max_rss: Some(1),
            ..Health::default()
        };
        assert!(ok.check().is_ok());
        for bad in [
            Health {
                worker_timeout: Some(Duration::ZERO),
                ..Health::default()
            },
            Health {
                heartbeat_timeout: Some(Duration::from_millis(9)),
                ..Health::default()
            },
            Health {
                max_rss: Some(0),
                ..Health::default()
            },
        ] {
            assert!(matches!(bad.check(), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut j = Jitter(7);
        let draws: Vec<u64> = (0..1000).map(|_| j.draw(10)).collect();
        assert!(draws.iter().all(|&d| d <= 10));
        assert!((0..=10).all(|v| draws.contains(&v)));
        assert_eq!(j.draw(0), 0);
        let _ = j.draw(u64::MAX); // no overflow
    }
}
