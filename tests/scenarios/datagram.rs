//! Datagram sockets in workers (issue 13), driven through `hello --udp`: every mode
//! answers every datagram from many client sockets, on IPv4, IPv6 and a Unix datagram
//! path, on port 0 (one port for every worker), next to a TCP listener on the same
//! address; an address in use is refused by name; a worker killed in the middle of the
//! load costs at most the datagrams it had read and not answered. Plus the exclusive
//! listener (Node's `exclusive: true`) beside a shared one, through the test server.
//!
//! Clients are lock-step (each socket sends one datagram and waits for its answer), so
//! the receive queues never overflow and any loss is the cluster's.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::demo::start_hello;
use crate::util::check::{check, Outcome};
use crate::util::proc::{self, Server};

/// Datagrams per load run, and client sockets sending them.
const DATAGRAMS: u64 = 10_000;
const CLIENTS: u64 = 64;
/// How long a client waits for one answer before counting its datagram lost.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A client socket of either family.
enum Client {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf, PathBuf),
}

impl Client {
    /// A socket for `target` (`HOST:PORT` or `unix:PATH`); a Unix client binds a path
    /// of its own (named `tag`) so that it can be answered.
    fn new(target: &str, tag: &str) -> Result<Client, String> {
        let c = if let Some(path) = target.strip_prefix("unix:") {
            let own = std::env::temp_dir().join(format!(
                "cluster-udp-client-{}-{tag}.sock",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&own);
            let s = UnixDatagram::bind(&own).map_err(|e| format!("bind {own:?}: {e}"))?;
            Client::Unix(s, own, PathBuf::from(path))
        } else {
            let to: SocketAddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
            let any = if to.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            Client::Udp(UdpSocket::bind(any).map_err(|e| e.to_string())?, to)
        };
        let timeout = Some(ANSWER_WAIT);
        match &c {
            Client::Udp(s, _) => s.set_read_timeout(timeout),
            Client::Unix(s, ..) => s.set_read_timeout(timeout),
        }
        .map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Sends `data`; the answer, or `None` when none came within [`ANSWER_WAIT`].
    fn ask(&self, data: &[u8], buf: &mut [u8]) -> Result<Option<usize>, String> {
        let got = match self {
            Client::Udp(s, to) => s.send_to(data, to).and_then(|_| s.recv(buf)),
            Client::Unix(s, _, to) => s.send_to(data, to).and_then(|_| s.recv(buf)),
        };
        match got {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Client::Unix(_, own, _) = self {
            let _ = std::fs::remove_file(own);
        }
    }
}

/// What a load run saw.
#[derive(Default)]
struct Seen {
    /// Answers by worker id.
    by_worker: BTreeMap<u32, u64>,
    /// Datagrams never answered.
    lost: u64,
    /// Answers that were not `worker N: ` and the datagram.
    wrong: Vec<String>,
}

/// `total` datagrams from `CLIENTS` lock-step sockets to `target`; `answered` counts
/// as they come (for a driver that acts in the middle).
fn load(target: &str, total: u64, answered: &AtomicU64) -> Result<Seen, String> {
    load_until(target, total, None, answered)
}

/// Like `load`, ending early once `stop` is set (each client after its current
/// datagram is answered or counted lost).
fn load_until(
    target: &str,
    total: u64,
    stop: Option<&AtomicBool>,
    answered: &AtomicU64,
) -> Result<Seen, String> {
    let seen = Mutex::new(Seen::default());
    let failure = Mutex::new(None::<String>);
    let clients = (0..CLIENTS)
        .map(|i| Client::new(target, &i.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            let (seen, failure) = (&seen, &failure);
            s.spawn(move || {
                let mut buf = vec![0u8; 2048];
                let mut k = i as u64;
                while k < total && !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                    let data = format!("client {i} datagram {k}");
                    match c.ask(data.as_bytes(), &mut buf) {
                        Ok(Some(n)) => {
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let mut seen = seen.lock().unwrap();
                            match text
                                .strip_prefix("worker ")
                                .and_then(|r| r.split_once(": "))
                                .and_then(|(id, rest)| Some((id.parse::<u32>().ok()?, rest)))
                            {
                                Some((id, rest)) if rest == data => {
                                    *seen.by_worker.entry(id).or_default() += 1
                                }
                                _ => seen.wrong.push(text),
                            }
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) => seen.lock().unwrap().lost += 1,
                        Err(e) => {
                            *failure.lock().unwrap() = Some(e);
                            return;
                        }
                    }
                    k += CLIENTS;
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(seen.into_inner().unwrap())
}

/// hello with `--udp udp`, 4 workers of `mode`; returns it with its TCP and UDP
/// addresses and its workers' pids.
fn start(mode: &str, udp: &str) -> Result<(Server, String, Vec<u32>), String> {
    let mut srv = start_hello(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "4",
            "--mode",
            mode,
            "--threads",
            "2",
            "--udp",
            udp,
        ],
        &[],
    )?;
    let line = srv.expect("udp ", Duration::from_secs(20))?;
    let addr = line["udp ".len()..].to_string();
    srv.seen_or_expect("ready ", Duration::from_secs(20))?;
    let pids = proc::children_of(srv.pid())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    Ok((srv, addr, pids))
}

/// SIGTERM: exit 0, no worker left, no child of the driver left.
fn stop(mut srv: Server, pids: &[u32]) -> Outcome {
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(15))?;
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("hello exited with {status}: {stderr}")
    })?;
    check(!stderr.contains("udp:"), || {
        format!("a worker's receive failed: {stderr}")
    })?;
    proc::wait_until("the workers to exit", Duration::from_secs(5), || {
        pids.iter()
            .all(|&p| !Path::new(&format!("/proc/{p}")).exists())
    })?;
    check(proc::children_of(std::process::id()).is_empty(), || {
        "the driver has children left".into()
    })
}

/// Every datagram answered, by every worker, correctly.
fn all_answered(seen: &Seen, workers: usize, what: &str) -> Outcome {
    check(seen.wrong.is_empty(), || {
        format!("{what}: wrong answers, e.g. {:?}", seen.wrong.first())
    })?;
    check(seen.lost == 0, || {
        format!("{what}: {} datagrams unanswered", seen.lost)
    })?;
    let total: u64 = seen.by_worker.values().sum();
    check(total == DATAGRAMS, || format!("{what}: {total} answers"))?;
    check(seen.by_worker.len() == workers, || {
        format!("{what}: only workers {:?} answered", seen.by_worker)
    })?;
    println!("    {what}: answers by worker {:?}", seen.by_worker);
    Ok(())
}

/// 10,000 datagrams from 64 sockets to port 0 (resolved once: one port for all four
/// workers), beside a TCP listener also on 127.0.0.1:0 (a handle of its own): every
/// one answered, each by `worker N: ` and itself, every worker answers some; the TCP
/// side still serves; the primary's descriptors are the same after the load.
pub fn udp_balance(mode: &str) -> Outcome {
    let (srv, addr, pids) = start(mode, "127.0.0.1:0")?;
    let fds_before = proc::fds_of(srv.pid());
    let seen = load(&addr, DATAGRAMS, &AtomicU64::new(0))?;
    all_answered(&seen, 4, &format!("{mode} {addr}"))?;
    let tcp = srv
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("ready "))
        .ok_or("no ready line")?
        .to_string();
    let mut conn = std::net::TcpStream::connect(&tcp).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    check(reply.starts_with("HTTP/1.1 200"), || {
        format!("the TCP side answered {reply:?}")
    })?;
    let fds_after = proc::fds_of(srv.pid());
    check(fds_before == fds_after, || {
        format!("the primary's descriptors changed: {fds_before:?} -> {fds_after:?}")
    })?;
    stop(srv, &pids)
}

/// IPv6 and a Unix datagram path, every mode: all answered by every worker; the Unix
/// socket file is gone after the cluster.
pub fn udp_families(mode: &str) -> Outcome {
    let path =
        std::env::temp_dir().join(format!("cluster-udp-{}-{}.sock", std::process::id(), mode));
    for udp in ["[::1]:0".to_string(), format!("unix:{}", path.display())] {
        let (srv, addr, pids) = start(mode, &udp)?;
        let seen = load(&addr, DATAGRAMS, &AtomicU64::new(0))?;
        all_answered(&seen, 4, &format!("{mode} {addr}"))?;
        stop(srv, &pids)?;
    }
    check(!path.exists(), || {
        "the Unix socket file was left behind".into()
    })
}

/// A UDP port another cluster holds (or a lone socket) is refused with the address
/// named, in every mode: no second socket joins the port (no `SO_REUSEADDR` on UDP
/// sockets; reuse-port probes without `SO_REUSEPORT` first). A TCP listener on the
/// same port does not stand in the way: UDP and TCP ports are apart, and so are the
/// primary's handles for them.
pub fn udp_addr_in_use(mode: &str) -> Outcome {
    let (first, addr, pids) = start(mode, "127.0.0.1:0")?;
    for other in ["shared", "reuse-port"] {
        let mut srv = start_hello(
            &[
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--mode",
                other,
                "--udp",
                &addr,
            ],
            &[],
        )?;
        let status = srv.wait(Duration::from_secs(15))?;
        let stderr = srv.stderr();
        check(!status.success(), || {
            format!("{other} beside {mode}: exit {status} on a UDP port in use")
        })?;
        check(
            stderr.contains(&format!("cannot listen on {addr}"))
                && stderr.contains("Address already in use"),
            || format!("{other} beside {mode}: stderr does not name the address: {stderr}"),
        )?;
    }
    stop(first, &pids)?;
    // TCP and UDP on one address: two handles. A port free for both is picked, then
    // freed for hello; another program may take it meanwhile (client connections take
    // ephemeral ports): then another port, up to five times.
    let mut attempt = 0;
    let (mut srv, same) = loop {
        attempt += 1;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        let same = format!("127.0.0.1:{port}");
        if UdpSocket::bind(&same).is_err() {
            if attempt >= 20 {
                return Err("no port free for both TCP and UDP in 20 tries".into());
            }
            continue;
        }
        drop(tcp);
        let mut srv = start_hello(
            &[
                "--listen",
                &same,
                "--workers",
                "2",
                "--mode",
                mode,
                "--udp",
                &same,
            ],
            &[],
        )?;
        match srv.expect("udp ", Duration::from_secs(20)) {
            Ok(_) => break (srv, same),
            Err(e) if attempt < 5 && e.contains("Address already in use") => {
                srv.wait(Duration::from_secs(15))?;
                println!("    {same} was taken meanwhile; another port");
            }
            Err(e) => return Err(e),
        }
    };
    srv.seen_or_expect("ready ", Duration::from_secs(20))?;
    let pids = proc::children_of(srv.pid())
        .into_iter()
        .map(|(p, _)| p)
        .collect::<Vec<_>>();
    let c = Client::new(&same, "same")?;
    let mut buf = [0u8; 256];
    let n = c
        .ask(b"same port", &mut buf)?
        .ok_or("no UDP answer on the TCP port")?;
    check(buf[..n].ends_with(b": same port"), || {
        format!("answer {:?}", String::from_utf8_lossy(&buf[..n]))
    })?;
    stop(srv, &pids)
}

/// A worker killed (SIGKILL) while 64 clients send: the cluster respawns it, the load
/// finishes, and nothing is lost but what the killed worker had read and not answered
/// (at most one datagram per receiving thread, 2); the respawned worker answers. In
/// reuse-port mode the datagrams queued on the killed worker's socket wait for its
/// replacement, which takes over the very socket. The primary's descriptor count is
/// the same before and after.
pub fn udp_respawn(mode: &str) -> Outcome {
    let (mut srv, addr, pids) = start(mode, "127.0.0.1:0")?;
    let fds_before = proc::fds_of(srv.pid()).len();
    let answered = AtomicU64::new(0);
    let victim = pids[0];
    let seen = std::thread::scope(|s| -> Result<Seen, String> {
        let loader = s.spawn(|| load(&addr, DATAGRAMS, &answered));
        proc::wait_until("a third of the answers", Duration::from_secs(60), || {
            answered.load(Ordering::Relaxed) >= DATAGRAMS / 3 || loader.is_finished()
        })?;
        proc::signal(victim, "KILL")?;
        loader
            .join()
            .map_err(|_| "the load thread panicked".to_string())?
    })?;
    srv.seen_or_expect_containing("crashed, respawning", Duration::from_secs(10))?;
    check(seen.wrong.is_empty(), || {
        format!("wrong answers: {:?}", seen.wrong.first())
    })?;
    let total: u64 = seen.by_worker.values().sum();
    check(total + seen.lost == DATAGRAMS, || {
        format!("{total} answered + {} lost != {DATAGRAMS}", seen.lost)
    })?;
    // The load may end before the replacement is up (its respawn back-off): more
    // rounds of 1,000 until it answers too, none of them losing anything.
    let mut seen = seen;
    let mut rounds = 0;
    while !seen.by_worker.keys().any(|&id| id > 4) && rounds < 60 {
        let more = load(&addr, 1000, &AtomicU64::new(0))?;
        check(more.wrong.is_empty() && more.lost == 0, || {
            format!(
                "after the respawn: {} lost, {:?}",
                more.lost,
                more.wrong.first()
            )
        })?;
        for (id, n) in more.by_worker {
            *seen.by_worker.entry(id).or_default() += n;
        }
        rounds += 1;
    }
    check(seen.lost <= 2, || {
        format!(
            "{} datagrams lost: more than the killed worker's 2 threads held",
            seen.lost
        )
    })?;
    check(seen.by_worker.keys().any(|&id| id > 4), || {
        format!("no answer from the respawned worker: {:?}", seen.by_worker)
    })?;
    println!(
        "    {mode}: {} lost, answers by worker {:?}",
        seen.lost, seen.by_worker
    );
    let fds_after = proc::fds_of(srv.pid()).len();
    check(fds_before == fds_after, || {
        format!("the primary had {fds_before} descriptors, now {fds_after}")
    })?;
    let mut all = proc::children_of(srv.pid())
        .into_iter()
        .map(|(p, _)| p)
        .collect::<Vec<_>>();
    all.extend(pids);
    stop(srv, &all)
}

/// Node's `exclusive: true`: worker 1 of 4 binds `127.0.0.1:0` by itself beside the
/// shared listener. Its port is its own: every connection to it is served by worker 1,
/// and the primary never heard of it (no `listening` line for it). Asking exclusively
/// for the shared address fails with `EADDRINUSE` (the worker binds for itself, it does
/// not get the primary's handle). The shared listener is served by every worker. On
/// SIGTERM worker 1's runtime closes the exclusive listener with the others, so the
/// cluster stops cleanly (exit 0, hygiene line clean, workers gone).
pub fn exclusive_beside_shared(mode: &str) -> Outcome {
    let spec = crate::util::check::spec(mode, 4, 2, &[("SC_EXCLUSIVE", "1")]);
    let (mut srv, targets) = spec.start()?;
    let line = srv.seen_or_expect("message 1 exclusive ", Duration::from_secs(10))?;
    let own = line["message 1 exclusive ".len()..].to_string();
    let shared = srv.seen_or_expect("message 1 exclusive-shared ", Duration::from_secs(10))?;
    check(shared.contains("Address already in use"), || {
        format!("an exclusive bind of the shared address: {shared}")
    })?;
    let mine = crate::util::client::load(
        &crate::util::client::Target::parse(&own)?,
        40,
        4,
        "hi",
        Duration::from_secs(5),
    );
    crate::util::check::all_ok(&mine, 40, "exclusive")?;
    check(mine.by_worker.keys().all(|&w| w == 1), || {
        format!("the exclusive listener was served by {}", mine.shares())
    })?;
    let all = crate::util::client::load(&targets[0], 200, 8, "hi", Duration::from_secs(5));
    crate::util::check::all_ok(&all, 200, "shared")?;
    check(all.by_worker.len() == 4, || {
        format!("the shared listener was served by {}", all.shares())
    })?;
    check(
        !srv.seen
            .iter()
            .any(|l| l.starts_with("listening ") && l.ends_with(&own)),
        || format!("the primary reported the exclusive listener {own}"),
    )?;
    // Worker 1 ends by itself: its runtime closed the exclusive listener too (else its
    // threads would wait in accept until the shutdown deadline killed it).
    srv.signal("TERM")?;
    let end = crate::util::check::exited_ok(&mut srv, Duration::from_secs(10))?;
    let exit = srv
        .seen
        .iter()
        .chain(&end.rest)
        .find(|l| l.starts_with("exit 1 "))
        .cloned()
        .unwrap_or_default();
    check(exit.contains("exit code 0"), || {
        format!("worker 1 did not finish by itself: {exit:?}")
    })?;
    crate::util::check::clean_end(&srv, &end)
}

/// Datagrams keep coming (64 lock-step clients) through a rolling restart (SIGHUP) and
/// then a binary upgrade (a new build over the program file, SIGUSR2): not one is lost
/// (a worker that is replaced answers what it has read, then its receive returns
/// `None`; the socket, or in reuse-port mode each socket of the group, stays with the
/// primary and crosses `execve`), the new program serves the same UDP address, the
/// previous workers are gone, and the primary's descriptor count is the same after.
pub fn udp_reload_and_upgrade(mode: &str) -> Outcome {
    use crate::hello_deploy::{gone, workers_of};
    let dir = crate::upgrade::Scratch::new(&format!("udp-{mode}"))?;
    dir.deploy_build(1)?;
    let mut cmd = std::process::Command::new(dir.program());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--mode",
        mode,
        "--threads",
        "2",
        "--udp",
        "127.0.0.1:0",
    ]);
    cmd.env_remove("CLUSTER_SCHED_POLICY");
    let mut srv = Server::spawn(cmd)?;
    let t = Duration::from_secs(20);
    let line = srv.expect("udp ", t)?;
    let addr = line["udp ".len()..].to_string();
    srv.seen_or_expect("ready ", t)?;
    let primary = srv.pid();
    let fds_before = proc::fds_of(primary).len();
    let first = workers_of(&srv);
    let answered = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let progressed = |n: u64| {
        let from = answered.load(Ordering::Relaxed);
        proc::wait_until("datagrams to be answered", t, || {
            answered.load(Ordering::Relaxed) >= from + n
        })
    };
    let (seen, steps) = std::thread::scope(|s| {
        let loader = s.spawn(|| load_until(&addr, u64::MAX, Some(&stop), &answered));
        let steps = (|| -> Result<(Vec<(u32, u64)>, String), String> {
            progressed(2000)?;
            srv.signal("HUP")?;
            srv.expect_containing("reload finished", t)?;
            progressed(2000)?;
            let reloaded = workers_of(&srv);
            dir.deploy_build(2)?;
            let from = srv.seen.len();
            srv.signal("USR2")?;
            srv.expect_containing("upgrade finished", t)?;
            // The new program's `udp` line may come before or after that one.
            let again = match srv.seen[from..].iter().find(|l| l.starts_with("udp ")) {
                Some(l) => l.clone(),
                None => srv.expect("udp ", t)?,
            };
            progressed(2000)?;
            Ok((reloaded, again))
        })();
        stop.store(true, Ordering::Relaxed);
        let seen = loader
            .join()
            .map_err(|_| "the load thread panicked".to_string())
            .and_then(|r| r);
        (seen, steps)
    });
    let seen = seen?;
    let (reloaded, again) = steps?;
    println!(
        "    {mode}: {} answered through a reload and an upgrade, {} lost; by worker {:?}",
        seen.by_worker.values().sum::<u64>(),
        seen.lost,
        seen.by_worker
    );
    check(seen.wrong.is_empty(), || {
        format!("wrong answers: {:?}", seen.wrong.first())
    })?;
    check(seen.lost == 0, || format!("{} datagrams lost", seen.lost))?;
    check(again == line, || {
        format!("after the upgrade: {again}, before: {line}")
    })?;
    gone(&first).map_err(|e| format!("before the reload: {e}"))?;
    gone(&reloaded).map_err(|e| format!("before the upgrade: {e}"))?;
    let fds_after = proc::fds_of(primary).len();
    check(fds_before == fds_after, || {
        format!("the primary had {fds_before} descriptors, now {fds_after}")
    })?;
    let last = workers_of(&srv);
    srv.signal("TERM")?;
    let status = srv.wait(t)?;
    let stderr = srv.stderr();
    check(status.success(), || format!("exit {status}: {stderr}"))?;
    check(!stderr.contains("udp:"), || {
        format!("a receive failed: {stderr}")
    })?;
    gone(&last)
}

