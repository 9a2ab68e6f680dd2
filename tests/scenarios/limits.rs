//! Limits a worker cannot push the primary past: descriptors it sends that
//! would linger in `close`, budgets of descriptors and queued messages, a worker at
//! its own descriptor limit, non-blocking listeners, unbounded durations, lost
//! replies, adopted Unix sockets, and caps on the worker count. Each ends with the
//! usual hygiene check.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use crate::util::check::{all_ok, check, rogue_refused_or_killed, spec, stop_and_check, Outcome};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

/// The bound on every wait for progress: well below the 15 s a lingering close took.
const T: Duration = Duration::from_secs(5);

/// Worker 1 hands the primary a TCP socket whose close would block 15 s (`SO_LINGER`
/// 15 s, unsent data, a peer that never reads), attached to a record (`how`: online on
/// the control channel, which the codec refuses; new-conn there, which decodes and the
/// primary refuses; new-conn on its round-robin hand-off channel). The primary closes
/// it without lingering: it reports and kills the rogue at once, and answers the next
/// request promptly.
///
/// On Linux 6.16+ the primary refuses the descriptor (`SO_PASSRIGHTS` off): the worker's
/// `sendmsg` fails with `EPERM`. `contained` acts as on an older kernel, where it is
/// received and closed abortively.
pub fn rogue_lingering_socket(how: &str, contained: bool) -> Outcome {
    // The peer: a listener that never accepts, so nothing is ever read.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?.to_string();
    let rogue = format!("linger-{how}");
    let mut env = vec![("SC_ROGUE", rogue.as_str()), ("SC_ROGUE_PEER", &peer_addr)];
    if contained {
        env.push(("CLUSTER_TEST_NO_PASSRIGHTS", "1"));
    }
    let refused = !contained && cluster::descriptors_refused_for_tests();
    let (mut srv, targets) = spec("round-robin", 2, 2, &env).start()?;
    // Worker 1 waits for the go before it starts accepting, so worker 2 serves this.
    let go = client::ask(&targets[0], "tell rogue-go", T)?;
    check(go.text.contains("sent"), || format!("rogue-go: {go:?}"))?;
    rogue_refused_or_killed(&mut srv, how, refused, T)?;
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    drop(peer);
    stop_and_check(&mut srv)
}

/// Starts the scenario server under `prlimit --nofile=SOFT:HARD` and waits for ready.
fn start_limited(
    nofile: &str,
    mode: &str,
    workers: usize,
    env: &[(&str, &str)],
) -> Result<(Server, Vec<Target>), String> {
    let limit = format!("--nofile={nofile}");
    spec(mode, workers, 2, env).start_under(&["prlimit", &limit, "--"])
}

/// One worker asks for address after address (`mode`: each a round-robin hand-off
/// channel, or a reuse-port socket, in the primary). Started with a soft descriptor
/// limit of 64 and a hard one of 256: the primary raises its soft limit to 256, the
/// worker's requests stop at its budget with EMFILE naming the address, the worker keeps
/// serving, and the primary keeps room: it serves, and forks and equips a third worker.
pub fn listen_budget(mode: &str) -> Outcome {
    let (mut srv, targets) = start_limited(
        "64:256",
        mode,
        2,
        &[("SC_EXTRA_LISTEN", "200"), ("SC_LISTEN_FAIL_OK", "1")],
    )?;
    let primary = srv.pid();
    let extra = srv.seen_or_expect("message 1 extra ", T)?;
    println!("    {extra}");
    check(
        extra.contains("Too many open files") && extra.contains("cannot listen on 127.0."),
        || format!("the refusal: {extra}"),
    )?;
    srv.seen_or_expect("listen-failed 1 127.0.", T)?;
    let limit = proc::soft_limit(primary, "nofile")?;
    let held = proc::fds_of(primary).len();
    println!("    the primary: soft limit {limit}, {held} descriptors open");
    check(limit == "256", || {
        format!("the primary's soft limit: {limit}")
    })?;
    // At least the reserve (64) is left: the worker's budget is a share of the rest.
    check(held + 64 <= 256, || {
        format!("the primary holds {held} of 256 descriptors")
    })?;
    all_ok(
        &client::load(&targets[0], 40, 2, "hi", T),
        40,
        "after the refusal",
    )?;
    let reply = client::ask(&targets[0], "tell workers 3", T)?;
    check(reply.text.contains("done"), || {
        format!("workers 3: {reply:?}")
    })?;
    srv.seen_or_expect("listening 3 ", T)?;
    all_ok(
        &client::load(&targets[0], 40, 2, "hi", T),
        40,
        "with three workers",
    )?;
    stop_and_check(&mut srv)
}

