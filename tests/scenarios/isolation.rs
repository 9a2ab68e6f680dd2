//! What a worker starts with. Nothing inherited but stdio, its channel and
//! what the application named (`keep_fd`); no controlling terminal; no capability left
//! after `--user`; and nothing of the primary's teardown run in a child (an adopted
//! round-robin listener stays non-blocking when a worker is replaced).
//!
//! The privilege scenarios need root (CI runs as root) and say why they skip otherwise.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, stop_and_check, Outcome};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

const NOBODY: u32 = 65534;

/// A file only root may read, for a primary to hold open.
struct Secret {
    path: std::path::PathBuf,
}

impl Secret {
    fn create(name: &str) -> Result<Secret, String> {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("cluster-scenario-{name}-{}", std::process::id()));
        std::fs::write(&path, "the primary's secret\n").map_err(|e| e.to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        Ok(Secret { path })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The server's `ready ADDR` line as targets.
fn targets(srv: &mut Server) -> Result<Vec<Target>, String> {
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    ready["ready ".len()..]
        .split(',')
        .map(|a| Target::parse(a.trim()))
        .collect()
}

/// Asks `cmd` until every one of `workers` worker processes has answered (bounded);
/// returns the answers by pid.
fn ask_every_worker(
    t: &Target,
    cmd: &str,
    workers: usize,
) -> Result<std::collections::BTreeMap<u32, client::Reply>, String> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let r = client::ask(t, cmd, Duration::from_secs(5))?;
        seen.entry(r.pid).or_insert(r);
        if seen.len() >= workers {
            return Ok(seen);
        }
    }
    Err(format!(
        "only {} of {workers} workers answered {cmd:?} in 200 tries",
        seen.len()
    ))
}

