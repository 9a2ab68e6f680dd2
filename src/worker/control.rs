//! The worker runtime over its control channel: the listen round trip, the counters,
//! and the control thread (Node's `child.js`: `send({act: 'queryServer'})` with its
//! callback, and the `process.on('internalMessage')` handler).
//!
//! [`Runtime::listen`] (and [`Runtime::ask_datagram`]) sends a listen request and
//! waits for the reply that the control thread files under its `seq`, then builds the
//! [`Listener`] from the grant (a datagram socket is built by `Datagram::bind`). The
//! control thread ([`Runtime::control_loop`]) reads the control channel: listen
//! replies, user messages (into the bounded inbox, see the module docs of
//! [`worker`](super)), `Disconnect` (closes every listener), `Ping` (answered with a
//! `Pong` carrying the time since the application's last
//! [`Worker::heartbeat`](crate::Worker::heartbeat): the primary's liveness check, see
//! `primary::health`), and EOF (the primary is gone: close, linger [`ORPHAN_GRACE`],
//! exit); between records it reports the counters every [`STATS_INTERVAL`]. The
//! accepting threads report them at once when the count reaches the worker's
//! connection limit (`Builder::max_connections`), so the primary recycles it then.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError, Weak};

use crate::addr::ListenAddr;
use crate::connection::OpenCount;
use crate::error::ListenError;
use crate::ipc::channel::{Incoming, RecvError};
use crate::ipc::codec::{ListenGrant, Message, Transport, MAX_RECORD_LEN};
use crate::listener::link::{self, DatagramGrant, WorkerLink};
use crate::listener::{Closable, Listener};
use crate::options::ListenOptions;
use crate::sock_type::SockType;
use crate::sys::poll::{self, PollFd};
use crate::sys::process;
use crate::sys::signal;

use super::{Runtime, State, INBOX_BYTES, INBOX_LIMIT, ORPHAN_GRACE, STATS_INTERVAL};
use super::{INTERNAL_EXIT, LISTEN_REPLY_TIMEOUT};

/// While the inbox is full, how often the control thread wakes to report the counters
/// and, when the primary watches its liveness, to say it is alive (an unasked `Pong`):
/// often enough for a worker timeout well under a second.
const FULL_INBOX_TICK: std::time::Duration = std::time::Duration::from_millis(100);

impl State {
    fn inbox_full(&self) -> bool {
        self.inbox.len() >= INBOX_LIMIT || self.inbox_bytes >= INBOX_BYTES
    }

    fn push_message(&mut self, data: Vec<u8>) {
        self.inbox_bytes += data.len();
        self.inbox.push_back(data);
    }
}

impl Runtime {
    /// Takes the oldest message; wakes the control thread when that makes room.
    pub(super) fn pop_message(&self, st: &mut State) -> Option<Vec<u8>> {
        let was_full = st.inbox_full();
        let m = st.inbox.pop_front()?;
        st.inbox_bytes -= m.len();
        if was_full && !st.inbox_full() {
            self.changed.notify_all();
        }
        Some(m)
    }

