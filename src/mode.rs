//! [`Mode`]: how connections get from the listening address to a worker.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How the workers of a cluster share a listening address. Fixed when the cluster
/// starts (when the first worker is forked).
///
/// ```text
///  Shared (competing accept)   RoundRobin (primary accepts)     ReusePort (one socket each)
///  primary: socket, bind       primary: socket, bind, listen,   primary: one SO_REUSEPORT
///     │ the same fd               accept                           socket per worker, bound
///     ▼ to every worker           │ each connection's fd           │ its own fd to each
///  worker: listen, accept ×N      ▼ to a waiting thread            ▼
///                              worker: recvmsg ×N               worker: listen, accept ×N
/// ```
///
/// Which to choose, with measurements: the README's "Choosing a mode".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Competing accept (Node's `SCHED_NONE`, the seed's "competition model"): the
    /// primary binds a socket and passes it to every worker; each worker calls
    /// `listen(2)` and its threads block in `accept(2)`. The kernel wakes one blocked
    /// accepter per connection, oldest first. No hop through the primary, so it is the
    /// cheapest per connection; the balance is what the kernel's wake-up order makes it.
    Shared,
    /// Primary round-robin (Node's `SCHED_RR`, the default): the primary listens and
    /// accepts, and passes each connection's descriptor to the worker thread that has
    /// waited longest for one (`sendmsg` with `SCM_RIGHTS`). Costs a hop per connection;
    /// in exchange the primary decides (see [`Scheduler`](crate::round_robin::Scheduler)), only free
    /// threads get work, and a worker that dies loses nothing it had not yet received.
    RoundRobin,
    /// One socket per worker (`SO_REUSEPORT`, beyond Node 20; Node 22's `reusePort`):
    /// the kernel picks the socket, and so the worker, by a hash of the connection's
    /// addresses and ports. No primary in the data path and no accept queue shared by
    /// every worker, so it is as cheap as `Shared`; but the choice ignores load (a busy
    /// worker gets its share anyway), and connections queued on a socket are reset when
    /// that socket closes — unless `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+), which
    /// moves them to another socket of the group.
    ///
    /// The primary creates every worker's socket (so port 0 and privileged ports work as
    /// in the other modes, and the kernel's same-user rule for `SO_REUSEPORT` holds after
    /// workers drop privileges) and keeps a copy of each, so a socket outlives the
    /// worker using it: a replacement (reload) takes over the socket of the worker it
    /// replaces, a respawned worker the socket of the one that crashed. Sockets close,
    /// and may reset queued connections, only when the cluster keeps fewer workers.
    /// Unix-socket and adopted (`fd:N`) listeners cannot be split this way: they are
    /// shared, as in `Shared`.
    ReusePort,
}

impl Mode {
    /// The environment variable [`Mode::from_env`] reads: `CLUSTER_SCHED_POLICY`, like
    /// Node's `NODE_CLUSTER_SCHED_POLICY`.
    pub const ENV: &'static str = "CLUSTER_SCHED_POLICY";

    /// The mode named by `CLUSTER_SCHED_POLICY`, or `None` when it is unset or empty.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the value when it is not a known mode.
    pub fn from_env() -> Result<Option<Mode>, Error> {
        match std::env::var(Mode::ENV) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => v
                .parse()
                .map(Some)
                .map_err(|e: ModeParseError| Error::Config(format!("{}: {e}", Mode::ENV))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(Error::Config(format!(
                "{}: {v:?} is not a mode (expected round-robin, shared or reuse-port)",
                Mode::ENV
            ))),
        }
    }

    /// The canonical name: `shared`, `round-robin` or `reuse-port`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::RoundRobin => "round-robin",
            Mode::ReusePort => "reuse-port",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown mode name; the message names it and lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeParseError(String);

impl fmt::Display for ModeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown mode {:?} (expected round-robin or rr, shared or none, reuse-port)",
            self.0
        )
    }
}

impl std::error::Error for ModeParseError {}

impl FromStr for Mode {
    type Err = ModeParseError;

    /// Accepts `round-robin`, `rr`, `shared`, `none` (Node's names), and `reuse-port`,
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Mode, ModeParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rr" | "round-robin" | "roundrobin" => Ok(Mode::RoundRobin),
            "none" | "shared" => Ok(Mode::Shared),
            "reuse-port" | "reuseport" => Ok(Mode::ReusePort),
            _ => Err(ModeParseError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!("rr".parse(), Ok(Mode::RoundRobin));
        assert_eq!("Round-Robin".parse(), Ok(Mode::RoundRobin));
        assert_eq!("none".parse(), Ok(Mode::Shared));
        assert_eq!("shared".parse(), Ok(Mode::Shared));
        let e = "round_robin".parse::<Mode>().unwrap_err().to_string();
        assert!(
            e.contains("\"round_robin\"") && e.contains("expected"),
            "{e}"
        );
        assert_eq!("reuse-port".parse(), Ok(Mode::ReusePort));
        assert_eq!("reuseport".parse(), Ok(Mode::ReusePort));
        for m in [Mode::Shared, Mode::RoundRobin, Mode::ReusePort] {
            assert_eq!(m.as_str().parse(), Ok(m));
        }
    }
}
