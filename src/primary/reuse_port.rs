//! The reuse-port handle: one `SO_REUSEPORT` socket per worker on the same address;
//! the kernel spreads connections over the sockets by a hash of each connection's
//! addresses and ports (Node 22's `reusePort`; nginx's `listen … reuseport`).
//!
//! The primary creates each worker's socket and binds it; the worker listens and
//! accepts on it. Creating them here rather than in the workers keeps three things
//! working as in the other modes: port 0 (the first bind picks the port, the others
//! join it), privileged ports (the primary may be root, the workers not), and the
//! kernel's rule that every socket of a reuse-port group belongs to the same effective
//! user (workers may have dropped privileges; the sockets were all created here).
//!
//! # Sockets outlive workers
//!
//! The known weakness of reuse-port: connections already queued on a socket are reset
//! when the socket closes (unless `net.ipv4.tcp_migrate_req = 1`, Linux 5.14+, which
//! moves them to another socket of the group), and the kernel keeps hashing new ones to
//! it until the very end. A worker that exits would take its socket, and its queue, with
//! it. So the primary keeps a copy of every socket, and a socket's life is tied to a
//! place in the cluster, not to one worker process:
//!
//! - a **replacement** (reload, restart) is given the socket of the worker it replaces:
//!   both accept on it while they overlap, the old one stops, the socket never closes,
//!   nothing is reset;
//! - a **crashed** worker's socket stays listening, its queue intact, and the respawned
//!   worker takes it over (clients wait in the queue meanwhile, as in shared mode);
//! - only when the cluster keeps **fewer workers** (scale down, disconnect, a crash with
//!   respawn off) is a socket nobody holds closed — the one case that can reset queued
//!   connections, as with any reuse-port server;
//! - the first socket bound is also kept as an *anchor*, bound and never listening: it
//!   holds the port for the cluster's life even if every worker socket is gone (a
//!   socket that does not listen is not in the group the kernel picks from).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions, Bound};
use crate::options::ListenOptions;
use crate::sys::socket;
use crate::WorkerId;

/// One socket of the group and the workers that hold it (two while a replacement
/// overlaps the worker it replaces; none while it waits for a respawn).
#[derive(Debug)]
struct PortSocket {
    fd: OwnedFd,
    holders: Vec<WorkerId>,
}

/// A reuse-port handle.
#[derive(Debug)]
pub(crate) struct ReusePortHandle {
    local: ListenAddr,
    options: ListenOptions,
    anchor: Option<OwnedFd>,
    sockets: Vec<PortSocket>,
}

impl ReusePortHandle {
    /// Takes the first bound socket as the anchor.
    pub(crate) fn new(first: Bound, options: &ListenOptions) -> ReusePortHandle {
        ReusePortHandle {
            local: first.local,
            options: options.clone(),
            anchor: Some(first.fd),
            sockets: Vec::new(),
        }
    }

    /// The bound address (port 0 resolved by the anchor's bind).
    pub(crate) fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// The socket for `worker`: the one of the worker it replaces, else one nobody
    /// holds, else a new one bound to the resolved address.
    pub(crate) fn grant(
        &mut self,
        worker: WorkerId,
        replacing: Option<WorkerId>,
    ) -> io::Result<BorrowedFd<'_>> {
        if self.anchor.is_none() {
            return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
        }
        let held = self
            .sockets
            .iter()
            .filter(|s| s.holders.contains(&worker))
            .count();
        if held >= super::round_robin::MAX_LISTENERS_PER_WORKER {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let found = replacing
            .and_then(|old| self.sockets.iter().position(|s| s.holders.contains(&old)))
            .or_else(|| self.sockets.iter().position(|s| s.holders.is_empty()));
        let i = match found {
            Some(i) => i,
            None => {
                let opts = BindOptions {
                    reuse_port: true,
                    ..BindOptions::default()
                };
                let fd = bind::bind(&self.local, opts, &self.options)?.fd;
                self.sockets.push(PortSocket {
                    fd,
                    holders: Vec::new(),
                });
                self.sockets.len() - 1
            }
        };
        self.sockets[i].holders.push(worker);
        Ok(self.sockets[i].fd.as_fd())
    }

    /// Descriptors this handle holds for `worker`: the sockets it was granted.
    pub(crate) fn descriptors_of(&self, worker: WorkerId) -> usize {
        self.sockets
            .iter()
            .filter(|s| s.holders.contains(&worker))
            .count()
    }

    /// The worker exited: its sockets stay, for whoever comes next.
    pub(crate) fn worker_gone(&mut self, worker: WorkerId) {
        for s in &mut self.sockets {
            s.holders.retain(|&w| w != worker);
        }
    }

    /// Keeps at most `target` sockets: those nobody holds beyond that are closed
    /// (their queued connections are reset, unless `tcp_migrate_req` moves them).
    pub(crate) fn prune(&mut self, target: usize) {
        while self.sockets.len() > target {
            let Some(i) = self.sockets.iter().rposition(|s| s.holders.is_empty()) else {
                break;
            };
            self.sockets.remove(i);
        }
    }

    /// Cluster shutdown: every socket stops listening at once (`shutdown(SHUT_RD)`,
    /// which also wakes the workers blocked in `accept`), so clients are refused; then
    /// the primary's copies and the port go.
    pub(crate) fn close(&mut self) {
        for s in self.sockets.drain(..) {
            let _ = socket::shutdown(s.fd.as_fd(), socket::Shutdown::Read);
        }
        self.anchor = None;
    }
}
