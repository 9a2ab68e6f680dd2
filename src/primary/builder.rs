//! [`Builder`]: a cluster's settings, and starting it (Node's `cluster.setupPrimary`
//! followed by `cluster.fork()` N times).

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::respawn::{CrashStreak, Respawn};
use super::scheduler::{FewestDispatched, Scheduler};
use super::{Cluster, ClusterStats, Config, State, HANDLED_SIGNALS};
use crate::addr::ListenAddr;
use crate::error::Error;
use crate::ipc::codec::MAX_RECORD_LEN;
use crate::mode::Mode;
use crate::options::ListenOptions;
use crate::settings::{User, WorkerSettings};
use crate::sys::process;
use crate::sys::signal::SignalPipe;
use crate::worker::{self, Worker, WorkerFn};

/// How long a shutdown or disconnect waits for workers before `SIGKILL`, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The default [`Builder::prefetch`].
pub const DEFAULT_PREFETCH: u32 = 1;

/// The default [`Builder::message_limit`]: messages a second from one worker.
pub const DEFAULT_MESSAGE_LIMIT: u32 = 100_000;

/// The default [`Builder::accept_window`].
pub const DEFAULT_ACCEPT_WINDOW: Duration = Duration::from_micros(300);

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
#[derive(Debug)]
pub struct Builder {
    workers: Option<usize>,
    mode: Option<Mode>,
    signals: bool,
    upgrade_timeout: Duration,
    /// Everything else, as the cluster keeps it.
    config: Config,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: one worker per CPU, the mode from `CLUSTER_SCHED_POLICY` or
    /// round-robin, crashed workers respawned ([`Respawn::default`]), 5 s shutdown
    /// timeout, signals handled, workers run as the primary's user.
    pub fn new() -> Builder {
        Builder {
            workers: None,
            mode: None,
            signals: true,
            upgrade_timeout: super::DEFAULT_UPGRADE_TIMEOUT,
            config: Config {
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                accept_window: DEFAULT_ACCEPT_WINDOW,
                respawn: Respawn::default(),
                settings: WorkerSettings::default(),
                scheduler: Box::new(FewestDispatched),
                prefetch: DEFAULT_PREFETCH,
                allowed: None,
                allowed_datagrams: Vec::new(),
                message_limit: DEFAULT_MESSAGE_LIMIT,
                notify: true,
                kept: Vec::new(),
                health: Default::default(),
            },
        }
    }

    /// How many workers to keep (default: the number of CPUs this process may use, as
    /// Node's `os.availableParallelism()` counts them: its CPU affinity mask, capped by
    /// a cgroup CPU quota such as `docker --cpus` or systemd's `CPUQuota=` set, cgroup
    /// v2 or v1). At most
    /// [`MAX_WORKERS`](crate::MAX_WORKERS), and one per 16 descriptors of the primary's `RLIMIT_NOFILE`
    /// (see [`Cluster::max_workers`]): `start` refuses more.
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

    /// How long a disconnecting worker (shutdown, reload, [`Cluster::disconnect`]) may
    /// take to finish before it is killed; also how long a reload waits for a
    /// replacement to listen.
    pub fn shutdown_timeout(mut self, d: Duration) -> Builder {
        self.config.shutdown_timeout = d;
        self
    }

    /// Round-robin only: after a turn in which the primary accepted connections, it
    /// leaves the listener alone for this long, so the connections that arrive in the
    /// meantime are accepted in one batch, with one wake-up (interrupt coalescing, as
    /// network cards do). A connection arriving within the window after another waits
    /// at most this long; under light load nothing waits. `Duration::ZERO` turns it off.
    /// Default: [`DEFAULT_ACCEPT_WINDOW`].
    pub fn accept_window(mut self, d: Duration) -> Builder {
        self.config.accept_window = d;
        self
    }

    /// Round-robin only: which free worker gets each connection (default:
    /// [`FewestDispatched`]; [`Fifo`](super::Fifo), Node's order, and
    /// [`LeastConnections`](super::LeastConnections) are built in too).
    pub fn scheduler(mut self, scheduler: impl Scheduler + 'static) -> Builder {
        self.config.scheduler = Box::new(scheduler);
        self
    }

