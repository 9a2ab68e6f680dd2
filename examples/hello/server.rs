//! The demo's worker: the routes, and a pool of threads that take turns in the
//! listener's `accept` and each serve one connection at a time.
//!
//! **On a socket (shared, reuse-port), one thread accepts at a time** (leader/followers):
//! the others wait parked. The thread that gets a connection serves it at once, and
//! takes its place back in `accept` when it is done, so under a stream of short
//! connections one hot thread per worker does all the work, as the C prefork loop does:
//! more threads blocked in `accept` only meant more sleeping threads for the kernel to
//! wake, one per connection (measured: server CPU per connection 54 µs with one
//! accepting thread per worker, 68 with four, against the C prefork's 49). Only when a
//! connection would make its thread **wait** (for the client's next request, or for
//! room to write), and too few others accept, does the thread first hand the lead on:
//! to a parked thread, or to a new one (Apache's worker MPM grows the same way), up to
//! [`MAX_THREADS`]. So a keep-alive client holds a thread, never the worker's `accept`:
//! a client that finds every thread held by others (reuse-port hashes each client to
//! one worker) does not wait for one. A parked thread above `--threads` leaves once it
//! has had nothing to do for [`SHRINK_AFTER`].
//!
//! **On a round-robin hand-off channel, `--threads` threads accept at once**: each
//! waiting thread is a credit, and the primary hands a connection only to a thread that
//! waits (with one, it often found none and had to queue connections ahead, or wake
//! for each credit). The same hand-on keeps that many waiting.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::Scope;
use std::time::Duration;

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

/// How long a parked thread above the base waits for the lead before it leaves.
pub const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// One worker's pool (see the module docs).
struct Pool<'a> {
    listener: &'a Listener,
    id: u32,
    /// Threads kept however quiet it is (`--threads`).
    base: usize,
    /// How many threads accept at once: one on a socket (shared, reuse-port), the
    /// base on a round-robin hand-off channel, where each waiting thread is a credit
    /// the primary can hand a connection to.
    accepters: usize,
    /// Threads in `accept`, or on their way there (a parked thread called, a new one
    /// spawned): read without the lock before a connection waits.
    leading: AtomicUsize,
    state: Mutex<State>,
    /// Parked threads wait here for a call to lead, or for the close.
    call: Condvar,
    served: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Threads running.
    total: usize,
    /// Threads parked, and calls to lead made to them and not yet taken.
    parked: usize,
    calls: usize,
    /// The listener closed: every thread leaves once it has finished its connection.
    closed: bool,
}

/// What a parked thread was woken for.
enum Woken {
    Lead,
    Leave,
}

