//! The server under test (`chaos --serve MODE --workers N`): a cluster whose workers
//! acknowledge each connection at once, then serve it slowly enough to be killed in the
//! middle; its primary reports every fork, listen and exit on stdout, one line each.
//!
//! ```text
//! ready ADDR            once every first worker listens (port 0 resolved)
//! fork ID PID           a worker process was forked
//! listening ID          it listens
//! exit ID PID STATUS    it ended (STATUS: code:N or signal:N)
//! stats FORKS CRASHES DROPPED   at the end: the primary's counters
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cluster::{Cluster, Connection, Event, ExitStatus, Listener, Mode, Respawn, Worker};

/// Accepting threads per worker.
const THREADS: usize = 2;
/// Work per request, so workers hold connections long enough to be killed mid-request.
const WORK: Duration = Duration::from_micros(200);

/// Runs the primary until `SIGTERM`; exit status 0 when it stopped cleanly.
pub fn run(mode: Mode, workers: usize) -> ExitCode {
    let mut cluster = match Cluster::builder()
        .mode(mode)
        .workers(workers)
        .shutdown_timeout(Duration::from_secs(2))
        // Killed workers are replaced at once: a worker that lived 1 ms did not die
        // young, so the crash-loop back-off (100 ms doubling by default) stays out of
        // the way; if several die young in a row the delay still grows, to 50 ms at most.
        .respawn(
            Respawn::default()
                .min_uptime(Duration::from_millis(1))
                .delays(Duration::from_millis(1), Duration::from_millis(50)),
        )
        .start(serve)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos --serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut listening = std::collections::BTreeSet::new();
    let mut ready = false;
    let parent = std::os::unix::process::parent_id();
    loop {
        // The driver died without stopping us (it was killed): stop too.
        if std::os::unix::process::parent_id() != parent {
            cluster.shutdown();
        }
        match cluster.next_event_timeout(Duration::from_millis(200)) {
            Ok(Some(Event::Fork { worker, pid })) => say(format!("fork {worker} {pid}")),
            Ok(Some(Event::Listening { worker, addr })) => {
                say(format!("listening {worker}"));
                listening.insert(worker);
                if !ready && listening.len() >= workers {
                    ready = true;
                    say(format!("ready {addr}"));
                }
            }
            Ok(Some(Event::Exit {
                worker,
                pid,
                status,
                ..
            })) => {
                let status = match status {
                    ExitStatus::Code(c) => format!("code:{c}"),
                    ExitStatus::Signal(s) => format!("signal:{s}"),
                };
                say(format!("exit {worker} {pid} {status}"));
            }
            Ok(Some(Event::ListenFailed { error, .. })) => {
                eprintln!("chaos --serve: {error}");
                cluster.shutdown();
            }
            Ok(Some(Event::Error(e))) => eprintln!("chaos --serve: {e}"),
            Ok(Some(_)) => {}
            Ok(None) if cluster.is_stopped() => break,
            Ok(None) => {} // a timeout: look at the parent again
            Err(e) => {
                eprintln!("chaos --serve: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let s = cluster.stats();
    say(format!(
        "stats {} {} {}",
        s.forks, s.crashes, s.dropped_connections
    ));
    ExitCode::SUCCESS
}

/// One line on stdout, written whole (stdout is line-buffered). Errors are ignored: a
/// driver that went away must not make the primary panic (`println!` would, on `EPIPE`).
fn say(line: String) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A worker: `THREADS` threads accept on the cluster's listener until it closes.
fn serve(worker: &Worker) -> std::io::Result<()> {
    let listener = Listener::bind("127.0.0.1:0")?;
    let id = worker.id();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                match listener.accept() {
                    // An error on one connection (the client gave up) is that client's.
                    Ok(Some(mut conn)) => drop(answer(&mut conn, id.0)),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("chaos worker {id}: accept: {e}");
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// The ack byte first, before anything else (the client then knows a worker has its
/// connection); then read `GO\n`, work, answer `OK ID\n`, close.
fn answer(conn: &mut Connection, id: u32) -> std::io::Result<()> {
    // The first system call after accept, so the window in which the worker has the
    // connection and the client cannot know is a few instructions long.
    conn.write_all(b"A")?;
    // Two small writes: without TCP_NODELAY the second could wait for the first's ACK.
    conn.stream().set_nodelay(true)?;
    let mut line = String::new();
    BufReader::new(&mut *conn).read_line(&mut line)?;
    let start = Instant::now();
    while start.elapsed() < WORK {
        std::hint::spin_loop();
    }
    writeln!(conn, "OK {id}")
}
