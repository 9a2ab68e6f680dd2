//! The primary: forks the workers, answers their listen requests, runs the round-robin
//! handles, and reports what happens (Node's `lib/internal/cluster/primary.js`).
//!
//! # One thread, one `poll`
//!
//! `fork` copies only the calling thread, so the primary never starts a thread, and
//! [`sys::process::fork`](crate::sys::process::fork) refuses to fork a process that has
//! more than one: create the cluster before starting threads. Everything the primary
//! waits for is one `poll(2)` set:
//!
//! - the self-pipe its signal handlers write into (`SIGTERM`, `SIGINT`, `SIGCHLD`), read
//!   first on every turn;
//! - each worker's control channel (and `POLLOUT` when messages wait for room);
//! - each round-robin handle's listening socket, only while a credit is free;
//! - each round-robin hand-off channel (credits, hang-ups).
//!
//! Timers (a disconnect's deadline, a paused accept) become `poll`'s timeout.
//!
//! # Reaping
//!
//! Workers are reaped with `waitpid(pid, WNOHANG)` for each pid the primary forked, on
//! `SIGCHLD` and when a control channel reports EOF. Deliberately not `waitpid(-1)`,
//! which would also steal the exit status of children the application started itself
//! (a `std::process::Child` would then fail to `wait`). A reaped pid is forgotten at
//! once, so the primary can never signal a pid that the system has given to someone
//! else.

mod round_robin;
mod shared;
mod slot;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::addr::ListenAddr;
use crate::bind::{self, BindOptions};
use crate::error::{Error, ListenError};
use crate::event::{Event, ExitStatus, WorkerId};
use crate::ipc::channel::{Channel, Incoming, RecvError};
use crate::ipc::codec::{
    ListenGrant, Message, ProtocolError, Transport, MAX_MESSAGE_LEN, MAX_RECORD_LEN,
};
use crate::mode::Mode;
use crate::options::ListenOptions;
use crate::sys::poll::{self, PollFd};
use crate::sys::process::{self, Fork, Pid, WaitStatus};
use crate::sys::signal::SignalPipe;
use crate::worker::{self, ChildStart, Worker, WorkerFn};

use round_robin::RoundRobinHandle;
use shared::SharedHandle;
use slot::{Phase, Slot};

/// The signals the primary handles (and resets to `SIG_DFL` in each worker).
const HANDLED_SIGNALS: &[i32] = &[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD];

/// How long a shutdown or disconnect waits for workers before `SIGKILL`, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The default [`Builder::accept_window`].
pub const DEFAULT_ACCEPT_WINDOW: Duration = Duration::from_micros(100);

/// How often a worker whose channel closed is checked for exit when no `SIGCHLD` comes
/// (signal handling turned off, or the signal was coalesced).
const REAP_POLL: Duration = Duration::from_millis(20);

/// Control messages read from one worker per turn, so one chatty worker cannot starve
/// the others.
const MESSAGES_PER_TURN: usize = 64;

