//! The primary does not trust what workers ask of it: listen requests outside the
//! allowlist, socket files whose path changed meaning, a port another service holds,
//! a stale-socket probe against a full backlog; and a handle nobody serves any more
//! closes, so its clients are refused instead of left hanging.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, stop_and_check, Outcome, Spec};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

fn spec<'a>(mode: &'a str, listen: String, env: Vec<(&'a str, String)>) -> Spec<'a> {
    Spec {
        mode,
        workers: 1,
        listen,
        threads: 2,
        env,
    }
}

/// A fresh scratch directory for one scenario.
fn scratch(tag: &str) -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("cluster-trust-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn mode_env(mode: &str) -> (&'static str, String) {
    ("SC_MODE", mode.to_string())
}

/// Workers run as `nobody` ask the root primary for what it must not give: its
/// private admin listener (`fd:N`), a Unix socket in a directory only root may write,
/// a privileged port, an allowed address with options of their own choosing. Each is
/// refused with `EACCES` naming the address, reported as an error, and nothing is
/// created; the allowed address is served.
pub fn untrusted_listen_requests() -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (workers run as nobody; CI runs as root)");
        return Ok(());
    }
    let dir = scratch("root0700")?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let sock = dir.join("planted.sock");
    // 127.0.0.2:0 is allowed, with the default options: asked for with others, it is
    // refused (a worker would impose them on every worker's connections).
    let asks = format!(
        "admin,unix:{},127.0.0.1:1,timeouts@127.0.0.2:0",
        sock.display()
    );
    // An allowed Unix socket too: with untrusted workers the primary binds it through
    // the directory it checked (a `/proc/self/fd` path), and it must still serve.
    let served = dir.join("served.sock");
    let listen = format!("127.0.0.1:0,unix:{}", served.display());
    let s = spec(
        "round-robin",
        listen.clone(),
        vec![
            ("SC_USER", "nobody".into()),
            ("SC_ALLOW", format!("{listen},127.0.0.2:0")),
            ("SC_ADMIN", "1".into()),
            ("SC_ASK", asks),
            ("SC_RESPAWN", "never".into()),
        ],
    );
    let (mut srv, targets) = s.start()?;
    for what in ["fd:", "unix:", "127.0.0.1:1", "127.0.0.2:0"] {
        let line =
            srv.seen_or_expect_containing(&format!("ask {what}"), Duration::from_secs(10))?;
        check(
            line.contains("Permission denied") && line.contains("cannot listen on"),
            || format!("a worker run as nobody got {what}…: {line}"),
        )?;
        let error = srv.seen_or_expect_containing(
            &format!("asked to listen on {what}"),
            Duration::from_secs(10),
        )?;
        println!("    {}", line.trim_start_matches("err: "));
        check(error.starts_with("error worker 1"), || error.clone())?;
    }
    check(!sock.exists(), || {
        format!("{} was created for a worker", sock.display())
    })?;
    for t in &targets {
        let reply = client::ask(t, "hi", Duration::from_secs(5))?;
        check(reply.worker == 1, || format!("{reply:?}"))?;
    }
    stop_and_check(&mut srv)?;
    check(!served.exists(), || {
        format!("{} was left behind", served.display())
    })?;
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}

