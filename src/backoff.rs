//! A delay that doubles each time it is used, up to a cap: how the crate backs off
//! from trouble that time may cure (out of descriptors or memory), rather than spin.
//! The respawn back-off of a crash loop (`primary/respawn.rs`) is a policy over the same
//! idea, with its own settings.

use std::time::Duration;

/// A doubling delay: `start`, `2 × start`, … up to `max`; [`reset`](Doubling::reset)
/// starts over once the trouble is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Doubling {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Doubling {
    /// Starting at `start`, never above `max`.
    pub(crate) const fn new(start: Duration, max: Duration) -> Doubling {
        Doubling {
            start,
            max,
            next: start,
        }
    }

    /// Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): 10 ms
    /// doubling to 500 ms, for a worker's accepting threads and the round-robin primary
    /// alike. Short enough to serve again soon after descriptors are freed, long enough
    /// that a process at its limit does not burn a core retrying.
    pub(crate) const fn out_of_resources() -> Doubling {
        Doubling::new(Duration::from_millis(10), Duration::from_millis(500))
    }

    /// Whether no delay was taken since the start or the last reset: the moment to
    /// report the trouble (once, not on every retry).
    pub(crate) fn first(&self) -> bool {
        self.next == self.start
    }

    /// The delay to wait now; the next one is twice as long, up to the cap.
    pub(crate) fn take(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// The trouble is over: the next delay is the first again.
    pub(crate) fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Doubling::out_of_resources();
        assert!(b.first());
        let ms: Vec<u128> = (0..8).map(|_| b.take().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert!(!b.first());
        b.reset();
        assert!(b.first());
        assert_eq!(b.take(), Duration::from_millis(10));
    }
}
