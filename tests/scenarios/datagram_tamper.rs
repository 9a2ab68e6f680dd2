//! A hostile worker tampers with its datagram socket (issue 19, item 3). Workers run as
//! `nobody` (a root primary; skipped when not root), four of them, each serving a
//! `Datagram` on `127.0.0.1:0` (the server role's `SC_UDP`); once every worker receives,
//! worker 1 tampers with its socket (`SC_ROGUE=udp-…`), in one of six ways a worker can with
//! no privilege: `connect()`, a drop-all `SO_ATTACH_FILTER`, `SO_RCVBUF` 0,
//! `O_NONBLOCK`, `shutdown(SHUT_RD)`, a reuse-port steering program
//! (`SO_ATTACH_REUSEPORT_CBPF`).
//!
//! Each run checks two things:
//! - **while the rogue lives**, the other workers' datagrams are answered: 64 client
//!   sockets each send a burst of 4 datagrams; the kernel spreads client sockets over
//!   the workers' sockets by a hash of the addresses and ports, so a client's burst
//!   goes to one worker. Every client answered by another worker than the rogue has
//!   all 4 answers, each of the three others answers some, and they answer at least
//!   half of the clients (three quarters are theirs on average; what goes to the
//!   rogue's own socket is the rogue's to lose, as a worker may always drop what it
//!   receives);
//! - **after the rogue is replaced** (SIGKILL; the primary respawns it as worker 5),
//!   every datagram of the same load is answered, by all four workers, on the same
//!   port as before.
//!
//! Before the fix every worker shared one socket in round-robin mode, and a
//! reuse-port replacement took over its predecessor's socket: the tampering reached
//! the other workers, and outlived the rogue.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::util::check::{check, spec, stop_and_check, Outcome};
use crate::util::proc::{self, Server};

/// Client sockets per load, and datagrams each sends at once.
const CLIENTS: usize = 64;
const BURST: usize = 4;
/// How long a client waits for each answer before counting the rest lost.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// What one client socket got: the workers that answered it, one entry per answer.
type Answers = Vec<u32>;

/// `CLIENTS` sockets each send `BURST` datagrams to `to` at once, then read answers
/// until all came or one did not come within `ANSWER_WAIT`.
fn burst(to: SocketAddr) -> Result<Vec<Answers>, String> {
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || -> Result<Answers, String> {
                    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                    sock.set_read_timeout(Some(ANSWER_WAIT))
                        .map_err(|e| e.to_string())?;
                    for i in 0..BURST {
                        sock.send_to(format!("c{c}-{i}").as_bytes(), to)
                            .map_err(|e| e.to_string())?;
                    }
                    let mut got = Vec::new();
                    let mut buf = [0u8; 256];
                    while got.len() < BURST {
                        let Ok(n) = sock.recv(&mut buf) else { break };
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let id = text
                            .strip_prefix("worker ")
                            .and_then(|r| r.split(':').next())
                            .and_then(|id| id.parse().ok())
                            .ok_or_else(|| format!("a wrong answer: {text:?}"))?;
                        got.push(id);
                    }
                    Ok(got)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().map_err(|_| "a client panicked".to_string())?)
            .collect()
    })
}

/// The workers that answered, and how many datagrams went unanswered.
fn summary(answers: &[Answers]) -> (BTreeSet<u32>, usize) {
    let by: BTreeSet<u32> = answers.iter().flatten().copied().collect();
    let lost = answers.iter().map(|a| BURST - a.len()).sum();
    (by, lost)
}

/// The address of worker `id`'s datagram socket, from its `receiving` line.
fn receiving(srv: &mut Server, id: u32) -> Result<String, String> {
    let line = srv.seen_or_expect(&format!("receiving {id} "), Duration::from_secs(20))?;
    Ok(line
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string())
}

/// The rogue's `tampered …` line, or its exit.
fn tampered_or_gone(srv: &mut Server, timeout: Duration) -> Result<String, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let done = srv
            .seen
            .iter()
            .find(|l| l.starts_with("message 1 tampered ") || l.starts_with("exit 1 "));
        if let Some(l) = done {
            return Ok(l.clone());
        }
        srv.line(deadline.saturating_duration_since(std::time::Instant::now()))?;
    }
}

