//! The datagram handle: the sockets behind workers' [`Datagram`](crate::Datagram)s
//! (Node's `dgram` sockets in a cluster: `cluster._getServer` with a `udp4`/`udp6`
//! address type, which `primary.js` always serves with a `SharedHandle`, or one
//! socket per worker with `reusePort`).
//!
//! - **One shared socket** (shared and round-robin modes with trusted workers, and a
//!   Unix datagram path or an adopted descriptor, which untrusted workers cannot have):
//!   bound once here and sent to every worker, whose threads block in `recvfrom(2)`;
//!   the kernel hands each datagram to one waiting thread. There is no round-robin for
//!   datagrams: nothing is accepted, so nothing can be handed out, and forwarding every
//!   datagram through the primary would put it in the data path for no gain (Node does
//!   not either).
//! - **A group** (UDP in reuse-port mode, and UDP in *every* mode with untrusted
//!   workers, see below): one `SO_REUSEPORT` socket per worker, all bound here, so
//!   port 0, privileged ports and the kernel's same-user rule for a group work as for
//!   TCP (see `reuse_port.rs`). The kernel picks a socket by a hash of the sender's
//!   address and port, so one client socket always reaches the same worker.
//!
//! With trusted workers the primary keeps its copy of every socket for the handle's
//! whole life, so a socket and its receive queue outlive the worker reading it: a
//! respawned or reloaded worker takes over the very socket (a replacement that of the
//! worker it replaces), and datagrams that arrive meanwhile wait in the queue. Only
//! what a dying worker had already read is lost.
//!
//! # Untrusted workers: one socket each, for that worker's life
//!
//! A shared socket is one open file description: what any worker sets on it is set
//! for all of them, while it lives and after (the primary's copy keeps it). A worker
//! running as another user ([`Builder::user`](crate::Builder::user)) could, with no
//! privilege, `connect()` it (only one peer's datagrams come in), attach a drop-all
//! filter (`SO_ATTACH_FILTER`), set `SO_RCVBUF` to 0, set `O_NONBLOCK` (every other
//! worker's blocking receive fails `EAGAIN`) or `shutdown(SHUT_RD)` it; in a group, it
//! could attach a steering program that draws every datagram to itself
//! (`SO_ATTACH_REUSEPORT_CBPF`), and its replacement would inherit its socket.
//! Resetting each of those when the worker goes is not enough (a `connect` or
//! `O_NONBLOCK` hurts the others *while* the worker lives, and `shutdown` cannot be
//! undone), and a list of what to reset is never complete. So, with untrusted workers,
//! every UDP handle is a group in every mode, and:
//!
//! - **each socket serves one worker, for that worker's life**: a replacement (reload,
//!   respawn) is given a fresh socket, never its predecessor's; when a worker exits
//!   the primary closes the sockets it held, so whatever it set on them goes with
//!   them. The kernel skips a connected socket when it hashes over a group (Linux 5.4, and
//!   stable kernels from 5.2.17: "udp: correct reuseport selection with connected
//!   sockets"), so a worker that `connect`s its own socket loses only its
//!   own share, as one that drops what it reads would;
//! - **each socket's filter is locked** before a worker gets it (`SO_LOCK_FILTER`, which
//!   costs nothing per datagram with no filter attached): `SO_ATTACH_FILTER`,
//!   `SO_ATTACH_BPF` and both `SO_ATTACH_REUSEPORT_*` fail with `EPERM`, so no worker
//!   can drop datagrams in the kernel for good or steer the group;
//! - **the port is held** while no worker is: when the last worker holding a socket of
//!   the group exits, a fresh socket is bound before its socket closes, and datagrams
//!   wait in that one's queue for the next worker, which takes it.
//!
//! The price: datagrams queued on a gone worker's socket and not read are lost with it
//! (at most its receive buffer), on a crash, a reload or an upgrade alike, where a
//! trusted worker's successor would have read them; and balance is the kernel's hash,
//! per client socket, not per datagram. Trusted workers keep the shared socket, which
//! balances per datagram and loses nothing across a replacement: they run as the
//! primary's user and could do anything the primary does anyway.
//!
//! What a live untrusted worker can still do to the others through its own socket,
//! which the primary cannot stop and which ends when that socket closes with it:
//!
//! - `connect` it to one client's address, which then reaches only it;
//! - set `SO_INCOMING_CPU` on it, which makes the kernel prefer it for the datagrams
//!   one CPU handles;
//! - `connect` it and `connect(AF_UNSPEC)` it again: the kernel takes a connected
//!   socket out of its reuse-port group (Linux 6.13+ for a socket bound to an address,
//!   through the connected-socket hash; any version for a wildcard one, through the
//!   rehash) and does not put it back, so the socket, still bound with
//!   `SO_REUSEPORT`, is looked up on its own: first in the port's chain, it takes
//!   every datagram (measured on Linux 6.18: 256 of 256); behind the group, none. That
//!   is the steering a locked filter refuses, done without a program.
//!
//! And one effect that outlives it, on those kernels: a socket the primary binds
//! for another worker (a respawn, a scale-up) while a socket taken out of the group
//! is the port's newest joins *that* socket, in a new group (the kernel joins a new
//! socket to the newest bound socket with `SO_REUSEPORT`). The port then has two
//! groups, and lookups reach only the newer one: the workers of the older group
//! receive nothing (nothing is lost; the newer group answers) until they are
//! replaced. The kernel offers no way to put a socket back into a group or to choose
//! the group a new socket joins.
//!
//! Whatever the workers, a gone worker's steering program is detached from a group
//! (`SO_DETACH_REUSEPORT_BPF`, as `reuse_port.rs` does for TCP), so a program a trusted
//! worker attached does not outlive it either.
//!
//! # The group's first socket
//!
//! A TCP group keeps an *anchor* bound without `SO_REUSEPORT`, so a port someone else
//! serves fails with `EADDRINUSE` instead of joining their group. A UDP anchor cannot
//! work that way: a bound UDP socket receives (it would take a share of the datagrams
//! whether or not anyone reads it). So the handle first *probes*: it binds the address
//! without `SO_REUSEPORT` (no UDP socket here ever has `SO_REUSEADDR`; see
//! `bind::bind_datagram`), which fails with `EADDRINUSE` when anyone holds the port,
//! keeps the port it got (port 0 resolved), closes the probe and binds the group's
//! first socket to that port. Between the probe's close and that bind another program
//! of the same user could take the port; the window is one system call wide, and the
//! kernel offers nothing better. The group is never empty while the handle lives, so
//! it holds the port when every worker is gone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions, Bound};
use crate::sys::socket;
use crate::worker_id::WorkerId;

