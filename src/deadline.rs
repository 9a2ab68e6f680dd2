//! Deadlines from durations the application chose, without overflow.
//!
//! `Instant + Duration` panics when the sum does not fit, and every timeout the crate
//! takes (`Builder::shutdown_timeout`, `Cluster::next_event_timeout`,
//! `Worker::recv_timeout`, the respawn delays, …) may be `Duration::MAX`, the natural
//! way to say "no limit". Every deadline is computed here instead: one that does not
//! fit becomes [`FOREVER`] from now, which no process outlives.

use std::fmt;
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

/// A duration in messages, written exactly as its `Debug` does (`30s`, `1.5s`,
/// `250ms`, `12.5µs`, `7ns`): in this small form because `Duration`'s own `Debug`,
/// which also handles precision, width and rounding, is 2 KiB of the release demo.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown(pub(crate) Duration);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        // The whole part, the fraction below it and that fraction's first digit's value.
        let (whole, mut frac, mut digit, unit) = if secs > 0 {
            (secs, nanos, 100_000_000, "s")
        } else if nanos >= 1_000_000 {
            (
                u64::from(nanos / 1_000_000),
                nanos % 1_000_000,
                100_000,
                "ms",
            )
        } else if nanos >= 1_000 {
            (u64::from(nanos / 1_000), nanos % 1_000, 100, "µs")
        } else {
            (u64::from(nanos), 0, 1, "ns")
        };
        write!(f, "{whole}")?;
        if frac > 0 {
            f.write_str(".")?;
        }
        while frac > 0 {
            let d = frac / digit;
            fmt::Write::write_char(f, char::from(b'0' + d as u8))?;
            frac -= d * digit;
            digit /= 10;
        }
        f.write_str(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_debug_shows_it() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_nanos(12_500),
            Duration::from_nanos(1_000),
            Duration::from_millis(250),
            Duration::from_micros(1_250),
            Duration::from_millis(1_500),
            Duration::from_secs(30),
            Duration::from_millis(4_200),
            Duration::new(5, 1),
            Duration::from_nanos(999_999_999),
            Duration::MAX,
        ] {
            assert_eq!(Shown(d).to_string(), format!("{d:?}"));
        }
    }

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
