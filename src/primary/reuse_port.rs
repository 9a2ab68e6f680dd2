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
//!
//! # Never someone else's group
//!
//! The kernel lets any socket of the same user with `SO_REUSEPORT` join a port's group,
//! and spreads connections over all of them. A root primary asked for a port that
//! another root service already serves with `SO_REUSEPORT` would join that service's
//! group and take a share of its clients (measured before the fix: 97 of 200). So the
//! anchor is bound *without* `SO_REUSEPORT`: if anyone listens on the port, that bind
//! fails with `EADDRINUSE`, as in the other modes, and no group is joined. The workers'
//! sockets then bind with `SO_REUSEPORT` beside the anchor (a bound socket that does not
//! listen does not conflict with them under `SO_REUSEADDR`). A service that binds the
//! port with `SO_REUSEPORT` *later*, as the same user, can still join the cluster's
//! group: the kernel offers no way to close a group to its own user.
//!
//! # What a worker can do to the group
//!
//! Each worker holds a real socket of the group, and any member may attach a program
//! that steers the whole group's connections (`SO_ATTACH_REUSEPORT_CBPF`/`EBPF`, no
//! privilege needed): a compromised worker can draw every connection to itself. The
//! primary cannot stop a live worker from doing so, but detaches any program when a
//! worker that held a socket exits, so a replaced worker's program does not outlive it.
//! With untrusted workers, round-robin keeps the listener away from them altogether.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions, Bound};
use crate::options::ListenOptions;
use crate::sys::socket;
use crate::worker_id::WorkerId;

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

    /// The previous program's group, passed across a binary upgrade: the anchor, and
    /// each socket, still listening and held by the previous program's workers until
    /// they finish, so the new workers take them over as a reload's replacements do
    /// and no queued connection is reset.
    pub(crate) fn adopt(
        local: ListenAddr,
        options: &ListenOptions,
        anchor: OwnedFd,
        sockets: Vec<OwnedFd>,
    ) -> ReusePortHandle {
        ReusePortHandle {
            local,
            options: options.clone(),
            anchor: Some(anchor),
            sockets: sockets
                .into_iter()
                .map(|fd| PortSocket {
                    fd,
                    holders: Vec::new(),
                })
                .collect(),
        }
    }

    /// For a binary upgrade: the anchor, then each socket; `None` once closed.
    pub(crate) fn passed_fds(&self) -> Option<Vec<BorrowedFd<'_>>> {
        let anchor = self.anchor.as_ref()?.as_fd();
        Some(
            std::iter::once(anchor)
                .chain(self.sockets.iter().map(|s| s.fd.as_fd()))
                .collect(),
        )
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

    /// The worker exited: its sockets stay, for whoever comes next. Any steering
    /// program is detached from the group: a worker holding one of its sockets may have
    /// attached one (`SO_ATTACH_REUSEPORT_CBPF`, which needs no privilege) to send every
    /// connection its way, and the program would outlive it (see the module docs).
    pub(crate) fn worker_gone(&mut self, worker: WorkerId) {
        let mut held = false;
        for s in &mut self.sockets {
            let before = s.holders.len();
            s.holders.retain(|&w| w != worker);
            held |= s.holders.len() != before;
        }
        if let (true, Some(s)) = (held, self.sockets.first()) {
            // ENOENT: none was attached, the usual case.
            let _ = socket::detach_reuseport_program(s.fd.as_fd());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd;
    use std::net::TcpStream;

    /// Connects `n` times; returns how many each socket got.
    fn spread(local: std::net::SocketAddr, sockets: &[BorrowedFd<'_>], n: usize) -> Vec<usize> {
        let mut got = vec![0; sockets.len()];
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(TcpStream::connect(local).unwrap());
        }
        for (i, s) in sockets.iter().enumerate() {
            fd::set_nonblocking(*s, true).unwrap();
            while socket::accept(*s).is_ok() {
                got[i] += 1;
            }
        }
        got
    }

    #[test]
    fn a_gone_workers_steering_program_is_detached() {
        let opts = ListenOptions::new();
        let first = bind::bind(
            &"127.0.0.1:0".parse().unwrap(),
            BindOptions::default(),
            &opts,
        )
        .unwrap();
        let local = first.local.as_tcp().unwrap();
        let mut h = ReusePortHandle::new(first, &opts);
        let (w1, w2) = (WorkerId(1), WorkerId(2));
        let a = fd::dup_cloexec(h.grant(w1, None).unwrap()).unwrap();
        let b = fd::dup_cloexec(h.grant(w2, None).unwrap()).unwrap();
        socket::listen(a.as_fd(), 64).unwrap();
        socket::listen(b.as_fd(), 64).unwrap();
        let both = [a.as_fd(), b.as_fd()];
        // Worker 1 steers the group: everything to the first socket.
        socket::attach_reuseport_cbpf(a.as_fd(), 0).unwrap();
        let steered = spread(local, &both, 20);
        assert!(steered.contains(&0) && steered.contains(&20), "{steered:?}");
        h.worker_gone(w1);
        let spread_again = spread(local, &both, 40);
        assert!(spread_again.iter().all(|&n| n > 0), "{spread_again:?}");
    }
}
