//! The demo's worker: the routes, and a small fixed pool of threads that all block in
//! the listener's `accept`, each serving one connection at a time (so a keep-alive
//! client holds a thread while it stays, and the others keep accepting).

use std::sync::atomic::{AtomicU64, Ordering};

use cluster::{ListenAddr, Listener, Worker};

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

/// A worker: `threads` threads block in the listener's accept. When the primary asks
/// the worker to disconnect (or it gets `SIGTERM`), the listener closes: accept returns
/// `None`, busy threads see `is_closed` and finish after their current request (with
/// `Connection: close`), and the worker returns.
pub fn serve(worker: &Worker, addr: &ListenAddr, threads: usize) -> std::io::Result<()> {
    let listener = Listener::bind_with(addr, &http::listen_options())?;
    let id = worker.id().0;
    let served = AtomicU64::new(0);
    let stopping = || listener.is_closed();
    std::thread::scope(|s| -> std::io::Result<()> {
        for _ in 0..threads {
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn_scoped(s, || {
                    loop {
                        match listener.accept() {
                            Ok(Some(mut conn)) => {
                                served.fetch_add(1, Ordering::Relaxed);
                                // Served through the Connection, which counts as open
                                // in this worker until it drops (least-connections).
                                http::serve(conn.stream_mut(), id, &stopping, &route);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                eprintln!("worker {id}: accept: {e}");
                                break;
                            }
                        }
                    }
                    // The listener closed: the worker is stopping; the other threads'
                    // connections notice at their next request or read tick.
                })?;
        }
        Ok(())
    })?;
    crate::primary::write_line(&format!(
        "worker {id}: served {} connections",
        served.load(Ordering::Relaxed)
    ));
    Ok(())
}