    /// Back-pressure: while the inbox is full the control thread reads nothing more, so
    /// the channel fills, then the primary's outbox, and `Cluster::send` says
    /// `WouldBlock`. Nothing is lost. Counters are still reported meanwhile.
    fn wait_for_inbox_room(&self) {
        let mut st = self.lock();
        while st.inbox_full() {
            let (guard, waited) = self
                .changed
                .wait_timeout(st, FULL_INBOX_TICK)
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            if waited.timed_out() {
                drop(st);
                self.report_stats();
                // Not reading the channel, so not its pings either: still alive.
                if self.pinged.load(Ordering::Relaxed) {
                    self.pong();
                }
                // Not reading the channel meanwhile, but still hearing signals.
                self.on_signals();
                st = self.lock();
            }
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the primary for a listener on `addr` and waits for the reply (Node's
    /// `queryServer` round trip).
    pub(crate) fn listen(
        &self,
        addr: &ListenAddr,
        options: &ListenOptions,
    ) -> io::Result<Listener> {
        let (grant, fd, link) = self.ask(addr, options, SockType::Stream)?;
        let made = match grant.transport {
            Transport::Socket => {
                Listener::from_granted_socket(grant.local, fd, options, grant.handle, link.clone())
            }
            Transport::Handoff => Ok(Listener::from_granted_handoff(
                grant.local,
                fd,
                options,
                grant.handle,
                link,
            )),
            Transport::Datagram => Err(wrong_transport(addr)),
        };
        let listener = made.map_err(|e| {
            self.listener_closed(grant.handle);
            e
        })?;
        if self.announce(grant.handle, Arc::downgrade(listener.shared()) as _) {
            listener.close();
        }
        Ok(listener)
    }

    /// Asks the primary for a datagram socket on `addr` (the same round trip, a
    /// `datagram-request`).
    pub(crate) fn ask_datagram(
        &self,
        addr: &ListenAddr,
        options: &ListenOptions,
    ) -> io::Result<DatagramGrant> {
        let (grant, fd, _link) = self.ask(addr, options, SockType::Datagram)?;
        match grant.transport {
            Transport::Datagram => Ok(DatagramGrant {
                local: grant.local,
                fd,
                handle: grant.handle,
            }),
            Transport::Socket | Transport::Handoff => {
                self.listener_closed(grant.handle);
                Err(wrong_transport(addr))
            }
        }
    }

    /// Keeps `endpoint` to close when the worker disconnects, and tells the primary
    /// that this worker listens on `handle`. Whether the worker is disconnecting
    /// already (the caller then closes the new endpoint).
    fn announce(&self, handle: u32, endpoint: Weak<dyn Closable>) -> bool {
        let mut st = self.lock();
        st.listeners.retain(|w| w.strong_count() > 0);
        st.listeners.push(endpoint);
        // `Listening` goes out while the lock is held: a `Disconnect` arriving now
        // makes the control thread close this listener (`close_listeners`, which
        // takes the lock first), and its `ListenerClosed` must follow `Listening`.
        // The other way round, the primary would see an announcement for a
        // listener already given back, which it takes for a forged record.
        let _ = self.control.send(&Message::Listening { handle }, None);
        st.disconnecting || st.primary_gone
    }

    /// The listen round trip: sends the request, waits for its reply, and returns the
    /// grant with its descriptor and the link the new endpoint reports to.
    fn ask(
        &self,
        addr: &ListenAddr,
        options: &ListenOptions,
        sock: SockType,
    ) -> io::Result<(ListenGrant, OwnedFd, Arc<dyn WorkerLink>)> {
        // What the new listener reports to: this runtime, as registered at start.
        let Some(link) = link::registered().cloned() else {
            return Err(ListenError::io(
                addr,
                io::Error::other("the worker runtime is not registered"),
            ));
        };
        let seq = {
            let mut st = self.lock();
            st.next_seq = st.next_seq.wrapping_add(1);
            let seq = st.next_seq;
            st.waiting.push(seq);
            seq
        };
        let forget = |st: &mut State| st.waiting.retain(|&s| s != seq);
        let request = Message::ListenRequest {
            seq,
            options: options.clone(),
            addr: addr.clone(),
            sock,
        };
        if let Err(e) = self.control.send(&request, None) {
            forget(&mut self.lock());
            return Err(ListenError::io(addr, e));
        }
        let deadline = crate::deadline::after(std::time::Instant::now(), LISTEN_REPLY_TIMEOUT);
        let (result, fd) = {
            let mut st = self.lock();
            loop {
                if let Some(i) = st.replies.iter().position(|r| r.0 == seq) {
                    let (_, result, fd) = st.replies.swap_remove(i);
                    forget(&mut st);
                    break (result, fd);
                }
                if st.primary_gone {
                    forget(&mut st);
                    return Err(ListenError::io(
                        addr,
                        io::Error::new(io::ErrorKind::BrokenPipe, "the primary is gone"),
                    ));
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    forget(&mut st);
                    return Err(ListenError::io(
                        addr,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no answer from the primary within {}",
                                crate::deadline::Shown(LISTEN_REPLY_TIMEOUT)
                            ),
                        ),
                    ));
                }
                st = self
                    .changed
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let grant =
            result.map_err(|errno| ListenError::io(addr, io::Error::from_raw_os_error(errno)))?;
        let Some(fd) = fd else {
            // The codec refuses a successful reply without a descriptor; stay total.
            return Err(ListenError::io(
                addr,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "listen reply without a descriptor",
                ),
            ));
        };
        Ok((grant, fd, link))
    }

    /// Connections open now, saturated to `u32` for the wire.
    pub(crate) fn open_now(&self) -> u32 {
        self.open.load(Ordering::Relaxed).min(u64::from(u32::MAX)) as u32
    }

    /// Sends the counters to the primary if they changed since the last report.
    pub(super) fn report_stats(&self) {
        let now = (
            self.accepted.load(Ordering::Relaxed),
            u64::from(self.open_now()),
        );
        let mut last = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if *last != now {
            *last = now;
            let _ = self.control.send(
                &Message::Stats {
                    accepted: now.0,
                    open: now.1 as u32,
                },
                None,
            );
        }
    }

    /// Answers the primary's `Ping`: alive, and how long since the last heartbeat.
    fn pong(&self) {
        let heartbeat_ms = self.heartbeat_silence_ms();
        let _ = self.control.send(&Message::Pong { heartbeat_ms }, None);
    }

    /// Tells the primary that the listener for `handle` closed (best effort: when the
    /// primary is gone there is nobody to tell).
    pub(crate) fn listener_closed(&self, handle: u32) {
        let _ = self.control.send(&Message::ListenerClosed { handle }, None);
    }

    /// Closes every listener of this worker (disconnect, or the primary is gone).
    fn close_listeners(&self) {
        let listeners: Vec<_> = {
            let st = self.lock();
            st.listeners.iter().filter_map(Weak::upgrade).collect()
        };
        for l in listeners {
            l.close();
        }
    }

    /// Node's `worker.disconnect()` seen from the worker: no new connections (every
    /// listener closes), what it holds it finishes; the worker function then returns.
    /// Asked by the primary (`Disconnect`) or by a signal (`SIGTERM`, `SIGINT`).
    fn disconnect(&self) {
        self.lock().disconnecting = true;
        self.note_stop();
        self.changed.notify_all();
        self.close_listeners();
    }

    /// Signals arrived: `SIGTERM` and `SIGINT` disconnect the worker. A service
    /// manager's control-group kill (systemd's default `KillMode`) sends them to the
    /// primary and every worker at once; taken as a disconnect, the requests a worker
    /// has begun are still answered, while the primary, signalled too, shuts the
    /// cluster down. A worker signalled alone leaves the same way, and the primary
    /// replaces it.
    fn on_signals(&self) {
        let mut got = Vec::new();
        self.signals.drain(&mut got);
        if got.iter().any(|&s| s == libc::SIGTERM || s == libc::SIGINT) {
            self.disconnect();
        }
    }

    /// The control thread: reads the control channel until the primary is gone.
    pub(super) fn control_loop(self: Arc<Self>) {
        // This thread takes SIGTERM and SIGINT for the worker (the others block them).
        let _ = signal::set_blocked(&super::DISCONNECT_SIGNALS, false);
        let mut buf = crate::sys::mem::ZeroedBuf::new(MAX_RECORD_LEN + 1);
        loop {
            self.wait_for_inbox_room();
            // The channel, and the pipe SIGTERM/SIGINT write into; at least once a
            // second (to report the counters).
            let (record, signalled) = {
                let mut fds = [
                    PollFd::new(self.control.as_fd(), false),
                    PollFd::new(self.signals.as_fd(), false),
                ];
                match poll::poll(&mut fds, Some(STATS_INTERVAL)) {
                    Ok(_) => (fds[0].readable(), fds[1].readable()),
                    Err(_) => (false, false), // EINTR: look again
                }
            };
            if signalled {
                self.on_signals();
            }
            if !record {
                self.report_stats();
                continue;
            }
            match self.control.recv(&mut buf, true) {
                Ok(Incoming::Message(Message::ListenReply { seq, result }, fd)) => {
                    let mut st = self.lock();
                    if st.waiting.contains(&seq) {
                        st.replies.push((seq, result, fd));
                        self.changed.notify_all();
                    }
                    // else: its `bind` gave up (LISTEN_REPLY_TIMEOUT); `fd` closes here.
                }
                // At its descriptor limit the worker cannot install the listener's
                // descriptor (`MSG_CTRUNC`; the kernel closed it). The record arrived
                // whole: `bind` gets `EMFILE` with the address, and the worker goes on.
                // The primary keeps its side as granted (a hand-off channel with no
                // credits, a reuse-port socket nobody listens on): nothing is routed
                // there, and it goes when the worker does.
                Ok(Incoming::FdLost(Message::ListenReply { seq, .. })) => {
                    let mut st = self.lock();
                    if st.waiting.contains(&seq) {
                        st.replies.push((seq, Err(libc::EMFILE), None));
                        self.changed.notify_all();
                    }
                }
                Ok(Incoming::Message(Message::User(data), None)) => {
                    self.lock().push_message(data.to_vec());
                    self.changed.notify_all();
                }
                Ok(Incoming::Message(Message::Disconnect, None)) => self.disconnect(),
                Ok(Incoming::Message(Message::Ping, None)) => {
                    self.pinged.store(true, Ordering::Relaxed);
                    self.pong();
                }
                Ok(Incoming::Message(other, _) | Incoming::FdLost(other)) => {
                    crate::log::report!(
                        "worker {}: unexpected {} message from the primary; exiting",
                        self.id,
                        other.name()
                    );
                    process::exit_now(INTERNAL_EXIT);
                }
                Err(RecvError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) =>
                {
                    continue
                }
                Err(RecvError::Protocol(e)) => {
                    crate::log::report!(
                        "worker {}: bad record from the primary: {e}; exiting",
                        self.id
                    );
                    process::exit_now(INTERNAL_EXIT);
                }
                Ok(Incoming::Eof) | Err(RecvError::Io(_)) => {
                    // The primary is gone: stop accepting, let the worker function
                    // return, and leave after a grace period regardless.
                    self.lock().primary_gone = true;
                    self.note_stop();
                    self.changed.notify_all();
                    self.close_listeners();
                    std::thread::sleep(ORPHAN_GRACE);
                    let _ = io::stdout().flush();
                    process::exit_now(1);
                }
            }
        }
    }
}

/// A grant of the other kind than asked for (a stream socket for a datagram request,
/// or the reverse): the primary would never send it.
fn wrong_transport(addr: &ListenAddr) -> io::Error {
    ListenError::io(
        addr,
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the primary granted a socket of the other type",
        ),
    )
}

impl WorkerLink for Runtime {
    fn listen(&self, addr: &ListenAddr, options: &ListenOptions) -> io::Result<Listener> {
        Runtime::listen(self, addr, options)
    }

    fn ask_datagram(
        &self,
        addr: &ListenAddr,
        options: &ListenOptions,
    ) -> io::Result<DatagramGrant> {
        Runtime::ask_datagram(self, addr, options)
    }

    fn announce(&self, handle: u32, endpoint: Weak<dyn Closable>) -> bool {
        Runtime::announce(self, handle, endpoint)
    }

    fn track(&self, endpoint: Weak<dyn Closable>) {
        let closing = {
            let mut st = self.lock();
            st.listeners.retain(|w| w.strong_count() > 0);
            st.listeners.push(endpoint.clone());
            st.disconnecting || st.primary_gone
        };
        if let (true, Some(e)) = (closing, endpoint.upgrade()) {
            e.close();
        }
    }

    fn accepted(&self) -> OpenCount {
        let n = self
            .accepted
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        if Some(n) == self.connection_limit {
            // The primary recycles this worker now, not at the next report.
            self.report_stats();
        }
        OpenCount::new(&self.open)
    }

    fn open_now(&self) -> u32 {
        Runtime::open_now(self)
    }

    fn listener_closed(&self, handle: u32) {
        Runtime::listener_closed(self, handle)
    }
}