    /// Round-robin only: how many connections may wait in a worker's channel when no
    /// worker has a thread waiting (default [`DEFAULT_PREFETCH`] = 1; 0 = never: every
    /// connection waits in the kernel backlog until a thread asks for it).
    ///
    /// A worker thread waiting in `accept` always gets a connection before any is
    /// queued ahead. When every thread is busy, a connection queued ahead is taken by
    /// the next thread that finishes without that thread going to sleep and being
    /// woken again, which on a loaded machine costs more than the rest of the
    /// hand-off. The price: a connection queued ahead waits for that worker even if
    /// another becomes free first (at most this many per worker).
    pub fn prefetch(mut self, n: u32) -> Builder {
        self.config.prefetch = n;
        self
    }

    /// The only addresses workers may listen on (default: any, unless [`user`] is
    /// set). A listen request for another gets `EACCES` in the worker's
    /// [`Listener::bind`](crate::Listener::bind), naming the address, and the primary
    /// reports [`Event::ListenFailed`](crate::Event::ListenFailed) and
    /// [`Error::ListenDenied`]; nothing is bound or created. Addresses match as written:
    /// `127.0.0.1:0` allows exactly a request for `127.0.0.1:0` (one ephemeral port for
    /// every worker), and an adopted descriptor is served only if its `fd:N` is listed.
    ///
    /// Required with [`user`]: the primary binds what workers ask for with its own
    /// privileges, so a compromised worker could otherwise have a root primary bind a
    /// privileged port, create a socket file in a directory only root may write, or
    /// hand over any listening descriptor it holds.
    ///
    /// [`user`]: Builder::user
    pub fn listen_only(self, addrs: impl IntoIterator<Item = ListenAddr>) -> Builder {
        self.listen_only_with(addrs.into_iter().map(|a| (a, ListenOptions::new())))
    }