/// With `listen_only`, a datagram socket only on an address named by
/// `Builder::listen_only_datagrams`: UDP on `[::1]:0`, allowed for TCP only, is refused
/// (`EACCES`, the reason named, `listen-failed` reported); UDP on `127.0.0.1:0`, named,
/// is served.
pub fn listen_only_datagrams() -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_WORKERS", "1".into()),
        ("SC_LISTEN", "127.0.0.1:0".into()),
        ("SC_ALLOW", "127.0.0.1:0,[::1]:0".into()),
        ("SC_ALLOW_DATAGRAMS", "127.0.0.1:0".into()),
        ("SC_ASK", "udp@[::1]:0,udp@127.0.0.1:0".into()),
        ("SC_LISTEN_FAIL_OK", "1".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let t = Duration::from_secs(10);
    let refused = srv.seen_or_expect_containing("ask udp [::1]:0: ", t)?;
    check(
        refused.contains("Permission denied") || refused.contains("allowed datagram addresses"),
        || format!("UDP on a TCP-only address: {refused}"),
    )?;
    let failed = srv.seen_or_expect("listen-failed ", t)?;
    check(failed.contains("allowed datagram addresses"), || {
        failed.clone()
    })?;
    let ok = srv.seen_or_expect_containing("ask udp 127.0.0.1:0: ", t)?;
    check(ok.contains(": ok 127.0.0.1:"), || {
        format!("the named address: {ok}")
    })?;
    crate::util::check::stop_and_check(&mut srv)
}

