//! The worker side: what runs in a forked child (Node's `lib/internal/cluster/child.js`).
//!
//! Order of operations in the child, right after `fork` returns 0 (the primary forked
//! with every signal blocked; in this copy of the process it has already let go of its
//! own structures *without dropping them*, so none of the primary's teardown runs here
//! — nothing shared with the primary, such as an open file description's flags, is
//! touched — and restored the signal handlers from before the cluster; a panic
//! anywhere before `_exit` is caught, so the child can never return into the primary's
//! code):
//!
//! 1. every descriptor is closed except 0, 1, 2, this worker's control channel and the
//!    ones the application named with [`Builder::keep_fd`](crate::Builder::keep_fd)
//!    (`close_range(2)` over the gaps between them): whatever else the primary had
//!    open — a private key, a database connection, another service's socket, the
//!    descriptors its own parent leaked to it — a worker cannot use, even once it is
//!    compromised. Descriptors a worker closure captured are closed too, unless named;
//!    then the worker gives up the primary's controlling terminal (`TIOCNOTTY`,
//!    checked): a worker that dropped privileges could otherwise push input into a
//!    root shell with `TIOCSTI`. It stays in the primary's session and process group,
//!    as Node's workers do, so whatever signals or counts a process group sees the
//!    whole cluster: a terminal's Ctrl-C, `kill -- -PGID`, `timeout(1)`, `ps -g`, a
//!    benchmark summing the group's CPU. (Where `/dev/tty` cannot be opened to find
//!    the terminal, it leaves for a session of its own with `setsid(2)` instead.);
//! 2. the primary's own signals (`SIGHUP`, `SIGTTIN`, `SIGTTOU`, `SIGUSR2`) and
//!    `SIGPIPE` are ignored, the other signals the primary handles go back to `SIG_DFL`
//!    (ignored ones stay ignored, as across `execve`), and then the mask the primary had
//!    before the fork is restored: a reload or upgrade signal sent to the group while a
//!    worker starts cannot kill it;
//! 3. the worker settings: working directory, silenced stdio (stdin alone from
//!    `/dev/null` with a user), then `setgroups`, `setgid`, `setuid` and the rest of the
//!    privilege drop, verified (see `settings.rs`);
//! 4. `PR_SET_PDEATHSIG(SIGTERM)` — after step 3, because a change of credentials clears
//!    it — then a check that the primary is still the parent (it may have died between
//!    `fork` and `prctl`, and then nobody would send the signal);
//! 5. the worker runtime starts: the `SIGURG` no-op handler used to interrupt `accept`;
//!    `SIGTERM` and `SIGINT` written into a self-pipe, for they mean *disconnect* (a
//!    service manager's control-group kill, `kill` of a worker, the primary's death
//!    through `PR_SET_PDEATHSIG`): stop accepting, finish what it holds, exit 0; and one
//!    small thread that watches the control channel and that pipe (listen replies,
//!    messages, disconnect, the primary's liveness pings, EOF when the primary is
//!    gone) and reports the worker's counters about once a second;
//!
//! A failure in steps 1–5 is reported to the primary (`SetupFailed`, with the step and
//! `errno`) and the worker exits with code 78. Then:
//!
//! 6. `Online` goes to the primary, and the worker function runs;
//! 7. its result becomes the exit code (0, 1 for an error, 101 for a panic), stdout is
//!    flushed, and the process leaves with `_exit`: it never returns into the primary's
//!    code path, whose copy of the stack it still carries. (Built with
//!    `panic = "abort"`, as this repository's release profile is, a panic aborts the
//!    worker instead: the primary sees it killed by `SIGABRT` and replaces it like any
//!    crash.)
//!
//! # Messages, and back-pressure
//!
//! The control thread moves user messages from the channel into an inbox that
//! [`Worker::recv`] empties. The inbox is bounded ([`INBOX_LIMIT`] messages,
//! [`INBOX_BYTES`] bytes): while it is full the control thread reads nothing, so the
//! channel's socket buffer fills, then the primary's outbox for this worker, and then
//! [`Cluster::send`](crate::Cluster::send) returns `WouldBlock`. Nothing is dropped, and
//! a primary that floods a worker costs the worker at most the bound in memory.
//!
//! The channel is one ordered queue, so what the primary sends after those messages
//! waits behind them: a listen reply (then `Listener::bind` gives up at its deadline,
//! see [`LISTEN_REPLY_TIMEOUT`]) and `Disconnect` (then the primary's disconnect deadline
//! kills the worker, as for any worker that does not leave in time). A worker that is
//! sent messages is expected to take them; one that never calls `recv` should not be
//! sent any.
//!
//! # Where each part lives
//!
//! - This file: the [`Worker`] API, the runtime's state ([`Runtime`]), and the child's
//!   start ([`run_child`], the order above).
//! - [`control`]: what the runtime does over the control channel: the listen round
//!   trip, the counters, the control thread.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::ipc::channel::Channel;
use crate::ipc::codec::{ListenGrant, Message, MAX_MESSAGE_LEN};
use crate::listener;
use crate::settings::{WorkerSettings, SETUP_FAILED_EXIT};
use crate::setup_stage::SetupStage;
use crate::sys::process::{self, Pid};
use crate::sys::signal::SignalPipe;
use crate::sys::{fd, signal};
use crate::worker_id::WorkerId;