    /// Like [`listen_only`](Builder::listen_only), with the [`ListenOptions`] of each
    /// address. They matter with [`user`](Builder::user): untrusted workers do not choose
    /// the options of a listener either (the first to ask would impose, say, a 1 ms read
    /// timeout on every worker's connections), so a request whose options differ from
    /// those given here is refused with `EACCES`, like an address not listed. Without
    /// `user`, the options of the first worker that asks for an address set it up.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use cluster::{Cluster, ListenOptions, Listener, User};
    ///
    /// let options = ListenOptions::new().read_timeout(Some(Duration::from_secs(30)));
    /// let worker_options = options.clone();
    /// let cluster = Cluster::builder()
    ///     .user(User::named("nobody")?)
    ///     .listen_only_with([("0.0.0.0:80".parse()?, options)])
    ///     .start(move |_worker| -> std::io::Result<()> {
    ///         let listener = Listener::bind_with("0.0.0.0:80", &worker_options)?;
    ///         while let Some(conn) = listener.accept()? {
    ///             // serve conn
    /// #           drop(conn);
    ///         }
    ///         Ok(())
    ///     })?;
    /// # drop(cluster);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen_only_with(
        mut self,
        allowed: impl IntoIterator<Item = (ListenAddr, ListenOptions)>,
    ) -> Builder {
        self.config.allowed = Some(allowed.into_iter().collect());
        self
    }

    /// With [`listen_only`](Builder::listen_only) (or `listen_only_with`): the
    /// addresses workers may bind [`Datagram`](crate::Datagram) sockets on, UDP or Unix
    /// datagram. The allowlist of `listen_only` names stream listeners only: allowing
    /// TCP on `0.0.0.0:53` does not allow UDP on it. Without `listen_only` any datagram
    /// address is served, as any listen address is; with it and without this, none.
    ///
    /// ```no_run
    /// use cluster::{Cluster, Datagram, User};
    ///
    /// let cluster = Cluster::builder()
    ///     .user(User::named("nobody")?)
    ///     .listen_only(["0.0.0.0:80".parse()?])
    ///     .listen_only_datagrams(["0.0.0.0:53".parse()?])
    ///     .start(|_worker| -> std::io::Result<()> {
    ///         let socket = Datagram::bind("0.0.0.0:53")?;
    ///         let mut buf = [0u8; 512];
    ///         while let Some((n, peer)) = socket.recv_from(&mut buf)? {
    ///             socket.send_to(&buf[..n], &peer)?;
    ///         }
    ///         Ok(())
    ///     })?;
    /// # drop(cluster);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen_only_datagrams(
        mut self,
        allowed: impl IntoIterator<Item = ListenAddr>,
    ) -> Builder {
        self.config.allowed_datagrams = allowed.into_iter().collect();
        self
    }

    /// The most messages one worker may send the primary in one second (default
    /// [`DEFAULT_MESSAGE_LIMIT`]; 0 = no limit). A worker that sends more is taken for a
    /// runaway: the primary reports it ([`Error::Protocol`] with
    /// [`ProtocolError::Flooding`](crate::ProtocolError::Flooding)), kills it and
    /// forks a replacement, so one worker stuck in a loop cannot starve the primary's
    /// loop, and so every other worker. Counts everything a worker sends on its control
    /// channel ([`Worker::send`] and the crate's own records, a handful a second).
    pub fn message_limit(mut self, per_second: u32) -> Builder {
        self.config.message_limit = per_second;
        self
    }

    /// Whether the primary tells a service manager how the cluster is doing (default
    /// on), when `NOTIFY_SOCKET` names one (systemd's `Type=notify`): `READY=1` once
    /// every worker listens, `RELOADING=1` and `READY=1` around a rolling restart,
    /// `STOPPING=1` at shutdown, `WATCHDOG=1` at half of `WATCHDOG_USEC` while the loop
    /// turns, and `MAINPID=`. The primary takes `NOTIFY_SOCKET` out of its environment
    /// either way, so workers never inherit it.
    pub fn notify_service_manager(mut self, on: bool) -> Builder {
        self.config.notify = on;
        self
    }

    /// Liveness: a worker whose control thread does not answer the primary's ping for
    /// `d` is killed with `SIGKILL` and replaced (default: none, no pings). The
    /// answer comes from the worker's runtime, not the application, so this catches
    /// a process that is stopped (`SIGSTOP`) or wedged as a whole; an application
    /// thread stuck in a loop is what [`heartbeat_timeout`](Builder::heartbeat_timeout)
    /// is for. Reported with [`Event::Replacing`](crate::Event::Replacing) and
    /// [`Replacement::Unresponsive`](crate::Replacement::Unresponsive); replaced like a
    /// crash, under the [`respawn`](Builder::respawn) back-off. Pings go every quarter
    /// of `d`, at most once a second. gunicorn's `--timeout`, unicorn's `timeout`,
    /// Puma's `worker_timeout`. The module docs of `primary::health` give the details.
    pub fn worker_timeout(mut self, d: Duration) -> Builder {
        self.config.health.worker_timeout = Some(d);
        self
    }

    /// Application heartbeats (gunicorn's model for applications with a main loop): a
    /// worker that has not called [`Worker::heartbeat`] for `d` (counted from its
    /// start until the first call) is killed with `SIGKILL` and replaced, like one
    /// that fails [`worker_timeout`](Builder::worker_timeout) (default: none). Only for
    /// applications that call `heartbeat` where they make progress.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Builder {
        self.config.health.heartbeat_timeout = Some(d);
        self
    }

    /// Recycling by count: a worker that has accepted about `n` connections (`n` plus
    /// its [jitter](Builder::max_connections_jitter)) is replaced gracefully, like one
    /// step of a reload: the replacement listens before the worker is asked to
    /// disconnect, the worker finishes what it holds, and at most one recycle runs at
    /// a time (default: none; gunicorn's `max_requests`, counting connections, not
    /// requests: a keep-alive connection counts once; 0 counts as 1). Reported with
    /// [`Event::Replacing`](crate::Event::Replacing) and
    /// [`Replacement::MaxConnections`](crate::Replacement::MaxConnections).
    pub fn max_connections(mut self, n: u64) -> Builder {
        self.config.health.max_connections = Some(n.max(1));
        self
    }

    /// Adds a number drawn in `0..=j` to each worker's
    /// [`max_connections`](Builder::max_connections), so that workers forked together
    /// are not all recycled together (gunicorn's `max_requests_jitter`; default 0).
    pub fn max_connections_jitter(mut self, j: u64) -> Builder {
        self.config.health.jitter = j;
        self
    }

    /// Recycling by memory: the primary reads each worker's resident set size from
    /// `/proc/PID/statm` about once a second, adds the memory files the worker holds
    /// open without mapping them (a memfd, a file in tmpfs such as `/dev/shm`: their
    /// pages are in no process's RSS; found through `/proc/PID/fd`, 256 descriptors a
    /// second, without touching any other file system), and recycles, gracefully, a
    /// worker above `bytes` (default: none; Passenger's `max_memory`,
    /// `puma_worker_killer`). One at a time, as for
    /// [`max_connections`](Builder::max_connections). Reported with
    /// [`Replacement::MaxRss`](crate::Replacement::MaxRss).
    ///
    /// This recycles leaks; it does not contain memory. A memory file the worker also
    /// maps counts twice (its mapped pages are in the RSS already). Not counted: files
    /// it closed in tmpfs, System V shared memory, its child processes. A cgroup's
    /// `memory.max` (systemd's `MemoryMax=`) contains all of it.
    pub fn max_rss(mut self, bytes: u64) -> Builder {
        self.config.health.max_rss = Some(bytes);
        self
    }

    /// When crashed workers are replaced (default: [`Respawn::default`]).
    pub fn respawn(mut self, policy: Respawn) -> Builder {
        self.config.respawn = policy;
        self
    }

    /// Run workers as this user: in each worker, before the worker function runs,
    /// `setgroups`, `setgid`, `setuid` (in that order), and a complete drop of every
    /// other privilege: the bounding set (when the primary may drop it), the ambient,
    /// permitted, effective and inheritable capabilities, then `PR_SET_NO_NEW_PRIVS`.
    /// The drop is verified (`getresuid`, `getresgid`, `getgroups`, `capget`, and
    /// `setuid(0)` must fail): a worker with anything left never runs the worker
    /// function, it exits 78 and the step is reported ([`Error::WorkerSetup`]). Its
    /// stdin is `/dev/null`. The order and the reasons are in the `settings` module.
    ///
    /// The primary keeps its own identity, so a root primary (or one given
    /// `CAP_NET_BIND_SERVICE`, `CAP_SETUID` and `CAP_SETGID`, as a systemd unit's
    /// `AmbientCapabilities=` does) can bind port 80 and serve it from unprivileged
    /// workers.
    ///
    /// Such workers are untrusted (see the README's security model): the cluster
    /// must also be given [`listen_only`](Builder::listen_only), or
    /// [`start`](Builder::start) fails with [`Error::Config`].
    ///
    /// Workers of one uid can signal each other: with
    /// [`User::per_worker_uids`] each runs as a uid of its own (the range must hold one
    /// uid more than the workers, and not the primary's own uid: `start` refuses
    /// otherwise).
    pub fn user(mut self, user: User) -> Builder {
        self.config.settings.user = Some(user);
        self
    }

    /// A descriptor every worker keeps, at the same number as in the primary; find it in
    /// the worker with [`Worker::kept_fd`], by the order of the `keep_fd` calls.
    ///
    /// Each worker starts with descriptors 0, 1, 2 and its channel to the primary and
    /// nothing else: before the worker function runs, `close_range(2)` closes every
    /// descriptor the primary had open that is not named here — including those the
    /// worker closure captured (a `File` moved into it is closed in the worker, and
    /// using it would touch whatever later gets that number). Name here what workers
    /// are *meant* to have, typically what root opens before the workers drop to
    /// [`user`](Builder::user), as nginx opens its log files: the worker can write to
    /// the file without being allowed to open it.
    ///
    /// The cluster owns the descriptor from now on and keeps it open, in the primary
    /// and in every worker, for its whole life (the primary itself does not use it);
    /// it closes when the [`Cluster`] is dropped.
    ///
    /// ```no_run
    /// use std::io::Write;
    /// use std::os::fd::OwnedFd;
    ///
    /// // As root, before the workers drop to nobody: a log only root may open.
    /// let log = std::fs::OpenOptions::new()
    ///     .append(true)
    ///     .create(true)
    ///     .open("/var/log/myserver.log")?;
    /// let mut cluster = cluster::Cluster::builder()
    ///     .user(cluster::User::named("nobody")?)
    ///     .listen_only(["0.0.0.0:80".parse()?])
    ///     .keep_fd(OwnedFd::from(log))
    ///     .start(|worker| -> std::io::Result<()> {
    ///         let fd = worker.kept_fd(0).expect("the log kept with keep_fd");
    ///         let mut log = std::fs::File::from(fd.try_clone_to_owned()?);
    ///         writeln!(log, "worker {} up", worker.id())?;
    ///         Ok(())
    ///     })?;
    /// # while cluster.next_event()?.is_some() {}
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_fd(mut self, fd: impl Into<OwnedFd>) -> Builder {
        self.config.kept.push(fd.into());
        self
    }

    /// The workers' working directory.
    pub fn working_directory(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.config.settings.directory = Some(dir.into());
        self
    }

    /// Send the workers' stdin, stdout and stderr to `/dev/null`.
    pub fn silent(mut self, on: bool) -> Builder {
        self.config.settings.silent = on;
        self
    }

    /// Whether the primary installs its signal handlers (default on): `SIGTERM` and
    /// `SIGINT` shut down gracefully (a second one kills the workers at once), `SIGHUP`
    /// reloads (rolling restart), `SIGUSR2` upgrades the binary ([`Cluster::upgrade`]),
    /// `SIGTTIN` / `SIGTTOU` add / remove a worker, `SIGCHLD` reaps. Turn off to drive
    /// everything from code.
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.signals = on;
        self
    }

    /// How long a binary upgrade's new program has to reach [`Builder::start`] in its
    /// trial, and, once it runs, its workers to listen before that is reported (default
    /// [`DEFAULT_UPGRADE_TIMEOUT`](crate::DEFAULT_UPGRADE_TIMEOUT), 30 s). See
    /// [`Cluster::upgrade`].
    pub fn upgrade_timeout(mut self, d: Duration) -> Builder {
        self.upgrade_timeout = d;
        self
    }

    /// Forks the workers; each runs `worker` and exits with its result (0 for `Ok`, 1
    /// for `Err`, whose message goes to stderr, 101 for a panic; with
    /// `panic = "abort"` a panic kills the worker with `SIGABRT`, a crash like any
    /// other).
    ///
    /// A worker or heartbeat timeout under 10 ms, or a `max_rss` of 0, is refused with
    /// [`Error::Config`]: every worker would be replaced as soon as it starts.
    ///
    /// Call it before the process starts any thread: `fork` copies only the calling
    /// thread, so the primary must have exactly one (checked: an error otherwise). An
    /// async runtime belongs inside the worker function: one made before `start`,
    /// multi-threaded or not, is refused (its epoll, eventfd, signalfd, timerfd or
    /// io_uring descriptors would be closed in every worker).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for zero workers, a bad `CLUSTER_SCHED_POLICY`, more than one
    /// thread or an event loop's descriptor in the primary;
    /// [`Error::NotPrimary`] inside a worker; [`Error::Io`] when signal handlers cannot
    /// be installed or the first worker cannot be forked (later fork failures are
    /// reported as events and retried with back-off).
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
            None => available_parallelism(),
        };
        if count == 0 {
            return Err(Error::Config(
                "the number of workers must be at least 1, not 0".into(),
            ));
        }
        self.config.health.check()?;
        super::preflight::check(&self.config.kept)?;
        if let Some(user) = &self.config.settings.user {
            super::uids::check_count(count, Some(user)).map_err(Error::Config)?;
            super::uids::check_primary_outside(user).map_err(Error::Config)?;
        }
        if let (Some(user), None) = (&self.config.settings.user, &self.config.allowed) {
            return Err(Error::Config(format!(
                "workers run as {:?}: name the addresses they may listen on with \
                 Builder::listen_only (a worker that dropped privileges does not choose \
                 what the primary binds)",
                user.name()
            )));
        }
        if let Some(user) = &self.config.settings.user {
            // Only UDP can be one socket per worker (`SO_REUSEPORT`); a Unix datagram
            // path or an adopted descriptor would be one socket shared by all of them,
            // and what one set on it would reach the others (see `primary/datagram.rs`).
            let shared = self
                .config
                .allowed_datagrams
                .iter()
                .find(|a| !matches!(a, ListenAddr::Tcp(_)));
            if let Some(addr) = shared {
                return Err(Error::Config(format!(
                    "workers run as {:?}: the datagram address {addr} would be one socket \
                     shared by every worker, and what one of them set on it would reach \
                     the others; only UDP addresses can be given to such workers \
                     (Builder::listen_only_datagrams)",
                    user.name()
                )));
            }
        }
        // Every descriptor the hard limit allows: the workers' budgets are shares of it.
        let fd_limit = process::raise_nofile_limit()
            .map_or(1024, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let max = super::budget::max_workers(fd_limit);
        if count > max {
            return Err(Error::Config(super::too_many_workers(count, max, fd_limit)));
        }
        // Found once, before the first channel: whether the kernel refuses descriptors
        // a worker attaches to a record (`sys::scm`).
        if crate::sys::scm::guarantee() == crate::sys::scm::Guarantee::Contained {
            crate::log::report!(
                "this kernel cannot refuse descriptors a worker sends (SO_PASSRIGHTS, Linux \
                 6.16+): the primary receives them and closes them without waiting (sockets \
                 abortively, anything else on a closer thread)"
            );
        }
        // An upgrade's trial of this program ends here: its settings are good.
        super::upgrade::end_trial_here(mode);
        // Before the notifier takes the service manager's variables out of the
        // environment: the upgrade gives them back to the next program.
        let (upgrades, handover) = super::upgrade::Upgrades::at_start(self.upgrade_timeout);
        let signals = if self.signals {
            let pipe = SignalPipe::install(HANDLED_SIGNALS)
                .map_err(|e| Error::io("install signal handlers", e))?;
            Some(pipe)
        } else {
            None
        };
        let f: Rc<WorkerFn> = Rc::new(move |w: &Worker| worker(w).map_err(|e| e.to_string()));
        let mut cluster = Cluster {
            mode,
            config: self.config,
            worker_fn: f,
            workers: Default::default(),
            poll_scratch: Default::default(),
            polled: None,
            handles: Vec::new(),
            next_handle: 0,
            notifier: None,
            next_id: 1,
            target: count,
            backoff: CrashStreak::default(),
            reload: None,
            recycle: None,
            recycle_reason: None,
            respawn_causes: VecDeque::new(),
            next_cause: None,
            jitter: super::health::Jitter::seeded(),
            reload_again: false,
            reload_held: false,
            signals,
            events: VecDeque::new(),
            state: State::Running,
            stop_signal: None,
            buf: crate::sys::mem::ZeroedBuf::new(MAX_RECORD_LEN + 1),
            reap_due: false,
            orphans_due: false,
            pid: process::getpid(),
            stats: ClusterStats::default(),
            fd_limit,
            upgrades,
        };
        // Read and cleared before the first fork: no worker inherits LISTEN_FDS and the
        // rest of socket activation, nor NOTIFY_SOCKET.
        crate::activation::take_from_env();
        let notifier = super::notify::Notifier::from_env(std::time::Instant::now());
        if cluster.config.notify {
            cluster.notifier = notifier;
        }
        if let Some(h) = handover {
            cluster.adopt_previous(h);
            // Blocked by the previous program across execve: delivered now, to the
            // handlers installed above.
            let _ = crate::sys::signal::set_blocked(HANDLED_SIGNALS, false);
        }
        // The first fork must work (a cluster that cannot fork at all is a
        // configuration problem); the rest are kept up by the loop, with back-off.
        cluster.spawn()?;
        cluster.maintain(std::time::Instant::now());
        Ok(cluster)
    }
}

