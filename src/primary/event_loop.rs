//! One turn of the primary's loop: wait in `poll`, then act on what is ready — signals
//! first, then the workers' control messages (Node's `onmessage` in `primary.js`),
//! then the round-robin handles — and finally keep the cluster in shape (reap,
//! respawn, reload, deadlines).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::handle::Watch;
use super::slot::Phase;
use super::{Cluster, State};
use crate::error::Error;
use crate::event::Event;
use crate::ipc::channel::{Incoming, RecvError};
use crate::ipc::codec::{Message, ProtocolError};
use crate::sys::poll::{self, PollFd};
use crate::worker_id::WorkerId;

/// How often a worker whose channel closed is checked for exit when no `SIGCHLD` comes
/// (signal handling turned off, or the signal was coalesced).
const REAP_POLL: Duration = Duration::from_millis(20);

/// Control messages read from one worker per turn, so one chatty worker cannot starve
/// the others.
const MESSAGES_PER_TURN: usize = 64;

/// How long beyond its poll's timeout the primary must have been away before that
/// time is given back to its deadlines (see [`Cluster::paused`]).
const PAUSE_NOTICED: Duration = Duration::from_millis(250);

/// How long after the stop signal that began a shutdown the same signal again is the
/// same stop, not "kill now" (see `on_signal`). `timeout(1)` sends its two within
/// microseconds; a person pressing Ctrl-C twice on purpose takes longer.
pub(super) const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// A stop signal's name, for the log.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        _ => "SIGTERM",
    }
}

/// The poll lists, kept from turn to turn for their allocations.
#[derive(Debug, Default)]
pub(super) struct PollScratch {
    tokens: Vec<Token>,
    ready: Vec<(Token, bool, bool)>,
}

/// What a poll entry stands for.
#[derive(Debug, Clone, Copy)]
enum Token {
    Signals,
    /// A binary upgrade's trial reports.
    Trial,
    Control(WorkerId),
    /// A descriptor of the handle with this id.
    Handle(u32, Watch),
}

