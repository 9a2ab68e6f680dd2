//! Workers' listen requests, seen from the primary (Node's `queryServer` in
//! `primary.js`, and its `removeWorker`/`remove` when a worker lets go): authorise the
//! address, find or create the handle for it, grant it; count who holds each handle,
//! and close a handle when its last worker let go of it for good.
//!
//! # Authorisation
//!
//! The primary binds what workers ask for, with its own privileges. A worker that
//! dropped privileges ([`Builder::user`](super::Builder::user)) is not trusted to choose:
//! a cluster with `user` must name its addresses with
//! [`Builder::listen_only`](super::Builder::listen_only) (`start` refuses otherwise), and
//! a request for anything else (a TCP address, a Unix path, an `fd:N` descriptor number)
//! is refused with `EACCES` before anything is created: the worker's `Listener::bind`
//! fails naming the address, and the application sees [`Event::ListenFailed`] and
//! [`Error::ListenDenied`]. Nor do such workers choose a listener's options (timeouts
//! and `TCP_DEFER_ACCEPT` are inherited by every worker's connections, the backlog is
//! everyone's): a request must carry the options the allowlist gives the address
//! ([`Builder::listen_only_with`](super::Builder::listen_only_with); the defaults
//! with `listen_only`). Without `user`, workers run as the primary's own user and
//! could do whatever the primary does; any address is served unless `listen_only` says
//! otherwise.
//!
//! Datagram sockets ([`Datagram`](crate::Datagram)) are asked for the same way, with
//! the socket type as the key's other half (a TCP and a UDP socket on `127.0.0.1:0`
//! are two handles). With `listen_only`, a datagram request is allowed only for an
//! address named by [`Builder::listen_only_datagrams`](super::Builder::listen_only_datagrams):
//! a TCP address allowed does not allow UDP on it. Its options are not compared (no
//! option applies to a datagram socket).
//!
//! # A handle's life
//!
//! A handle is created by the first request for its key and keeps its id (the number
//! workers name it by) for its whole life; ids are never reused while the cluster
//! runs. It stays open while any worker holds it, and also while none does but one is
//! coming back: a crashed worker that will be respawned, a reload's replacement (the
//! old worker leaves only once the new one listens). It is closed (listeners refuse
//! new clients, a Unix socket file is removed) when the last holder lets go for good:
//! a live worker closes its listener, or a worker that will not be replaced (scaled
//! down, disconnected, killed, crashed with respawn off) exits. Node closes a handle
//! with its last worker whatever the reason, so a crash refuses clients until the
//! respawn listens again; here only a deliberate end does.

use std::io;

use super::handle::{Handle, Setup};
use super::slot::Phase;
use super::{Cluster, HandleEntry, Hold, State};
use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions};
use crate::error::{Error, ListenError};
use crate::event::Event;
use crate::ipc::codec::{ListenGrant, Message, ProtocolError};
use crate::mode::Mode;
use crate::options::ListenOptions;
use crate::sock_type::SockType;
use crate::worker_id::WorkerId;

/// Listening handles (distinct addresses) a cluster keeps at most: a worker asking for
/// more gets `ENFILE`, so a runaway worker cannot fill the primary's descriptor table.
const MAX_HANDLES: usize = 256;

impl Cluster {
    /// Node's `queryServer`: authorise, find or create the handle for the key, grant it.
    pub(super) fn on_listen_request(
        &mut self,
        id: WorkerId,
        seq: u32,
        options: &ListenOptions,
        addr: ListenAddr,
        sock: SockType,
    ) {
        let handles_before = self.handles.len();
        let found = self
            .authorise(id, &addr, options, sock)
            .and_then(|()| self.check_listen_budget(id, &addr))
            .and_then(|()| self.handle_for(&addr, sock, options))
            .and_then(|i| self.check_grants(id, i, &addr).map(|()| i));
        let idx = match found {
            Ok(i) => i,
            Err(error) => {
                let errno = crate::error::errno_of(&error).unwrap_or(libc::EINVAL);
                self.reply(
                    id,
                    &Message::ListenReply {
                        seq,
                        result: Err(errno),
                    },
                    None,
                );
                self.events.push_back(Event::ListenFailed {
                    worker: id,
                    addr,
                    error,
                });
                return;
            }
        };
        let created = self.handles.len() > handles_before;
        if created {
            if let Some(s) = self.workers.get_mut(&id) {
                s.handles_created += 1;
            }
        }
        // A replacement (reload, restart, recycle) takes over the reuse-port socket of
        // the worker it replaces.
        let replacing = [&self.reload, &self.recycle]
            .into_iter()
            .find_map(|r| r.as_ref().and_then(|r| r.replacing(id)));
        let entry = &mut self.handles[idx];
        let local = entry.local().clone();
        let handle = entry.id;
        let added = entry.handle.add(id, replacing);
        let (result, fd) = match added {
            Ok((transport, fd)) => (
                Ok(ListenGrant {
                    handle,
                    transport,
                    local,
                }),
                Some(fd),
            ),
            Err(e) => (Err(crate::error::errno_of(&e).unwrap_or(libc::EIO)), None),
        };
        let granted = fd.is_some();
        if let Some(slot) = self.workers.get_mut(&id) {
            let sent = slot.send(&Message::ListenReply { seq, result }, fd);
            self.after_listen_reply(id, seq, idx, handle, granted, sent);
        }
        // A handle made for this request that nobody holds after all (the grant or its
        // reply failed) is not left listening with nobody to serve it.
        if created && self.handles[idx].holders.is_empty() {
            self.close_handle(idx);
        }
    }