/// How many CPUs this process may use: the CPUs of its affinity mask, capped by the
/// CPU quota of its cgroup and every cgroup above it, as libuv's
/// `uv_available_parallelism` (Node's `os.availableParallelism()`, since libuv 1.49)
/// and `std::thread::available_parallelism` count them.
///
/// Unlike std, it does not read `/proc/self/mountinfo` to find where the hierarchies
/// are mounted (5.5 KiB of the release demo): cgroup v2 is taken at `/sys/fs/cgroup`
/// and v1's `cpu` controller at `/sys/fs/cgroup/cpu`, where every current distribution
/// and container runtime puts them. A path that is not there (a container that sees
/// its own cgroup as the root) is walked up to the root, which is the container's.
fn available_parallelism() -> usize {
    let cpus = process::affinity_cpus();
    cgroup_cpu_quota().map_or(cpus, |quota| cpus.min(quota))
}

/// The smallest CPU quota of this process's cgroups and their ancestors, in whole
/// CPUs, at least 1; `None` if none is set or readable. `/proc/self/cgroup` has one
/// `ID:CONTROLLERS:PATH` line per hierarchy: `0::PATH` for cgroup v2 (`cpu.max`), and
/// with cgroup v1, or both (a hybrid system), a line naming `cpu` among its
/// controllers (`cpu.cfs_quota_us` / `cpu.cfs_period_us`).
fn cgroup_cpu_quota() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut quota = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let here = if id == "0" && controllers.is_empty() {
            walk_up("/sys/fs/cgroup", path, v2_quota)
        } else if controllers.split(',').any(|c| c == "cpu") {
            walk_up("/sys/fs/cgroup/cpu", path, v1_quota)
        } else {
            None
        };
        quota = smaller(quota, here);
    }
    quota
}

