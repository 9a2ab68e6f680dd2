//! axum served by a cluster of workers, in every mode.
//!
//! ```text
//! cargo run --release -p cluster-tokio --example axum -- [--listen ADDR] [--workers N]
//!            [--mode shared|round-robin|reuse-port] [--max-requests N]
//! ```
//!
//! The contract is `hello`'s (`examples/common/primary.rs` of the `cluster` crate):
//! `ready ADDR` once every worker listens, `200` with `X-Worker: ID` for any path,
//! `SIGHUP` rolling restart with no request lost, `SIGTERM` graceful exit 0. Each
//! worker also says `axum: worker ID accepting` on stderr once it takes connections
//! (in round-robin, once its credits are granted, a moment after it listens).
//!
//! Each worker builds its own single-threaded tokio runtime (the cluster gives the
//! parallelism: one worker per core) and serves axum on a
//! [`ClusterListener`](cluster_tokio::ClusterListener), with the keep-alive
//! [`Drain`](cluster_tokio::Drain) as its graceful shutdown.

#[path = "../../../examples/common/primary.rs"]
mod primary;

use std::process::ExitCode;

use axum::http::HeaderName;
use axum::Router;
use cluster::{ListenAddr, Worker};
use cluster_tokio::{ClusterListener, Drain};

fn main() -> ExitCode {
    match primary::parse_args(std::env::args().skip(1)) {
        Ok(opts) => primary::run("axum", opts, serve),
        Err(e) => {
            eprintln!(
                "axum: {e}\nusage: axum [--listen ADDR] [--workers N] \
                 [--mode shared|round-robin|reuse-port] [--max-requests N]"
            );
            ExitCode::from(2)
        }
    }
}

/// One worker: its runtime, its listener, axum until the disconnect and the drain.
fn serve(worker: &Worker, addr: &ListenAddr) -> std::io::Result<()> {
    // Before the runtime: `bind` waits for the primary's reply.
    let listener = cluster::Listener::bind(addr)?;
    let id = worker.id().to_string();
    let body = format!("hello from worker {id}\n");
    let x_worker_id = id.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let drain = Drain::default();
            let x_worker = HeaderName::from_static("x-worker");
            let app = Router::new()
                .fallback(move || {
                    let (id, body) = (x_worker_id.clone(), body.clone());
                    let x_worker = x_worker.clone();
                    async move { ([(x_worker, id)], body) }
                })
                .layer(drain.layer());
            let listener = ClusterListener::new(listener)?;
            // Listening, and in round-robin its credits granted: it takes connections.
            // One write, so that the workers' lines do not interleave.
            let line = format!("axum: worker {id} accepting\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            axum::serve(listener, app)
                .with_graceful_shutdown(drain.on_disconnect())
                .await
        })
}
