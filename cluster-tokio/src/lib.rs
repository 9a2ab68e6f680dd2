//! tokio, hyper and axum on a [`cluster`] of workers.
//!
//! Node's cluster is loved because a normal server runs in it unchanged. An axum or
//! hyper server runs in a `cluster` worker with three pieces from here, in every mode:
//!
//! - [`ClusterListener`]: the worker's listener as axum's `serve::Listener` (and an
//!   `accept` for hyper): the socket itself in shared and reuse-port mode (a std
//!   listener from [`cluster::Listener::try_clone_std`]), the primary's hand-off in
//!   round-robin, taken without a thread per connection, with credits that follow how
//!   many connections the worker holds ([`cluster::Listener::grant`]). Every
//!   connection is counted for the cluster (`max_connections` recycling, the workers'
//!   counters) while it is open.
//! - [`disconnected`]: a future that completes when the worker is asked to go (a
//!   shutdown, a reload, a recycle, an upgrade, a group `SIGTERM`), for
//!   `with_graceful_shutdown`.
//! - [`Drain`]: a rolling restart that loses nothing. hyper's graceful shutdown closes
//!   idle keep-alive connections at once, racing a client's next request on them; the
//!   drain first answers every request with `Connection: close` for a short while, so
//!   busy keep-alive clients move to another worker before the close.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use cluster::Cluster;
//! use cluster_tokio::{ClusterListener, Drain};
//!
//! let mut cluster = Cluster::builder()
//!     .start(|_worker| -> std::io::Result<()> {
//!         // The runtime belongs here, in the worker (one made before `start` is refused).
//!         let listener = cluster::Listener::bind(("127.0.0.1", 8080))?;
//!         tokio::runtime::Builder::new_current_thread()
//!             .enable_all()
//!             .build()?
//!             .block_on(async {
//!                 let drain = Drain::default();
//!                 let app = Router::new()
//!                     .route("/", get(|| async { "hello" }))
//!                     .layer(drain.layer());
//!                 axum::serve(ClusterListener::new(listener)?, app)
//!                     .with_graceful_shutdown(drain.on_disconnect())
//!                     .await
//!             })
//!     })
//!     .expect("the cluster starts");
//! while let Some(_event) = cluster.next_event().expect("events") {}
//! ```

#![deny(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    missing_debug_implementations
)]

mod drain;
mod listener;
mod sys;

pub use drain::{disconnected, Drain, DEFAULT_GRACE};
pub use listener::{ClusterListener, ClusterStream, DEFAULT_CAPACITY};
