//! Respawning crashed workers, with a back-off so a crash loop cannot fork-bomb the
//! machine (Node leaves this to the application; unicorn, gunicorn and PM2 do it).
//!
//! The cluster keeps a target number of workers. A worker that exits without being
//! asked to is a *crash*. If it had lived at least `min_uptime`, it is replaced at
//! once and the back-off is forgotten. If it died young, the *streak* of young deaths
//! grows and the next fork waits `initial_delay × 2^(streak-1)`, capped at `max_delay`.
//! The delay is global: when every worker crashes at start, forks come one per delay,
//! not N per delay. A fork that fails (`EAGAIN`, `ENOMEM`) and a worker whose setup
//! fails count as young deaths too.

use std::time::{Duration, Instant};

/// When crashed workers are replaced. [`Respawn::default`] replaces them; with
/// [`Respawn::never`] a crashed worker is not replaced (the cluster shrinks).
///
/// ```
/// use std::time::Duration;
/// use cluster::Respawn;
///
/// let policy = Respawn::default()
///     .min_uptime(Duration::from_secs(5))
///     .delays(Duration::from_millis(50), Duration::from_secs(30));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respawn {
    pub(crate) enabled: bool,
    pub(crate) min_uptime: Duration,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
}

impl Default for Respawn {
    /// Replace crashed workers; a worker that lived under 1 s died young; back-off from
    /// 100 ms, doubling, up to 10 s.
    fn default() -> Respawn {
        Respawn {
            enabled: true,
            min_uptime: Duration::from_secs(1),
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl Respawn {
    /// Never replace a crashed worker.
    pub fn never() -> Respawn {
        Respawn {
            enabled: false,
            ..Respawn::default()
        }
    }

    /// A worker that crashes before it has lived this long died young.
    pub fn min_uptime(mut self, d: Duration) -> Respawn {
        self.min_uptime = d;
        self
    }

    /// The first back-off delay and the largest one.
    pub fn delays(mut self, initial: Duration, max: Duration) -> Respawn {
        self.initial_delay = initial;
        self.max_delay = max.max(initial);
        self
    }

    /// Whether crashed workers are replaced.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The delay before the next fork after `streak` young deaths in a row.
    pub(crate) fn delay(&self, streak: u32) -> Duration {
        if streak == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(streak - 1).unwrap_or(u32::MAX);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// The respawn back-off's state: the streak of young deaths (each doubling the delay,
/// as [`Respawn::delay`] says) and when the next fork may happen.
#[derive(Debug, Default)]
pub(crate) struct CrashStreak {
    streak: u32,
    not_before: Option<Instant>,
}

impl CrashStreak {
    /// A worker crashed after living `uptime`.
    pub(crate) fn crashed(&mut self, policy: &Respawn, uptime: Duration, now: Instant) {
        if uptime >= policy.min_uptime {
            self.streak = 0;
            self.not_before = None;
        } else {
            self.young_death(policy, now);
        }
    }

    /// A fork failed, or a worker died young (setup failure included).
    pub(crate) fn young_death(&mut self, policy: &Respawn, now: Instant) {
        self.streak = self.streak.saturating_add(1);
        self.not_before = Some(crate::deadline::after(now, policy.delay(self.streak)));
    }

    /// A fork was made while backing off: the next one waits a full delay again.
    pub(crate) fn forked(&mut self, policy: &Respawn, now: Instant) {
        if self.streak > 0 {
            self.not_before = Some(crate::deadline::after(now, policy.delay(self.streak)));
        }
    }

    /// Whether a fork may happen now.
    pub(crate) fn may_fork(&self, now: Instant) -> bool {
        self.not_before.map_or(true, |t| now >= t)
    }

    /// Whether forks are being spaced out (then one fork per delay, not all at once).
    pub(crate) fn backing_off(&self) -> bool {
        self.streak > 0
    }

    /// When the next fork may happen, while backing off.
    pub(crate) fn not_before(&self) -> Option<Instant> {
        self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let p = Respawn::default().delays(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<u128> = (0..7).map(|s| p.delay(s).as_millis()).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn a_long_life_resets_the_streak() {
        let p = Respawn::default();
        let now = Instant::now();
        let mut b = CrashStreak::default();
        b.crashed(&p, Duration::from_millis(10), now);
        b.crashed(&p, Duration::from_millis(10), now);
        assert!(b.backing_off() && !b.may_fork(now));
        assert!(b.may_fork(now + Duration::from_millis(200)));
        b.crashed(&p, Duration::from_secs(60), now);
        assert!(!b.backing_off() && b.may_fork(now));
    }
}
