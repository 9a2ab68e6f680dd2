//! Telling the service manager (`sd_notify(3)`, with libc only): when the cluster is
//! ready, reloading and stopping, that its loop still turns (the watchdog), and its
//! main pid. systemd's `Type=notify` units wait for `READY=1` before they count the
//! service as started; `Type=notify-reload` units expect `RELOADING=1` and `READY=1`
//! around a `SIGHUP`. Node's cluster has no counterpart.
//!
//! Read once at start: `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace),
//! `WATCHDOG_USEC` and `WATCHDOG_PID`. The primary then removes `NOTIFY_SOCKET` and the
//! watchdog variables from its environment, so no worker (nor anything a worker starts)
//! inherits them and speaks for the service. Sending never blocks (a non-blocking
//! datagram socket) and a failed send is dropped: the service manager's trouble never
//! stalls the cluster.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys::process;
use crate::sys::sockaddr::SockAddr;
use crate::sys::socket;

/// The shortest time between two watchdog pings. `WATCHDOG_USEC` is pinged at half its
/// value, as `sd_watchdog_enabled(3)` advises; a value below twice this floor (a typo,
/// or a hostile environment: `WATCHDOG_USEC=1` made half of it 0 and the primary's
/// loop spin, pinging without pause) is pinged at the floor instead, with a warning.
/// systemd itself has no use for a watchdog that short: it is a configuration error
/// whose cost must stay at 100 wake-ups a second.
pub(super) const MIN_PING: Duration = Duration::from_millis(10);

/// How often to ping for a `WATCHDOG_USEC` of `usec` (> 0): half of it, never below
/// [`MIN_PING`].
fn ping_interval(usec: u64) -> Duration {
    Duration::from_micros(usec / 2).max(MIN_PING)
}

/// The primary's link to the service manager, when it has one.
#[derive(Debug)]
pub(super) struct Notifier {
    fd: OwnedFd,
    to: SockAddr,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    /// `READY=1` was sent since the start or the last reload.
    ready: bool,
}

impl Notifier {
    /// From the environment (see the module docs), which it then clears; `None` when
    /// there is no `NOTIFY_SOCKET` or it cannot be used.
    pub(super) fn from_env(now: Instant) -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let usec: Option<u64> = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| crate::number::u64(&v));
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|v| crate::number::parse::<i32>(&v))
            .map_or(true, |pid| pid == process::getpid());
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        use std::os::unix::ffi::OsStrExt;
        let bytes = socket.as_bytes();
        let to = match bytes.strip_prefix(b"@") {
            Some(name) => SockAddr::from_abstract(name),
            None => SockAddr::from_unix_path(std::path::Path::new(&socket)),
        };
        let (to, fd) = match (to, socket::unix_datagram_socket()) {
            (Ok(to), Ok(fd)) => (to, fd),
            (Err(e), _) | (_, Err(e)) => {
                crate::log::report!("NOTIFY_SOCKET {socket:?} cannot be used: {e}");
                return None;
            }
        };
        let ping_every = usec.filter(|&u| u > 0 && for_us).map(|u| {
            let every = ping_interval(u);
            if every > Duration::from_micros(u / 2) {
                crate::log::report!(
                    "WATCHDOG_USEC={u} is below twice {}: pinging every {}",
                    crate::deadline::Shown(MIN_PING),
                    crate::deadline::Shown(every)
                );
            }
            every
        });
        Some(Notifier {
            fd,
            to,
            ping_every,
            next_ping: ping_every.map(|d| crate::deadline::after(now, d)),
            ready: false,
        })
    }

    fn send(&self, state: &str) {
        let _ = socket::send_to(self.fd.as_fd(), state.as_bytes(), &self.to);
    }

    /// Every worker listens: `READY=1` (once until the next reload), with the main pid
    /// and a status line.
    pub(super) fn ready(&mut self, workers: usize) {
        if std::mem::replace(&mut self.ready, true) {
            return;
        }
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={workers} worker(s) listening",
            process::getpid()
        ));
    }

    /// A rolling restart begins.
    pub(super) fn reloading(&mut self) {
        self.ready = false;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            process::monotonic_usec()
        ));
    }

    /// A rolling restart ended: the next [`ready`](Notifier::ready) sends `READY=1`.
    pub(super) fn reloading_done(&mut self) {
        self.ready = false;
    }

    /// The cluster shuts down.
    pub(super) fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// When the next watchdog ping is due.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.next_ping
    }

    /// On each turn of the loop: the watchdog ping, when due. A loop that stops turning
    /// stops pinging, and the service manager restarts the service.
    pub(super) fn tick(&mut self, now: Instant) {
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if now >= at {
                self.send("WATCHDOG=1");
                self.next_ping = Some(crate::deadline::after(now, every));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_period_never_faster_than_the_floor() {
        assert_eq!(ping_interval(200_000), Duration::from_millis(100));
        assert_eq!(ping_interval(20_000), MIN_PING);
        for usec in [1, 2, 3, 19_999] {
            assert_eq!(ping_interval(usec), MIN_PING, "WATCHDOG_USEC={usec}");
        }
        assert_eq!(ping_interval(u64::MAX), Duration::from_micros(u64::MAX / 2));
    }
}