/// The resident memory of `pid`, in KiB (`VmRSS` in /proc/PID/status).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The primary sends 30 rounds of 100 messages of 64 KiB to a worker that takes only
/// one per round: the worker's inbox fills to its bound, its control thread stops
/// reading, the channel and then the primary's outbox fill, and `Cluster::send` refuses
/// with WouldBlock; far fewer than 3,000 are taken. The worker serves throughout. At
/// shutdown its `Disconnect` waits behind the queued messages, so the disconnect deadline
/// (1 s here) ends it, as documented.
pub fn inbox_bounded() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 1, 2, &[("SC_SHUTDOWN_MS", "1000")]).start()?;
    let worker = proc::worker_pid(&srv.seen, 1)?;
    let mut taken = 0u64;
    let mut refused = None;
    for _ in 0..30 {
        client::ask(&targets[0], "tell flood 100 64", T)?;
        let line = srv.expect("flooded ", T)?;
        let ok: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ok="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad line {line}"))?;
        taken += ok;
        if !line.contains("error=none") && refused.is_none() {
            refused = Some(line);
        }
    }
    let rss = rss_kib(worker).unwrap_or(0);
    println!(
        "    {taken} of 3000 messages taken, worker RSS {rss} KiB; first refusal: {refused:?}"
    );
    // The bound: the inbox (64 of these), the channel's buffer (a few), the primary's
    // outbox (1,024), and the 30 the worker took; unbounded, about twice that went.
    check(taken <= 1200, || {
        format!("{taken} of 3000 messages taken (worker RSS {rss} KiB)")
    })?;
    let refused = refused.ok_or("no send was refused")?;
    check(refused.contains("not reading"), || {
        format!("the refusal: {refused}")
    })?;
    all_ok(
        &client::load(&targets[0], 20, 2, "hi", T),
        20,
        "while flooded",
    )?;
    stop_and_check(&mut srv)
}