mod control;

/// The worker function's type, after [`Builder::start`](crate::Builder::start) erased
/// its error type.
pub(crate) type WorkerFn = dyn Fn(&Worker) -> Result<(), String>;

/// This process's runtime, when it is a cluster worker.
static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();

/// The runtime, if this process is a worker.
pub(crate) fn runtime() -> Option<&'static Arc<Runtime>> {
    RUNTIME.get()
}

/// How often a worker reports its counters to the primary (when they changed).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`Listener::bind`](crate::Listener::bind) waits for the primary's listen
/// reply before it gives up with `TimedOut` (naming the address). A healthy primary
/// answers within milliseconds; the reply can be lost (a send error in the primary),
/// stuck behind messages the worker does not take (see the module docs), or the
/// primary stopped. Ten seconds is long enough for a primary busy with a burst and
/// short enough that a server's start-up fails visibly. A reply that comes later is
/// dropped (its descriptor closed). Node's `queryServer` waits without a limit.
pub const LISTEN_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The exit code of a worker that cannot go on for a reason of the cluster's own, not
/// its function's: the primary sent a record it cannot read, or the primary is already
/// gone before the worker could start (`EX_SOFTWARE`, from `sysexits.h`). Setup
/// failures are [`SETUP_FAILED_EXIT`] (78).
pub const INTERNAL_EXIT: i32 = 70;

/// How many messages from the primary may wait in a worker's inbox (taken by
/// [`Worker::recv`]) before its control thread stops reading the channel. The same as the
/// primary's outbox for one worker.
pub(crate) const INBOX_LIMIT: usize = 1024;

/// How many bytes of messages may wait in a worker's inbox before its control thread
/// stops reading the channel (64 messages of the largest size).
pub(crate) const INBOX_BYTES: usize = 64 * MAX_MESSAGE_LEN;

/// Signals a worker ignores: the primary's (`SIGHUP` reload, `SIGTTIN`/`SIGTTOU` one
/// worker more or fewer, `SIGUSR2` upgrade). systemd's control-group kill, `kill -- -PGID`
/// and a terminal send them to every process; only the primary acts on them.
const PRIMARY_ONLY_SIGNALS: [i32; 4] = [libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGUSR2];

/// Signals a worker takes as a disconnect (see `control.rs`).
const DISCONNECT_SIGNALS: [i32; 2] = [libc::SIGTERM, libc::SIGINT];