/// `user` without `listen_only` is refused at start, naming what to do.
pub fn user_needs_allowlist() -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_USER", "nobody".into()),
        ("SC_NO_ALLOW", "1".into()),
        ("SC_LISTEN", "127.0.0.1:0".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let line = srv.expect("error ", Duration::from_secs(10))?;
    check(
        line.contains("listen_only") && line.contains("nobody"),
        || line.clone(),
    )?;
    let status = srv.wait(Duration::from_secs(10))?;
    check(status.code() == Some(1), || format!("exit {status}"))?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// The Unix socket file is removed through the directory it was created in, and only
/// while it is the same file: the directory swapped for a symlink to another holding a
/// file of the same name, shutdown removes the cluster's own file and not that one.
pub fn socket_file_not_followed(mode: &str) -> Outcome {
    let root = scratch(&format!("swap-{mode}"))?;
    let d = root.join("d");
    let victim = root.join("victim");
    std::fs::create_dir(&d).map_err(|e| e.to_string())?;
    std::fs::create_dir(&victim).map_err(|e| e.to_string())?;
    let sock = d.join("s.sock");
    let s = spec(
        mode,
        format!("127.0.0.1:0,unix:{}", sock.display()),
        vec![mode_env(mode)],
    );
    let (mut srv, targets) = s.start()?;
    client::ask(&targets[1], "hi", Duration::from_secs(5))?;
    // What a worker allowed to write in `root` could do before shutdown.
    std::fs::rename(&d, root.join("d.old")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&victim, &d).map_err(|e| e.to_string())?;
    std::fs::write(victim.join("s.sock"), b"not yours").map_err(|e| e.to_string())?;
    stop_and_check(&mut srv)?;
    check(victim.join("s.sock").exists(), || {
        "shutdown followed the symlink and removed another file".into()
    })?;
    check(!root.join("d.old/s.sock").exists(), || {
        "the cluster's own socket file was left behind".into()
    })?;
    println!("    {mode}: own socket file removed, the file behind the symlink kept");
    std::fs::remove_dir_all(&root).map_err(|e| e.to_string())
}

/// A port another service holds in its own `SO_REUSEPORT` group is in use: a reuse-port
/// cluster asked for it fails to listen instead of joining that group and taking its
/// connections.
pub fn reuse_port_foreign_group() -> Outcome {
    let s = spec("reuse-port", "127.0.0.1:0".into(), vec![]);
    let (mut other, targets) = s.start()?;
    let Target::Tcp(addr) = targets[0] else {
        return Err("not TCP".into());
    };
    address_in_use("reuse-port", &addr.to_string())?;
    // The service keeps all of its connections.
    let load = client::load(&targets[0], 50, 2, "hi", Duration::from_secs(10));
    check(load.ok == 50, || {
        format!("{} ok, {:?}", load.ok, load.errors.first())
    })?;
    stop_and_check(&mut other)
}

/// A one-worker cluster asked for `listen` reports it in use, then stops cleanly.
fn address_in_use(mode: &str, listen: &str) -> Outcome {
    let cmd = proc::self_command(&[
        ("SC_MODE", mode.into()),
        ("SC_WORKERS", "1".into()),
        ("SC_LISTEN", listen.into()),
        ("SC_RESPAWN", "never".into()),
    ]);
    let mut srv = Server::spawn(cmd)?;
    let failed = srv.expect("listen-failed ", Duration::from_secs(10))?;
    println!("    {failed}");
    check(failed.contains("Address already in use"), || failed.clone())?;
    let end = exited_ok(&mut srv, Duration::from_secs(10))?;
    clean_end(&srv, &end)
}

/// The stale-socket probe never waits: a live listener whose backlog is full is "in
/// use" at once (a blocking `connect` would hang the primary until someone accepts).
pub fn stale_probe_full_backlog() -> Outcome {
    let dir = scratch("backlog")?;
    let path = dir.join("busy.sock");
    let opts = cluster::ListenOptions::new().backlog(0);
    let busy = cluster::Listener::bind_with(format!("unix:{}", path.display()).as_str(), &opts)
        .map_err(|e| e.to_string())?;
    // With a backlog of 0 the kernel queues one connection; the next would wait.
    let queued = std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.to_string())?;
    address_in_use("round-robin", &format!("unix:{}", path.display()))?;
    check(path.exists(), || {
        "the live socket's file was removed".into()
    })?;
    drop(queued);
    drop(busy);
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}

/// When the only worker closes its listener on purpose, the primary closes that handle:
/// clients of that address are refused (not queued in a backlog nobody will accept
/// from), the other address keeps serving.
pub fn unused_handle_released(mode: &str) -> Outcome {
    let s = spec(mode, "127.0.0.1:0,127.0.0.2:0".into(), vec![mode_env(mode)]);
    let (mut srv, targets) = s.start()?;
    client::ask(&targets[1], "hi", Duration::from_secs(5))?;
    let reply = client::ask(&targets[0], "unlisten 1", Duration::from_secs(5))?;
    check(!reply.text.contains("no-such-listener"), || {
        format!("{reply:?}")
    })?;
    proc::wait_until(
        &format!("{mode}: clients of the closed address to be refused"),
        Duration::from_secs(5),
        || {
            matches!(
                Conn::connect(&targets[1], Duration::from_secs(1)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    )?;
    let reply = client::ask(&targets[0], "hi", Duration::from_secs(5))?;
    println!(
        "    {mode}: closed address refused, the other still served by worker {}",
        reply.worker
    );
    stop_and_check(&mut srv)
}

/// A worker that stops reading its channel and then asks for its listener again and
/// again: each reply carries a copy of the listening socket, which would wait in the
/// primary's outbox (a descriptor each, up to thousands). After a few the primary
/// takes it for not reading, kills and replaces it; its descriptors come back.
pub fn unread_listen_replies() -> Outcome {
    let s = spec("shared", "127.0.0.1:0".into(), vec![mode_env("shared")]);
    let (mut srv, targets) = s.start()?;
    let before = proc::fds_of(srv.pid()).len();
    // Messages the worker never reads fill its inbox: its control thread stops
    // reading, and what the primary sends waits in the primary.
    client::ask(&targets[0], "send flood 2000 64", Duration::from_secs(5))?;
    let flooded = srv.expect("flooded ", Duration::from_secs(20))?;
    println!("    {flooded}");
    // The worker may be killed before it answers.
    let _ = client::ask(&targets[0], "bind-burst 64", Duration::from_secs(5));
    let error =
        srv.seen_or_expect_containing("worker 1 broke the protocol", Duration::from_secs(10))?;
    println!("    {error}");
    check(error.contains("replies are not read"), || error.clone())?;
    srv.seen_or_expect("listening 2 ", Duration::from_secs(10))?;
    let after = proc::fds_of(srv.pid()).len();
    println!("    primary descriptors: {before} before, {after} after the replacement");
    check(after <= before, || {
        format!("the primary holds {after} descriptors, {before} before")
    })?;
    client::ask(&targets[0], "hi", Duration::from_secs(5))?;
    stop_and_check(&mut srv)
}