impl Cluster {
    /// One turn of the loop: poll, then act on everything that is ready.
    pub(super) fn turn(&mut self, limit: Option<Duration>) -> Result<(), Error> {
        let now = Instant::now();
        let mut timeout = limit;
        if let Some(at) = self.next_timer(now) {
            let d = at.saturating_duration_since(now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        // The lists of the last turn, kept for their allocations (the primary's loop
        // runs once per connection in round-robin).
        let mut ready = std::mem::take(&mut self.poll_scratch.ready);
        let mut tokens = std::mem::take(&mut self.poll_scratch.tokens);
        self.poll(now, timeout, &mut tokens, &mut ready)?;
        self.poll_scratch.tokens = tokens;
        let back = Instant::now();
        if let (Some(t), Some(last)) = (timeout, self.polled.replace(back)) {
            // Back later than the last turn and this poll's timeout explain: the
            // primary did not run meanwhile (stopped with the rest of its process
            // group by Ctrl-Z or `SIGSTOP`, or starved), and neither, most likely, did
            // its workers.
            self.paused(back.saturating_duration_since(last).saturating_sub(t));
        }
        // Signals first (the self-pipe pattern: drain, then act).
        if ready.iter().any(|(t, _, _)| matches!(t, Token::Signals)) {
            self.take_signals();
        }
        for &(token, readable, writable) in &ready {
            match token {
                Token::Signals => {}
                Token::Trial => self.on_trial_output(),
                Token::Control(id) => {
                    if writable {
                        self.flush_outbox(id);
                    }
                    if readable {
                        self.read_control(id);
                    }
                }
                Token::Handle(h, what) => {
                    if let Some(i) = self.handle_index(h) {
                        self.handles[i].handle.on_ready(what, readable, writable);
                    }
                }
            }
        }
        self.poll_scratch.ready = ready;
        let now = Instant::now();
        let reaping = self.reap_due || self.orphans_due || self.workers.values().any(|s| s.eof);
        if reaping || (self.state == State::Running && self.live_count() < self.target) {
            // Signals that came after `poll` looked, before anything is reaped or
            // forked: under a service manager's control-group kill the primary's
            // SIGTERM and its workers' exits race, and a worker that left because of
            // the same signal must not be taken for a crash and replaced.
            self.take_signals();
        }
        if reaping {
            self.reap_due = false;
            self.reap(now);
        }
        for h in &mut self.handles {
            for (worker, n) in h.handle.tick(now) {
                if let Some(s) = self.workers.get_mut(&worker) {
                    s.dispatched = s.dispatched.saturating_sub(n);
                }
            }
        }
        self.pump(now);
        if let Some(n) = &mut self.notifier {
            n.tick(now);
        }
        self.expire_deadlines(now);
        self.upgrade_tick(now);
        self.check_health(now);
        self.maintain(now);
        self.finish_if_done();
        Ok(())
    }

    /// The primary was away for `lost`: the time from one poll's return to the next,
    /// beyond that poll's timeout (a turn's own work takes milliseconds). A terminal's
    /// Ctrl-Z (`SIGTSTP`), `kill -STOP -- -PGID` or a frozen container (`docker pause`)
    /// stop the primary and its workers together; the time they were stopped is given
    /// back to every deadline that measures what a worker does: its silence (health),
    /// its disconnect deadline (a shutdown, a reload, a recycle), a replacement's time
    /// to listen, an upgrade's trial. Under 250 ms is not counted (scheduling delays). An
    /// application that drives the turns itself and spends longer between them gives
    /// its workers that time too.
    fn paused(&mut self, lost: Duration) {
        if lost < PAUSE_NOTICED {
            return;
        }
        crate::log::report!(
            "the primary did not run for {} ms (stopped?); its deadlines and its workers' \
             silence are moved on by as much",
            lost.as_millis()
        );
        self.postpone_health(lost);
        self.postpone_disconnects(lost);
        for r in [&mut self.reload, &mut self.recycle].into_iter().flatten() {
            r.postpone(lost);
        }
        self.postpone_trial(lost);
    }

    /// Builds the poll set, waits, and puts what is ready in `ready` (`tokens` is
    /// scratch space).
    fn poll(
        &self,
        now: Instant,
        timeout: Option<Duration>,
        tokens: &mut Vec<Token>,
        ready: &mut Vec<(Token, bool, bool)>,
    ) -> Result<(), Error> {
        ready.clear();
        tokens.clear();
        let mut fds = Vec::with_capacity(8 + self.workers.len() * 2);
        if let Some(pipe) = &self.signals {
            fds.push(PollFd::new(pipe.as_fd(), false));
            tokens.push(Token::Signals);
        }
        if let Some(fd) = self.trial_fd() {
            fds.push(PollFd::new(fd, false));
            tokens.push(Token::Trial);
        }
        for s in self.workers.values().filter(|s| !s.eof) {
            fds.push(PollFd::new(s.control.as_fd(), s.wants_write()));
            tokens.push(Token::Control(s.id));
        }
        for h in &self.handles {
            h.handle.watch(now, &mut |fd, read, write, what| {
                fds.push(PollFd::with(fd, read, write));
                tokens.push(Token::Handle(h.id, what));
            });
        }
        match poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(Error::io("poll", e)),
        }
        ready.extend(
            fds.iter()
                .zip(tokens.iter())
                .filter(|(fd, _)| fd.any())
                .map(|(fd, &t)| (t, fd.readable(), fd.writable())),
        );
        Ok(())
    }

    /// The earliest timer: a kill deadline, a respawn back-off, a reload step, a
    /// paused accept, a reap check, orphans left to reap.
    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in self.workers.values() {
            if let Phase::Disconnecting { deadline } = s.phase {
                if !s.killed {
                    consider(deadline);
                }
            }
            if s.eof {
                consider(now + REAP_POLL);
            }
        }
        if self.orphans_due {
            consider(now); // more orphans than one turn reaps
        }
        // (A shutdown's own deadline needs no timer: it is each worker's deadline.)
        if self.state == State::Running {
            if self.live_count() < self.target {
                consider(self.backoff.not_before().unwrap_or(now));
            }
            if let Some(r) = &self.reload {
                if self.reload_held || !r.stepping() {
                    consider(now); // the reload's next step, on the next turn
                } else if let Some(t) = r.deadline() {
                    consider(t);
                }
            }
        }
        if let Some(t) = self.health_timer() {
            consider(t);
        }
        if let Some(t) = self.recycle_timer(now) {
            consider(t);
        }
        for h in &self.handles {
            if let Some(t) = h.handle.next_timer(now) {
                consider(t);
            }
        }
        if let Some(t) = self.notifier.as_ref().and_then(|n| n.next_timer()) {
            consider(t);
        }
        if let Some(t) = self.upgrade_timer() {
            consider(t);
        }
        next
    }

