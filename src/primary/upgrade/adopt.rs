//! In the program an upgrade started: taking over the previous program's workers and
//! sockets, retiring those workers once every new one listens, and closing what the new
//! program never asked for.

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::handover::Handover;
use super::Cluster;
use crate::addr::ListenAddr;
use crate::error::Error;
use crate::event::Event;
use crate::ipc::channel::Channel;
use crate::mode::Mode;
use crate::primary::handle::{Handle, Setup};
use crate::primary::slot::{Phase, Slot};
use crate::socket_file::SocketFile;
use crate::worker_id::WorkerId;

/// The previous program's workers, while they finish.
#[derive(Debug)]
pub(super) struct Adopting {
    pub(super) since: Instant,
    pub(super) previous: usize,
    /// Every new worker listened and the previous ones were told to go.
    pub(super) retired: bool,
    /// The new workers were reported slow (once).
    pub(super) reported_slow: bool,
}

impl Cluster {
    /// In `Builder::start` of the program an upgrade started: takes over the previous
    /// program's workers and sockets (see the module docs).
    pub(in crate::primary) fn adopt_previous(&mut self, h: Handover<OwnedFd>) {
        let now = Instant::now();
        let previous = h.workers.len();
        for w in h.workers {
            let id = WorkerId(w.id);
            // The previous program turned SO_PASSRIGHTS off on this socket already; a
            // failure here still leaves descriptors contained (`sys::scm`).
            let control = Channel::from_worker(w.control);
            if let Err(e) = control.refuse_descriptors() {
                crate::log::report!("upgrade: worker {id}'s channel: SO_PASSRIGHTS: {e}");
            }
            let mut slot = Slot::new(id, w.pid, control);
            slot.phase = Phase::Online;
            slot.said_online = true;
            slot.requested = true;
            slot.previous_program = true;
            // Its uid, so that a new worker of a per-worker range takes another one
            // while there is one (`uids.rs`).
            slot.uid = crate::sys::process::real_uid(w.pid).ok();
            self.workers.insert(id, slot);
        }
        self.next_id = self.next_id.max(h.next_worker);
        self.next_handle = self.next_handle.max(h.next_handle);
        self.upgrades.inherited = h.handles;
        self.upgrades.adopting = Some(Adopting {
            since: now,
            previous,
            retired: false,
            reported_slow: false,
        });
        // Some may have finished before this program could reap them.
        self.reap_due = true;
        crate::log::report!(
            "upgrade: {} running, taking over {previous} worker(s) and {} listener(s)",
            self.program_path(),
            self.upgrades.inherited.len()
        );
    }

    /// The socket the previous program served `key` on (a datagram socket when
    /// `datagram`), if it passed one: the handle to serve it with in this program, and
    /// its socket file.
    pub(in crate::primary) fn claim_inherited(
        &mut self,
        key: &ListenAddr,
        datagram: bool,
        mode: Mode,
        setup: Setup<'_>,
    ) -> Option<std::io::Result<(Handle, Option<SocketFile>)>> {
        let i = self
            .upgrades
            .inherited
            .iter()
            .position(|p| p.key == *key && p.kind.is_datagram() == datagram)?;
        let p = self.upgrades.inherited.swap_remove(i);
        let file = p.file.map(|f| SocketFile::from_parts(f.dir, f.name, f.id));
        let adopted = matches!(key, ListenAddr::Fd(_) | ListenAddr::Systemd(_));
        Some(Handle::from_passed(mode, adopted, p.kind, p.local, p.fds, setup).map(|h| (h, file)))
    }

    /// Every new worker listens: the previous program's workers are told to finish.
    pub(in crate::primary) fn retire_previous(&mut self) {
        let Some(a) = &mut self.upgrades.adopting else {
            return;
        };
        if a.retired {
            return;
        }
        a.retired = true;
        let deadline = crate::deadline::after(Instant::now(), self.config.shutdown_timeout);
        let previous: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|s| s.previous_program)
            .map(|s| s.id)
            .collect();
        for id in previous {
            self.disconnect_until(id, deadline);
        }
    }

    /// Closes the sockets the previous program passed that this one never asked for,
    /// and removes their socket files.
    pub(in crate::primary) fn release_inherited(&mut self) {
        for p in self.upgrades.inherited.drain(..) {
            crate::log::report!("upgrade: {} is not served any more: closed", p.key);
            if let Some(f) = p.file {
                SocketFile::from_parts(f.dir, f.name, f.id).remove();
            }
        }
    }

    /// The new workers' slowness (reported once), and the end of an upgrade: every new
    /// worker listens and the previous program's workers are all gone.
    pub(super) fn adoption_tick(&mut self, now: Instant) {
        let Some(a) = &mut self.upgrades.adopting else {
            return;
        };
        let left = self.workers.values().filter(|s| s.previous_program).count();
        if !a.retired
            && !a.reported_slow
            && now >= crate::deadline::after(a.since, self.upgrades.timeout)
        {
            a.reported_slow = true;
            let why = format!(
                "the new program's workers do not all listen after {}; the previous \
                 program's {left} worker(s) keep serving",
                crate::deadline::Shown(self.upgrades.timeout)
            );
            crate::log::report!("upgrade: {why}");
            self.events.push_back(Event::UpgradeFailed {
                error: Error::Upgrade(why),
            });
        }
        if a.retired && left == 0 {
            let previous = a.previous;
            self.upgrades.adopting = None;
            self.release_inherited();
            self.events.push_back(Event::Upgraded {
                previous_workers: previous,
            });
        }
    }
}
