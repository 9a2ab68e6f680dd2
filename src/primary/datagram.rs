//! The datagram handle: the sockets behind workers' [`Datagram`](crate::Datagram)s
//! (Node's `dgram` sockets in a cluster: `cluster._getServer` with a `udp4`/`udp6`
//! address type, which `primary.js` always serves with a `SharedHandle`, or one
//! socket per worker with `reusePort`).
//!
//! - **One shared socket** (shared and round-robin modes, and a Unix datagram path or
//!   an adopted descriptor in every mode): bound once here and sent to every worker,
//!   whose threads block in `recvfrom(2)`; the kernel hands each datagram to one
//!   waiting thread. There is no round-robin for datagrams: nothing is accepted, so
//!   nothing can be handed out, and forwarding every datagram through the primary
//!   would put it in the data path for no gain (Node does not either).
//! - **A group** (reuse-port mode, UDP): one `SO_REUSEPORT` socket per worker, all bound
//!   here, so port 0, privileged ports and the kernel's same-user rule for a group work
//!   as for TCP (see `reuse_port.rs`). The kernel picks a socket by a hash of the
//!   sender's address and port.
//!
//! As for TCP, the primary keeps its copy of every socket for the handle's whole life,
//! so a socket and its receive queue outlive the worker reading it: a respawned or
//! reloaded worker takes over the very socket (a replacement that of the worker it
//! replaces), and datagrams that arrive meanwhile wait in the queue. Only what a dying
//! worker had already read is lost.
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
//! kernel offers nothing better. The first socket is never closed while the handle
//! lives, so it holds the port when every worker is gone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions, Bound};
use crate::worker_id::WorkerId;

/// One socket of a group and the workers that hold it (two while a replacement
/// overlaps the worker it replaces; none while it waits for a respawn).
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
}

impl DatagramHandle {
    /// One socket, bound already, shared by every worker.
    pub(crate) fn shared(bound: Bound) -> DatagramHandle {
        DatagramHandle {
            local: bound.local,
            sockets: Sockets::Shared(bound.fd),
        }
    }

    /// A reuse-port group on `key` (UDP): probes the address, then binds the first
    /// socket of the group (see the module docs).
    pub(crate) fn group(key: &ListenAddr) -> io::Result<DatagramHandle> {
        let probe = bind::bind_datagram(key, BindOptions::default())?;
        let local = probe.local.clone();
        drop(probe);
        let first = bind_member(&local)?;
        Ok(DatagramHandle {
            local,
            sockets: Sockets::Group(vec![GroupSocket {
                fd: first,
                holders: Vec::new(),
            }]),
        })
    }

    /// The previous program's sockets, passed across a binary upgrade: one shared
    /// socket (`group` false), or a reuse-port group.
    pub(crate) fn adopt(local: ListenAddr, group: bool, fds: Vec<OwnedFd>) -> io::Result<Self> {
        let sockets = if group {
            Sockets::Group(
                fds.into_iter()
                    .map(|fd| GroupSocket {
                        fd,
                        holders: Vec::new(),
                    })
                    .collect(),
            )
        } else {
            let mut fds = fds.into_iter();
            let (Some(fd), None) = (fds.next(), fds.next()) else {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            };
            Sockets::Shared(fd)
        };
        Ok(DatagramHandle { local, sockets })
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
    /// replaces, else one nobody holds, else a new one.
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
        let found = replacing
            .and_then(|old| group.iter().position(|s| s.holders.contains(&old)))
            .or_else(|| group.iter().position(|s| s.holders.is_empty()));
        let i = match found {
            Some(i) => i,
            None => {
                group.push(GroupSocket {
                    fd: bind_member(&self.local)?,
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

    /// The worker exited: its group sockets stay for whoever comes next; at most
    /// `target` are kept (one at least, which holds the port).
    pub(crate) fn worker_gone(&mut self, worker: WorkerId, target: usize) {
        let Sockets::Group(group) = &mut self.sockets else {
            return;
        };
        for s in group.iter_mut() {
            s.holders.retain(|&w| w != worker);
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
    pub(crate) fn close(&mut self) {
        self.sockets = Sockets::Closed;
    }
}

/// A new socket of a group: `SO_REUSEPORT`, bound to `local`.
fn bind_member(local: &ListenAddr) -> io::Result<OwnedFd> {
    let opts = BindOptions {
        reuse_port: true,
        ..BindOptions::default()
    };
    Ok(bind::bind_datagram(local, opts)?.fd)
}
