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
//!   accepts, and sends each connection to a worker thread that is waiting for one.
//!
//! Either way the worker's code receives `std::net::TcpStream`s (or `UnixStream`s) and
//! the peer's address in a [`Connection`].
//!
//! The primary is single-threaded: `fork` copies only the calling thread, so **create
//! the cluster before starting any thread** (it checks, and refuses otherwise). It
//! drives everything from one `poll(2)` loop inside [`Cluster::next_event`]; `SIGTERM`
//! and `SIGINT` shut the cluster down gracefully.
//!
//! # Reading order
//!
//! The crate is meant to be read. Bottom up: `sys` (every `unsafe` call,
//! and the EINTR policy), `ipc` (the record format and channel), `bind` (creating
//! listening sockets), `listener` (the worker's accept, and how blocked threads are
//! woken), `worker` (the child after `fork`), `primary` and its `round_robin` and
//! `shared` handles (Node's `primary.js`, `round_robin_handle.js`, `shared_handle.js`).
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

mod addr;
mod bind;
mod connection;
mod deadline;
mod error;
mod event;
mod ipc;
mod listener;
mod log;
mod mode;
mod options;
mod primary;
mod settings;
mod socket_file;
pub(crate) mod sys;
mod worker;

pub use addr::{AddrParseError, ListenAddr, PeerAddr, ToListenAddr};
pub use connection::{Connection, Stream};
pub use error::{Error, ListenError};
pub use event::{Event, ExitStatus, WorkerId};
pub use ipc::codec::{ProtocolError, MAX_MESSAGE_LEN};
pub use listener::{Incoming, Listener, DEFAULT_BACKLOG};
pub use mode::{Mode, ModeParseError};
pub use options::ListenOptions;
pub use primary::{
    Builder, Cluster, ClusterStats, FewestDispatched, Fifo, LeastConnections, ReadyWorker, Respawn,
    Scheduler, WorkerInfo, DEFAULT_ACCEPT_WINDOW, DEFAULT_MESSAGE_LIMIT, DEFAULT_PREFETCH,
    DEFAULT_SHUTDOWN_TIMEOUT, MAX_WORKERS,
};
pub use settings::{SetupStage, User, SETUP_FAILED_EXIT};
pub use worker::{Worker, LISTEN_REPLY_TIMEOUT};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