/// One socket of a group and the workers that hold it (two while a trusted
/// replacement overlaps the worker it replaces; none while it waits for the next
/// worker).
#[derive(Debug)]
struct GroupSocket {
    fd: OwnedFd,
    holders: Vec<WorkerId>,
}

/// The sockets of a datagram handle.
#[derive(Debug)]
enum Sockets {
    /// One socket for every worker.
    Shared(OwnedFd),
    /// One `SO_REUSEPORT` socket per worker.
    Group(Vec<GroupSocket>),
    /// Closed.
    Closed,
}

/// A datagram handle (see the module docs).
#[derive(Debug)]
pub(crate) struct DatagramHandle {
    local: ListenAddr,
    sockets: Sockets,
    /// Untrusted workers: each socket serves one worker for that worker's life, its
    /// filter locked (see the module docs).
    per_worker: bool,
}

impl DatagramHandle {
    /// One socket, bound already, shared by every worker (trusted workers only).
    pub(crate) fn shared(bound: Bound) -> DatagramHandle {
        DatagramHandle {
            local: bound.local,
            sockets: Sockets::Shared(bound.fd),
            per_worker: false,
        }
    }

    /// A reuse-port group on `key` (UDP): probes the address, then binds the first
    /// socket of the group (see the module docs). `per_worker`: the workers are
    /// untrusted.
    pub(crate) fn group(key: &ListenAddr, per_worker: bool) -> io::Result<DatagramHandle> {
        let probe = bind::bind_datagram(key, BindOptions::default())?;
        let local = probe.local.clone();
        drop(probe);
        let first = bind_member(&local, per_worker)?;
        Ok(DatagramHandle {
            local,
            sockets: Sockets::Group(vec![GroupSocket {
                fd: first,
                holders: Vec::new(),
            }]),
            per_worker,
        })
    }