impl<'a> Pool<'a> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread, leading or parked; false at the cap or when the system refuses.
    fn spawn<'s>(&'a self, s: &'s Scope<'s, 'a>, lead: bool) -> bool {
        {
            let mut st = self.lock();
            if st.total >= MAX_THREADS {
                return false;
            }
            st.total += 1;
        }
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn_scoped(s, move || self.run(s, lead));
        if let Err(e) = spawned {
            self.lock().total -= 1;
            eprintln!("worker {}: no thread for the next connection: {e}", self.id);
            return false;
        }
        true
    }

    /// A thread's life: lead (accept, then serve what it got) or wait parked for the
    /// lead; until the listener closes, or it is a parked thread above the base with
    /// nothing to do for [`SHRINK_AFTER`].
    fn run<'s>(&'a self, s: &'s Scope<'s, 'a>, mut lead: bool) {
        let mut buf = http::Buffer::new();
        loop {
            if !lead {
                match self.park() {
                    Woken::Lead => {}
                    Woken::Leave => return, // counted out by `park`
                }
            }
            let accepted = self.listener.accept();
            // One accepter fewer while this thread serves: the connection hands the
            // lead on only if it comes to wait (`Waiting::before_wait`).
            self.leading.fetch_sub(1, Ordering::AcqRel);
            match accepted {
                Ok(Some(mut conn)) => {
                    self.served.fetch_add(1, Ordering::Relaxed);
                    // Served through the Connection, which counts as open in this
                    // worker until it drops (least-connections).
                    let waiting = Waiting {
                        pool: self,
                        scope: s,
                    };
                    http::serve(conn.stream_mut(), &mut buf, self.id, &waiting, &route);
                }
                // The listener closed: the worker is stopping. Busy threads notice at
                // their next request or read tick, then come here too.
                Ok(None) => break,
                Err(e) => {
                    eprintln!("worker {}: accept: {e}", self.id);
                    break;
                }
            }
            // Back to `accept` at once if nobody took the lead meanwhile (the hot
            // thread), else park.
            lead = self.take_lead();
        }
        let mut st = self.lock();
        st.closed = true;
        st.total -= 1;
        drop(st);
        self.call.notify_all();
    }

    /// Waits parked until called to lead, or told to leave (closed; or above the base
    /// and not called for [`SHRINK_AFTER`], then counted out here).
    fn park(&self) -> Woken {
        let mut st = self.lock();
        st.parked += 1;
        let woken = loop {
            if st.calls > 0 {
                st.calls -= 1;
                break Woken::Lead;
            }
            if st.closed {
                st.total -= 1;
                break Woken::Leave;
            }
            if st.total > self.base {
                let (guard, waited) = self
                    .call
                    .wait_timeout(st, SHRINK_AFTER)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                if waited.timed_out() && st.calls == 0 && st.total > self.base {
                    st.total -= 1;
                    break Woken::Leave;
                }
            } else {
                st = self.call.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        st.parked -= 1;
        woken
    }

    /// Whether enough threads accept already.
    fn covered(&self) -> bool {
        self.leading.load(Ordering::Acquire) >= self.accepters
    }

    /// Counts one more accepter, unless there are enough.
    fn take_lead(&self) -> bool {
        self.leading
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.accepters).then_some(n + 1)
            })
            .is_ok()
    }

    /// Before a connection waits: makes sure enough threads accept (a parked one
    /// called, or a new one), unless they do or the worker is stopping.
    fn hand_on_lead<'s>(&'a self, s: &'s Scope<'s, 'a>) {
        if self.covered() || self.listener.is_closed() || !self.take_lead() {
            return;
        }
        let mut st = self.lock();
        if st.parked > st.calls {
            st.calls += 1;
            drop(st);
            self.call.notify_one();
            return;
        }
        drop(st);
        if !self.spawn(s, true) {
            // At the cap: the next thread to finish its connection takes the lead.
            self.leading.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What [`http::serve`] tells the pool about one connection.
struct Waiting<'a, 's> {
    pool: &'a Pool<'a>,
    scope: &'s Scope<'s, 'a>,
}

impl http::Waiting for Waiting<'_, '_> {
    fn covered(&self) -> bool {
        self.pool.covered()
    }

    fn before_wait(&self) {
        self.pool.hand_on_lead(self.scope);
    }

    fn stopping(&self) -> bool {
        self.pool.listener.is_closed()
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
        accepters: if listener.is_round_robin() {
            threads
        } else {
            1
        },
        leading: AtomicUsize::new(0),
        state: Mutex::new(State::default()),
        call: Condvar::new(),
        served: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        if let Some(socket) = &udp {
            for _ in 0..threads {
                s.spawn(|| echo(socket, pool.id));
            }
        }
        // `accepters` threads lead from the start; the others wait parked for a turn.
        let mut leaders = 0;
        for _ in 0..threads {
            let lead = pool.take_lead();
            if pool.spawn(s, lead) {
                leaders += usize::from(lead);
            } else if lead {
                pool.leading.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if leaders == 0 {
            listener.close();
            if let Some(socket) = &udp {
                socket.close();
            }
            // Parked threads leave once they see the pool closed.
            pool.lock().closed = true;
            pool.call.notify_all();
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