/// Worker 1 tampers with its datagram socket (`how`: `connect`, `drop-all`,
/// `rcvbuf-0`, `nonblock`, `shutdown-read`, `steer`), in `mode`; see the module docs.
pub fn udp_tamper(mode: &str, how: &str) -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (workers run as nobody; CI runs as root)");
        return Ok(());
    }
    let rogue = format!("udp-{how}");
    let spec = spec(
        mode,
        4,
        2,
        &[
            ("SC_USER", "nobody"),
            ("SC_UDP", "127.0.0.1:0"),
            ("SC_ALLOW_DATAGRAMS", "127.0.0.1:0"),
            ("SC_ROGUE", rogue.as_str()),
        ],
    );
    let (mut srv, _) = spec.start()?;
    let t = Duration::from_secs(20);
    let addr = receiving(&mut srv, 1)?;
    for id in 2..=4 {
        let other = receiving(&mut srv, id)?;
        check(other == addr, || {
            format!("worker {id} receives on {other}, worker 1 on {addr}")
        })?;
    }
    // Every worker receives: the primary tells the rogue to go.
    // A tampering that breaks the rogue's own receive (`shutdown-read`) may end it
    // before it says so.
    let told = tampered_or_gone(&mut srv, t)?;
    if how == "shutdown-read" {
        // Its own receive fails at once and it exits: the load runs once it is gone
        // (a socket closing in the middle of a burst moves the kernel's hash over the
        // group, and what was queued on it is lost with it, which would blur whose
        // clients lost what).
        srv.seen_or_expect("exit 1 ", t)?;
    }
    let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;

    // While the rogue lives.
    let during = burst(to)?;
    let (by, lost) = summary(&during);
    println!("    {mode} {how}: {told}; answered by {by:?}, {lost} lost");
    let others: Vec<&Answers> = during
        .iter()
        .filter(|a| a.iter().any(|&w| w != 1))
        .collect();
    check(others.iter().all(|a| a.len() == BURST), || {
        format!("{how}: clients of the other workers lost datagrams: {during:?}")
    })?;
    check((2..=4).all(|w| by.contains(&w)), || {
        format!("{how}: while the rogue lives, only workers {by:?} answer")
    })?;
    check(others.len() >= CLIENTS / 2, || {
        format!(
            "{how}: the other workers answered {} of {CLIENTS} clients",
            others.len()
        )
    })?;

    // After the rogue is replaced.
    // A tampering that breaks the rogue's own receive (`shutdown-read`) may have ended
    // it already (its loop's error exits): then there is nothing to kill.
    let pid = proc::worker_pid(&srv.seen, 1)?;
    let _ = proc::signal(pid, "KILL");
    srv.seen_or_expect("exit 1 ", t)?;
    let again = receiving(&mut srv, 5)?;
    check(again == addr, || {
        format!("{how}: the replacement receives on {again}, the cluster was on {addr}")
    })?;
    let after = burst(to)?;
    let (by, lost) = summary(&after);
    println!("    after the rogue: answered by {by:?}, {lost} lost");
    check(lost == 0, || {
        format!("{how}: after the rogue, {lost} datagrams unanswered: {after:?}")
    })?;
    check(by == BTreeSet::from([2, 3, 4, 5]), || {
        format!("{how}: after the rogue, only workers {by:?} answer")
    })?;
    stop_and_check(&mut srv)
}

/// `connect()`: a connected socket receives only from its peer.
pub fn udp_tamper_connect(mode: &str) -> Outcome {
    udp_tamper(mode, "connect")
}

/// A socket filter that drops every datagram (`SO_ATTACH_FILTER`).
pub fn udp_tamper_drop_all(mode: &str) -> Outcome {
    udp_tamper(mode, "drop-all")
}

