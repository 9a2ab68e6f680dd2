//! Deadlines from durations the application chose, without overflow.
//!
//! `Instant + Duration` panics when the sum does not fit, and every timeout the crate
//! takes (`Builder::shutdown_timeout`, `Cluster::next_event_timeout`,
//! `Worker::recv_timeout`, the respawn delays, …) may be `Duration::MAX`, the natural
//! way to say "no limit". Every deadline is computed here instead: one that does not
//! fit becomes [`FOREVER`] from now, which no process outlives.

use std::time::{Duration, Instant};

/// What "never" is, as a deadline: about a hundred years.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `from + d`, saturated: [`FOREVER`] after `from` when the sum would overflow (and
/// `from` itself in the impossible case that even that does not fit).
pub(crate) fn after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FOREVER))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::MAX), now + FOREVER);
        assert!(after(now, Duration::MAX) > now);
    }
}
