//! tiny_http served by a cluster of workers: a library that accepts by itself, given
//! each worker's listening socket as std's listener
//! ([`Listener::try_clone_std`](cluster::Listener::try_clone_std)).
//!
//! ```text
//! cargo run --release --example tiny_http -- [--listen ADDR] [--workers N]
//!            [--mode shared|reuse-port] [--max-requests N]
//! ```
//!
//! The contract is `hello`'s (see `examples/common/primary.rs`): `ready ADDR` once
//! every worker listens, `200` with `X-Worker: ID`, `SIGHUP` reload, `SIGTERM` graceful
//! exit 0. Round-robin is refused at start: there the primary accepts every
//! connection, and tiny_http can only accept on a listening socket of its own.
//!
//! Two things tiny_http does that a cluster must work around, both here:
//! - its accept thread stops only when the `Server` drops, and its `Drop` removes the
//!   Unix socket file it listens on, even one it did not create: the file is the
//!   cluster's (a reload would leave the address without it). The worker therefore
//!   forgets the `Server` once it has answered what it holds, and exits;
//! - it knows nothing of the cluster's disconnect: a thread waits for it
//!   (`Worker::wait_disconnect`) and unblocks the serving threads, which answer what
//!   is queued with `Connection: close` and return. Until the worker exits, tiny_http's
//!   accept thread may still take a connection in shared mode (a narrow window per
//!   reload, which `hello` and `cluster-tokio` do not have).

#[path = "../common/primary.rs"]
mod primary;

use std::process::ExitCode;
use std::time::Duration;

use cluster::{ListenAddr, Listener, Mode, Worker};

/// Threads serving requests in each worker.
const THREADS: usize = 4;

fn main() -> ExitCode {
    let opts = match primary::parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "tiny_http: {e}\nusage: tiny_http [--listen ADDR] [--workers N] \
                 [--mode shared|reuse-port] [--max-requests N]"
            );
            return ExitCode::from(2);
        }
    };
    // The mode the cluster would choose: --mode, then CLUSTER_SCHED_POLICY, then
    // round-robin, the default.
    let mode = match opts
        .mode
        .map(Ok)
        .unwrap_or_else(|| Mode::from_env().map(|m| m.unwrap_or(Mode::RoundRobin)))
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tiny_http: {e}");
            return ExitCode::from(2);
        }
    };
    if mode == Mode::RoundRobin {
        eprintln!(
            "tiny_http: round-robin mode cannot serve tiny_http: the primary accepts every \
             connection there, and tiny_http accepts only on a listening socket; use \
             --mode shared or --mode reuse-port"
        );
        return ExitCode::from(2);
    }
    let opts = primary::Options {
        mode: Some(mode),
        ..opts
    };
    primary::run("tiny_http", opts, serve)
}

/// One worker: tiny_http on the worker's listening socket until the disconnect.
fn serve(worker: &Worker, addr: &ListenAddr) -> std::io::Result<()> {
    let listener = Listener::bind(addr)?;
    let server = match listener.try_clone_std()? {
        cluster::StdListener::Tcp(l) => tiny_http::Server::from_listener(l, None),
        cluster::StdListener::Unix(l) => tiny_http::Server::from_listener(l, None),
    }
    .map_err(std::io::Error::other)?;
    let id = worker.id().to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            worker.wait_disconnect();
            for _ in 0..THREADS {
                server.unblock();
            }
        });
        for _ in 0..THREADS {
            s.spawn(|| {
                for request in server.incoming_requests() {
                    answer(request, &id, false);
                }
            });
        }
    });
    // What tiny_http had read before the stop, answered with `Connection: close`.
    while let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(20)) {
        answer(request, &id, true);
    }
    // Not dropped: its Drop would remove a Unix socket file that is the cluster's.
    std::mem::forget(server);
    Ok(())
}

/// `200 hello from worker ID` with `X-Worker: ID`.
fn answer(request: tiny_http::Request, id: &str, close: bool) {
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
    };
    let mut response = tiny_http::Response::from_string(format!("hello from worker {id}\n"))
        .with_header(header("X-Worker", id));
    if close {
        response = response.with_header(header("Connection", "close"));
    }
    let _ = request.respond(response);
}