/// `ListenOptions::exclusive` honours the privilege drop: as root, with workers dropped
/// to `nobody` and `listen_only` naming only the shared address, worker 1's exclusive
/// bind of a privileged port is `EACCES` (the worker has no capability left), while an
/// exclusive bind outside the allowlist (`127.0.0.2:0`) works and the socket is the
/// worker's own: `/proc/net/tcp` shows it owned by nobody's uid, not root's (the
/// primary would have bound it as root, had it bound it at all: the allowlist refuses
/// it there). Skipped when not root.
pub fn exclusive_after_privilege_drop() -> Outcome {
    if proc::ids_of(std::process::id()).map(|(uid, _)| uid) != Some(0) {
        println!("    skipped: not root (CI runs as root)");
        return Ok(());
    }
    let nobody = cluster::User::named("nobody").map_err(|e| e.to_string())?;
    let port = (900..1024)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or("no free port below 1024")?;
    let privileged = format!("127.0.0.1:{port}");
    let asks = format!("1,{privileged},127.0.0.2:0");
    let spec = crate::util::check::spec(
        "round-robin",
        2,
        2,
        &[("SC_USER", "nobody"), ("SC_EXCLUSIVE", asks.as_str())],
    );
    let (mut srv, _) = spec.start()?;
    let t = Duration::from_secs(10);
    let denied = srv.seen_or_expect_containing(&format!("exclusive-try {privileged} "), t)?;
    check(
        denied.contains(&format!("cannot listen on {privileged}"))
            && denied.contains("Permission denied"),
        || format!("a privileged port, exclusively, as nobody: {denied}"),
    )?;
    let own = srv.seen_or_expect_containing("exclusive-try 127.0.0.2:0 ", t)?;
    let local = own
        .split(" bound ")
        .nth(1)
        .ok_or_else(|| format!("outside the allowlist, exclusively: {own}"))?
        .to_string();
    let local: SocketAddr = local.parse().map_err(|e| format!("{local}: {e}"))?;
    // /proc/net/tcp: "sl local rem st … uid …", the local address as 0200007F:PORT.
    let want = format!("0200007F:{:04X}", local.port());
    let table = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
    let uid = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
        .and_then(|f| f.get(7).and_then(|u| u.parse::<u32>().ok()))
        .ok_or_else(|| format!("{local} not listening in /proc/net/tcp"))?;
    check(uid == nobody.uid(), || {
        format!("the exclusive socket {local} belongs to uid {uid}, not nobody's")
    })?;
    println!("    {denied}; {local} owned by uid {uid} (nobody)");
    crate::util::check::stop_and_check(&mut srv)
}