/// Whether the descriptors a worker had at start beyond 0, 1, 2 are its own and the
/// kept one: its control channel (a socket), the self-pipe its `SIGTERM` handler
/// writes into and the pipe `Worker::disconnect_fd` reads from (both ends of each),
/// nothing else.
fn only_its_own(pid: u32, extra: &[&str], kept: Option<&str>) -> bool {
    let targets = proc::fd_targets(pid);
    let target = |n: &str| {
        targets
            .iter()
            .find(|(fd, _)| fd.to_string() == n)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let own: Vec<String> = extra
        .iter()
        .filter(|n| Some(**n) != kept)
        .map(|n| target(n))
        .collect();
    let sockets = own.iter().filter(|t| t.starts_with("socket:")).count();
    let pipes: Vec<&String> = own.iter().filter(|t| t.starts_with("pipe:")).collect();
    let kept_ok = kept.map_or(true, |k| extra.contains(&k));
    let mut pairs = pipes.clone();
    pairs.sort();
    pairs.dedup();
    kept_ok
        && own.len() == 5
        && sockets == 1
        && pipes.len() == 4
        && pairs.len() == 2
        && pairs
            .iter()
            .all(|p| pipes.iter().filter(|q| *q == p).count() == 2)
}

/// A primary holds a 0600 root file open (and, as root, its stdin is a pipe); its
/// workers run as nobody. Each worker starts with descriptors 0, 1, 2 and its channel,
/// nothing else; none holds the file; stdin is /dev/null. Not root: the same without
/// `SC_USER` (the descriptor set only).
pub fn iso_inherit_nothing() -> Outcome {
    let root = proc::is_root();
    let secret = Secret::create("inherit")?;
    let mut env = vec![
        ("SC_MODE", "round-robin".to_string()),
        ("SC_WORKERS", "2".into()),
        ("SC_THREADS", "1".into()),
        ("SC_SECRET", secret.path.display().to_string()),
    ];
    if root {
        env.push(("SC_USER", "nobody".into()));
    } else {
        println!("    not root: workers keep the primary's user (the descriptor set only)");
    }
    let mut srv = Server::spawn_with_stdin(proc::self_command(&env), Stdio::piped())?;
    let t = targets(&mut srv)?;
    let secret_path = secret.path.display().to_string();
    let held = |pid: u32| {
        proc::fd_targets(pid)
            .into_iter()
            .find(|(_, target)| *target == secret_path)
    };
    let in_primary = held(srv.pid()).ok_or("the primary does not hold the secret")?;
    let answers = ask_every_worker(&t[0], "fds", 2)?;
    for (pid, r) in &answers {
        let fds: Vec<&str> = r.text.split(',').collect();
        let stdin = proc::fd_targets(*pid)
            .into_iter()
            .find(|(n, _)| *n == 0)
            .map(|(_, l)| l)
            .unwrap_or_default();
        println!(
            "    worker {} (pid {pid}): descriptors at start {}; stdin {stdin}; the \
             secret (fd {} in the primary) {}",
            r.worker,
            r.text,
            in_primary.0,
            if held(*pid).is_some() {
                "HELD"
            } else {
                "not held"
            }
        );
        check(held(*pid).is_none(), || {
            format!(
                "worker {} holds the primary's {secret_path} (0600 root): {:?}",
                r.worker,
                proc::fd_targets(*pid)
            )
        })?;
        check(
            fds[..3] == ["0", "1", "2"] && only_its_own(*pid, &fds[3..], None),
            || {
                format!(
                    "worker {} started with descriptors {} (want 0,1,2, its channel, its \
                     signal pipe and its disconnect pipe): {:?}",
                    r.worker,
                    r.text,
                    proc::fd_targets(*pid)
                )
            },
        )?;
        if root {
            check(stdin == "/dev/null", || {
                format!("worker {} runs as nobody with stdin {stdin}", r.worker)
            })?;
        }
    }
    stop_and_check(&mut srv)
}

/// The primary has a controlling terminal (run under `script(1)`, as from a shell);
/// every worker has none, so nothing it does reaches that terminal (`TIOCSTI` into the
/// primary's shell needs it as controlling terminal), yet stays in the primary's
/// process group and session, as Node's workers do: a Ctrl-C typed into the terminal
/// (`^C` written to it) reaches the primary and every worker, and the cluster stops
/// gracefully with exit 0.
pub fn iso_no_controlling_tty() -> Outcome {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // `stty -onlcr`: lines arrive with "\n", not the terminal's "\r\n".
    let mut cmd = Command::new("script");
    cmd.arg("-qec")
        .arg(format!("stty -onlcr; exec '{}'", exe.display()))
        .arg("/dev/null")
        .env("CLUSTER_SCENARIO_SERVER", "1")
        .env("SC_MODE", "round-robin")
        .env("SC_WORKERS", "2")
        .env("SC_THREADS", "1");
    // script(1) copies its stdin into the terminal: the keyboard.
    let mut srv = Server::spawn_with_stdin(cmd, Stdio::piped())?;
    let result = no_controlling_tty(&mut srv);
    if result.is_err() {
        // The primary is script(1)'s child, in a session of its own: killing script
        // (what dropping `srv` does) would leave it running.
        for (pid, _) in proc::children_of(srv.pid()) {
            let _ = proc::signal(pid, "KILL");
        }
    }
    result
}

fn no_controlling_tty(srv: &mut Server) -> Outcome {
    let t = targets(srv)?;
    let answers = ask_every_worker(&t[0], "hi", 2)?;
    let first = *answers.keys().next().ok_or("no worker")?;
    let primary = proc::parent_of(first).ok_or("no parent")?;
    let p = proc::job_ids(primary).ok_or("no primary stat")?;
    check(p.tty != 0, || {
        "script(1) gave the primary no terminal (tty_nr 0), nothing to check".to_string()
    })?;
    for (&pid, r) in &answers {
        let w = proc::job_ids(pid).ok_or("no worker stat")?;
        println!(
            "    primary {primary}: {p:?}; worker {} (pid {pid}): {w:?}",
            r.worker
        );
        check(w.tty == 0, || {
            format!(
                "worker {} has controlling terminal {} (want none)",
                r.worker, w.tty
            )
        })?;
        check(w.group == p.group && w.session == p.session, || {
            format!(
                "worker {} is in process group {} of session {}, not the primary's ({} of {})",
                r.worker, w.group, w.session, p.group, p.session
            )
        })?;
    }
    // Ctrl-C: the terminal sends SIGINT to its foreground process group.
    let keyboard = srv.child.stdin.as_mut().ok_or("no stdin")?;
    keyboard
        .write_all(b"\x03")
        .and_then(|()| keyboard.flush())
        .map_err(|e| format!("typing ^C: {e}"))?;
    let end = exited_ok(srv, Duration::from_secs(10))?;
    clean_end(srv, &end)
}

/// A non-root primary with the ambient capabilities of a systemd unit's
/// `AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID` (started with
/// setpriv(1)), workers `--user nobody`: every id is nobody's, every capability set is
/// empty, `NoNewPrivs` is 1, and the workers serve.
pub fn iso_capabilities_dropped() -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (setpriv needs root to start a user with capabilities; CI runs as root)");
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let caps = "+net_bind_service,+setuid,+setgid";
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=4242",
        "--regid=4242",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        "--",
    ])
    .arg(&exe)
    .env("CLUSTER_SCENARIO_SERVER", "1")
    .env("SC_MODE", "round-robin")
    .env("SC_WORKERS", "2")
    .env("SC_THREADS", "1")
    .env("SC_USER", "nobody");
    let mut srv = Server::spawn(cmd)?;
    let t = targets(&mut srv)?;
    let primary = srv.pid();
    let field = |pid: u32, name: &str| proc::status_field(pid, name).unwrap_or_default();
    println!(
        "    primary {primary}: Uid {}, CapEff {}, CapAmb {}",
        field(primary, "Uid"),
        field(primary, "CapEff"),
        field(primary, "CapAmb")
    );
    check(field(primary, "CapAmb") == "00000000000004c0", || {
        format!(
            "setpriv did not give the primary its ambient capabilities: {}",
            field(primary, "CapAmb")
        )
    })?;
    let answers = ask_every_worker(&t[0], "hi", 2)?;
    for (&pid, r) in &answers {
        let show: Vec<String> = [
            "Uid",
            "Gid",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapAmb",
            "NoNewPrivs",
        ]
        .iter()
        .map(|n| format!("{n} {}", field(pid, n)))
        .collect();
        println!("    worker {} (pid {pid}): {}", r.worker, show.join(", "));
        let nobody = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
        check(
            field(pid, "Uid") == nobody && field(pid, "Gid") == nobody,
            || format!("worker {} ids: {}", r.worker, show.join(", ")),
        )?;
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            check(field(pid, set) == "0000000000000000", || {
                format!("worker {} kept capabilities: {}", r.worker, show.join(", "))
            })?;
        }
        check(field(pid, "NoNewPrivs") == "1", || {
            format!(
                "worker {} may gain privileges: {}",
                r.worker,
                show.join(", ")
            )
        })?;
    }
    stop_and_check(&mut srv)
}