/// Asks a worker, over one connection, to call `Listener::bind(addr)`: once the
/// worker has accepted the connection and says `waiting`, `between` runs (it changes
/// the world: limits, a stopped primary), then the worker binds and answers. Returns
/// the answer line ("" when the connection closed without one).
fn bind_after(
    target: &Target,
    addr: &str,
    wait: Duration,
    between: impl FnOnce() -> Outcome,
) -> Result<String, String> {
    let mut conn = client::Conn::connect(target, wait).map_err(|e| e.to_string())?;
    conn.write_all(format!("bind {addr}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&mut conn);
    let mut waiting = String::new();
    r.read_line(&mut waiting).map_err(|e| e.to_string())?;
    check(waiting == "waiting\n", || {
        format!("first line: {waiting:?}")
    })?;
    between()?;
    r.get_mut().write_all(b"go\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line)
}

/// A worker at its descriptor limit asks for a listener: the reply's descriptor cannot
/// be installed (MSG_CTRUNC), yet the record arrives whole, so `Listener::bind` returns
/// EMFILE naming the address, and the worker keeps serving (it used to exit 70).
pub fn worker_bind_at_fd_limit(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 1, 2, &[]).start()?;
    all_ok(&client::load(&targets[0], 10, 1, "hi", T), 10, "warm-up")?;
    let worker = proc::worker_pid(&srv.seen, 1)?;
    let before = proc::soft_limit(worker, "nofile")?;
    // The connection is accepted (its descriptor exists) before the limit drops.
    let answer = bind_after(&targets[0], "127.0.0.5:0", T, || {
        proc::set_soft_limit(worker, "nofile", &proc::lowest_free_fd(worker).to_string())
    });
    // (Fails when the worker is gone: checked after the answer, which says more.)
    let restored = proc::set_soft_limit(worker, "nofile", &before);
    let answer = answer?;
    println!("    {}", answer.trim_end());
    check(
        answer.contains("bind-error")
            && answer.contains("127.0.0.5:0")
            && answer.contains("Too many open files"),
        || {
            format!(
                "the answer: {answer:?} (worker 1 alive: {})",
                restored.is_ok()
            )
        },
    )?;
    restored?;
    let after = client::load(&targets[0], 20, 2, "hi", T);
    all_ok(&after, 20, "after the refused bind")?;
    check(
        proc::worker_pid(&srv.seen, 1)? == worker && srv.workers.len() == 1,
        || "worker 1 was replaced".to_string(),
    )?;
    stop_and_check(&mut srv)
}

/// The primary is stopped (SIGSTOP) while a worker asks for a listener: `bind` gives
/// up after `LISTEN_REPLY_TIMEOUT` (10 s) with TimedOut naming the address, instead of
/// waiting forever. After SIGCONT the late reply is dropped and everything serves.
pub fn listen_reply_deadline() -> Outcome {
    let (mut srv, targets) = spec("round-robin", 1, 2, &[]).start()?;
    all_ok(&client::load(&targets[0], 10, 1, "hi", T), 10, "warm-up")?;
    let primary = srv.pid();
    let answer = bind_after(&targets[0], "127.0.0.6:0", Duration::from_secs(20), || {
        proc::signal(primary, "STOP")?;
        proc::wait_stopped(primary, T)
    });
    let cont = proc::signal(primary, "CONT");
    let answer = answer?;
    cont?;
    println!("    {}", answer.trim_end());
    check(
        answer.contains("bind-error")
            && answer.contains("127.0.0.6:0")
            && answer.contains("no answer from the primary"),
        || format!("the answer: {answer:?}"),
    )?;
    all_ok(
        &client::load(&targets[0], 20, 2, "hi", T),
        20,
        "after SIGCONT",
    )?;
    stop_and_check(&mut srv)
}

/// Someone sets O_NONBLOCK on the shared listening socket (each worker does, as one
/// converting it for its own event loop would): the accepting threads wait for a
/// connection in `poll` instead of retrying EAGAIN at once, so idle workers use no
/// CPU, and every request is still served.
pub fn nonblocking_listener(mode: &str) -> Outcome {
    let (mut srv, targets) = spec(mode, 2, 2, &[("SC_NONBLOCK", "1")]).start()?;
    all_ok(
        &client::load(&targets[0], 40, 2, "hi", T),
        40,
        "non-blocking",
    )?;
    for id in [1, 2] {
        let pid = proc::worker_pid(&srv.seen, id)?;
        proc::check_idle(pid, &format!("worker {id} on a non-blocking listener"))?;
    }
    all_ok(
        &client::load(&targets[0], 40, 2, "hi", T),
        40,
        "after idling",
    )?;
    stop_and_check(&mut srv)
}

/// `Duration::MAX` as "no limit" everywhere the application gives a duration: the
/// shutdown timeout (used by shutdown and `disconnect`), `next_event_timeout`, and
/// `Worker::recv_timeout`. Nothing panics: requests are served, a disconnect and the
/// shutdown end gracefully.
pub fn duration_max() -> Outcome {
    let (mut srv, targets) = spec(
        "round-robin",
        2,
        2,
        &[("SC_SHUTDOWN_MS", "max"), ("SC_EVENT_WAIT", "max")],
    )
    .start()?;
    let pong = client::ask(&targets[0], "tell-forever ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    let done = client::ask(&targets[0], "tell disconnect-other", T)?;
    check(done.text.contains("done"), || {
        format!("disconnect: {done:?}")
    })?;
    let exit = srv.expect("exit ", T)?;
    check(exit.contains("requested=true"), || {
        format!("the exit: {exit}")
    })?;
    all_ok(
        &client::load(&targets[0], 20, 2, "hi", T),
        20,
        "one worker left",
    )?;
    stop_and_check(&mut srv)
}

/// An adopted abstract Unix socket (`fd:0`, bound by the driver, as systemd could pass
/// it): its connections reach the worker as `Stream::Unix`, not as a `TcpStream`
/// wrapped around a Unix socket.
pub fn adopted_abstract_unix(mode: &str) -> Outcome {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    let name = format!("cluster-limits-{}-{mode}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| e.to_string())?;
    let cmd = proc::self_command(&[
        ("SC_MODE", mode.to_string()),
        ("SC_WORKERS", "2".into()),
        ("SC_LISTEN", "fd:0".into()),
    ]);
    let stdin = std::process::Stdio::from(std::os::fd::OwnedFd::from(listener));
    let mut srv = Server::spawn_with_stdin(cmd, stdin)?;
    srv.expect("ready ", Duration::from_secs(20))?;
    for _ in 0..4 {
        let mut c = UnixStream::connect_addr(&addr).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
        c.write_all(b"kind\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&c)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        check(
            line.starts_with("ok ") && line.trim_end().ends_with(" unix"),
            || format!("{mode}: the worker's stream: {line:?}"),
        )?;
    }
    println!("    {mode}: four connections, each a Stream::Unix");
    stop_and_check(&mut srv)
}

/// The worker count has a cap: `MAX_WORKERS`, and one worker per 16 descriptors of
/// the primary's limit (here a hard limit of 64: at most 4). SIGTTIN beyond it reports
/// an error and forks nothing; `set_workers` beyond it returns an error; a start with
/// more workers than that fails with the reason.
pub fn worker_cap() -> Outcome {
    let (mut srv, targets) = start_limited("64:64", "round-robin", 2, &[])?;
    for id in [3, 4] {
        srv.signal("TTIN")?;
        srv.expect(&format!("listening {id} "), T)?;
    }
    srv.signal("TTIN")?;
    let error = srv.expect("error ", T)?;
    println!("    SIGTTIN: {error}");
    check(error.contains("at most 4"), || format!("SIGTTIN: {error}"))?;
    let reply = client::ask(&targets[0], "tell workers 10", T)?;
    println!("    set_workers(10):{}", reply.text);
    check(
        reply.text.contains("error") && reply.text.contains("at most 4"),
        || format!("set_workers(10): {reply:?}"),
    )?;
    // A round trip through the primary after both: no fifth worker was forked.
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    check(!srv.seen.iter().any(|l| l.starts_with("fork 5 ")), || {
        format!("a fifth worker was forked: {:?}", srv.seen)
    })?;
    stop_and_check(&mut srv)?;
    // Asking for more at start: refused before any fork.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=64:64", "--"]).arg(exe);
    cmd.env("CLUSTER_SCENARIO_SERVER", "1")
        .env("SC_WORKERS", "10")
        .env("SC_LISTEN", "127.0.0.1:0");
    let mut srv = Server::spawn(cmd)?;
    let error = srv.expect("error ", T)?;
    println!("    start: {error}");
    check(error.contains("10 workers asked for"), || {
        format!("start: {error}")
    })?;
    let status = srv.wait(T)?;
    check(
        !status.success() && !srv.seen.iter().any(|l| l.starts_with("fork ")),
        || format!("start with 10: {status}, {:?}", srv.seen),
    )
}