/// Configures and starts a [`Cluster`].
///
/// ```no_run
/// use cluster::{Cluster, Listener, Mode};
///
/// let mut cluster = Cluster::builder()
///     .workers(4)
///     .mode(Mode::RoundRobin)
///     .start(|_worker| -> std::io::Result<()> {
///         let listener = Listener::bind("127.0.0.1:8080")?;
///         while let Some(conn) = listener.accept()? {
///             // serve conn
/// #           drop(conn);
///         }
///         Ok(())
///     })?;
/// while let Some(event) = cluster.next_event()? {
///     println!("{event:?}");
/// }
/// # Ok::<(), cluster::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    workers: Option<usize>,
    mode: Option<Mode>,
    shutdown_timeout: Duration,
    signals: bool,
    accept_window: Duration,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: one worker per CPU, the mode from `CLUSTER_SCHED_POLICY` or
    /// round-robin, 5 s shutdown timeout, signals handled.
    pub fn new() -> Builder {
        Builder {
            workers: None,
            mode: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            signals: true,
            accept_window: DEFAULT_ACCEPT_WINDOW,
        }
    }

    /// How many workers to fork (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Builder {
        self.workers = Some(n);
        self
    }

    /// The mode; without it, `CLUSTER_SCHED_POLICY` decides, then round-robin (Node's
    /// default).
    pub fn mode(mut self, mode: Mode) -> Builder {
        self.mode = Some(mode);
        self
    }

    /// How long [`Cluster::shutdown`] and [`Cluster::disconnect`] wait for a worker to
    /// exit before killing it.
    pub fn shutdown_timeout(mut self, d: Duration) -> Builder {
        self.shutdown_timeout = d;
        self
    }

    /// Round-robin only: after a turn in which the primary accepted connections, it
    /// leaves the listener alone for this long, so the connections that arrive in the
    /// meantime are accepted in one batch, with one wake-up (interrupt coalescing, as
    /// network cards do). A connection arriving within the window after another waits
    /// at most this long; under light load nothing waits. `Duration::ZERO` turns it off.
    /// Default: [`DEFAULT_ACCEPT_WINDOW`].
    pub fn accept_window(mut self, d: Duration) -> Builder {
        self.accept_window = d;
        self
    }

    /// Whether the primary installs its signal handlers (default on): `SIGTERM` and
    /// `SIGINT` shut the cluster down gracefully (a second one kills the workers at
    /// once), `SIGCHLD` reaps. Turn off to drive everything from code.
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.signals = on;
        self
    }

    /// Forks the workers; each runs `worker` and exits with its result (0 for `Ok`, 1
    /// for `Err`, whose message goes to stderr, 101 for a panic).
    ///
    /// Call it before the process starts any thread: `fork` copies only the calling
    /// thread, so the primary must have exactly one (checked: an error otherwise).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for zero workers or a bad `CLUSTER_SCHED_POLICY`;
    /// [`Error::NotPrimary`] inside a worker; [`Error::Io`] when signal handlers cannot
    /// be installed or a worker cannot be forked (the ones already forked are killed).
    pub fn start<F, E>(self, worker: F) -> Result<Cluster, Error>
    where
        F: Fn(&Worker) -> Result<(), E> + 'static,
        E: fmt::Display,
    {
        if worker::runtime().is_some() {
            return Err(Error::NotPrimary);
        }
        let mode = match self.mode {
            Some(m) => m,
            None => Mode::from_env()?.unwrap_or(Mode::RoundRobin),
        };
        let count = match self.workers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if count == 0 {
            return Err(Error::Config(
                "the number of workers must be at least 1, not 0".into(),
            ));
        }
        let signals = if self.signals {
            Some(
                SignalPipe::install(HANDLED_SIGNALS)
                    .map_err(|e| Error::io("install signal handlers", e))?,
            )
        } else {
            None
        };
        let f: Rc<WorkerFn> = Rc::new(move |w: &Worker| worker(w).map_err(|e| e.to_string()));
        let mut cluster = Cluster {
            mode,
            shutdown_timeout: self.shutdown_timeout,
            accept_window: self.accept_window,
            worker_fn: f,
            workers: BTreeMap::new(),
            handles: Vec::new(),
            next_id: 1,
            signals,
            events: VecDeque::new(),
            state: State::Running,
            buf: vec![0u8; MAX_RECORD_LEN + 1],
            reap_due: false,
            pid: process::getpid(),
            dropped: 0,
        };
        for _ in 0..count {
            cluster.spawn()?; // on error, dropping `cluster` kills the ones forked so far
        }
        Ok(cluster)
    }
}

/// Where the cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopping { deadline: Instant },
    Stopped,
}

/// One listening handle, by key.
#[derive(Debug)]
enum Handle {
    Shared(SharedHandle),
    RoundRobin(RoundRobinHandle),
}

#[derive(Debug)]
struct HandleEntry {
    /// The address workers asked for (port 0 stays 0: one handle for all of them).
    key: ListenAddr,
    handle: Handle,
    /// The Unix socket file this handle created, removed when the cluster stops.
    socket_file: Option<PathBuf>,
}

impl HandleEntry {
    fn local(&self) -> &ListenAddr {
        match &self.handle {
            Handle::Shared(h) => h.local(),
            Handle::RoundRobin(h) => h.local(),
        }
    }
}

/// What a poll entry stands for.
#[derive(Debug, Clone, Copy)]
enum Token {
    Signals,
    Control(WorkerId),
    Listener(usize),
    Member(usize, u32),
}