    /// The previous program's sockets, passed across a binary upgrade: one shared
    /// socket (`group` false), or a reuse-port group.
    ///
    /// With untrusted workers (`per_worker`) the previous program's sockets are not
    /// handed on: the group's next socket is bound fresh, then the primary's copies of
    /// the previous ones close, so each lives only as long as the previous worker
    /// that holds it (which serves until it is retired), and nothing it set on it
    /// reaches a new worker. A shared socket cannot serve untrusted workers: refused.
    pub(crate) fn adopt(
        local: ListenAddr,
        group: bool,
        fds: Vec<OwnedFd>,
        per_worker: bool,
    ) -> io::Result<Self> {
        let sockets = match (group, per_worker) {
            (true, false) => Sockets::Group(
                fds.into_iter()
                    .map(|fd| GroupSocket {
                        fd,
                        holders: Vec::new(),
                    })
                    .collect(),
            ),
            (true, true) => {
                // Bound while the previous sockets still hold the port, then those go.
                let fresh = bind_member(&local, true)?;
                drop(fds);
                Sockets::Group(vec![GroupSocket {
                    fd: fresh,
                    holders: Vec::new(),
                }])
            }
            (false, true) => return Err(shared_refused(&local)),
            (false, false) => {
                let mut fds = fds.into_iter();
                let (Some(fd), None) = (fds.next(), fds.next()) else {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                };
                Sockets::Shared(fd)
            }
        };
        Ok(DatagramHandle {
            local,
            sockets,
            per_worker,
        })
    }

    /// The bound address.
    pub(crate) fn local(&self) -> &ListenAddr {
        &self.local
    }

    /// For a binary upgrade: whether this is a group, and its sockets; `None` once
    /// closed.
    pub(crate) fn passed_fds(&self) -> Option<(bool, Vec<BorrowedFd<'_>>)> {
        match &self.sockets {
            Sockets::Shared(fd) => Some((false, vec![fd.as_fd()])),
            Sockets::Group(g) => Some((true, g.iter().map(|s| s.fd.as_fd()).collect())),
            Sockets::Closed => None,
        }
    }

    /// The socket for `worker`: the shared one; in a group, the one of the worker it
    /// replaces (trusted workers only), else one nobody holds, else a new one.
    pub(crate) fn grant(
        &mut self,
        worker: WorkerId,
        replacing: Option<WorkerId>,
    ) -> io::Result<BorrowedFd<'_>> {
        if !matches!(self.sockets, Sockets::Group(_)) {
            return self.shared_socket();
        }
        let Sockets::Group(group) = &mut self.sockets else {
            return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
        };
        let held = group.iter().filter(|s| s.holders.contains(&worker)).count();
        if held >= super::round_robin::MAX_LISTENERS_PER_WORKER {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        // An untrusted replacement never shares its predecessor's socket: what the
        // predecessor set on it would reach it.
        let replacing = replacing.filter(|_| !self.per_worker);
        let found = replacing
            .and_then(|old| group.iter().position(|s| s.holders.contains(&old)))
            .or_else(|| group.iter().position(|s| s.holders.is_empty()));
        let i = match found {
            Some(i) => i,
            None => {
                group.push(GroupSocket {
                    fd: bind_member(&self.local, self.per_worker)?,
                    holders: Vec::new(),
                });
                group.len() - 1
            }
        };
        group[i].holders.push(worker);
        Ok(group[i].fd.as_fd())
    }