/// Round-robin on an adopted listener (fd:0, as systemd passes one): a worker is killed
/// and replaced. The replacement's fork must not touch the listener's shared file
/// status flags: the primary's listener stays non-blocking, the primary keeps serving,
/// and a SIGTERM still stops it (a primary blocked in `accept` would not). Then the
/// other holder of the description (here the driver, as systemd would be) clears
/// `O_NONBLOCK` itself: the primary sets it again before accepting, and says so.
pub fn iso_adopted_rr_survives_respawn() -> Outcome {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cmd = proc::self_command(&[
        ("SC_MODE", "round-robin".into()),
        ("SC_WORKERS", "2".into()),
        ("SC_THREADS", "1".into()),
        ("SC_LISTEN", "fd:0".into()),
        ("SC_RESPAWN", "10:100:0".into()),
    ]);
    // The driver keeps a descriptor of the same open file description, as systemd does.
    let ours = listener.try_clone().map_err(|e| e.to_string())?;
    let stdin = Stdio::from(std::os::fd::OwnedFd::from(listener));
    let mut srv = Server::spawn_with_stdin(cmd, stdin)?;
    let t = targets(&mut srv)?;
    let primary = srv.pid();
    let flags = || proc::fd_flags(primary, 0).unwrap_or(0);
    let nonblocking = |f: u32| f & 0o4000 != 0;
    let before = flags();
    client::ask(&t[0], "hi", Duration::from_secs(5))?;
    let victim = proc::worker_pid(&srv.seen, 1)?;
    proc::signal(victim, "KILL")?;
    srv.expect("exit 1 ", Duration::from_secs(10))?;
    srv.expect("listening 3 ", Duration::from_secs(10))?;
    let after = flags();
    println!(
        "    fd:0 ({addr}) flags in the primary: {before:o} before, {after:o} after worker 1 \
         was killed and replaced"
    );
    check(nonblocking(before) && nonblocking(after), || {
        format!("the adopted listener lost O_NONBLOCK: flags {before:o} -> {after:o}")
    })?;
    let load = client::load(&t[0], 50, 2, "hi", Duration::from_secs(5));
    println!("    after the respawn: {} ok", load.ok);
    check(load.errors.is_empty() && load.ok == 50, || {
        format!("{} ok, errors {:?}", load.ok, load.errors.first())
    })?;
    ours.set_nonblocking(false).map_err(|e| e.to_string())?;
    let cleared = flags();
    let load = client::load(&t[0], 50, 2, "hi", Duration::from_secs(5));
    let report = srv.expect_containing("O_NONBLOCK", Duration::from_secs(5))?;
    let restored = flags();
    println!(
        "    the driver cleared O_NONBLOCK (flags {cleared:o}): {} ok, flags {restored:o}, \
         reported: {report}",
        load.ok
    );
    check(load.errors.is_empty() && load.ok == 50, || {
        format!("{} ok, errors {:?}", load.ok, load.errors.first())
    })?;
    check(nonblocking(restored), || {
        format!("the primary accepts on a blocking listener: flags {restored:o}")
    })?;
    drop(ours);
    stop_and_check(&mut srv)
}

