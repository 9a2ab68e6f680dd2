//! The demo server: an HTTP/1.1 "hello world" served by a cluster of workers.
//!
//! ```text
//! cargo run --release --example hello -- [--listen ADDR] [--workers N]
//!            [--mode shared|round-robin|reuse-port] [--scheduler fewest-dispatched|fifo|least-connections]
//!            [--threads T] [--user NAME] [--timeout SECS] [--max-requests N]
//!            [--max-requests-jitter J] [--max-rss MIB] [--upgrade-timeout SECS]
//!            [--udp HOST:PORT|unix:PATH]
//! ```
//!
//! - `ADDR` is `HOST:PORT` (`127.0.0.1:8080`, `[::1]:0`, …), `unix:PATH`, `fd:N`, or
//!   `systemd` / `systemd:NAME` (a socket passed by systemd socket activation); default
//!   `127.0.0.1:8080`. `--workers` defaults to the number of CPUs, `--mode` to
//!   `CLUSTER_SCHED_POLICY`, then round-robin; `--threads` (threads kept per worker,
//!   each serving one connection at a time) to 4. One thread of a worker accepts at a
//!   time (round-robin: `--threads` of them) and serves what it gets; a connection
//!   that has to wait for its client hands the `accept` on to a parked thread, or a
//!   new one (up to 256), so keep-alive clients never wait for a thread, and threads
//!   above `--threads` leave after 2 s parked (see `server.rs`).
//! - Once every worker listens, the primary prints `ready ADDR` (port 0 resolved).
//! - `--udp ADDR` (UDP `HOST:PORT`, or `unix:PATH` for a Unix datagram socket): each
//!   worker also answers every datagram on ADDR with the datagram prefixed
//!   `worker ID: ` (`--threads` threads each). Once every worker has the socket, the
//!   primary prints `udp ADDR` (port 0 resolved).
//! - Every response carries `X-Worker: ID`. `GET /pid` answers the worker's pid,
//!   `GET /crash` makes the worker abort (to watch the primary report it), `GET /leak`
//!   allocates, touches and keeps 8 MiB in the worker that serves it (to watch
//!   `--max-rss`).
//! - Worker health: `--timeout SECS` kills and replaces a worker that does not answer
//!   the primary's ping for that long (stopped, wedged); `--max-requests N` with
//!   `--max-requests-jitter J` recycles a worker gracefully after N to N+J connections
//!   (a keep-alive connection counts once); `--max-rss MIB` recycles a worker whose
//!   resident set is above MIB MiB. Each replacement is logged on stderr with its
//!   reason (`hello: replacing worker ID (pid PID): REASON`).
//! - `--user NAME`: the workers drop to that user (`setgroups`, `setgid`, `setuid`);
//!   the primary keeps its own, so a root primary can serve port 80. The workers are
//!   then untrusted: they may listen on `--listen`'s address only (see the README's
//!   security model).
//! - `SIGTERM` / `SIGINT` (to the primary, or to the whole group as systemd and Ctrl-C
//!   send them): stop accepting, answer every request that has begun (with
//!   `Connection: close`), close idle keep-alive connections cleanly, print each
//!   worker's count of served connections on stderr, exit 0.
//! - `SIGHUP`: rolling restart, one worker at a time, no connection refused.
//! - `SIGUSR2`: binary upgrade: the program file now at the path `hello` was started
//!   from is tried (it must reach `Builder::start` within `--upgrade-timeout`, default
//!   30 s), then run in place (same pid) with every listening socket; its workers take
//!   over, the previous ones finish what they hold. A failed trial is reported and the
//!   running program keeps serving. The new program prints `ready ADDR` again.
//!   `SIGTTIN` / `SIGTTOU`: one worker more / fewer. A crashed worker is replaced
//!   (with back-off if they keep crashing).

mod http;
mod primary;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    match primary::parse_args(std::env::args().skip(1)) {
        Ok(opts) => primary::run(opts),
        Err(e) => {
            eprintln!("hello: {e}\n{}", primary::USAGE);
            ExitCode::from(2)
        }
    }
}