    /// The one shared socket, if that is what this handle has.
    fn shared_socket(&self) -> io::Result<BorrowedFd<'_>> {
        match &self.sockets {
            Sockets::Shared(_) if self.per_worker => Err(shared_refused(&self.local)),
            Sockets::Shared(fd) => Ok(fd.as_fd()),
            _ => Err(io::Error::from_raw_os_error(libc::ESHUTDOWN)),
        }
    }

    /// Descriptors this handle holds for `worker` (a group's sockets it was granted).
    pub(crate) fn descriptors_of(&self, worker: WorkerId) -> usize {
        match &self.sockets {
            Sockets::Group(g) => g.iter().filter(|s| s.holders.contains(&worker)).count(),
            Sockets::Shared(_) | Sockets::Closed => 0,
        }
    }

    /// The worker exited. Trusted workers: its group sockets stay for whoever comes
    /// next, at most `target` of them (one at least, which holds the port). Untrusted
    /// workers: the sockets only it held close, a fresh one bound first if they were
    /// the group's last. Either way a steering program is detached from the group.
    pub(crate) fn worker_gone(&mut self, worker: WorkerId, target: usize) {
        let per_worker = self.per_worker;
        let Sockets::Group(group) = &mut self.sockets else {
            return;
        };
        let mut spent = Vec::new();
        for (i, s) in group.iter_mut().enumerate() {
            let before = s.holders.len();
            s.holders.retain(|&w| w != worker);
            if s.holders.len() != before {
                spent.push((i, s.holders.is_empty()));
            }
        }
        if spent.is_empty() {
            return;
        }
        if per_worker {
            let closing = spent.iter().filter(|(_, empty)| *empty).count();
            if closing == group.len() {
                // The port stays held: a fresh socket waits for the next worker.
                match bind_member(&self.local, true) {
                    Ok(fd) => group.push(GroupSocket {
                        fd,
                        holders: Vec::new(),
                    }),
                    Err(e) => {
                        crate::log::report!(
                            "{}: no fresh socket for the next worker ({e}); the gone \
                             worker's socket stays",
                            self.local
                        );
                        spent.remove(0);
                    }
                }
            }
            for &(i, empty) in spent.iter().rev() {
                if empty {
                    // Its queue goes with it (see the module docs).
                    group.remove(i);
                }
            }
        }
        // A worker holding a socket of the group may have attached a program that
        // steers the whole group (`SO_ATTACH_REUSEPORT_CBPF`): it goes with the worker.
        // Through every socket, not only the first: a socket a worker took out of the
        // group (see the module docs) detaches nothing, and one it split off may hold
        // a program of its own. ENOENT: none was attached, the usual case.
        for s in group.iter() {
            let _ = socket::detach_reuseport_program(s.fd.as_fd());
        }
        while group.len() > target.max(1) {
            let Some(i) = group.iter().rposition(|s| s.holders.is_empty()) else {
                break;
            };
            // Datagrams queued on it are lost: the cluster keeps fewer workers.
            group.remove(i);
        }
    }

    /// The end of the handle: the primary's copies close. A shared socket is not shut
    /// down: `shutdown(2)` on a datagram socket only wakes receivers, which the
    /// workers' own close does; the port goes with the last copy.
    ///
    /// A shared socket may be a Unix one, whose queue any local process can fill with
    /// datagrams that carry descriptors: the primary's close of it, if the last, would
    /// release them in the loop, so it goes through
    /// [`close_own_socket`](crate::sys::closer::close_own_socket).
    pub(crate) fn close(&mut self) {
        if let Sockets::Shared(fd) = std::mem::replace(&mut self.sockets, Sockets::Closed) {
            crate::sys::closer::close_own_socket(fd);
        }
    }
}

impl Drop for DatagramHandle {
    /// Closes nothing itself: [`DatagramHandle::close`] lets go of the sockets (the
    /// fields would drop them).
    fn drop(&mut self) {
        self.close();
    }
}

/// A shared datagram socket asked for by untrusted workers.
fn shared_refused(local: &ListenAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{local}: a shared datagram socket cannot serve workers that run as another \
             user: what one of them set on it would reach the others"
        ),
    )
}

