//! What a deployment sends a cluster: a service manager's control-group kill (the
//! primary and every worker signalled at once), Ctrl-C in a terminal, a `kill` of the
//! primary alone. Requests already begun are answered, the cluster exits 0, and no
//! worker is forked once the signal came.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, spec, Outcome};
use crate::util::client::Target;
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);

/// Half-sent requests to `addr`: each client has sent the first byte of its line.
fn half_sent(addr: std::net::SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
            c.write_all(b"h").map_err(|e| e.to_string())?;
            Ok(c)
        })
        .collect()
}

/// Waits until the workers report `n` accepted connections between them (their
/// counters reach the primary about once a second): every half-sent request is then
/// in a worker's hands, not in a backlog.
fn accepted(srv: &mut Server, n: u64) -> Outcome {
    loop {
        let line = srv.expect("stats ", T)?;
        let total: u64 = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.split('/').nth(1)?.parse::<u64>().ok())
            .sum();
        if total >= n {
            return Ok(());
        }
    }
}

/// `mode`, 2 workers, six half-sent requests, then `sig` to `whom`: `"all"` (the
/// primary and every worker at once, as systemd's `KillMode=control-group` does) or
/// `"primary"`. All six are answered, the server exits 0, nothing is forked after.
pub fn signalled_with_requests_in_flight(mode: &str, sig: &str, whom: &str) -> Outcome {
    // Eight threads a worker: even if reuse-port's hash sends all six to one worker,
    // each is taken by a thread, not left in a queue.
    let (mut srv, targets) = spec(mode, 2, 8, &[]).start()?;
    let Target::Tcp(addr) = targets[0] else {
        return Err("not TCP".into());
    };
    let clients = half_sent(addr, 6)?;
    accepted(&mut srv, 6)?;
    let mut pids = vec![srv.pid()];
    if whom == "all" {
        pids.extend(srv.workers.keys().copied());
    }
    proc::signal_all(&pids, sig)?;
    for mut c in &clients {
        c.write_all(b"i\n").map_err(|e| e.to_string())?;
    }
    let mut answered = 0;
    let mut failures = Vec::new();
    for c in clients {
        let mut line = String::new();
        match BufReader::new(&c).read_line(&mut line) {
            Ok(_) if line.starts_with("ok ") => answered += 1,
            Ok(_) => failures.push(format!("answer {line:?}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let end = exited_ok(&mut srv, T)?;
    let forks: Vec<&String> = end.rest.iter().filter(|l| l.starts_with("fork ")).collect();
    println!(
        "    {mode}, SIG{sig} to {whom}: {answered} of 6 begun requests answered, {} fork(s) after",
        forks.len()
    );
    check(answered == 6, || {
        format!(
            "{answered} of 6 answered ({failures:?}); output {:?}; stderr:\n{}",
            end.rest, end.stderr
        )
    })?;
    check(forks.is_empty(), || {
        format!("forked after the signal: {forks:?}")
    })?;
    clean_end(&srv, &end)
}

/// Receives datagrams from the cluster until one starts with `state`, counting the
/// watchdog pings on the way; returns that datagram.
pub fn until_state(sock: &UnixDatagram, state: &str, pings: &mut u32) -> Result<String, String> {
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + T;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(format!("no {state} from the cluster within {T:?}"));
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg == "WATCHDOG=1" {
                    *pings += 1;
                }
                if msg.starts_with(state) {
                    return Ok(msg);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A service manager's notification socket in a fresh directory of its own (`tag`
/// names it): the directory, the socket's path and the socket, read with a 200 ms
/// timeout.
fn notify_socket(tag: &str) -> Result<(PathBuf, PathBuf, UnixDatagram), String> {
    let dir = std::env::temp_dir().join(format!("cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    Ok((dir, path, sock))
}

/// systemd's `Type=notify` protocol: `READY=1` (with `MAINPID`) once every worker
/// listens, `RELOADING=1` then `READY=1` around a `SIGHUP`, watchdog pings at half of
/// `WATCHDOG_USEC` meanwhile, `STOPPING=1` at `SIGTERM`; and no worker sees
/// `NOTIFY_SOCKET`.
pub fn service_manager_notify() -> Outcome {
    let (dir, path, sock) = notify_socket("notify")?;
    let env = [
        ("NOTIFY_SOCKET", path.to_str().ok_or("path")?),
        ("WATCHDOG_USEC", "200000"),
    ];
    let (mut srv, targets) = spec("round-robin", 2, 2, &env).start()?;
    let mut pings = 0;
    let ready = until_state(&sock, "READY=1", &mut pings)?;
    check(ready.contains(&format!("MAINPID={}", srv.pid())), || {
        ready.clone()
    })?;
    // Two pings, 100 ms apart, while nothing else happens.
    let before = pings;
    while pings < before + 2 {
        until_state(&sock, "WATCHDOG=1", &mut pings)?;
    }
    let seen = crate::util::client::ask(&targets[0], "env NOTIFY_SOCKET", T)?;
    check(seen.text == "unset", || {
        format!("worker {} sees NOTIFY_SOCKET={}", seen.worker, seen.text)
    })?;
    srv.signal("HUP")?;
    let reloading = until_state(&sock, "RELOADING=1", &mut pings)?;
    check(reloading.contains("MONOTONIC_USEC="), || reloading.clone())?;
    until_state(&sock, "READY=1", &mut pings)?;
    srv.signal("TERM")?;
    until_state(&sock, "STOPPING=1", &mut pings)?;
    println!("    READY=1 ({ready:?}), RELOADING=1, READY=1, STOPPING=1; {pings} watchdog ping(s) meanwhile");
    let end = exited_ok(&mut srv, T)?;
    clean_end(&srv, &end)?;
    drop(sock);
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}

/// The scenario server started as systemd starts a socket-activated service: the
/// listening socket `listener` as descriptor 3, `LISTEN_FDS=1`, `LISTEN_FDNAMES=web`,
/// and `LISTEN_PID` this process (or `pid` when given, to see it refused; `Some("")`
/// leaves it unset, as `systemfd --no-pid` does).
fn activated(
    listener: std::net::TcpListener,
    listen: &str,
    mode: &str,
    pid: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let set_pid = match pid {
        Some("") => "unset LISTEN_PID; ".into(),
        Some(p) => format!("export LISTEN_PID={p}; "),
        None => "export LISTEN_PID=$$; ".into(),
    };
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{set_pid}exec 3<&0 0</dev/null \"$0\""))
        .arg(exe)
        .env("CLUSTER_SCENARIO_SERVER", "1")
        .env("SC_MODE", mode)
        .env("SC_WORKERS", "2")
        .env("SC_LISTEN", listen)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let stdin = std::process::Stdio::from(std::os::fd::OwnedFd::from(listener));
    Server::spawn_with_stdin(cmd, stdin)
}

/// Socket activation: `systemd:web` finds the passed socket by name, round-robin
/// serves it through a worker's respawn and a reload, the primary's copy is
/// close-on-exec, and no worker inherits the activation variables; without
/// `LISTEN_PID` it serves too (systemfd `--no-pid`); a wrong `LISTEN_PID` and an
/// unknown name are refused, naming what is wrong.
pub fn socket_activation() -> Outcome {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut srv = activated(listener, "systemd:web", "round-robin", None, &[])?;
    let ready = srv.expect("ready ", T)?;
    check(ready == format!("ready {addr}"), || {
        format!("the passed socket is {addr}, the cluster says {ready}")
    })?;
    // The passed socket is close-on-exec in the primary (`sd_listen_fds` sets it), so
    // no program the application starts holds it: /proc shows O_CLOEXEC (02000000 in
    // fdinfo's octal flags) on descriptor 3.
    let flags = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", srv.pid()))
        .map_err(|e| e.to_string())?;
    let octal = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| format!("no flags in fdinfo: {flags:?}"))?;
    check(octal & 0o2_000_000 != 0, || {
        format!("the passed socket (descriptor 3) is inheritable: flags {octal:o}")
    })?;
    let t = Target::Tcp(addr);
    let seen = crate::util::client::ask(&t, "env LISTEN_FDS", T)?;
    check(seen.text == "unset", || {
        format!("worker {} sees LISTEN_FDS={}", seen.worker, seen.text)
    })?;
    // A worker killed and respawned, then a rolling restart: still served.
    let victim = *srv.workers.keys().next().ok_or("no worker")?;
    proc::signal(victim, "KILL")?;
    srv.expect("fork 3 ", T)?;
    srv.signal("HUP")?;
    srv.expect("reload-finished ", T)?;
    let load = crate::util::client::load(&t, 50, 2, "hi", T);
    println!(
        "    systemd:web ({addr}), round-robin: served after a respawn and a reload: {} ok",
        load.ok
    );
    check(load.ok == 50, || {
        format!("{} ok, {:?}", load.ok, load.errors.first())
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    clean_end(&srv, &end)?;
    // systemfd --no-pid: LISTEN_FDS without LISTEN_PID serves.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut srv = activated(listener, "systemd:web", "shared", Some(""), &[])?;
    let ready = srv.expect("ready ", T)?;
    check(ready == format!("ready {addr}"), || {
        format!("without LISTEN_PID: the passed socket is {addr}, the cluster says {ready}")
    })?;
    let load = crate::util::client::load(&Target::Tcp(addr), 10, 2, "hi", T);
    check(load.ok == 10, || {
        format!(
            "without LISTEN_PID: {} ok, {:?}",
            load.ok,
            load.errors.first()
        )
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    clean_end(&srv, &end)?;
    println!("    LISTEN_FDS without LISTEN_PID (systemfd --no-pid): served");
    for (listen, pid, want) in [
        (
            "systemd:web",
            Some("1"),
            "LISTEN_PID is 1, not this process",
        ),
        ("systemd:other", None, "no passed socket is named \"other\""),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let mut srv = activated(listener, listen, "shared", pid, &[("SC_RESPAWN", "never")])?;
        let failed = srv.expect("listen-failed ", T)?;
        println!("    {failed}");
        check(failed.contains(want), || failed.clone())?;
        let end = exited_ok(&mut srv, T)?;
        clean_end(&srv, &end)?;
    }
    Ok(())
}

/// `WATCHDOG_USEC=1` (half of it is 0 µs): the primary pings at its floor, 10 ms, and
/// says so, instead of spinning. Thirty pings take at least 290 ms from the spawn (a
/// lower bound: load can only make them slower); without the floor they came back to
/// back, hundreds per millisecond, from a loop that never slept.
pub fn watchdog_floor() -> Outcome {
    let (dir, path, sock) = notify_socket("watchdog")?;
    let env = [
        ("NOTIFY_SOCKET", path.to_str().ok_or("path")?),
        ("WATCHDOG_USEC", "1"),
    ];
    // Counted from before the spawn: the primary pings from its start, and 30 pings
    // cannot have been sent in less than 29 floors since then, however many waited
    // in the socket's queue.
    let first = std::time::Instant::now();
    let (mut srv, _targets) = spec("round-robin", 1, 2, &env).start()?;
    let mut pings = 0;
    until_state(&sock, "READY=1", &mut pings)?;
    while pings < 30 {
        until_state(&sock, "WATCHDOG=1", &mut pings)?;
    }
    let took = first.elapsed();
    check(took >= Duration::from_millis(290), || {
        format!("{pings} watchdog pings within {took:?} of the start: faster than one per 10 ms")
    })?;
    println!("    {pings} pings within {took:?} of the start");
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    let warning = "WATCHDOG_USEC=1 is below twice 10ms: pinging every 10ms";
    check(end.stderr.contains(warning), || {
        format!("no {warning:?} in the stderr:\n{}", end.stderr)
    })?;
    clean_end(&srv, &end)?;
    drop(sock);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
