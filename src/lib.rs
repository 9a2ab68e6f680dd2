//! Node.js's `cluster` module for synchronous Rust servers: one primary process forks N
//! workers that all serve the same listening address, so one program uses every core.
//!
//! ```no_run
//! use std::io::Write;
//! use cluster::{Cluster, Event, Listener};
//!
//! let mut cluster = Cluster::builder().workers(4).start(|worker| -> std::io::Result<()> {
//!     // In a worker, `bind` asks the primary for the listener (Node's `queryServer`);
//!     // outside a cluster the same call binds by itself.
//!     let listener = Listener::bind("127.0.0.1:8080")?;
//!     while let Some(mut conn) = listener.accept()? {
//!         writeln!(conn, "hello from worker {}", worker.id())?;
//!     }
//!     Ok(()) // the listener closed: the primary asked this worker to disconnect
//! })?;
//! while let Some(event) = cluster.next_event()? {
//!     if let Event::Listening { worker, addr } = event {
//!         println!("worker {worker} listens on {addr}");
//!     }
//! }
//! # Ok::<(), cluster::Error>(())
//! ```
//!
//! # How it works
//!
//! The primary calls [`Builder::start`], which forks the workers. Each worker runs the
//! given function; inside it, [`Listener::bind`] sends the primary a listen request over
//! the worker's control channel (a `SOCK_SEQPACKET` socketpair). The primary keeps one
//! handle per address and answers according to the cluster's [`Mode`]:
//!
//! - [`Mode::Shared`] (competing accept, Node's `SCHED_NONE`): the primary binds the
//!   socket once and sends it to every worker (`SCM_RIGHTS`); workers `listen(2)` and
//!   their threads block in `accept(2)`, and the kernel wakes one per connection.
//! - [`Mode::RoundRobin`] (Node's `SCHED_RR`, the default): the primary listens and
//!   accepts, and sends each connection to a worker thread that is waiting for one,
//!   chosen by a [`Scheduler`](round_robin::Scheduler)
//!   ([`FewestDispatched`](round_robin::FewestDispatched) by default).
//! - [`Mode::ReusePort`] (Node 22's `reusePort`): the primary binds one `SO_REUSEPORT`
//!   socket per worker on the same address and keeps it; each worker listens and
//!   accepts on its own, and the kernel spreads connections by a hash.
//!
//! In every mode the worker's code receives `std::net::TcpStream`s (or `UnixStream`s) and
//! the peer's address in a [`Connection`].
//!
//! A worker asks for a datagram socket the same way ([`Datagram::bind`]: UDP or Unix
//! datagram, Node's `dgram` sockets in a cluster): one socket bound by the primary and
//! shared by every worker (shared and round-robin modes), or one `SO_REUSEPORT` socket
//! per worker (reuse-port mode). With [`ListenOptions::exclusive`] a worker binds a
//! listener or datagram socket by itself, as Node's `exclusive: true` does.
//!
//! The primary is single-threaded: `fork` copies only the calling thread, so **create
//! the cluster before starting any thread** (it checks, and refuses otherwise). It
//! drives everything from one `poll(2)` loop inside [`Cluster::next_event`]; `SIGTERM`
//! and `SIGINT` shut the cluster down gracefully.
//!
//! # Reading order
//!
//! The crate is meant to be read. Bottom up: `sys` (every `unsafe` call,
//! and the EINTR policy), `ipc` (the record format and channel), `bind` and
//! `socket_file` (creating listening sockets, and removing only the socket files
//! created), `listener` (the worker's accept, and how blocked threads are woken),
//! `settings` (the privilege drop), `worker` (the child after `fork`), `primary` with
//! `listen` (listen requests: Node's `queryServer`) and its `shared`, `round_robin`
//! (with `scheduler`) and `reuse_port` handles (Node's `primary.js`, `shared_handle.js`,
//! `round_robin_handle.js`).
//!
//! # Two paths through the code
//!
//! **A listen request** (Node's `server.listen` in a worker → `queryServer`), in six files:
//!
//! 1. `listener/mod.rs`: [`Listener::bind_with`] finds the worker runtime registered in
//!    `listener/link.rs` and asks it;
//! 2. `worker/control.rs`: `Runtime::listen` sends a `ListenRequest` record (the
//!    vocabulary is `ipc/codec/mod.rs`) and waits; its control thread receives the
//!    reply;
//! 3. `primary/event_loop.rs`: the primary's `read_control` reads the record;
//! 4. `primary/listen.rs`: `on_listen_request` authorises the address, checks the
//!    worker's descriptor budget (`budget.rs`) and finds or creates the handle;
//! 5. `bind.rs`: a new handle's socket is created and bound (`socket_file.rs` for a
//!    Unix path);
//! 6. `primary/handle.rs`: `Handle::add` gives the worker its socket or hand-off
//!    channel, sent back in the reply; steps 2 and 1 wrap it in a [`Listener`].
//!
//! **A round-robin hand-off** (Node's `RoundRobinHandle.distribute` → `handoff`), in six
//! files:
//!
//! 1. `primary/event_loop.rs`: `poll` reports the listener readable; after each turn the
//!    loop pumps every handle;
//! 2. `primary/handle.rs`: `Handle::pump`;
//! 3. `primary/round_robin/mod.rs`: `pump` accepts (`accept.rs`), chooses a waiting
//!    worker thread (`choose.rs`) and sends the connection in a `NewConn` record;
//! 4. `primary/round_robin/credits.rs`: `refill` reads the credits the threads sent;
//! 5. `listener/handoff.rs`: a worker thread sends its credit, waits, receives;
//! 6. `listener/mod.rs`: [`Listener::accept`] returns the [`Connection`].
//!
//! # Threads
//!
//! [`Listener`], [`Connection`] and [`Worker`] are `Send` and `Sync` (checked at compile
//! time): a worker's threads share them. [`Cluster`] is neither: it lives on the one
//! thread of the primary, which must not start others while it forks.
//!
//! ```compile_fail
//! fn send<T: Send>() {}
//! send::<cluster::Cluster>();
//! ```
//!
//! Linux only: it uses `accept4`, `SOCK_SEQPACKET` Unix sockets, `MSG_CMSG_CLOEXEC`,
//! `PR_SET_PDEATHSIG` and `tgkill`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(target_os = "linux"))]
compile_error!("the cluster crate supports Linux only (accept4, SOCK_SEQPACKET, MSG_CMSG_CLOEXEC, PR_SET_PDEATHSIG)");

