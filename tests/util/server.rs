//! The cluster server the scenarios drive: this test binary, run again with
//! `CLUSTER_SCENARIO_SERVER=1`, is a cluster primary. It never runs inside the
//! multi-threaded driver, so its `fork` happens in a single-threaded process.
//!
//! Configuration (environment): `SC_MODE`, `SC_WORKERS`, `SC_LISTEN` (addresses,
//! comma-separated), `SC_THREADS` (accepting threads per listener), `SC_SHUTDOWN_MS` (`max`: Duration::MAX),
//! `SC_EVENT_WAIT` (the primary's `next_event_timeout`, ms or `max`),
//! `SC_RESPAWN` (`default`, `never`, or `INITIAL_MS:MAX_MS:MIN_UPTIME_MS`),
//! `SC_CRASH=start` (every worker fails at once), `SC_USER`, `SC_DIR`, `SC_SILENT`,
//! `SC_SCHEDULER` (`fifo`, `least-connections`; else the default), `SC_ALLOW` (addresses for
//! `listen_only`; with `SC_USER` and no `SC_ALLOW`, the `SC_LISTEN` addresses, unless
//! `SC_NO_ALLOW` is set),
//! `SC_ALLOW_DATAGRAMS` (addresses for `listen_only_datagrams`),
//! `SC_ADMIN` (the primary holds a private listener), `SC_EXCLUSIVE` (`1`, or addresses:
//! worker 1 also binds exclusive listeners, see `exclusive`), `SC_ASK` (worker 1 asks for
//! these addresses too once it listens, see `ask_more`; `udp@ADDR` asks for a datagram
//! socket, `udp-hold@ADDR` for one it keeps),
//! `SC_MSG_LIMIT` (the primary's message limit), `SC_EXTRA_LISTEN` (see
//! `extra_listeners`), `SC_LISTEN_FAIL_OK` (a failed listen does not shut the cluster
//! down), `SC_NONBLOCK` (each worker sets O_NONBLOCK on its listening sockets),
//! `SC_ROGUE` (worker 1 misbehaves once it listens: `garbage`, `oversized`, `unknown`,
//! `fd`, `flood`, `relisten`, `late_setup`, and on `tell rogue-go` `linger-online`,
//! `linger-newconn`, `linger-handoff`, `fds5-online`, `fds5-handoff` with a socket
//! connected to `SC_ROGUE_PEER`, `file-online` with the file `SC_ROGUE_FILE`; see
//! `rogue`),
//! `SC_UIDS` (`FIRST:COUNT`: with `SC_USER`, one uid per worker from FIRST),
//! `SC_UDP` (each worker also binds a `Datagram` on this address and answers every
//! datagram with `worker ID: ` and the datagram, on `SC_THREADS` threads; a receive error
//! makes the worker exit with code 3), `SC_ROGUE=udp-…` (worker 1 tampers with its
//! datagram socket once the primary has seen every worker receive and said `go`,
//! while serving it: `udp-connect`, `udp-drop-all`, `udp-rcvbuf-0`,
//! `udp-nonblock`, `udp-shutdown-read`, `udp-steer`; it tells the primary `tampered HOW
//! ok` or `tampered HOW ERROR`; see `tamper`),
//! `SC_TIMEOUT_MS`, `SC_HEARTBEAT_MS` (also starts a thread in each worker that calls
//! `Worker::heartbeat` five times per timeout, until `hang-heartbeat`), `SC_MAX_CONN`,
//! `SC_MAX_CONN_JITTER`, `SC_MAX_RSS_MIB` (worker health),
//! `SC_SECRET` (a file the primary opens for reading before `start` and holds, as a
//! program's private key or configuration would be), `SC_KEEP` (a log file the primary
//! opens for appending, created 0600, and gives every worker with `keep_fd`).
//!
//! Protocol of the workers: a client sends one line, the worker answers `ok WORKER PID
//! L C [TEXT]` (L, C: whether the listener's and the connection's descriptors have
//! FD_CLOEXEC, 1 or 0) and closes. Lines: `hi`; `cwd` (answers the working
//! directory); `fds` (answers the descriptors the worker had open when its function
//! started, comma-separated); `log TEXT` (appends `TEXT` to the `SC_KEEP` log through
//! the kept descriptor); `kind` (answers `tcp` or `unix`: the connection's `Stream`
//! variant); `bind ADDR` (answers `waiting`, reads one more line, then calls
//! `Listener::bind(ADDR)` and answers `bound ADDR` or `bind-error ERROR`); `stderr TEXT`
//! (writes TEXT to stderr); `stop-siblings` (`kill -STOP` on every other worker, answers
//! `stopped PID:ok|EPERM|error,…`); `spin N` (worker N, when it is this one,
//! busy-loops once its listeners close, and never returns); `hang-heartbeat` (this worker's heartbeats stop); `leak MIB`
//! (allocates, touches and keeps MIB MiB); `hold-shm MIB` (writes MIB MiB into a
//! nameless file in /dev/shm and keeps it open, unmapped); `unlisten N` (closes the worker's listener number N); `send
//! TEXT` (sends TEXT to the primary, answers at once); `bind-burst N` (N threads ask for
//! the first address at once, answered at once); `orphans`
//! (leaves a child that has exited and one still running, answers `orphans ZOMBIE_PID
//! LIVE_PID`, then the worker exits with code 3: see `orphans()`); `sleep
//! MS` (tells the primary `busy`
//! first, then answers after MS); `stream KIB` (writes KIB KiB of dots, then answers);
//! `tell TEXT` (`tell-forever TEXT`: waits with Duration::MAX) (sends TEXT to the primary and answers
//! with the primary's reply: `ping`, `flood N KIB` (N messages of KIB KiB to the
//! sender, until one is refused; the primary prints `flooded ok=K error=E`), `kill N`, `term N` (`Cluster::kill` with `SIGTERM`), `disconnect N`, `restart N`,
//! `workers N`, `broadcast TEXT`).
//!
//! The primary prints one line per event (`fork ID PID`, `online ID`, `listening ID
//! ADDR`, `receiving ID ADDR`, `listen-failed ID ADDR ERROR`, `disconnect ID`, `replacing ID PID KIND (REASON)`, `exit ID PID STATUS
//! requested=B`, `error …`), `ready ADDR[,ADDR…]` once every worker listens on every
//! address, `serving K` (workers listening and not disconnecting, after each event,
//! when it changes, once ready), `cause ID KIND` and `rss ID BYTES` (a worker's
//! `WorkerInfo::replaced_because` and its first `rss`, once each), `stats ID=D/A …` (connections dispatched to / accepted by each worker) whenever
//! they change,
//! and at the end `dropped N` (round-robin connections closed unserved), `orphans N`
//! (children reaped that were not workers) and `hygiene fds_before=… fds_after=…
//! children=…` about itself.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::time::Duration;