/// How long a worker lingers after its primary vanished without the death signal
/// arriving (the control channel's EOF is the backstop), before it exits.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// A worker's view of the cluster: its id, messages to and from the primary, and
/// whether it was asked to disconnect. Worker functions receive one; [`Worker::current`]
/// finds it from anywhere in the worker process.
#[derive(Clone)]
pub struct Worker {
    rt: Arc<Runtime>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").field("id", &self.rt.id).finish()
    }
}

impl Worker {
    /// The worker of this process, or `None` in the primary or outside a cluster
    /// (Node's `cluster.isWorker` / `cluster.worker`).
    pub fn current() -> Option<Worker> {
        runtime().map(|rt| Worker { rt: rt.clone() })
    }

    /// This worker's id: 1, 2, … in fork order, never reused (Node's `worker.id`).
    pub fn id(&self) -> WorkerId {
        self.rt.id
    }

    /// Sends `data` to the primary, which sees it as [`Event::Message`](crate::Event).
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`] above [`MAX_MESSAGE_LEN`] bytes
    /// (nothing is sent, the channel stays usable); [`Error::Io`] when the primary is
    /// gone.
    pub fn send(&self, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(Error::MessageTooLarge { len: data.len() });
        }
        self.rt
            .control
            .send(&Message::User(data), None)
            .map_err(|e| Error::io("send a message to the primary", e))
    }

    /// The descriptor the application named with the `index`-th call of
    /// [`Builder::keep_fd`](crate::Builder::keep_fd) (0 for the first), at the same
    /// number as in the primary; `None` past the last. The worker holds it for its whole
    /// life: borrow it, or duplicate it
    /// ([`try_clone_to_owned`](BorrowedFd::try_clone_to_owned)) for a `File` of your own.
    pub fn kept_fd(&self, index: usize) -> Option<BorrowedFd<'_>> {
        self.rt.kept.get(index).map(|fd| fd.as_fd())
    }

    /// Not part of the API: writes `record` to the control channel as it is, with `fd`
    /// attached, bypassing the codec. It exists so the crate's tests can play a rogue
    /// worker (garbage, oversized or unknown records, unexpected descriptors) and check
    /// that the primary survives it.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn send_raw_record_for_tests(
        &self,
        record: &[u8],
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> std::io::Result<()> {
        self.rt.control.send_encoded(record, fd, false)
    }

    /// Not part of the API: like
    /// [`send_raw_record_for_tests`](Worker::send_raw_record_for_tests), on any
    /// `SOCK_SEQPACKET` descriptor of this worker (a round-robin listener's hand-off
    /// channel, from `Listener::as_fd`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn send_raw_record_on_for_tests(
        channel: std::os::fd::BorrowedFd<'_>,
        record: &[u8],
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> std::io::Result<()> {
        crate::sys::scm::send(channel, record, fd, false).map(drop)
    }

    /// Not part of the API: like
    /// [`send_raw_record_on_for_tests`](Worker::send_raw_record_on_for_tests), with
    /// every descriptor of `fds` (1 to 253) attached to the one record; `channel`
    /// `None` is this worker's control channel.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn send_raw_record_with_fds_for_tests(
        &self,
        channel: Option<std::os::fd::BorrowedFd<'_>>,
        record: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        let channel = channel.unwrap_or(self.rt.control.as_fd());
        crate::sys::scm::send_fds(channel, record, fds).map(drop)
    }

    /// Not part of the API: `setsockopt(SO_LINGER)` on `fd` (`Some(seconds)`: on), so
    /// the crate's tests, which use no `unsafe`, can play a worker that hands the
    /// primary a socket whose close would linger.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn set_linger_for_tests(
        fd: std::os::fd::BorrowedFd<'_>,
        seconds: Option<u32>,
    ) -> std::io::Result<()> {
        crate::sys::socket::set_linger(fd, seconds)
    }

    /// Waits for the next message from the primary; `None` once the worker is
    /// disconnecting (or the primary is gone) and every message that arrived before has
    /// been returned, so a thread looping on `recv` ends with the worker.
    pub fn recv(&self) -> Option<Vec<u8>> {
        self.rt.wait_for(None, |st| self.rt.pop_message(st))
    }

    /// The next message from the primary if one is waiting.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        let mut st = self.rt.lock();
        self.rt.pop_message(&mut st)
    }

    /// Like [`recv`](Worker::recv), giving up after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = crate::deadline::after(Instant::now(), timeout);
        self.rt
            .wait_for(Some(deadline), |st| self.rt.pop_message(st))
    }

    /// Tells the primary that the application is making progress, for
    /// [`Builder::heartbeat_timeout`](crate::Builder::heartbeat_timeout): call it from
    /// the application's main loop, or after each request. A worker that has not
    /// called it for that long (since its start, before the first call) is killed
    /// and replaced. Cheap enough for every request: one atomic store, no system call
    /// (the worker's control thread reports the time since the last call when the
    /// primary pings it).
    pub fn heartbeat(&self) {
        self.rt.heartbeat();
    }

    /// Whether the primary asked this worker to disconnect (or is gone): listeners are
    /// closed, and the worker should finish its connections and return.
    pub fn is_disconnecting(&self) -> bool {
        let st = self.rt.lock();
        st.disconnecting || st.primary_gone
    }

    /// A descriptor that becomes readable, and stays readable, once this worker is
    /// asked to go: the primary's disconnect (a shutdown, a reload, a recycle, an
    /// upgrade, `Cluster::disconnect`), `SIGTERM`/`SIGINT` to the worker (a group
    /// signal), or the primary's death. For a server that accepts by itself (see
    /// [`Listener::try_clone_std`](crate::Listener::try_clone_std)) and waits in an
    /// event loop: register it with epoll or mio, or in tokio as a pipe (duplicate it
    /// with [`try_clone_to_owned`](BorrowedFd::try_clone_to_owned), then
    /// `tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?.readable().await`), and
    /// stop the server gracefully when it is readable. It is a pipe's read end,
    /// non-blocking and close-on-exec, whose write end the worker closes: it then reads
    /// as end of file, for every reader and for good (reading it consumes nothing).
    /// Unlike [`recv`](Worker::recv), it takes no message.
    pub fn disconnect_fd(&self) -> BorrowedFd<'_> {
        self.rt.stop_note.as_fd()
    }

    /// Blocks until this worker is asked to go (see
    /// [`disconnect_fd`](Worker::disconnect_fd)); returns at once when it already was.
    /// For a thread that stops a server: `worker.wait_disconnect(); server.stop()`.
    pub fn wait_disconnect(&self) {
        self.rt.wait_for(None, |_| None::<()>);
    }

    /// Like [`wait_disconnect`](Worker::wait_disconnect), for at most `timeout`:
    /// whether the worker is asked to go.
    pub fn wait_disconnect_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::deadline::after(Instant::now(), timeout);
        self.rt.wait_for(Some(deadline), |_| None::<()>);
        self.is_disconnecting()
    }
}

/// The worker process's shared state.
pub(crate) struct Runtime {
    id: WorkerId,
    control: Channel,
    /// The descriptors the application kept for its workers (`Builder::keep_fd`).
    kept: Vec<OwnedFd>,
    state: Mutex<State>,
    changed: Condvar,
    /// Readable once the worker is asked to go ([`Worker::disconnect_fd`]): the read
    /// end of a pipe whose write end [`Runtime::note_stop`] closes.
    stop_note: OwnedFd,
    /// The pipe's write end, until `note_stop` closes it.
    stop_note_tx: Mutex<Option<OwnedFd>>,
    /// Connections this worker's listeners returned.
    accepted: AtomicU64,
    /// Connections whose `Connection` still lives (least-connections scheduling).
    open: Arc<AtomicU64>,
    /// The last counts sent to the primary (accepted, open).
    reported: Mutex<(u64, u64)>,
    /// `SIGTERM` and `SIGINT` arrive here (the self-pipe), for the control thread.
    signals: SignalPipe,
    /// When the runtime started: the origin of `heartbeat`.
    started: Instant,
    /// Milliseconds from `started` to the last `Worker::heartbeat` (0: none yet).
    heartbeat: AtomicU64,
    /// The primary has pinged this worker (it watches its liveness): a `Pong` goes
    /// unasked while the control thread cannot read the channel (full inbox).
    pinged: AtomicBool,
    /// The primary recycles this worker after this many accepted connections: the
    /// counters are reported at once when `accepted` reaches it.
    connection_limit: Option<u64>,
}

impl Runtime {
    /// Waits for `ready` to give a value, checked now and at every change of the
    /// state; `None` once the worker is asked to go (or the primary is gone) and
    /// `ready` has nothing, or at `deadline`.
    fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(v) = ready(&mut st) {
                return Some(v);
            }
            if st.primary_gone || st.disconnecting {
                return None;
            }
            st = match deadline {
                None => self
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return None;
                    }
                    self.changed
                        .wait_timeout(st, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// The worker is asked to go: makes [`Worker::disconnect_fd`] readable for good, by
    /// closing the pipe's write end (end of file, which no reader can consume).
    /// Idempotent; never waits (a pipe's close does not).
    fn note_stop(&self) {
        drop(
            self.stop_note_tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    fn heartbeat(&self) {
        let ms = self.started.elapsed().as_millis();
        self.heartbeat
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Milliseconds since the last heartbeat (or the start), for a `Pong`.
    fn heartbeat_silence_ms(&self) -> u32 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.heartbeat.load(Ordering::Relaxed);
        u32::try_from(now.saturating_sub(last)).unwrap_or(u32::MAX)
    }
}

#[derive(Default)]
struct State {
    next_seq: u32,
    replies: Vec<(u32, Result<ListenGrant, i32>, Option<OwnedFd>)>,
    /// The `seq` of every listen request still waited for: a reply to any other is
    /// late (its waiter gave up) and dropped.
    waiting: Vec<u32>,
    inbox: VecDeque<Vec<u8>>,
    /// Bytes in `inbox`.
    inbox_bytes: usize,
    /// Every listener and datagram socket to close when the worker disconnects.
    listeners: Vec<Weak<dyn listener::Closable>>,
    disconnecting: bool,
    primary_gone: bool,
}

/// Everything the child needs from the primary, by value.
pub(crate) struct ChildStart {
    pub(crate) id: WorkerId,
    pub(crate) control: Channel,
    pub(crate) primary: Pid,
    pub(crate) reset_signals: &'static [i32],
    /// The primary's signal mask before the fork (the child starts with all blocked).
    pub(crate) mask: signal::SigMask,
    pub(crate) settings: WorkerSettings,
    /// The descriptors the application named with `Builder::keep_fd`.
    pub(crate) kept: Vec<OwnedFd>,
    /// Recycled after this many connections (`Builder::max_connections` and jitter).
    pub(crate) connection_limit: Option<u64>,
}

/// A setup step failed: tell the primary which, say it on stderr, and give the exit code.
fn setup_failed(control: &Channel, id: WorkerId, stage: SetupStage, e: &io::Error) -> i32 {
    // A failed verification carries no OS errno, only its kind (EACCES) and text,
    // which goes to stderr below.
    let errno = crate::error::errno_of(e).unwrap_or(libc::EINVAL);
    let _ = control.send(&Message::SetupFailed { stage, errno }, None);
    crate::log::report!("worker {id}: {stage} failed: {e}");
    SETUP_FAILED_EXIT
}

/// Runs the worker: the order of operations is in the module docs. Returns the exit
/// code; the caller `_exit`s with it.
pub(crate) fn run_child(start: ChildStart, f: &WorkerFn) -> i32 {
    let id = start.id;
    let control = start.control;
    let kept = start.kept;
    let mut keep: Vec<BorrowedFd<'_>> = kept.iter().map(|k| k.as_fd()).collect();
    keep.push(control.as_fd());
    // Every other descriptor belongs to no live object here: the primary's structures
    // in this copy were forgotten, not dropped (see `Cluster::release_in_child`).
    if let Err(e) = fd::close_all_except(&keep) {
        return setup_failed(&control, id, SetupStage::Descriptors, &e);
    }
    drop(keep);
    if let Err(e) = process::give_up_terminal() {
        return setup_failed(&control, id, SetupStage::Terminal, &e);
    }
    // The primary's signals, which a service manager's group kill, `kill -- -PGID` or a
    // terminal also send the workers: not theirs to act on. Ignored before the mask is
    // restored, so one sent to the group while this worker starts cannot kill it.
    // SIGPIPE ignored too, as in Node and in any Rust `main`, but also when the program
    // embedding the cluster restored its default: a client that closes early is an
    // `EPIPE` from `write`, never a dead worker.
    for sig in PRIMARY_ONLY_SIGNALS.into_iter().chain([libc::SIGPIPE]) {
        if let Err(e) = signal::ignore(sig) {
            return setup_failed(&control, id, SetupStage::Signals, &e);
        }
    }
    if let Err(e) = signal::reset_in_child(start.reset_signals, &start.mask) {
        return setup_failed(&control, id, SetupStage::Signals, &e);
    }
    if let Err((stage, e)) = start.settings.apply() {
        return setup_failed(&control, id, stage, &e);
    }
    // After any setuid: a change of credentials clears the parent-death signal.
    if let Err(e) = process::set_parent_death_signal(libc::SIGTERM) {
        return setup_failed(&control, id, SetupStage::DeathSignal, &e);
    }
    if process::getppid() != start.primary {
        return INTERNAL_EXIT; // the primary died before prctl: nobody will signal us
    }
    if let Err(e) = signal::install_interrupt_handler() {
        return setup_failed(&control, id, SetupStage::Runtime, &e);
    }
    // SIGTERM and SIGINT are a disconnect (see `control.rs`).
    let signals = match SignalPipe::install(&DISCONNECT_SIGNALS) {
        Ok(p) => p,
        Err(e) => return setup_failed(&control, id, SetupStage::Signals, &e),
    };
    let (stop_note, stop_note_tx) = match fd::pipe_nonblocking() {
        Ok(p) => p,
        Err(e) => return setup_failed(&control, id, SetupStage::Runtime, &e),
    };
    let rt = Arc::new(Runtime {
        id,
        control,
        kept,
        stop_note,
        stop_note_tx: Mutex::new(Some(stop_note_tx)),
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        accepted: AtomicU64::new(0),
        open: Arc::new(AtomicU64::new(0)),
        reported: Mutex::new((0, 0)),
        signals,
        started: Instant::now(),
        heartbeat: AtomicU64::new(0),
        pinged: AtomicBool::new(false),
        connection_limit: start.connection_limit,
    });
    if RUNTIME.set(rt.clone()).is_err() || !crate::listener::link::register(rt.clone()) {
        crate::log::report!("worker {id}: a worker runtime already exists in this process");
        return INTERNAL_EXIT;
    }
    let reader = rt.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("cluster-control-{id}"))
        .stack_size(64 * 1024)
        .spawn(move || reader.control_loop());
    if let Err(e) = spawned {
        return setup_failed(&rt.control, id, SetupStage::Runtime, &e);
    }
    // SIGTERM and SIGINT for the control thread alone: blocked in this thread from now
    // on, and so in every thread the worker function starts, so that their handler
    // never interrupts the application's own calls (a `read` with a timeout returns
    // EINTR whatever SA_RESTART says).
    if let Err(e) = signal::set_blocked(&DISCONNECT_SIGNALS, true) {
        return setup_failed(&rt.control, id, SetupStage::Signals, &e);
    }
    if rt.control.send(&Message::Online, None).is_err() {
        return INTERNAL_EXIT; // the primary is already gone
    }
    let worker = Worker { rt: rt.clone() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&worker)));
    let code = match result {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            crate::log::report!("worker {id}: {msg}");
            1
        }
        Err(_) => 101, // the panic hook has printed the message
    };
    rt.report_stats();
    let _ = io::stdout().flush();
    code
}