    /// After a listen reply went (or failed to): the worker holds handle `idx` once the
    /// grant is on its way; a worker that does not read its replies is killed; a reply
    /// that could not go is answered with its error.
    fn after_listen_reply(
        &mut self,
        id: WorkerId,
        seq: u32,
        idx: usize,
        handle: u32,
        granted: bool,
        sent: io::Result<()>,
    ) {
        let Some(slot) = self.workers.get_mut(&id) else {
            return;
        };
        match sent {
            Ok(()) if granted => {
                if let Err(at) = slot.granted.binary_search(&handle) {
                    slot.granted.insert(at, handle);
                }
                // `check_grants` made room before the grant.
                let _ = self.handles[idx].holders.or_default(id).grant();
            }
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // It asks and asks and does not read the answers.
                self.on_protocol_error(id, ProtocolError::NotReading);
            }
            Err(e) => {
                // The reply (and its descriptor) could not go: answer with the error
                // instead, so the worker's `bind` fails now, not at its deadline.
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let _ = slot.send(
                    &Message::ListenReply {
                        seq,
                        result: Err(errno),
                    },
                    None,
                );
                self.events.push_back(Event::Error(Error::io(
                    format!("send listen reply to worker {id}"),
                    e,
                )));
            }
        }
    }

    /// `EMFILE`, naming the address, when worker `id` holds [`Hold::MAX_GRANTS`]
    /// listeners of handle `idx` already (a shared handle's grants cost the primary no
    /// descriptor, so the budget of `budget.rs` does not bound them).
    fn check_grants(&self, id: WorkerId, idx: usize, addr: &ListenAddr) -> io::Result<()> {
        let entry = &self.handles[idx];
        if entry.holders.get(&id).map_or(true, Hold::may_grant) {
            return Ok(());
        }
        crate::log::report!(
            "worker {id}: listen on {addr} refused: it holds {} of that handle already",
            Hold::MAX_GRANTS
        );
        Err(ListenError::io(
            addr,
            io::Error::from_raw_os_error(libc::EMFILE),
        ))
    }

    /// Whether worker `id` may listen on `key` with `options` (see the module docs);
    /// `EACCES` naming the address, and an [`Error::ListenDenied`] event, when not.
    fn authorise(
        &mut self,
        id: WorkerId,
        key: &ListenAddr,
        options: &ListenOptions,
        sock: SockType,
    ) -> io::Result<()> {
        let Some(allowed) = &self.config.allowed else {
            return Ok(());
        };
        let untrusted = self.config.settings.user.is_some();
        let datagram_allowed = self.config.allowed_datagrams.contains(key);
        let reason = match (sock, allowed.iter().find(|(a, _)| a == key)) {
            (SockType::Datagram, _) if datagram_allowed => return Ok(()),
            (SockType::Datagram, _) => {
                "not one of the cluster's allowed datagram addresses \
                 (Builder::listen_only_datagrams)"
            }
            (SockType::Stream, None) => {
                "not one of the cluster's allowed listen addresses (Builder::listen_only)"
            }
            (SockType::Stream, Some((_, o))) if untrusted && o != options => {
                "options other than those the cluster allows for it (Builder::listen_only_with)"
            }
            (SockType::Stream, Some(_)) => return Ok(()),
        };
        self.events.push_back(Event::Error(Error::ListenDenied {
            worker: id,
            addr: key.clone(),
            reason,
        }));
        Err(ListenError::io(
            key,
            io::Error::new(io::ErrorKind::PermissionDenied, reason),
        ))
    }

    /// The handle for `key`, created on first use (bind once per key, so port 0 means
    /// one port for every worker).
    fn handle_for(
        &mut self,
        key: &ListenAddr,
        sock: SockType,
        options: &ListenOptions,
    ) -> io::Result<usize> {
        if let Some(i) = self
            .handles
            .iter()
            .position(|h| h.key == *key && h.sock == sock)
        {
            return Ok(i);
        }
        if self.state != State::Running {
            return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
        }
        if self.handles.len() >= MAX_HANDLES {
            return Err(ListenError::io(
                key,
                io::Error::from_raw_os_error(libc::ENFILE),
            ));
        }
        // Reuse-port splits TCP listeners only: a Unix path or an adopted descriptor is
        // one socket, shared.
        let mode = match (self.mode, key) {
            (Mode::ReusePort, ListenAddr::Tcp(_)) => Mode::ReusePort,
            (Mode::ReusePort, _) => Mode::Shared,
            (m, _) => m,
        };
        let setup = Setup {
            options,
            accept_window: self.config.accept_window,
            prefetch: self.config.prefetch,
            untrusted: self.config.settings.user.is_some(),
        };
        // A binary upgrade's previous program served this key: its very socket.
        let datagram = sock == SockType::Datagram;
        if let Some(claimed) = self.claim_inherited(key, datagram, mode, setup) {
            let (handle, socket_file) = claimed.map_err(|e| ListenError::io(key, e))?;
            return Ok(self.push_handle(key, sock, handle, socket_file));
        }
        let pin_directory = self.config.settings.user.is_some();
        if datagram {
            let mut socket_file = None;
            let handle = Handle::new_datagram(self.mode, key, setup.untrusted, || {
                let mut bound = bind::bind_datagram(
                    key,
                    BindOptions {
                        pin_directory,
                        ..BindOptions::default()
                    },
                )?;
                socket_file = bound.socket_file.take();
                Ok(bound)
            })?;
            return Ok(self.push_handle(key, sock, handle, socket_file));
        }
        let bind_options = BindOptions {
            // The round-robin listener is polled, never blocked on.
            nonblocking: mode == Mode::RoundRobin,
            // Reuse-port: the first socket (the anchor) is bound *without*
            // SO_REUSEPORT, so binding fails if anyone else already holds the port,
            // rather than joining their group; the workers' sockets join it after.
            reuse_port: false,
            // Untrusted workers: a directory on a Unix path cannot be swapped under
            // the primary between its check and its bind.
            pin_directory,
        };
        let mut bound = bind::bind(key, bind_options, options)?;
        let socket_file = bound.socket_file.take();
        let adopted = matches!(key, ListenAddr::Fd(_) | ListenAddr::Systemd(_));
        let handle = match Handle::new(mode, adopted, bound, setup) {
            Ok(h) => h,
            Err(e) => {
                if let Some(f) = socket_file {
                    f.remove();
                }
                return Err(ListenError::io(key, e));
            }
        };
        Ok(self.push_handle(key, sock, handle, socket_file))
    }

    /// A new handle for `key`; its position.
    fn push_handle(
        &mut self,
        key: &ListenAddr,
        sock: SockType,
        handle: Handle,
        socket_file: Option<crate::socket_file::SocketFile>,
    ) -> usize {
        let id = self.new_handle_id();
        self.handles.push(HandleEntry {
            id,
            key: key.clone(),
            sock,
            handle,
            holders: Default::default(),
            socket_file,
        });
        self.handles.len() - 1
    }

    /// An id no open handle has; ids grow, and wrap only after 2³² handles.
    fn new_handle_id(&mut self) -> u32 {
        loop {
            let id = self.next_handle;
            self.next_handle = self.next_handle.wrapping_add(1);
            if !self.handles.iter().any(|h| h.id == id) {
                return id;
            }
        }
    }

    /// The position of the handle with wire id `id`.
    pub(super) fn handle_index(&self, id: u32) -> Option<usize> {
        self.handles.iter().position(|h| h.id == id)
    }

    /// `Listening`: worker `id` listens on `handle` (reported as an event). Only for
    /// a listener it was granted and has not announced yet: anything else is a forged
    /// record (it would count the worker listening, which a reload waits for).
    pub(super) fn on_listening(&mut self, id: WorkerId, handle: u32) -> Result<(), ProtocolError> {
        let forged = ProtocolError::Malformed {
            kind: "listening",
            reason: "no such listener was granted to this worker",
        };
        let i = self.handle_index(handle).ok_or(forged.clone())?;
        let hold = self.handles[i].holders.get_mut(&id).ok_or(forged.clone())?;
        if hold.listening >= hold.granted {
            return Err(forged);
        }
        hold.listening += 1;
        let addr = self.handles[i].local().clone();
        let datagram = self.handles[i].handle.is_datagram();
        if let Some(s) = self.workers.get_mut(&id) {
            s.listening += 1;
        }
        self.events.push_back(if datagram {
            Event::Receiving { worker: id, addr }
        } else {
            Event::Listening { worker: id, addr }
        });
        self.notify_if_ready();
        Ok(())
    }

    /// `READY=1` to the service manager once as many workers as the cluster keeps
    /// listen (each on at least one address), outside a reload.
    pub(super) fn notify_if_ready(&mut self) {
        if self.reload.is_some() || self.state != State::Running {
            return;
        }
        let listening = self
            .workers
            .values()
            .filter(|s| !s.requested && s.listening > 0)
            .count();
        if listening >= self.target {
            self.retire_previous();
            if let Some(n) = &mut self.notifier {
                n.ready(listening);
            }
        }
    }

    /// `ListenerClosed`: worker `id` let go of one listener on `handle`. A live worker
    /// that was its last holder closes the handle (see the module docs).
    pub(super) fn on_listener_closed(
        &mut self,
        id: WorkerId,
        handle: u32,
    ) -> Result<(), ProtocolError> {
        // A handle closed meanwhile is not an error: the worker's close may cross the
        // release its own earlier close caused.
        let Some(i) = self.handle_index(handle) else {
            return if handle < self.next_handle {
                Ok(())
            } else {
                Err(ProtocolError::Malformed {
                    kind: "listener-closed",
                    reason: "unknown handle",
                })
            };
        };
        let holders = &mut self.handles[i].holders;
        let Some(hold) = holders.get_mut(&id) else {
            return Ok(()); // not one of its listeners: nothing to count
        };
        hold.granted -= 1;
        // A listener whose `listen` failed in the worker closes without having
        // announced itself.
        let was_listening = hold.listening > hold.granted;
        hold.listening = hold.listening.min(hold.granted);
        if hold.granted == 0 {
            holders.remove(&id);
        }
        let last = holders.is_empty();
        let Some(slot) = self.workers.get_mut(&id) else {
            return Ok(());
        };
        if was_listening {
            slot.listening = slot.listening.saturating_sub(1);
        }
        // Round-robin: the hand-off channel's hang-up removes the worker from the
        // handle. Shared and reuse-port: the socket was the worker's copy.
        let on_purpose = !slot.requested && !matches!(slot.phase, Phase::Disconnecting { .. });
        if last && on_purpose && self.state == State::Running {
            self.close_handle(i);
        }
        Ok(())
    }

    /// Worker `id` exited: it holds nothing any more. Handles it held that nobody holds
    /// now are closed if no replacement is coming (`replaced` false).
    pub(super) fn release_holder(&mut self, id: WorkerId, held: &[u32], replaced: bool) {
        for h in &mut self.handles {
            h.holders.remove(&id);
        }
        if replaced || self.state != State::Running {
            return;
        }
        for &handle in held {
            if let Some(i) = self.handle_index(handle) {
                if self.handles[i].holders.is_empty() {
                    self.close_handle(i);
                }
            }
        }
    }

    /// Closes one handle while the cluster runs (Node's `handle.close()` after
    /// `remove` emptied it): its listeners stop (clients are refused), its socket file
    /// goes.
    fn close_handle(&mut self, i: usize) {
        let entry = self.handles.remove(i);
        self.retire_handle(entry);
    }

    /// The end of one handle: stop listening, count what it dropped, remove its file.
    pub(super) fn retire_handle(&mut self, mut entry: HandleEntry) {
        self.stats.dropped_connections += entry.handle.close();
        if let Some(f) = entry.socket_file.take() {
            f.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Hold;

    #[test]
    fn grants_of_one_handle_are_bounded() {
        let mut hold = Hold::default();
        for _ in 0..Hold::MAX_GRANTS {
            assert!(hold.grant());
        }
        // One more is refused and counts nothing: the count cannot wrap.
        assert!(!hold.may_grant());
        assert!(!hold.grant());
        assert_eq!(hold.granted, Hold::MAX_GRANTS);
    }
}