mod accept;
mod activation;
mod addr;
mod backoff;
mod bind;
mod connection;
mod deadline;
mod error;
mod event;
mod ipc;
mod listener;
mod log;
mod mode;
mod number;
mod options;
mod primary;
mod settings;
mod setup_stage;
mod sock_type;
mod socket_file;
pub(crate) mod sys;
mod text;
mod worker;
mod worker_id;

pub use addr::{AddrParseError, ListenAddr, PeerAddr, ToListenAddr};
pub use connection::{Connection, OpenConnection, Stream};
pub use error::{Error, ListenError};
pub use event::{Event, ExitStatus, Replacement, Signal};
pub use ipc::codec::{ProtocolError, MAX_MESSAGE_LEN};
pub use listener::datagram::{Datagram, DatagramPeer, DatagramSocket};
pub use listener::{HandoffReadiness, Incoming, Listener, StdListener, MAX_GRANTED};
pub use mode::{Mode, ModeParseError};
pub use options::{ListenOptions, DEFAULT_BACKLOG};
pub use primary::{
    Builder, Cluster, ClusterStats, Respawn, WorkerInfo, DEFAULT_MESSAGE_LIMIT,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_UPGRADE_TIMEOUT, MAX_WORKERS,
};

/// Round-robin tuning ([`Mode::RoundRobin`]): which waiting worker gets each
/// connection ([`Builder::scheduler`] with a [`Scheduler`](round_robin::Scheduler):
/// [`FewestDispatched`](round_robin::FewestDispatched) by default,
/// [`Fifo`](round_robin::Fifo) for Node's order,
/// [`LeastConnections`](round_robin::LeastConnections)), and how the primary batches
/// ([`Builder::accept_window`], [`Builder::prefetch`]).
pub mod round_robin {
    pub use crate::primary::{
        FewestDispatched, Fifo, LeastConnections, ReadyWorker, Scheduler, DEFAULT_ACCEPT_WINDOW,
        DEFAULT_PREFETCH,
    };
}
pub use settings::{User, SETUP_FAILED_EXIT};
pub use setup_stage::SetupStage;
pub use worker::{Worker, INTERNAL_EXIT, LISTEN_REPLY_TIMEOUT};
pub use worker_id::WorkerId;

/// The promise of the "Threads" section, kept by the compiler.
const _: () = {
    fn send_sync<T: Send + Sync>() {}
    let _ = send_sync::<Listener>;
    let _ = send_sync::<Connection>;
    let _ = send_sync::<Worker>;
};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Not part of the API (the `test-hooks` feature): whether this kernel refuses the
/// descriptors a worker attaches to a record (`SO_PASSRIGHTS`, Linux 6.16+), so the
/// crate's tests know which outcome to expect. `CLUSTER_TEST_NO_PASSRIGHTS` in the
/// environment pretends it does not.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub fn descriptors_refused_for_tests() -> bool {
    sys::scm::guarantee() == sys::scm::Guarantee::Refused
}