/// A worker that asks for the same shared datagram socket again and again (issue 19,
/// item 12): it holds at most 16 grants of one handle at once (as many as a
/// round-robin or reuse-port handle gives one worker); the 17th request is refused
/// with `EMFILE`, naming the address, and reported as `listen-failed`. (A shared
/// handle costs the primary no descriptor per grant, so before this bound nothing
/// limited the count, a `u32` that wrapped after 2³² requests.)
pub fn udp_grants_bounded() -> Outcome {
    let asks = vec!["udp-hold@127.0.0.1:0"; 17].join(",");
    let cmd = proc::self_command(&[
        ("SC_WORKERS", "1".into()),
        ("SC_LISTEN", "127.0.0.1:0".into()),
        ("SC_ASK", asks),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let t = Duration::from_secs(10);
    let failed = srv.seen_or_expect("listen-failed ", t)?;
    check(
        failed.contains("127.0.0.1:0") && failed.contains("Too many open files"),
        || format!("the 17th grant: {failed}"),
    )?;
    // The worker's answers are in order on its stderr: every grant is in once the
    // refusal is.
    let refused = srv.seen_or_expect_containing("ask udp-hold 127.0.0.1:0: cannot", t)?;
    let ok = srv
        .seen
        .iter()
        .filter(|l| l.contains("ask udp-hold 127.0.0.1:0: ok "))
        .count();
    check(ok == 16, || format!("{ok} grants before the refusal"))?;
    println!("    16 grants, then: {refused}");
    crate::util::check::stop_and_check(&mut srv)
}