/// A snapshot of one worker, from [`Cluster::workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's id.
    pub id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// Whether it has said it is online.
    pub online: bool,
    /// Whether it was asked to disconnect.
    pub disconnecting: bool,
    /// Connections the primary handed to it (round-robin mode; 0 in shared mode).
    pub dispatched: u64,
}

/// A running cluster: the primary's handle on its workers.
///
/// Drive it with [`next_event`](Cluster::next_event): the primary does its work (hands
/// off connections, answers listen requests, reaps) inside that call. Dropping a cluster
/// that has not stopped kills its workers and waits for them.
pub struct Cluster {
    mode: Mode,
    shutdown_timeout: Duration,
    accept_window: Duration,
    worker_fn: Rc<WorkerFn>,
    workers: BTreeMap<WorkerId, Slot>,
    handles: Vec<HandleEntry>,
    next_id: u32,
    signals: Option<SignalPipe>,
    events: VecDeque<Event>,
    state: State,
    buf: Vec<u8>,
    reap_due: bool,
    pid: Pid,
    /// Connections closed by handles already released.
    dropped: u64,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("mode", &self.mode)
            .field("state", &self.state)
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A [`Builder`] with the defaults.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The cluster's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Waits for the next event; `None` once the cluster has stopped (after
    /// [`shutdown`](Cluster::shutdown) or a signal, every worker has exited and every
    /// event has been returned).
    ///
    /// # Errors
    ///
    /// Only when `poll` itself fails, which means a bug; recoverable trouble comes as
    /// [`Event::Error`].
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.state == State::Stopped {
                return Ok(None);
            }
            self.turn(None)?;
        }
    }

    /// Like [`next_event`](Cluster::next_event), but returns `Ok(None)` after `timeout`
    /// too; tell the two apart with [`is_stopped`](Cluster::is_stopped).
    ///
    /// # Errors
    ///
    /// As for `next_event`.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let now = Instant::now();
            if self.state == State::Stopped || now >= deadline {
                return Ok(None);
            }
            self.turn(Some(deadline - now))?;
        }
    }

    /// Whether every worker has exited after a shutdown.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Starts a graceful shutdown: the listeners stop taking connections (round-robin
    /// handles close their socket; shared sockets close with the last worker's copy),
    /// every worker is asked to disconnect, and those still alive after the shutdown
    /// timeout are killed. Keep calling `next_event` until it returns `None`.
    pub fn shutdown(&mut self) {
        if self.state != State::Running {
            return;
        }
        let now = Instant::now();
        let deadline = now + self.shutdown_timeout;
        self.state = State::Stopping { deadline };
        for i in 0..self.handles.len() {
            let workers = &mut self.workers;
            match &mut self.handles[i].handle {
                Handle::Shared(h) => h.close(),
                Handle::RoundRobin(h) => {
                    let closed = h.close_listener(now, &mut |w| {
                        if let Some(s) = workers.get_mut(&w) {
                            s.dispatched += 1;
                        }
                    });
                    if closed > 0 {
                        eprintln!(
                            "cluster: shutdown closed {closed} connection(s) no worker could take"
                        );
                    }
                }
            }
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.disconnect_until(id, deadline);
        }
        self.finish_if_done();
    }

    /// Asks one worker to disconnect (Node's `worker.disconnect()`): no new connections
    /// go to it, its listeners close, it finishes what it has and exits; after the
    /// shutdown timeout it is killed.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id.
    pub fn disconnect(&mut self, id: WorkerId) -> Result<(), Error> {
        if !self.workers.contains_key(&id) {
            return Err(Error::NoSuchWorker(id));
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        self.disconnect_until(id, deadline);
        Ok(())
    }

    /// Sends `signal` to a worker (Node's `worker.kill()`); the exit counts as asked for.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchWorker`] when no live worker has this id; [`Error::Io`] when
    /// `kill` fails.
    pub fn kill(&mut self, id: WorkerId, signal: i32) -> Result<(), Error> {
        let slot = self.workers.get_mut(&id).ok_or(Error::NoSuchWorker(id))?;
        slot.requested = true;
        process::kill(slot.pid, signal).map_err(|e| Error::io(format!("kill worker {id}"), e))
    }

    /// Sends `data` to a worker, which reads it with [`Worker::recv`].
    ///
    /// Never blocks: when the worker does not read, messages wait in the primary, up to
    /// a limit.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] above [`MAX_MESSAGE_LEN`] bytes
    /// (nothing sent, nothing broken); [`Error::NoSuchWorker`]; [`Error::Io`] with
    /// `WouldBlock` when too many messages already wait for this worker, or the OS
    /// error when its channel is broken.
    pub fn send(&mut self, id: WorkerId, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLarge { len: data.len() });
        }
        let slot = self.workers.get_mut(&id).ok_or(Error::NoSuchWorker(id))?;
        if slot.outbox_full() {
            return Err(Error::io(
                format!("send to worker {id}"),
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the worker is not reading its messages",
                ),
            ));
        }
        slot.send(&Message::User(data), None)
            .map_err(|e| Error::io(format!("send to worker {id}"), e))
    }

    /// The live workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers
            .values()
            .map(|s| WorkerInfo {
                id: s.id,
                pid: s.pid as u32,
                online: s.phase != Phase::Starting,
                disconnecting: matches!(s.phase, Phase::Disconnecting { .. }),
                dispatched: s.dispatched,
            })
            .collect()
    }

    /// Connections the primary accepted but had to close without a worker serving
    /// them (round-robin): those that came back from dying workers more than
    /// three times, and those pending when a shutdown closed the listener.
    pub fn dropped_connections(&self) -> u64 {
        self.dropped
            + self
                .handles
                .iter()
                .map(|h| match &h.handle {
                    Handle::RoundRobin(rr) => rr.dropped(),
                    Handle::Shared(_) => 0,
                })
                .sum::<u64>()
    }

    // ----------------------------------------------------------------- forking

    /// Forks one worker.
    fn spawn(&mut self) -> Result<WorkerId, Error> {
        let id = WorkerId(self.next_id);
        let (mine, theirs) =
            Channel::pair().map_err(|e| Error::io(format!("create channel for worker {id}"), e))?;
        // Whatever sits in stdout's buffer would otherwise be printed twice.
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        match process::fork().map_err(|e| Error::io(format!("fork worker {id}"), e))? {
            Fork::Child => {
                drop(mine);
                let f = self.worker_fn.clone();
                let primary = self.pid;
                self.release_in_child();
                let start = ChildStart {
                    id,
                    control: theirs,
                    primary,
                    reset_signals: HANDLED_SIGNALS,
                };
                let code = worker::run_child(start, &*f);
                process::exit_now(code)
            }
            Fork::Parent(pid) => {
                drop(theirs);
                self.next_id += 1;
                self.workers.insert(id, Slot::new(id, pid, mine));
                self.events.push_back(Event::Fork {
                    worker: id,
                    pid: pid as u32,
                });
                Ok(id)
            }
        }
    }

    /// In a freshly forked child: closes this copy of everything the primary owns
    /// (channels, listeners, the signal pipe) by dropping it. Nothing of the primary's
    /// teardown runs: no worker is signalled, no socket file removed, because the child
    /// never drops the `Cluster` itself (it leaves with `_exit`).
    fn release_in_child(&mut self) {
        self.workers.clear();
        self.handles.clear();
        self.events.clear();
        self.signals = None; // restores the handlers from before the cluster
    }

    // ----------------------------------------------------------------- the loop

    /// One turn of the loop: poll, then act on everything that is ready.
    fn turn(&mut self, limit: Option<Duration>) -> Result<(), Error> {
        let now = Instant::now();
        let mut timeout = limit;
        if let Some(at) = self.next_timer() {
            let d = at.saturating_duration_since(now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        let ready = self.poll(now, timeout)?;
        let mut signals = Vec::new();
        if let Some(pipe) = &self.signals {
            if ready.iter().any(|(t, _, _)| matches!(t, Token::Signals)) {
                pipe.drain(&mut signals);
            }
        }
        for sig in signals {
            self.on_signal(sig);
        }
        for &(token, readable, writable) in &ready {
            match token {
                Token::Signals => {}
                Token::Control(id) => {
                    if writable {
                        self.flush_outbox(id);
                    }
                    if readable {
                        self.read_control(id);
                    }
                }
                Token::Member(h, _member) => {
                    if let Handle::RoundRobin(rr) = &mut self.handles[h].handle {
                        rr.on_member_readable();
                    }
                }
                Token::Listener(h) => {
                    if let Handle::RoundRobin(rr) = &mut self.handles[h].handle {
                        rr.set_readable();
                    }
                }
            }
        }
        if self.reap_due || self.workers.values().any(|s| s.eof) {
            self.reap_due = false;
            self.reap();
        }
        self.pump(Instant::now());
        self.expire_deadlines(Instant::now());
        self.finish_if_done();
        Ok(())
    }

    /// Builds the poll set, waits, and returns what is ready.
    fn poll(
        &self,
        now: Instant,
        timeout: Option<Duration>,
    ) -> Result<Vec<(Token, bool, bool)>, Error> {
        let mut fds = Vec::with_capacity(8 + self.workers.len() * 2);
        let mut tokens = Vec::with_capacity(fds.capacity());
        if let Some(pipe) = &self.signals {
            fds.push(PollFd::new(pipe.as_fd(), false));
            tokens.push(Token::Signals);
        }
        for s in self.workers.values().filter(|s| !s.eof) {
            fds.push(PollFd::new(s.control.as_fd(), s.wants_write()));
            tokens.push(Token::Control(s.id));
        }
        for (i, h) in self.handles.iter().enumerate() {
            if let Handle::RoundRobin(rr) = &h.handle {
                if let Some(fd) = rr.listener_to_poll(now) {
                    fds.push(PollFd::new(fd, false));
                    tokens.push(Token::Listener(i));
                }
                for (member, fd) in rr.member_fds() {
                    fds.push(PollFd::new(fd, false));
                    tokens.push(Token::Member(i, member));
                }
            }
        }
        match poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("poll", e)),
        }
        Ok(fds
            .iter()
            .zip(tokens)
            .filter(|(fd, _)| fd.any())
            .map(|(fd, t)| (t, fd.readable(), fd.writable()))
            .collect())
    }

    /// The earliest timer: a kill deadline, a paused accept, a reap check.
    fn next_timer(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for s in self.workers.values() {
            if let Phase::Disconnecting { deadline } = s.phase {
                if !s.killed {
                    consider(deadline);
                }
            }
            if s.eof {
                consider(Instant::now() + REAP_POLL);
            }
        }
        if let State::Stopping { deadline } = self.state {
            consider(deadline);
        }
        for h in &self.handles {
            if let Handle::RoundRobin(rr) = &h.handle {
                if let Some(t) = rr.resume_at() {
                    consider(t);
                }
            }
        }
        next
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap_due = true,
            libc::SIGTERM | libc::SIGINT => match self.state {
                State::Running => self.shutdown(),
                // A second one: stop waiting.
                State::Stopping { .. } => self.kill_all(),
                State::Stopped => {}
            },
            _ => {}
        }
    }

    // ----------------------------------------------------------------- control channels

    fn read_control(&mut self, id: WorkerId) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..MESSAGES_PER_TURN {
            let Some(slot) = self.workers.get(&id) else {
                break;
            };
            if slot.eof {
                break;
            }
            match slot.control.recv(&mut buf, true) {
                Ok(Incoming::Message(msg, _fd)) => {
                    // `_fd` is always None: the codec refuses a descriptor on every
                    // worker → primary kind.
                    if let Err(e) = self.on_message(id, msg) {
                        self.on_protocol_error(id, e);
                        break;
                    }
                }
                Ok(Incoming::Eof) => {
                    self.on_eof(id);
                    break;
                }
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
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
                    if s.phase == Phase::Starting {
                        s.phase = Phase::Online;
                    }
                }
                self.events.push_back(Event::Online { worker: id });
            }
            Message::ListenRequest { seq, options, addr } => {
                self.on_listen_request(id, seq, &options, addr)
            }
            Message::Listening { handle } => {
                let h = self
                    .handles
                    .get(handle as usize)
                    .ok_or(ProtocolError::Malformed {
                        kind: "listening",
                        reason: "unknown handle",
                    })?;
                self.events.push_back(Event::Listening {
                    worker: id,
                    addr: h.local().clone(),
                });
            }
            Message::ListenerClosed { handle } => {
                if self.handles.get(handle as usize).is_none() {
                    return Err(ProtocolError::Malformed {
                        kind: "listener-closed",
                        reason: "unknown handle",
                    });
                }
                // Round-robin: the hand-off channel's hang-up removes the worker from
                // the handle. Shared: nothing to do, the socket is the worker's copy.
            }
            Message::User(data) => self.events.push_back(Event::Message {
                worker: id,
                data: data.to_vec(),
            }),
            Message::ListenReply { .. }
            | Message::NewConn { .. }
            | Message::Ready { .. }
            | Message::Disconnect => {
                return Err(ProtocolError::Unexpected { kind: msg.name() });
            }
        }
        Ok(())
    }

    /// Node's `queryServer`: find or create the handle for the key, then grant it.
    fn on_listen_request(
        &mut self,
        id: WorkerId,
        seq: u32,
        options: &ListenOptions,
        addr: ListenAddr,
    ) {
        let idx = match self.handle_for(&addr, options) {
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
        let entry = &mut self.handles[idx];
        let local = match &entry.handle {
            Handle::Shared(h) => h.local().clone(),
            Handle::RoundRobin(h) => h.local().clone(),
        };
        let (transport, fd) = match &mut entry.handle {
            Handle::Shared(h) => (Transport::Socket, h.socket().ok_or(libc::ESHUTDOWN)),
            Handle::RoundRobin(h) => (
                Transport::Handoff,
                h.add(id)
                    .map(|(_, fd)| fd)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            ),
        };
        let Some(slot) = self.workers.get_mut(&id) else {
            return;
        };
        let sent = match fd {
            Ok(fd) => {
                let grant = ListenGrant {
                    handle: idx as u32,
                    transport,
                    local,
                };
                slot.send(
                    &Message::ListenReply {
                        seq,
                        result: Ok(grant),
                    },
                    Some(fd),
                )
            }
            Err(errno) => slot.send(
                &Message::ListenReply {
                    seq,
                    result: Err(errno),
                },
                None,
            ),
        };
        if let Err(e) = sent {
            self.events.push_back(Event::Error(Error::io(
                format!("send listen reply to worker {id}"),
                e,
            )));
        }
    }

    /// The handle for `key`, created on first use (bind once per key, so port 0 means
    /// one port for every worker).
    fn handle_for(&mut self, key: &ListenAddr, options: &ListenOptions) -> io::Result<usize> {
        if let Some(i) = self.handles.iter().position(|h| h.key == *key) {
            return Ok(i);
        }
        if self.state != State::Running {
            return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
        }
        let bind_options = BindOptions {
            // The round-robin listener is polled, never blocked on.
            nonblocking: self.mode == Mode::RoundRobin,
            ..BindOptions::default()
        };
        let bound = bind::bind(key, bind_options, options)?;
        let socket_file = bound.socket_file();
        let handle = match self.mode {
            Mode::Shared => Ok(Handle::Shared(SharedHandle::new(bound))),
            Mode::RoundRobin => RoundRobinHandle::new(bound, options.backlog, self.accept_window)
                .map(Handle::RoundRobin),
        };
        let handle = handle.map_err(|e| {
            if let Some(f) = &socket_file {
                let _ = std::fs::remove_file(f);
            }
            ListenError::io(key, e)
        })?;
        self.handles.push(HandleEntry {
            key: key.clone(),
            handle,
            socket_file,
        });
        Ok(self.handles.len() - 1)
    }

    fn reply(&mut self, id: WorkerId, msg: &Message<'_>, fd: Option<std::os::fd::BorrowedFd<'_>>) {
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
        if let Some(slot) = self.workers.get_mut(&id) {
            if !slot.eof {
                slot.eof = true;
                self.events.push_back(Event::Disconnect { worker: id });
            }
        }
        for h in &mut self.handles {
            if let Handle::RoundRobin(rr) = &mut h.handle {
                rr.stop_routing(id);
            }
        }
        self.reap_due = true;
    }

    /// A worker broke the protocol: report it, stop listening to it, kill it. Its exit
    /// is not counted as asked for, so a supervisor replaces it.
    fn on_protocol_error(&mut self, id: WorkerId, error: ProtocolError) {
        self.events
            .push_back(Event::Error(Error::Protocol { worker: id, error }));
        for h in &mut self.handles {
            if let Handle::RoundRobin(rr) = &mut h.handle {
                rr.stop_routing(id);
            }
        }
        if let Some(slot) = self.workers.get_mut(&id) {
            if !slot.eof {
                slot.eof = true;
                self.events.push_back(Event::Disconnect { worker: id });
            }
            if !slot.killed {
                slot.killed = true;
                let _ = process::kill(slot.pid, libc::SIGKILL);
            }
        }
        self.reap_due = true;
    }

    // ----------------------------------------------------------------- round-robin

    fn pump(&mut self, now: Instant) {
        let workers = &mut self.workers;
        for entry in &mut self.handles {
            if let Handle::RoundRobin(rr) = &mut entry.handle {
                if rr.wants_pump() {
                    rr.pump(now, &mut |w| {
                        if let Some(s) = workers.get_mut(&w) {
                            s.dispatched += 1;
                        }
                    });
                }
            }
        }
        let faults: Vec<_> = self
            .handles
            .iter_mut()
            .filter_map(|h| match &mut h.handle {
                Handle::RoundRobin(rr) => Some(rr.take_faults()),
                Handle::Shared(_) => None,
            })
            .flatten()
            .collect();
        for (worker, e) in faults {
            self.on_protocol_error(worker, e);
        }
    }

    // ----------------------------------------------------------------- lifecycle

    fn disconnect_until(&mut self, id: WorkerId, deadline: Instant) {
        for h in &mut self.handles {
            if let Handle::RoundRobin(rr) = &mut h.handle {
                rr.stop_routing(id);
            }
        }
        let Some(slot) = self.workers.get_mut(&id) else {
            return;
        };
        slot.requested = true;
        if matches!(slot.phase, Phase::Disconnecting { .. }) {
            return;
        }
        slot.phase = Phase::Disconnecting { deadline };
        if slot.eof || slot.send(&Message::Disconnect, None).is_err() {
            // It is going anyway; the deadline still applies if it lingers.
            self.reap_due = true;
        }
    }

    /// Reaps every worker that has exited.
    fn reap(&mut self) {
        let ids: Vec<(WorkerId, Pid)> = self.workers.values().map(|s| (s.id, s.pid)).collect();
        for (id, pid) in ids {
            let status = match process::try_wait(pid) {
                Ok(None) => continue,
                Ok(Some(WaitStatus::Exited(c))) => ExitStatus::Code(c),
                Ok(Some(WaitStatus::Signaled(s))) => ExitStatus::Signal(s),
                // ECHILD: somebody else reaped it (a waitpid(-1) elsewhere in the
                // process). It is gone; its status is unknown.
                Err(_) => ExitStatus::Code(-1),
            };
            self.on_exit(id, pid, status);
        }
    }

    fn on_exit(&mut self, id: WorkerId, pid: Pid, status: ExitStatus) {
        let Some(slot) = self.workers.remove(&id) else {
            return;
        };
        for h in &mut self.handles {
            if let Handle::RoundRobin(rr) = &mut h.handle {
                rr.remove_worker(id);
            }
        }
        if !slot.eof {
            self.events.push_back(Event::Disconnect { worker: id });
        }
        self.events.push_back(Event::Exit {
            worker: id,
            pid: pid as u32,
            status,
            requested: slot.requested,
        });
    }

    fn expire_deadlines(&mut self, now: Instant) {
        for s in self.workers.values_mut() {
            if let Phase::Disconnecting { deadline } = s.phase {
                if deadline <= now && !s.killed {
                    s.killed = true;
                    let _ = process::kill(s.pid, libc::SIGKILL);
                    self.reap_due = true;
                }
            }
        }
    }

    fn kill_all(&mut self) {
        for s in self.workers.values_mut() {
            s.requested = true;
            if !s.killed {
                s.killed = true;
                let _ = process::kill(s.pid, libc::SIGKILL);
            }
        }
        self.reap_due = true;
    }

    fn finish_if_done(&mut self) {
        if matches!(self.state, State::Stopping { .. }) && self.workers.is_empty() {
            self.state = State::Stopped;
            self.release_handles();
        }
    }

    /// Closes every handle and removes the socket files they created.
    fn release_handles(&mut self) {
        for h in self.handles.drain(..) {
            if let Handle::RoundRobin(rr) = &h.handle {
                self.dropped += rr.dropped();
            }
            if let Some(path) = &h.socket_file {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Never leave a worker behind: kill what is alive, and reap it.
        for s in self.workers.values_mut() {
            if !s.killed {
                let _ = process::kill(s.pid, libc::SIGKILL);
            }
            let _ = process::wait(s.pid);
        }
        self.workers.clear();
        self.release_handles();
        // `signals` drops after this, restoring the previous handlers.
    }
}
