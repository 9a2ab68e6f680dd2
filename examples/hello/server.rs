//! The demo's worker: the routes, and a pool of threads that block in the listener's
//! `accept`, each serving one connection at a time. A keep-alive client holds a thread
//! while it stays, so the pool grows by one whenever a connection takes the last
//! thread waiting in `accept` (Apache's worker MPM), up to [`MAX_THREADS`]; a thread
//! above `--threads` leaves when it finishes a connection while two others wait. A
//! client that finds every thread held by others (reuse-port hashes each client to one
//! worker) does not wait for one.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::Scope;

use cluster::{Datagram, ListenAddr, Listener, Worker};

use crate::http;

/// Memory `GET /leak` keeps for the worker's whole life.
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// How much each `GET /leak` keeps: 8 MiB.
const LEAK_BYTES: usize = 8 << 20;

/// The routes: `/pid` answers the worker's process id, `/crash` aborts the worker (to
/// watch the primary replace it), `/leak` allocates, touches and keeps 8 MiB (to watch
/// `--max-rss` recycle the worker), anything else is "hello world".
pub fn route(req: &http::Request<'_>) -> http::Response {
    let ok = |body: Vec<u8>| http::Response {
        status: "200 OK",
        body,
        then_crash: false,
    };
    match (req.method, req.path) {
        ("GET", "/pid") => ok(format!("{}\n", std::process::id()).into_bytes()),
        ("GET", "/leak") => {
            // Every page written, so it is resident, not just reserved.
            let block = vec![0x5Au8; LEAK_BYTES];
            let mut kept = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
            kept.push(block);
            ok(format!("leaked {} MiB\n", kept.len() * (LEAK_BYTES >> 20)).into_bytes())
        }
        ("GET", "/crash") => http::Response {
            then_crash: true,
            ..ok(b"crashing\n".to_vec())
        },
        _ => ok(b"hello world\n".to_vec()),
    }
}

/// The most threads one worker runs.
pub const MAX_THREADS: usize = 256;

/// One worker's pool (see the module docs).
struct Pool<'a> {
    listener: &'a Listener,
    id: u32,
    /// Threads kept however quiet it is (`--threads`).
    base: usize,
    /// Threads running, and of those, waiting in `accept`.
    total: AtomicUsize,
    idle: AtomicUsize,
    served: AtomicU64,
}

impl<'a> Pool<'a> {
    /// One more thread, unless the pool is at its cap or the system refuses.
    fn grow<'s>(&'a self, s: &'s Scope<'s, 'a>) {
        if self.total.fetch_add(1, Ordering::AcqRel) >= MAX_THREADS {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn_scoped(s, move || self.run(s));
        if let Err(e) = spawned {
            self.total.fetch_sub(1, Ordering::AcqRel);
            eprintln!("worker {}: no thread for the next connection: {e}", self.id);
        }
    }

    /// A thread's life: accept, serve, again; until the listener closes, or the pool
    /// is above its base with others waiting.
    fn run<'s>(&'a self, s: &'s Scope<'s, 'a>) {
        let stopping = || self.listener.is_closed();
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let accepted = self.listener.accept();
            let idle_left = self.idle.fetch_sub(1, Ordering::AcqRel) - 1;
            match accepted {
                Ok(Some(mut conn)) => {
                    if idle_left == 0 && !stopping() {
                        self.grow(s);
                    }
                    self.served.fetch_add(1, Ordering::Relaxed);
                    // Served through the Connection, which counts as open in this
                    // worker until it drops (least-connections).
                    http::serve(conn.stream_mut(), self.id, &stopping, &route);
                }
                // The listener closed: the worker is stopping; the other threads'
                // connections notice at their next request or read tick.
                Ok(None) => break,
                Err(e) => {
                    eprintln!("worker {}: accept: {e}", self.id);
                    break;
                }
            }
            // Two others waiting is enough for what comes next: leave, down to the base.
            if self.idle.load(Ordering::Acquire) >= 2 {
                let total = self.total.load(Ordering::Acquire);
                if total > self.base
                    && self
                        .total
                        .compare_exchange(total, total - 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    return;
                }
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `--udp`: answers each datagram with itself prefixed `worker ID: `, until the socket
/// closes (the worker disconnects). A datagram that cannot be answered (an unnamed Unix
/// sender, a full send buffer) is dropped, as UDP drops it.
fn echo(socket: &Datagram, id: u32) {
    let prefix = format!("worker {id}: ");
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(buf.len() + prefix.len());
    loop {
        match socket.recv_from(&mut buf) {
            Ok(Some((n, peer))) => {
                reply.clear();
                reply.extend_from_slice(prefix.as_bytes());
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, &peer);
            }
            Ok(None) => return,
            Err(e) => {
                eprintln!("worker {id}: udp: {e}");
                return;
            }
        }
    }
}

/// A worker: `threads` threads block in the listener's accept (more while connections
/// hold them all, see the module docs). When the primary asks the worker to disconnect
/// (or it gets `SIGTERM`), the listener closes: accept returns `None`, busy threads
/// see `is_closed` and finish after their current request (with `Connection: close`),
/// and the worker returns.
pub fn serve(
    worker: &Worker,
    addr: &ListenAddr,
    udp: Option<&ListenAddr>,
    threads: usize,
) -> std::io::Result<()> {
    let listener = Listener::bind_with(addr, &http::listen_options())?;
    let udp = udp.map(Datagram::bind).transpose()?;
    let pool = Pool {
        listener: &listener,
        id: worker.id().0,
        base: threads,
        total: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        served: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        if let Some(socket) = &udp {
            for _ in 0..threads {
                s.spawn(|| echo(socket, pool.id));
            }
        }
        for _ in 0..threads {
            pool.grow(s);
        }
        if pool.total.load(Ordering::Acquire) == 0 {
            listener.close();
            if let Some(socket) = &udp {
                socket.close();
            }
            return Err(std::io::Error::other("no thread could be started"));
        }
        Ok(())
    })?;
    crate::primary::write_line(&format!(
        "worker {}: served {} connections",
        pool.id,
        pool.served.load(Ordering::Relaxed)
    ));
    Ok(())
}