/// A new socket of a group: `SO_REUSEPORT`, bound to `local`; with `lock`, its filter
/// locked (`SO_LOCK_FILTER`: no worker can attach a filter or a steering program).
fn bind_member(local: &ListenAddr, lock: bool) -> io::Result<OwnedFd> {
    let opts = BindOptions {
        reuse_port: true,
        ..BindOptions::default()
    };
    let fd = bind::bind_datagram(local, opts)?.fd;
    if lock {
        socket::lock_filter(fd.as_fd())?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fd;
    use std::net::UdpSocket;

    /// Sends one datagram from each of `n` fresh client sockets; returns how many each
    /// socket of `sockets` received.
    fn spread(local: std::net::SocketAddr, sockets: &[BorrowedFd<'_>], n: usize) -> Vec<usize> {
        for _ in 0..n {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(b"x", local).unwrap();
        }
        let mut got = vec![0; sockets.len()];
        let mut buf = [0u8; 8];
        for (i, s) in sockets.iter().enumerate() {
            fd::set_nonblocking(*s, true).unwrap();
            let s = UdpSocket::from(fd::dup_cloexec(*s).unwrap());
            while s.recv(&mut buf).is_ok() {
                got[i] += 1;
            }
        }
        got
    }

    /// The socket's inode (`fstat`), which names it.
    fn inode(f: BorrowedFd<'_>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::File::from(fd::dup_cloexec(f).unwrap())
            .metadata()
            .unwrap()
            .ino()
    }

    fn handle(per_worker: bool) -> (DatagramHandle, std::net::SocketAddr) {
        let h = DatagramHandle::group(&"127.0.0.1:0".parse().unwrap(), per_worker).unwrap();
        let local = h.local().as_tcp().unwrap();
        (h, local)
    }

    #[test]
    fn a_gone_workers_steering_program_is_detached() {
        let (mut h, local) = handle(false);
        let (w1, w2) = (WorkerId(1), WorkerId(2));
        let a = fd::dup_cloexec(h.grant(w1, None).unwrap()).unwrap();
        let b = fd::dup_cloexec(h.grant(w2, None).unwrap()).unwrap();
        let both = [a.as_fd(), b.as_fd()];
        // Worker 1 (trusted: nothing stops it) steers the group to the first socket.
        socket::attach_reuseport_cbpf(a.as_fd(), 0).unwrap();
        let steered = spread(local, &both, 20);
        assert!(steered.contains(&0) && steered.contains(&20), "{steered:?}");
        h.worker_gone(w1, 2);
        let spread_again = spread(local, &both, 40);
        assert!(spread_again.iter().all(|&n| n > 0), "{spread_again:?}");
    }

    #[test]
    fn untrusted_sockets_are_locked_and_never_handed_on() {
        let (mut h, local) = handle(true);
        let (w1, w2, w3) = (WorkerId(1), WorkerId(2), WorkerId(3));
        let a = fd::dup_cloexec(h.grant(w1, None).unwrap()).unwrap();
        // No filter, no steering program: EPERM, from the lock.
        for option in [libc::SO_ATTACH_FILTER, libc::SO_ATTACH_REUSEPORT_CBPF] {
            let e = socket::attach_cbpf(a.as_fd(), option, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "option {option}");
        }
        let b = fd::dup_cloexec(h.grant(w2, None).unwrap()).unwrap();
        assert_eq!(h.descriptors_of(w1), 1);
        // Worker 1's replacement gets a socket of its own, not worker 1's.
        let c = fd::dup_cloexec(h.grant(w3, Some(w1)).unwrap()).unwrap();
        let ino = |f: &OwnedFd| inode(f.as_fd());
        assert_ne!(ino(&c), ino(&a));
        assert_ne!(ino(&c), ino(&b));
        // Worker 1 goes: the primary's copy of its socket closes with it.
        h.worker_gone(w1, 2);
        let Some((true, fds)) = h.passed_fds() else {
            panic!("not a group")
        };
        let held: Vec<_> = fds.iter().map(|f| inode(*f)).collect();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(!held.contains(&ino(&a)));
        drop(a);
        // Every datagram reaches a live worker's socket.
        let got = spread(local, &[b.as_fd(), c.as_fd()], 40);
        assert_eq!(got.iter().sum::<usize>(), 40, "{got:?}");
    }

    #[test]
    fn the_port_stays_held_when_the_last_untrusted_worker_goes() {
        let (mut h, local) = handle(true);
        let w1 = WorkerId(1);
        let a = fd::dup_cloexec(h.grant(w1, None).unwrap()).unwrap();
        h.worker_gone(w1, 1);
        drop(a);
        // A fresh socket holds the port (nobody else can bind it) and queues datagrams
        // for the next worker, which takes it.
        assert!(UdpSocket::bind(local).is_err());
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(b"queued", local).unwrap();
        let next = fd::dup_cloexec(h.grant(WorkerId(2), None).unwrap()).unwrap();
        let next = UdpSocket::from(next);
        next.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = next.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"queued");
    }

    #[test]
    fn untrusted_workers_do_not_take_over_a_previous_programs_sockets() {
        let (mut h, local) = handle(true);
        let old = fd::dup_cloexec(h.grant(WorkerId(1), None).unwrap()).unwrap();
        let Some((true, passed)) = h.passed_fds() else {
            panic!("not a group")
        };
        let passed: Vec<OwnedFd> = passed
            .iter()
            .map(|f| fd::dup_cloexec(*f).unwrap())
            .collect();
        let local_addr = h.local().clone();
        drop(h);
        // The new program: a fresh socket, the previous ones not kept.
        let mut new = DatagramHandle::adopt(local_addr, true, passed, true).unwrap();
        let fresh = fd::dup_cloexec(new.grant(WorkerId(7), None).unwrap()).unwrap();
        assert_ne!(inode(fresh.as_fd()), inode(old.as_fd()));
        assert_eq!(new.passed_fds().map(|(_, f)| f.len()), Some(1));
        // The previous worker's socket lives as long as it holds it; then the fresh
        // one gets every datagram.
        drop(old);
        let got = spread(local, &[fresh.as_fd()], 10);
        assert_eq!(got, [10]);
        // A shared socket cannot serve untrusted workers.
        let shared =
            bind::bind_datagram(&"127.0.0.1:0".parse().unwrap(), BindOptions::default()).unwrap();
        let e = DatagramHandle::adopt(shared.local, false, vec![shared.fd], true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    }
}