/// The smallest of `read`'s answers for the cgroup directory `root` + `path` and each
/// directory above it, up to `root`.
fn walk_up(root: &str, path: &str, read: fn(&str) -> Option<usize>) -> Option<usize> {
    let mut dir = format!("{root}{}", path.trim_end_matches('/'));
    let mut quota = None;
    loop {
        quota = smaller(quota, read(&dir));
        match dir.rfind('/') {
            Some(cut) if dir.len() > root.len() => dir.truncate(cut),
            _ => return quota,
        }
    }
}

fn smaller(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// cgroup v2: `DIR/cpu.max`.
fn v2_quota(dir: &str) -> Option<usize> {
    cpu_max_quota(&std::fs::read_to_string(format!("{dir}/cpu.max")).ok()?)
}

/// cgroup v1: `DIR/cpu.cfs_quota_us` (`-1`: no limit) over `DIR/cpu.cfs_period_us`.
fn v1_quota(dir: &str) -> Option<usize> {
    let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
    whole_cpus(
        read("cpu.cfs_quota_us")?.trim(),
        read("cpu.cfs_period_us")?.trim(),
    )
}

/// A `cpu.max` line, `LIMIT PERIOD` (microseconds), in whole CPUs, at least 1;
/// `None` for `max` (no limit) or anything unreadable.
fn cpu_max_quota(line: &str) -> Option<usize> {
    let mut fields = line.split_ascii_whitespace();
    whole_cpus(fields.next()?, fields.next()?)
}

/// A quota and its period (microseconds) in whole CPUs, at least 1; `None` when the
/// quota is no number (`max`, v1's `-1`: no limit) or the period is 0.
fn whole_cpus(limit: &str, period: &str) -> Option<usize> {
    let limit = crate::number::u64(limit)?;
    limit
        .checked_div(crate::number::u64(period)?)
        .map(|n| n.max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_reads_as_whole_cpus() {
        assert_eq!(cpu_max_quota("max 100000\n"), None);
        assert_eq!(cpu_max_quota("200000 100000\n"), Some(2));
        assert_eq!(cpu_max_quota("150000 100000\n"), Some(1));
        assert_eq!(cpu_max_quota("50000 100000\n"), Some(1));
        assert_eq!(cpu_max_quota("50000 0\n"), None);
        // cgroup v1's "no limit" (-1) is none too.
        assert_eq!(cpu_max_quota("-1 100000"), None);
        assert_eq!(cpu_max_quota(""), None);
    }

    #[test]
    fn quotas_are_the_smallest_up_the_tree() {
        let root = std::env::temp_dir().join(format!("cluster-cgroup-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        let write = |dir: &std::path::Path, name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap();
        };
        // v1: 4 CPUs at the root, 2 in `a`, no limit in `a/b`.
        write(&root, "cpu.cfs_quota_us", "400000\n");
        write(&root, "cpu.cfs_period_us", "100000\n");
        write(&root.join("a"), "cpu.cfs_quota_us", "200000\n");
        write(&root.join("a"), "cpu.cfs_period_us", "100000\n");
        write(&leaf, "cpu.cfs_quota_us", "-1\n");
        write(&leaf, "cpu.cfs_period_us", "100000\n");
        // v2: no limit in `a/b`, 3 CPUs at the root.
        write(&leaf, "cpu.max", "max 100000\n");
        write(&root, "cpu.max", "300000 100000\n");
        let r = root.to_str().unwrap();
        assert_eq!(walk_up(r, "/a/b", v1_quota), Some(2));
        assert_eq!(walk_up(r, "/a/b", v2_quota), Some(3));
        // A path that is not there (a container's view): its root still counts.
        assert_eq!(walk_up(r, "/docker/0123/", v2_quota), Some(3));
        assert_eq!(walk_up(r, "/", v1_quota), Some(4));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn available_parallelism_matches_the_affinity_mask_here() {
        // No CPU quota where the tests run (checked: none of them set one).
        let n = available_parallelism();
        assert!(n >= 1 && n <= process::affinity_cpus());
    }
}