/// nginx's log files: the primary (root, when the scenarios run as root) opens a 0600
/// log and names it with `keep_fd`; workers (nobody) cannot open it but write to it
/// through the kept descriptor, which is the only one they start with beyond stdio and
/// their channel.
pub fn iso_keep_fd() -> Outcome {
    let root = proc::is_root();
    let log = Secret {
        path: std::env::temp_dir().join(format!("cluster-scenario-keep-{}", std::process::id())),
    };
    let mut env = vec![
        ("SC_MODE", "round-robin".to_string()),
        ("SC_WORKERS", "2".into()),
        ("SC_THREADS", "1".into()),
        ("SC_KEEP", log.path.display().to_string()),
    ];
    if root {
        env.push(("SC_USER", "nobody".into()));
    } else {
        println!("    not root: workers keep the primary's user");
    }
    let mut srv = Server::spawn(proc::self_command(&env))?;
    let t = targets(&mut srv)?;
    let kept = proc::fd_targets(srv.pid())
        .into_iter()
        .find(|(_, l)| *l == log.path.display().to_string())
        .map(|(n, _)| n.to_string())
        .ok_or("the primary does not hold the log")?;
    let answers = ask_every_worker(&t[0], "fds", 2)?;
    for (pid, r) in &answers {
        let fds: Vec<&str> = r.text.split(',').collect();
        println!(
            "    worker {} (pid {pid}): descriptors at start {} (the log is {kept})",
            r.worker, r.text
        );
        check(
            fds[..3] == ["0", "1", "2"] && only_its_own(*pid, &fds[3..], Some(&kept)),
            || {
                format!(
                    "worker {} started with {} (want 0,1,2, its channel, its signal pipe, \
                     its disconnect pipe and {kept})",
                    r.worker, r.text
                )
            },
        )?;
    }
    let mut logged = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = client::ask(&t[0], "log a-line", Duration::from_secs(5))?;
        check(r.text == "logged", || {
            format!("worker {}: {}", r.worker, r.text)
        })?;
        logged.insert(r.pid);
        if logged.len() >= 2 {
            break;
        }
    }
    let text = std::fs::read_to_string(&log.path).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&log.path).map_err(|e| e.to_string())?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    println!(
        "    the log ({:o}, owner {}) has {} line(s) from {} worker(s)",
        meta.permissions().mode() & 0o777,
        meta.uid(),
        text.lines().count(),
        logged.len()
    );
    check(logged.len() == 2 && text.lines().count() >= 2, || {
        format!("log: {text:?}")
    })?;
    stop_and_check(&mut srv)
}