use cluster::{Cluster, Event, ListenAddr, Listener, Mode, Respawn, Stream, User, Worker};

use super::proc;

/// The descriptors open when the worker function started (see `fds`).
static ENTRY_FDS: OnceLock<String> = OnceLock::new();

/// The descriptor numbers open in this process, found with `lstat` on
/// `/proc/self/fd/N` (which opens nothing, so the answer does not count itself, and
/// works for a worker that dropped privileges: a process may always look at its own).
fn own_fds() -> String {
    (0..1024)
        .filter(|n| std::fs::symlink_metadata(format!("/proc/self/fd/{n}")).is_ok())
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn serve_one(stream: &mut Stream, id: u32, listener_cloexec: bool) {
    let conn_cloexec = proc::is_cloexec(stream.as_fd().as_raw_fd());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    {
        let mut r = BufReader::new(&*stream);
        if r.read_line(&mut line).is_err() {
            return;
        }
    }
    let cmd: Vec<&str> = line.split_whitespace().collect();
    let mut extra = String::new();
    let mut exit_after = false;
    match cmd.as_slice() {
        ["sleep", ms] => {
            if let Some(w) = Worker::current() {
                let _ = w.send(format!("busy {id}").as_bytes());
            }
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        ["fds"] => {
            extra = format!(" {}", ENTRY_FDS.get().map_or("?", String::as_str));
        }
        ["log", rest @ ..] => {
            let written = Worker::current()
                .and_then(|w| w.kept_fd(0).map(|fd| fd.try_clone_to_owned()))
                .map(|fd| {
                    fd.and_then(|fd| {
                        std::fs::File::from(fd)
                            .write_all(format!("{}\n", rest.join(" ")).as_bytes())
                    })
                });
            extra = match written {
                Some(Ok(())) => " logged".into(),
                Some(Err(e)) => format!(" log-error {e}"),
                None => " no-kept-fd".into(),
            };
        }
        ["bind", addr] => {
            // Says `waiting`, waits for the client's next line (the driver changes
            // this worker's limits meanwhile), then asks for a listener on ADDR.
            let _ = stream.write_all(b"waiting\n");
            let mut go = String::new();
            let _ = BufReader::new(&*stream).read_line(&mut go);
            extra = match Listener::bind(*addr) {
                Ok(l) => format!(" bound {}", l.local_addr()),
                Err(e) => format!(" bind-error {e}"),
            };
        }
        ["env", name] => {
            // The worker's view of one environment variable.
            extra = format!(
                " {}",
                std::env::var(name).unwrap_or_else(|_| "unset".into())
            );
        }
        ["send", rest @ ..] => {
            // Tells the primary TEXT and answers at once (no reply awaited).
            if let Some(w) = Worker::current() {
                let _ = w.send(rest.join(" ").as_bytes());
            }
        }
        ["bind-burst", n] => {
            // N threads ask for the worker's first address at once and wait for their
            // replies (which a worker that does not read its channel never gets).
            let addr = ADDRS.get().and_then(|a| a.first().cloned());
            for _ in 0..n.parse::<u32>().unwrap_or(0) {
                let addr = addr.clone();
                std::thread::spawn(move || addr.map(|a| Listener::bind(&a)));
            }
        }
        ["stop-siblings"] => {
            // A compromised worker's attack on the others: `kill -STOP` (kill(1), as
            // this worker's uid) on every other child of the primary, found in /proc
            // as any process may find them. Answers `stopped PID:RESULT,…` (`ok`,
            // `EPERM` or `error`).
            let me = std::process::id();
            let results: Vec<String> = proc::children_of(std::os::unix::process::parent_id())
                .into_iter()
                .filter(|(pid, _)| *pid != me)
                .map(|(pid, _)| {
                    let out = std::process::Command::new("kill")
                        .args(["-STOP", &pid.to_string()])
                        .stdin(std::process::Stdio::null())
                        .output();
                    let result = match out {
                        Ok(o) if o.status.success() => "ok",
                        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("not permitted") => {
                            "EPERM"
                        }
                        _ => "error",
                    };
                    format!("{pid}:{result}")
                })
                .collect();
            extra = format!(" stopped {}", results.join(","));
        }
        ["kind"] => {
            extra = match stream {
                Stream::Tcp(_) => " tcp".into(),
                Stream::Unix(_) => " unix".into(),
            };
        }
        ["cwd"] => {
            extra = format!(
                " {}",
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
        }
        ["orphans"] => {
            // Leaves two children behind and exits right after answering (exit code
            // 3, a crash): orphans for the primary when it is pid 1 (see `orphans`).
            extra = match orphans() {
                Ok((zombie, live)) => format!(" orphans {zombie} {live}"),
                Err(e) => format!(" orphans-error {e}"),
            };
            exit_after = true;
        }
        ["stderr", rest @ ..] => eprintln!("{}", rest.join(" ")),
        ["spin", n] if n.parse() == Ok(id) => {
            SPIN.store(true, std::sync::atomic::Ordering::Relaxed)
        }
        ["hang-heartbeat"] => {
            // The application's main loop stops making progress (its heartbeat
            // thread stops calling `Worker::heartbeat`); requests are still served.
            HEARTBEAT_HUNG.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        ["leak", mib] => {
            // Allocates, touches and keeps MIB MiB (the resident set grows).
            let n = mib.parse::<usize>().unwrap_or(0).min(1024);
            let block = vec![1u8; n << 20];
            let mut kept = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
            kept.push(block);
            extra = format!(" leaked {}", kept.len());
        }
        ["hold-shm", mib] => {
            // Writes MIB MiB into a file in /dev/shm (tmpfs) that has no name
            // (`O_TMPFILE`: what `memfd_create` gives, on another tmpfs mount) and
            // keeps it open, never mapped: memory in no process's resident set.
            use std::os::unix::fs::OpenOptionsExt;
            let n = mib.parse::<usize>().unwrap_or(0).min(1024);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open("/dev/shm")
                .and_then(|mut f| f.write_all(&vec![1u8; n << 20]).map(|()| f));
            extra = match file {
                Ok(f) => {
                    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                    format!(" held {n}")
                }
                Err(e) => format!(" hold-error {e}"),
            };
        }
        ["unlisten", n] => {
            // Closes this worker's listener number N (0-based, in `SC_LISTEN` order).
            let l = n
                .parse::<usize>()
                .ok()
                .and_then(|n| LISTENERS.get()?.get(n));
            match l {
                Some(l) => l.close(),
                None => extra = " no-such-listener".into(),
            }
        }
        ["stream", kib] => {
            // KiB after KiB until done or the client is gone: a client that reads a
            // little and closes makes a later write fail with EPIPE (SIGPIPE, were it
            // not ignored) or ECONNRESET.
            let chunk = [b'.'; 1024];
            for _ in 0..kib.parse::<u32>().unwrap_or(0) {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        [tell @ ("tell" | "tell-forever"), rest @ ..] => {
            if let Some(w) = Worker::current() {
                let _ = w.send(rest.join(" ").as_bytes());
                let wait = match *tell {
                    "tell" => Duration::from_secs(5),
                    _ => Duration::MAX,
                };
                let reply = w.recv_timeout(wait).unwrap_or_default();
                extra = format!(" {}", String::from_utf8_lossy(&reply));
            }
        }
        _ => {}
    }
    let reply = format!(
        "ok {id} {} {} {}{extra}\n",
        std::process::id(),
        u8::from(listener_cloexec),
        u8::from(conn_cloexec)
    );
    let _ = stream.write_all(reply.as_bytes());
    if exit_after {
        std::process::exit(3);
    }
}

/// Two children of this worker that outlive it as processes to reap: one that has
/// already exited (a zombie, waited for until it is one, never reaped here), and one
/// still running that exits when this worker does (`sh` reading a pipe whose only
/// writer is this worker, kept open until the worker exits). Returns their pids.
fn orphans() -> std::io::Result<(u32, u32)> {
    use std::process::{Command, Stdio};
    let exited = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let zombie = exited.id();
    proc::wait_until("the first orphan to exit", Duration::from_secs(5), || {
        proc::is_zombie(zombie)
    })
    .map_err(std::io::Error::other)?;
    drop(exited); // not waited for: dropping a `Child` does not reap it
    let running = Command::new("sh")
        .args(["-c", "read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let live = running.id();
    // The pipe's write end stays open (and the child unreaped) until this worker exits.
    std::mem::forget(running);
    Ok((zombie, live))
}

/// Worker 1 breaks the protocol, as `SC_ROGUE` says, then serves as usual (until the
/// primary kills it).
fn rogue(w: &Worker, how: &str, listener: &Listener) {
    // Kinds: 1 = online, 4 = listening, 8 = user, 10 = setup-failed (see
    // `src/ipc/codec/`); headers are kind, three
    // zero bytes, and the payload length (u32, little-endian).
    let record = |kind: u8, payload: &[u8]| {
        let mut r = vec![kind, 0, 0, 0];
        r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        r.extend_from_slice(payload);
        r
    };
    let sent = match how {
        "garbage" => w.send_raw_record_for_tests(b"\x07\xffnot a record at all", None),
        "oversized" => w.send_raw_record_for_tests(&record(8, &vec![b'x'; 100_000]), None),
        "unknown" => w.send_raw_record_for_tests(&record(200, b""), None),
        // `Listening` again for the listener it has (handle 0, the first), as if it had
        // two: a reload would count it ready.
        "relisten" => w.send_raw_record_for_tests(&record(4, &0u32.to_le_bytes()), None),
        // A setup failure (chdir, errno EPERM) after `Online`: a young death for the
        // whole cluster's back-off, if believed.
        "late_setup" => w.send_raw_record_for_tests(&record(10, &[1, 1, 0, 0, 0]), None),
        "fd" => w.send_raw_record_for_tests(&record(1, b""), Some(listener.raw_fd_for_tests())),
        "flood" => {
            // Valid messages, as fast as the channel takes them, until the primary
            // has had enough (the send fails once it is killed... or after a bound).
            let mut r = Ok(());
            for _ in 0..2_000_000 {
                if let Err(e) = w.send(b"flood") {
                    r = Err(std::io::Error::other(e.to_string()));
                    break;
                }
            }
            r
        }
        "linger-online" | "linger-newconn" | "linger-handoff" => {
            // Waits for the driver's go (`tell rogue-go`, so that the cluster is ready
            // and the primary idle), then attaches a socket whose close would linger
            // 15 s to a record: online (refused by the codec), new-conn (a kind with a
            // descriptor: decoded, refused by the primary) on the control channel, or
            // new-conn on the listener's hand-off channel (round-robin).
            while w.recv().is_some_and(|m| m != b"go") {}
            lingering_socket(15).and_then(|s| {
                let new_conn = record(6, &[0, 4, 127, 0, 0, 1, 80, 0]);
                let sent = match how {
                    "linger-online" => {
                        w.send_raw_record_for_tests(&record(1, b""), Some(s.as_fd()))
                    }
                    "linger-newconn" => w.send_raw_record_for_tests(&new_conn, Some(s.as_fd())),
                    _ => Worker::send_raw_record_on_for_tests(
                        listener.raw_fd_for_tests(),
                        &new_conn,
                        Some(s.as_fd()),
                    ),
                };
                refused_keeps_no_linger(&sent, &s);
                sent
                // `s` closes here: the copy in flight to the primary is the last one.
            })
        }
        "fds5-online" | "fds5-handoff" | "fds5-queued" => {
            // Issue 19, item 1: five descriptors on one record, more than the primary's
            // control buffer used to hold: four files, then a socket whose close would
            // linger 30 s (the one a small buffer loses inside the primary). Online on
            // the control channel (refused by the codec), or new-conn on the listener's
            // hand-off channel (round-robin). The driver stops the primary after the go
            // and continues it after `rogue: five sent`: the worker's own copy of the
            // socket is closed before the primary reads the record, as a worker that
            // wins that race has it, so the copy in flight is the last one.
            while w.recv().is_some_and(|m| m != b"go") {}
            let primary = std::os::unix::process::parent_id();
            let stopped =
                proc::wait_stopped(primary, Duration::from_secs(10)).map_err(std::io::Error::other);
            let files: std::io::Result<Vec<std::fs::File>> =
                stopped.and_then(|()| (0..4).map(|_| std::fs::File::open("/dev/null")).collect());
            let sent = files.and_then(|files| {
                let s = lingering_socket(30)?;
                let mut fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
                fds.push(s.as_fd());
                // `fds5-queued`: an unknown record first, so the primary stops reading
                // this channel at it; the five stay queued in its end until it closes.
                if how == "fds5-queued" {
                    w.send_raw_record_for_tests(&record(200, b""), None)?;
                }
                let sent = if how != "fds5-handoff" {
                    w.send_raw_record_with_fds_for_tests(None, &record(1, b""), &fds)
                } else {
                    let new_conn = record(6, &[0, 4, 127, 0, 0, 1, 80, 0]);
                    w.send_raw_record_with_fds_for_tests(
                        Some(listener.raw_fd_for_tests()),
                        &new_conn,
                        &fds,
                    )
                };
                refused_keeps_no_linger(&sent, &s);
                sent
                // `s` closes here: the copy in flight to the primary is the last one.
            });
            eprintln!(
                "rogue: five sent ({})",
                if sent.is_ok() { "ok" } else { "failed" }
            );
            sent
        }
        "file-online" => {
            // Issue 19, item 2: a file whose every close waits for its file system
            // (`SC_ROGUE_FILE`, on the scenario's FUSE mount), attached to online. The
            // worker keeps its own copy open: its close would wait too.
            while w.recv().is_some_and(|m| m != b"go") {}
            std::fs::File::open(env("SC_ROGUE_FILE", "")).and_then(|f| {
                let sent =
                    w.send_raw_record_with_fds_for_tests(None, &record(1, b""), &[f.as_fd()]);
                KEPT_FILE.get_or_init(|| f);
                sent
            })
        }
        other => Err(std::io::Error::other(format!("unknown SC_ROGUE {other:?}"))),
    };
    if let Err(e) = sent {
        eprintln!("worker {}: rogue send: {e}", w.id());
    }
}

/// When the primary refused the socket (`EPERM`: Linux 6.16+), the worker's own close
/// is the last one: made abortive, so the rogue does not wait out its own linger.
fn refused_keeps_no_linger(sent: &std::io::Result<()>, s: &std::net::TcpStream) {
    if sent.is_err() {
        let _ = Worker::set_linger_for_tests(s.as_fd(), Some(0));
    }
}

/// `SC_ROGUE=file-online`: the worker's own copy of the file it sent, kept open.
static KEPT_FILE: OnceLock<std::fs::File> = OnceLock::new();

/// Worker 1 tampers with its datagram socket as a hostile worker can (`SC_ROGUE=udp-…`).
fn tamper(d: &cluster::Datagram, how: &str) -> std::io::Result<()> {
    let cluster::DatagramSocket::Udp(u) = d.socket() else {
        return Err(std::io::Error::other("not a UDP socket"));
    };
    match how {
        // Only datagrams from the discard port would come in.
        "connect" => u.connect("127.0.0.1:9"),
        // On the open file description: every process holding it sees it.
        "nonblock" => u.set_nonblocking(true),
        other => d.tamper_for_tests(other),
    }
}

/// Answers every datagram with `worker ID: ` and the datagram, until the socket is
/// closed; a receive error ends the worker (exit code 3), as it would end a server
/// that cannot receive.
fn serve_datagrams(d: &cluster::Datagram, id: u32) {
    let mut buf = [0u8; 2048];
    loop {
        match d.recv_from(&mut buf) {
            Ok(Some((n, peer))) => {
                let mut answer = format!("worker {id}: ").into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = d.send_to(&answer, &peer);
            }
            Ok(None) => return,
            Err(e) => {
                eprintln!("worker {id}: udp: {e}");
                std::process::exit(3);
            }
        }
    }
}

/// The worker's listeners, for `unlisten N`.
static LISTENERS: std::sync::OnceLock<Vec<Listener>> = std::sync::OnceLock::new();

/// `hang-heartbeat`: the worker's heartbeat thread stops calling `Worker::heartbeat`.
static HEARTBEAT_HUNG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `spin`: the worker busy-loops once its listeners close, and never returns.
static SPIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `leak MIB`: memory the worker keeps for good.
static LEAKED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// `hold-shm MIB`: memory files the worker keeps open.
static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// The worker's addresses as asked for, for `bind-burst N`.
static ADDRS: std::sync::OnceLock<Vec<ListenAddr>> = std::sync::OnceLock::new();

/// Worker 1 asks for more addresses (`SC_ASK`, comma-separated; `admin` stands for the
/// primary's private listener, `fd:N` of `SC_ADMIN`; `timeouts@ADDR` asks with 1 ms
/// read and write timeouts) and says on stderr what it got: `ask ADDR: ok` or
/// `ask ADDR: ERROR`.
fn ask_more(asks: &str) {
    for a in asks.split(',') {
        let (options, a) = match a.strip_prefix("timeouts@") {
            Some(rest) => {
                let ms = Some(Duration::from_millis(1));
                let o = cluster::ListenOptions::new()
                    .read_timeout(ms)
                    .write_timeout(ms);
                (o, rest)
            }
            None => (cluster::ListenOptions::new(), a),
        };
        if let Some(udp) = a.strip_prefix("udp@") {
            match cluster::Datagram::bind(udp) {
                Ok(d) => eprintln!("ask udp {udp}: ok {}", d.local_addr()),
                Err(e) => eprintln!("ask udp {udp}: {e}"),
            }
            continue;
        }
        if let Some(udp) = a.strip_prefix("udp-hold@") {
            match cluster::Datagram::bind(udp) {
                Ok(d) => {
                    eprintln!("ask udp-hold {udp}: ok {}", d.local_addr());
                    HELD_UDP.lock().unwrap_or_else(|e| e.into_inner()).push(d);
                }
                Err(e) => eprintln!("ask udp-hold {udp}: {e}"),
            }
            continue;
        }
        let addr = if a == "admin" {
            format!("fd:{}", env("SC_ADMIN_FD", "-1"))
        } else {
            a.to_string()
        };
        match Listener::bind_with(addr.as_str(), &options) {
            Ok(l) => eprintln!("ask {addr}: ok {}", l.local_addr()),
            Err(e) => eprintln!("ask {addr}: {e}"),
        }
    }
}

/// Datagram sockets `SC_ASK=udp-hold@ADDR` asked for, held for the worker's life.
static HELD_UDP: std::sync::Mutex<Vec<cluster::Datagram>> = std::sync::Mutex::new(Vec::new());

/// A TCP connection to `SC_ROGUE_PEER` (a listener that never accepts nor reads) with
/// its send buffer full, so unsent data waits for a window that never opens, and
/// `SO_LINGER` `linger` s: the `close` that drops its last reference blocks that long
/// (or until the peer's listener closes and resets it).
fn lingering_socket(linger: u32) -> std::io::Result<std::net::TcpStream> {
    let mut s = std::net::TcpStream::connect(env("SC_ROGUE_PEER", ""))?;
    s.set_nonblocking(true)?;
    let chunk = [b'x'; 64 * 1024];
    let mut sent = 0usize;
    loop {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
        if sent > 1 << 30 {
            return Err(std::io::Error::other("the peer reads everything"));
        }
    }
    s.set_nonblocking(false)?;
    Worker::set_linger_for_tests(s.as_fd(), Some(linger))?;
    eprintln!("rogue: a socket with {sent} bytes written, linger {linger} s");
    Ok(s)
}

/// `SC_EXTRA_LISTEN=N`: worker 1 asks for N more addresses (127.0.X.Y:0, each a new
/// handle) until one fails, and tells the primary `extra COUNT ERROR`. The listeners
/// stay open (never accepted on) while the worker runs.
fn extra_listeners(w: &Worker) -> Vec<Listener> {
    let n: u32 = env("SC_EXTRA_LISTEN", "0").parse().unwrap_or(0);
    let mut held = Vec::new();
    let mut failure = String::from("none");
    for i in 0..n {
        let addr: ListenAddr = match format!("127.0.{}.{}:0", i / 250, 2 + i % 250).parse() {
            Ok(a) => a,
            Err(e) => {
                failure = e.to_string();
                break;
            }
        };
        match Listener::bind(&addr) {
            Ok(l) => held.push(l),
            Err(e) => {
                failure = e.to_string();
                break;
            }
        }
    }
    if n > 0 {
        let _ = w.send(format!("extra {} {failure}", held.len()).as_bytes());
    }
    held
}

/// Exclusive listeners `SC_EXCLUSIVE` asked to try, held for the worker's life.
static TRIED: std::sync::Mutex<Vec<Listener>> = std::sync::Mutex::new(Vec::new());

/// `SC_EXCLUSIVE`: worker 1 binds `127.0.0.1:0` by itself (`ListenOptions::exclusive`)
/// and serves it like its other listeners, and tries the first shared address (its
/// port resolved) exclusively too; it tells the primary `exclusive ADDR` (or `exclusive-error E`) and
/// `exclusive-shared RESULT` (`bound` or the error).
fn exclusive(w: &Worker, shared: Option<&ListenAddr>) -> Option<Listener> {
    let own = cluster::ListenOptions::new().exclusive(true);
    let mine = own.bind("127.0.0.1:0");
    let _ = w.send(
        match &mine {
            Ok(l) => format!("exclusive {}", l.local_addr()),
            Err(e) => format!("exclusive-error {e}"),
        }
        .as_bytes(),
    );
    let shared = shared.map(|a| own.bind(a));
    let _ = w.send(
        match &shared {
            Some(Ok(_)) => "exclusive-shared bound".to_string(),
            Some(Err(e)) => format!("exclusive-shared {e}"),
            None => "exclusive-shared none".to_string(),
        }
        .as_bytes(),
    );
    // `SC_EXCLUSIVE=ADDR,…`: more addresses to try, each answered `exclusive-try ADDR
    // bound LOCAL` (kept open while the worker runs) or `exclusive-try ADDR ERROR`.
    for a in env("SC_EXCLUSIVE", "")
        .split(',')
        .filter(|a| *a != "1" && !a.is_empty())
    {
        let text = match own.bind(a) {
            Ok(l) => {
                let t = format!("exclusive-try {a} bound {}", l.local_addr());
                TRIED.lock().unwrap_or_else(|e| e.into_inner()).push(l);
                t
            }
            Err(e) => format!("exclusive-try {a} {e}"),
        };
        let _ = w.send(text.as_bytes());
    }
    mine.ok()
}

fn worker_main(w: &Worker, addrs: &[ListenAddr], threads: usize) -> std::io::Result<()> {
    let _ = ENTRY_FDS.set(own_fds());
    if env("SC_CRASH", "") == "start" {
        return Err(std::io::Error::other("crashing at start, as SC_CRASH asks"));
    }
    let mut listeners = addrs
        .iter()
        .map(Listener::bind)
        .collect::<std::io::Result<Vec<_>>>()?;
    let id = w.id().0;
    if id == 1 && std::env::var_os("SC_EXCLUSIVE").is_some() {
        let first = listeners.first().map(|l| l.local_addr().clone());
        listeners.extend(exclusive(w, first.as_ref()));
    }
    let _ = LISTENERS.set(listeners.clone());
    let _ = ADDRS.set(addrs.to_vec());
    if let (1, Ok(asks)) = (id, std::env::var("SC_ASK")) {
        ask_more(&asks);
    }
    let _extra = (id == 1).then(|| extra_listeners(w));
    if std::env::var_os("SC_NONBLOCK").is_some() {
        // O_NONBLOCK on each listening socket's open file description, which every
        // worker shares (through a duplicate: std sets it without `unsafe`).
        for l in &listeners {
            let copy = l.raw_fd_for_tests().try_clone_to_owned()?;
            std::net::TcpListener::from(copy).set_nonblocking(true)?;
        }
    }
    let udp = match std::env::var("SC_UDP") {
        Ok(addr) => Some(cluster::Datagram::bind(addr.as_str())?),
        Err(_) => None,
    };
    let rogue_how = std::env::var("SC_ROGUE").ok().filter(|_| id == 1);
    let udp_rogue = rogue_how.as_deref().and_then(|h| h.strip_prefix("udp-"));
    if let (Some(how), None) = (&rogue_how, udp_rogue) {
        if let Some(l) = listeners.first() {
            rogue(w, how, l);
        }
    }
    if std::env::var_os("SC_STD_TOKIO").is_some() {
        if let Some(l) = listeners.first() {
            match l.try_clone_std() {
                Ok(std) => return serve_with_tokio(w, l, std),
                // Round-robin: refused by name; said, then served the crate's way.
                Err(e) => println!("std-listener-refused {e}"),
            }
        }
    }
    std::thread::scope(|s| {
        for _ in 0..udp.as_ref().map_or(0, |_| threads) {
            let d = udp.as_ref().expect("counted above");
            s.spawn(move || serve_datagrams(d, id));
        }
        // `SC_ROGUE=udp-…`: worker 1 serves its datagram socket until the primary's
        // go (once every worker receives), then tampers with it.
        if let (Some(how), Some(d)) = (udp_rogue, &udp) {
            s.spawn(move || {
                while w.recv().is_some_and(|m| m != b"go") {}
                let told = match tamper(d, how) {
                    Ok(()) => format!("tampered {how} ok"),
                    Err(e) => format!("tampered {how} {e}"),
                };
                let _ = w.send(told.as_bytes());
            });
        }
        // `SC_HEARTBEAT_MS`: the application's "main loop", which calls
        // `Worker::heartbeat` five times per timeout until `hang-heartbeat`, and ends
        // with the worker.
        if let Ok(ms) = env("SC_HEARTBEAT_MS", "").parse::<u64>() {
            s.spawn(move || {
                while !w.is_disconnecting() {
                    if !HEARTBEAT_HUNG.load(std::sync::atomic::Ordering::Relaxed) {
                        w.heartbeat();
                    }
                    // The application's own pace (not the driver's synchronisation).
                    std::thread::sleep(Duration::from_millis(ms / 5));
                }
            });
        }
        for l in &listeners {
            let cloexec = proc::is_cloexec(l.raw_fd_for_tests().as_raw_fd());
            for _ in 0..threads {
                s.spawn(move || loop {
                    match l.accept() {
                        Ok(Some(conn)) => serve_one(&mut conn.into_stream(), id, cloexec),
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("worker {id}: accept: {e}");
                            break;
                        }
                    }
                });
            }
        }
    });
    // `spin`: the application never returns from its work (Node's
    // test-cluster-kill-infinite-loop): a busy loop after the listeners closed.
    while SPIN.load(std::sync::atomic::Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    Ok(())
}

/// `SC_STD_TOKIO`: the worker serves as a library that accepts by itself does: a
/// current-thread tokio runtime, built in the worker, accepts on the std listener
/// from `Listener::try_clone_std` until `Worker::disconnect_fd` is readable; each
/// connection is counted with `note_accepted` and served on a thread of its own; the
/// worker returns once every connection it took is answered.
fn serve_with_tokio(
    w: &Worker,
    listener: &Listener,
    std: cluster::StdListener,
) -> std::io::Result<()> {
    let id = w.id().0;
    let std = std
        .into_tcp()
        .ok_or_else(|| std::io::Error::other("SC_STD_TOKIO serves TCP only"))?;
    std.set_nonblocking(true)?;
    let cloexec = proc::is_cloexec(std.as_raw_fd());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::scope(|s| {
        rt.block_on(async {
            // A pipe: tokio watches it safely as one (AsyncFd's registration of a raw
            // descriptor is `unsafe` since tokio 1.54).
            let stop = tokio::net::unix::pipe::Receiver::from_owned_fd(
                w.disconnect_fd().try_clone_to_owned()?,
            )?;
            let tokio_listener = tokio::net::TcpListener::from_std(std)?;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.readable() => break,
                    accepted = tokio_listener.accept() => {
                        let (conn, _) = match accepted {
                            Ok(c) => c,
                            // At a shutdown the primary stops the shared socket
                            // listening (`shutdown(2)`) just before it tells the
                            // workers: the end, not a failure.
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                stop.readable().await?;
                                break;
                            }
                            Err(e) => return Err(e),
                        };
                        let open = listener.note_accepted();
                        let conn = conn.into_std()?;
                        conn.set_nonblocking(false)?;
                        s.spawn(move || {
                            serve_one(&mut Stream::Tcp(conn), id, cloexec);
                            drop(open);
                        });
                    }
                }
            }
            println!("worker {id}: std listener: disconnect seen");
            Ok(())
        })
    })
}

/// What the primary does for a worker's `tell`; the reply goes back to that worker.
/// `kill-other`, `disconnect-other`, `restart-other` act on the oldest live worker
/// that is not the sender (a worker must not kill itself before it can answer).
fn command(cluster: &mut Cluster, sender: cluster::WorkerId, text: &str) -> Option<String> {
    let other = cluster
        .workers()
        .iter()
        .find(|w| w.id != sender && !w.disconnecting)
        .map(|w| w.id.0.to_string())
        .unwrap_or_default();
    let text = text.replace("-other", &format!(" {other}"));
    let words: Vec<&str> = text.split_whitespace().collect();
    let worker = |s: &str| {
        s.parse::<u32>()
            .map(cluster::WorkerId)
            .map_err(|e| cluster::Error::Config(e.to_string()))
    };
    let target = words.get(1).copied().unwrap_or("");
    let done = |r: Result<(), cluster::Error>| {
        r.map_or_else(|e| format!("error {e}"), |()| format!("done {target}"))
    };
    match words.as_slice() {
        ["ping"] => Some("pong".into()),
        ["flood", n, kib] => {
            // N messages of KIB KiB to the sender, until one is refused.
            let data = vec![b'm'; kib.parse::<usize>().unwrap_or(1) * 1024];
            let n: usize = n.parse().unwrap_or(0);
            let mut ok = 0;
            let mut error = String::from("none");
            for _ in 0..n {
                match cluster.send(sender, &data) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        error = e.to_string();
                        break;
                    }
                }
            }
            println!("flooded ok={ok} error={error}");
            Some("flood-done".into())
        }
        ["rogue-go"] => Some(match cluster.send(cluster::WorkerId(1), b"go") {
            Ok(()) => "sent".into(),
            Err(e) => format!("error {e}"),
        }),
        ["kill", n] => Some(done(
            worker(n).and_then(|n| cluster.kill(n, cluster::Signal::Kill)),
        )),
        ["term", n] => Some(done(
            worker(n).and_then(|n| cluster.kill(n, cluster::Signal::Term)),
        )),
        ["disconnect", n] => Some(done(worker(n).and_then(|n| cluster.disconnect(n)))),
        ["restart", n] => Some(done(worker(n).and_then(|n| cluster.restart(n)))),
        ["workers", n] => Some(match cluster.set_workers(n.parse().unwrap_or(1)) {
            Ok(()) => "done".into(),
            Err(e) => format!("error {e}"),
        }),
        ["broadcast", rest @ ..] => match cluster.broadcast(rest.join(" ").as_bytes()) {
            Ok(n) => Some(format!("sent-to {n}")),
            Err(e) => Some(format!("error {e}")),
        },
        _ => None, // `busy` and the like: nothing to answer
    }
}

/// A replacement's reason in one word, for the output lines.
fn replacement_kind(reason: &cluster::Replacement) -> &'static str {
    match reason {
        cluster::Replacement::Unresponsive { .. } => "unresponsive",
        cluster::Replacement::NoHeartbeat { .. } => "no-heartbeat",
        cluster::Replacement::MaxConnections { .. } => "max-connections",
        cluster::Replacement::MaxRss { .. } => "max-rss",
        _ => "other",
    }
}

/// Runs the primary; returns the process exit code.
pub fn main() -> i32 {
    let mode: Mode = match env("SC_MODE", "round-robin").parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("server: {e}");
            return 2;
        }
    };
    let workers: usize = env("SC_WORKERS", "2").parse().unwrap_or(2);
    let threads: usize = env("SC_THREADS", "4").parse().unwrap_or(4);
    // `max`: Duration::MAX, the natural "no limit" (SC_SHUTDOWN_MS, SC_EVENT_WAIT).
    let millis = |name: &str, default: u64| match env(name, "").as_str() {
        "max" => Duration::MAX,
        v => Duration::from_millis(v.parse().unwrap_or(default)),
    };
    let shutdown = millis("SC_SHUTDOWN_MS", 3000);
    let event_wait = millis("SC_EVENT_WAIT", 20);
    let addrs: Vec<ListenAddr> = match env("SC_LISTEN", "127.0.0.1:0")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("server: {e}");
            return 2;
        }
    };

    // `SC_ADMIN`: a private listener of the primary's own (an admin port, say), which
    // no worker is meant to get; its descriptor number goes to the workers as
    // `SC_ADMIN_FD` for `SC_ASK=admin`.
    let _admin = if std::env::var_os("SC_ADMIN").is_some() {
        match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => {
                std::env::set_var("SC_ADMIN_FD", l.as_raw_fd().to_string());
                Some(l)
            }
            Err(e) => {
                eprintln!("server: admin listener: {e}");
                return 2;
            }
        }
    } else {
        None
    };
    // Opened before the hygiene count: it stays open for the primary's whole life.
    let _secret = match std::env::var("SC_SECRET") {
        Ok(path) => match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("server: SC_SECRET {path}: {e}");
                return 2;
            }
        },
        Err(_) => None,
    };
    let fds_before = proc::open_fds();
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    let worker_addrs = addrs.clone();
    let mut builder = Cluster::builder()
        .workers(workers)
        .mode(mode)
        .shutdown_timeout(shutdown);
    match env("SC_RESPAWN", "default").as_str() {
        "default" => {}
        "never" => builder = builder.respawn(Respawn::never()),
        spec => {
            let ms: Vec<u64> = spec.split(':').filter_map(|v| v.parse().ok()).collect();
            let [initial, max, min_uptime] = ms[..] else {
                eprintln!("server: bad SC_RESPAWN {spec:?}");
                return 2;
            };
            builder = builder.respawn(
                Respawn::default()
                    .delays(Duration::from_millis(initial), Duration::from_millis(max))
                    .min_uptime(Duration::from_millis(min_uptime)),
            );
        }
    }
    if let Ok(name) = std::env::var("SC_USER") {
        // `SC_UIDS=FIRST:COUNT`: one uid per worker (`User::per_worker_uids`).
        let uids = std::env::var("SC_UIDS").ok().and_then(|r| {
            let (first, count) = r.split_once(':')?;
            Some((first.parse().ok()?, count.parse().ok()?))
        });
        let user = User::named(&name).and_then(|u| match uids {
            Some((first, count)) => u.per_worker_uids(first, count),
            None => Ok(u),
        });
        match user {
            Ok(u) => builder = builder.user(u),
            Err(e) => {
                eprintln!("server: {e}");
                return 2;
            }
        }
    }
    if let Ok(path) = std::env::var("SC_KEEP") {
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path);
        match log {
            Ok(f) => builder = builder.keep_fd(std::os::fd::OwnedFd::from(f)),
            Err(e) => {
                eprintln!("server: SC_KEEP {path}: {e}");
                return 2;
            }
        }
    }
    if let Ok(dir) = std::env::var("SC_DIR") {
        builder = builder.working_directory(dir);
    }
    if std::env::var_os("SC_SILENT").is_some() {
        builder = builder.silent(true);
    }
    if let Ok(allow) = std::env::var("SC_ALLOW_DATAGRAMS") {
        match allow
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(a) => builder = builder.listen_only_datagrams(a),
            Err(e) => {
                eprintln!("server: SC_ALLOW_DATAGRAMS: {e}");
                return 2;
            }
        }
    }
    if let Ok(allow) = std::env::var("SC_ALLOW") {
        let addrs: Result<Vec<ListenAddr>, _> = allow.split(',').map(str::parse).collect();
        match addrs {
            Ok(a) => builder = builder.listen_only(a),
            Err(e) => {
                eprintln!("server: SC_ALLOW: {e}");
                return 2;
            }
        }
    } else if std::env::var_os("SC_USER").is_some() {
        // Workers run as another user: the cluster needs its allowlist (`SC_NO_ALLOW`
        // leaves it out, to see `start` refuse).
        if std::env::var_os("SC_NO_ALLOW").is_none() {
            builder = builder.listen_only(addrs.clone());
        }
    }
    // Worker health (`SC_TIMEOUT_MS`, `SC_HEARTBEAT_MS`, `SC_MAX_CONN`,
    // `SC_MAX_CONN_JITTER`, `SC_MAX_RSS_MIB`).
    if let Ok(ms) = env("SC_TIMEOUT_MS", "").parse() {
        builder = builder.worker_timeout(Duration::from_millis(ms));
    }
    if let Ok(ms) = env("SC_HEARTBEAT_MS", "").parse() {
        builder = builder.heartbeat_timeout(Duration::from_millis(ms));
    }
    if let Ok(n) = env("SC_MAX_CONN", "").parse() {
        builder = builder.max_connections(n);
    }
    if let Ok(j) = env("SC_MAX_CONN_JITTER", "").parse() {
        builder = builder.max_connections_jitter(j);
    }
    if let Ok(mib) = env("SC_MAX_RSS_MIB", "").parse::<u64>() {
        builder = builder.max_rss(mib << 20);
    }
    if let Ok(n) = env("SC_MSG_LIMIT", "").parse() {
        builder = builder.message_limit(n);
    }
    match env("SC_SCHEDULER", "default").as_str() {
        "least-connections" => builder = builder.scheduler(cluster::round_robin::LeastConnections),
        "fifo" => builder = builder.scheduler(cluster::round_robin::Fifo),
        _ => {}
    }
    let started = builder.start(move |w| worker_main(w, &worker_addrs, threads));
    let mut cluster = match started {
        Ok(c) => c,
        Err(e) => {
            say(format!("error {e}"));
            return 1;
        }
    };
    let mut listening: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut receiving: BTreeSet<u32> = BTreeSet::new();
    let udp_rogue = env("SC_ROGUE", "").starts_with("udp-");
    let mut told_go = false;
    let mut resolved: Vec<String> = Vec::new();
    let mut ready = false;
    let mut last_stats = String::new();
    let mut last_serving = usize::MAX;
    let (mut told_cause, mut told_rss) = (BTreeSet::new(), BTreeSet::new());
    loop {
        let event = match cluster.next_event_timeout(event_wait) {
            Ok(Some(e)) => Some(e),
            Ok(None) if cluster.is_stopped() => break,
            Ok(None) => None,
            Err(e) => {
                say(format!("error {e}"));
                return 1;
            }
        };
        match event {
            Some(Event::Fork { worker, pid }) => say(format!("fork {worker} {pid}")),
            Some(Event::Online { worker }) => say(format!("online {worker}")),
            Some(Event::Listening { worker, addr }) => {
                say(format!("listening {worker} {addr}"));
                let a = addr.to_string();
                if !resolved.contains(&a) {
                    resolved.push(a.clone());
                }
                listening.entry(worker.0).or_default().insert(a);
                let all = listening.len() >= workers
                    && listening.values().all(|s| s.len() >= addrs.len());
                if all && !ready {
                    ready = true;
                    say(format!("ready {}", resolved.join(",")));
                }
            }
            Some(Event::Receiving { worker, addr }) => {
                say(format!("receiving {worker} {addr}"));
                // `SC_ROGUE=udp-…`: once every worker receives, worker 1's go.
                receiving.insert(worker.0);
                if receiving.len() == workers && udp_rogue && !told_go {
                    told_go = true;
                    if let Err(e) = cluster.send(cluster::WorkerId(1), b"go") {
                        say(format!("error rogue go: {e}"));
                    }
                }
            }
            Some(Event::ListenFailed {
                worker,
                addr,
                error,
            }) => {
                say(format!("listen-failed {worker} {addr} {error}"));
                // The extra addresses of `SC_ASK` are expected to fail, and say so.
                if std::env::var_os("SC_ASK").is_none()
                    && std::env::var_os("SC_LISTEN_FAIL_OK").is_none()
                {
                    cluster.shutdown();
                }
            }
            Some(Event::Disconnect { worker }) => say(format!("disconnect {worker}")),
            Some(Event::Exit {
                worker,
                pid,
                status,
                requested,
            }) => say(format!(
                "exit {worker} {pid} {status} requested={requested}"
            )),
            Some(Event::Message { worker, data }) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                say(format!("message {worker} {text}"));
                if let Some(reply) = command(&mut cluster, worker, &text) {
                    let _ = cluster.send(worker, reply.as_bytes());
                }
            }
            Some(Event::ReloadStarted) => say("reload-started".into()),
            Some(Event::ReloadFinished { replaced, complete }) => {
                say(format!("reload-finished {replaced} complete={complete}"))
            }
            Some(Event::Error(e)) => say(format!("error {e}")),
            Some(Event::Replacing {
                worker,
                pid,
                reason,
            }) => say(format!(
                "replacing {worker} {pid} {} ({reason})",
                replacement_kind(&reason)
            )),
            Some(other) => say(format!("event {other:?}")),
            None => {}
        }
        let stats: Vec<String> = cluster
            .workers()
            .iter()
            .map(|w| format!("{}={}/{}", w.id, w.dispatched, w.accepted))
            .collect();
        let stats = stats.join(" ");
        if stats != last_stats {
            say(format!("stats {stats}"));
            last_stats = stats;
        }
        // Workers that listen and were not asked to go, as the primary sees them
        // after every event (once ready): `serving K` whenever it changes.
        let serving = cluster
            .workers()
            .iter()
            .filter(|w| w.listening > 0 && !w.disconnecting)
            .count();
        if ready && serving != last_serving {
            say(format!("serving {serving}"));
            last_serving = serving;
        }
        // What `WorkerInfo` says of worker health, once per worker: why it replaced
        // another (`cause ID KIND`), its first RSS reading (`rss ID BYTES`).
        for w in cluster.workers() {
            if let Some(reason) = w.replaced_because {
                if told_cause.insert(w.id.0) {
                    say(format!("cause {} {}", w.id, replacement_kind(&reason)));
                }
            }
            if let Some(rss) = w.rss {
                if told_rss.insert(w.id.0) {
                    say(format!("rss {} {rss}", w.id));
                }
            }
        }
    }
    let st = cluster.stats();
    say(format!(
        "dropped {} health_kills={} recycles={}",
        st.dropped_connections, st.health_kills, st.recycles
    ));
    say(format!("orphans {}", st.orphans_reaped));
    drop(cluster);
    let fds_after = proc::open_fds();
    let me = std::process::id();
    let children = proc::children_of(me);
    say(format!(
        "hygiene fds_before={fds_before:?} fds_after={fds_after:?} children={children:?}"
    ));
    0
}