/// `SO_RCVBUF` 0: room for a datagram or two.
pub fn udp_tamper_rcvbuf_0(mode: &str) -> Outcome {
    udp_tamper(mode, "rcvbuf-0")
}

/// `O_NONBLOCK` on the socket's open file description.
pub fn udp_tamper_nonblock(mode: &str) -> Outcome {
    udp_tamper(mode, "nonblock")
}

/// `shutdown(SHUT_RD)`.
pub fn udp_tamper_shutdown_read(mode: &str) -> Outcome {
    udp_tamper(mode, "shutdown-read")
}

/// A reuse-port steering program that sends every datagram to the group's first socket
/// (`SO_ATTACH_REUSEPORT_CBPF`).
pub fn udp_tamper_steer(mode: &str) -> Outcome {
    udp_tamper(mode, "steer")
}

/// Workers as `nobody` cannot be given a Unix datagram path: it would be one socket
/// every worker shares (only UDP can be one socket per worker, with `SO_REUSEPORT`).
/// `start` refuses it, naming the address and the user; nothing is forked.
pub fn untrusted_unix_datagram_refused() -> Outcome {
    let path = std::env::temp_dir().join(format!("cluster-udg-{}.sock", std::process::id()));
    let cmd = proc::self_command(&[
        ("SC_USER", "nobody".into()),
        ("SC_LISTEN", "127.0.0.1:0".into()),
        ("SC_ALLOW_DATAGRAMS", format!("unix:{}", path.display())),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let line = srv.expect("error ", Duration::from_secs(10))?;
    check(
        line.contains(&path.display().to_string())
            && line.contains("nobody")
            && line.contains("shared"),
        || line.clone(),
    )?;
    let status = srv.wait(Duration::from_secs(10))?;
    check(status.code() == Some(1), || format!("exit {status}"))?;
    check(!path.exists(), || format!("{} was created", path.display()))?;
    check(!srv.seen.iter().any(|l| l.starts_with("fork ")), || {
        "a worker was forked".into()
    })?;
    println!("    {line}");
    Ok(())
}

/// Untrusted workers' sockets through a rolling restart (SIGHUP), in `mode`: each
/// replacement gets a fresh socket of its own and each old worker's socket closes
/// with it, so afterwards the four new workers answer every datagram of the load, on
/// the same port, and the primary holds as many descriptors as before.
pub fn udp_untrusted_reload(mode: &str) -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (workers run as nobody; CI runs as root)");
        return Ok(());
    }
    let spec = spec(
        mode,
        4,
        2,
        &[
            ("SC_USER", "nobody"),
            ("SC_UDP", "127.0.0.1:0"),
            ("SC_ALLOW_DATAGRAMS", "127.0.0.1:0"),
        ],
    );
    let (mut srv, _) = spec.start()?;
    let addr = receiving(&mut srv, 1)?;
    for id in 2..=4 {
        receiving(&mut srv, id)?;
    }
    let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let before = burst(to)?;
    check(
        summary(&before) == (BTreeSet::from([1, 2, 3, 4]), 0),
        || format!("before the reload: {:?}", summary(&before)),
    )?;
    let fds_before = proc::fds_of(srv.pid()).len();
    srv.signal("HUP")?;
    srv.expect("reload-finished ", Duration::from_secs(30))?;
    for id in 5..=8 {
        let again = receiving(&mut srv, id)?;
        check(again == addr, || format!("worker {id} receives on {again}"))?;
    }
    let after = burst(to)?;
    let (by, lost) = summary(&after);
    println!("    {mode}: after the reload, answered by {by:?}, {lost} lost");
    check(lost == 0 && by == BTreeSet::from([5, 6, 7, 8]), || {
        format!("after the reload: answered by {by:?}, {lost} lost")
    })?;
    // The old workers' sockets close as each old worker is reaped.
    let pid = srv.pid();
    proc::wait_until(
        "the primary's descriptors to be as many as before the reload",
        Duration::from_secs(10),
        || proc::fds_of(pid).len() == fds_before,
    )?;
    stop_and_check(&mut srv)
}