    /// Reads the self-pipe and acts on every signal in it, in order.
    fn take_signals(&mut self) {
        let mut signals = Vec::new();
        if let Some(pipe) = &self.signals {
            pipe.drain(&mut signals);
        }
        for sig in signals {
            self.on_signal(sig);
        }
    }

    /// Acts on one signal. `SIGTERM`/`SIGINT` begin a graceful shutdown; while it runs,
    /// another stop signal kills every worker at once (as a second Ctrl-C does in
    /// gunicorn), except the very signal that began it repeated within
    /// [`REPEAT_WINDOW`]: that is one stop told twice, not an escalation.
    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap_due = true,
            libc::SIGTERM | libc::SIGINT => match self.state {
                State::Running => {
                    self.stop_signal = Some((sig, Instant::now()));
                    self.begin_shutdown();
                }
                State::Stopping { .. } => match self.stop_signal {
                    // The same stop, told twice: timeout(1) signals the primary, then
                    // its whole group; so do supervisors that signal the main process
                    // and then the control group. Graceful still.
                    Some((first, at)) if first == sig && at.elapsed() < REPEAT_WINDOW => {
                        crate::log::report!(
                            "{} again within {}: the same graceful stop (send it again later, or another stop signal, to kill the workers now)",
                            signal_name(sig),
                            crate::deadline::Shown(REPEAT_WINDOW)
                        );
                    }
                    // A second stop on purpose: stop waiting.
                    _ => self.kill_all(),
                },
                State::Stopped => {}
            },
            libc::SIGHUP => self.begin_reload(),
            libc::SIGUSR2 => {
                if let Err(e) = self.begin_upgrade() {
                    crate::log::report!("{e}");
                    self.events.push_back(Event::UpgradeFailed { error: e });
                }
            }
            libc::SIGTTIN => {
                let more = self.target.saturating_add(1);
                if let Err(e) = self.set_workers(more) {
                    self.events.push_back(Event::Error(e));
                }
            }
            libc::SIGTTOU => self.target = self.target.saturating_sub(1).max(1),
            _ => {}
        }
    }

    // ----------------------------------------------------------------- control channels

    fn read_control(&mut self, id: WorkerId) {
        let mut buf = std::mem::take(&mut self.buf);
        let now = Instant::now();
        let limit = self.config.message_limit;
        for _ in 0..MESSAGES_PER_TURN {
            let Some(slot) = self.workers.get_mut(&id) else {
                break;
            };
            if slot.eof {
                break;
            }
            match slot.control.recv(&mut buf, true) {
                Ok(Incoming::Message(msg, fd)) => {
                    // No worker → primary kind carries a descriptor, and on Linux
                    // 6.16+ the kernel refuses one at the worker's `sendmsg`. On older
                    // kernels a worker can attach one to a kind that does (new-conn,
                    // listen-reply), which `on_message` refuses: it is disposed of
                    // first, without the loop waiting (`sys::closer`).
                    if let Some(fd) = fd {
                        slot.control.dispose(fd);
                    }
                    if !slot.admit(now, limit) {
                        self.on_protocol_error(id, ProtocolError::Flooding { limit });
                        break;
                    }
                    if let Err(e) = self.on_message(id, msg) {
                        self.on_protocol_error(id, e);
                        break;
                    }
                }
                Ok(Incoming::Eof) => {
                    self.on_eof(id);
                    break;
                }
                // A descriptor from a worker, lost on the way: no less a violation.
                Ok(Incoming::FdLost(_)) => {
                    self.on_protocol_error(id, ProtocolError::ControlTruncated);
                    break;
                }
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Short of memory or buffers: try again on the next turn.
                Err(RecvError::Io(e))
                    if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS)) =>
                {
                    break
                }
                Err(RecvError::Io(_)) => {
                    self.on_eof(id);
                    break;
                }
                Err(RecvError::Protocol(e)) => {
                    self.on_protocol_error(id, e);
                    break;
                }
            }
        }
        self.buf = buf;
    }

    fn on_message(&mut self, id: WorkerId, msg: Message<'_>) -> Result<(), ProtocolError> {
        match msg {
            Message::Online => {
                if let Some(s) = self.workers.get_mut(&id) {
                    if std::mem::replace(&mut s.said_online, true) {
                        return Err(ProtocolError::Malformed {
                            kind: "online",
                            reason: "said twice",
                        });
                    }
                    if s.phase == Phase::Starting {
                        s.phase = Phase::Online;
                    }
                }
                self.events.push_back(Event::Online { worker: id });
            }
            Message::ListenRequest {
                seq,
                options,
                addr,
                sock,
            } => self.on_listen_request(id, seq, &options, addr, sock),
            Message::Listening { handle } => self.on_listening(id, handle)?,
            Message::ListenerClosed { handle } => self.on_listener_closed(id, handle)?,
            Message::User(data) => self.events.push_back(Event::Message {
                worker: id,
                data: data.to_vec(),
            }),
            Message::Stats { accepted, open } => {
                if let Some(s) = self.workers.get_mut(&id) {
                    s.accepted = accepted;
                    s.open = open;
                }
            }
            Message::SetupFailed { stage, errno } => {
                if let Some(s) = self.workers.get_mut(&id) {
                    // Setup ends before `Online`: a failure reported after it is forged
                    // (it would count as a young death for the whole cluster's back-off).
                    if s.said_online {
                        return Err(ProtocolError::Malformed {
                            kind: "setup-failed",
                            reason: "after online",
                        });
                    }
                    s.setup_failed = true;
                }
                self.events.push_back(Event::Error(Error::WorkerSetup {
                    worker: id,
                    stage,
                    source: io::Error::from_raw_os_error(errno),
                }));
            }
            Message::Pong { heartbeat_ms } => self.on_pong(id, heartbeat_ms, Instant::now()),
            Message::ListenReply { .. }
            | Message::NewConn { .. }
            | Message::Ready { .. }
            | Message::Probe
            | Message::Ping
            | Message::Disconnect => {
                return Err(ProtocolError::Unexpected { kind: msg.name() });
            }
        }
        Ok(())
    }

    pub(super) fn reply(&mut self, id: WorkerId, msg: &Message<'_>, fd: Option<BorrowedFd<'_>>) {
        if let Some(slot) = self.workers.get_mut(&id) {
            if let Err(e) = slot.send(msg, fd) {
                self.events
                    .push_back(Event::Error(Error::io(format!("send to worker {id}"), e)));
            }
        }
    }

    fn flush_outbox(&mut self, id: WorkerId) {
        if let Some(slot) = self.workers.get_mut(&id) {
            if slot.flush().is_err() {
                self.reap_due = true; // the worker is gone
            }
        }
    }

    /// The control channel closed: the worker is exiting (Node's `disconnect`).
    fn on_eof(&mut self, id: WorkerId) {
        let deadline = crate::deadline::after(Instant::now(), self.config.shutdown_timeout);
        if let Some(slot) = self.workers.get_mut(&id) {
            if !slot.eof {
                slot.eof = true;
                self.events.push_back(Event::Disconnect { worker: id });
            }
            // Normally the process is exiting. One that closed its channel and goes on
            // living would be live forever without a primary to talk to: it gets the
            // disconnect deadline, then SIGKILL, and is replaced like a crash.
            if !matches!(slot.phase, Phase::Disconnecting { .. }) {
                slot.phase = Phase::Disconnecting { deadline };
            }
        }
        self.stop_routing(id);
        self.reap_due = true;
    }

    /// A worker broke the protocol: report it, stop listening to it, kill it. Its exit
    /// is not counted as asked for, so it is replaced like a crashed worker.
    pub(super) fn on_protocol_error(&mut self, id: WorkerId, error: ProtocolError) {
        self.events
            .push_back(Event::Error(Error::Protocol { worker: id, error }));
        self.stop_routing(id);
        if let Some(slot) = self.workers.get_mut(&id) {
            if !slot.eof {
                slot.eof = true;
                self.events.push_back(Event::Disconnect { worker: id });
            }
            if !slot.killed {
                slot.killed = true;
                let _ = crate::sys::process::kill(slot.pid, libc::SIGKILL);
            }
        }
        self.reap_due = true;
    }

    // ----------------------------------------------------------------- handles

    /// No new connections for this worker, at once, on any handle.
    pub(super) fn stop_routing(&mut self, id: WorkerId) {
        for h in &mut self.handles {
            h.handle.stop_routing(id);
        }
    }

    /// Hands out connections on every handle that has work (round-robin), and kills
    /// the workers that broke the protocol meanwhile.
    pub(super) fn pump(&mut self, now: Instant) {
        let workers = &mut self.workers;
        let scheduler = &mut *self.config.scheduler;
        let mut faults = Vec::new();
        for entry in &mut self.handles {
            faults.extend(entry.handle.pump(now, scheduler, &mut |w| {
                if let Some(s) = workers.get_mut(&w) {
                    s.dispatched += 1;
                }
            }));
        }
        for (worker, e) in faults {
            self.on_protocol_error(worker, e);
        }
    }
}
