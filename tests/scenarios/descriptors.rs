//! Issue 19, items 1 and 2: nothing a worker attaches to a record makes the root
//! primary wait. Each scenario runs twice: as the kernel is (on Linux 6.16+ the primary
//! refuses descriptors, `SO_PASSRIGHTS` off, and the worker's `sendmsg` fails with
//! `EPERM`), and `_contained`, with the crate told to act as on an older kernel
//! (`CLUSTER_TEST_NO_PASSRIGHTS`: room for 253 descriptors, sockets closed abortively,
//! anything else on a closer thread). Either way round-robin clients keep being served
//! within the bound, and the run ends with the usual hygiene check.

use std::time::Duration;

use crate::util::check::{
    all_ok, check, clean_end, exited_ok, rogue_refused_or_killed, spec, stop_and_check, Outcome,
};
use crate::util::client;
use crate::util::fuse::{self, Fuse};
use crate::util::proc;
use std::os::fd::AsFd;

/// The bound on every wait for progress: well below the 30 s a lingering close takes.
const T: Duration = Duration::from_secs(5);

/// The scenario's environment, and whether the primary refuses descriptors (as this
/// driver's own kernel check says, unless `contained` pretends otherwise).
fn passrights<'a>(contained: bool, env: &mut Vec<(&'a str, &'a str)>) -> bool {
    if contained {
        env.push(("CLUSTER_TEST_NO_PASSRIGHTS", "1"));
        false
    } else {
        cluster::descriptors_refused_for_tests()
    }
}

/// Item 1: worker 1 attaches five descriptors to one record (`how`: online on its
/// control channel, new-conn on its round-robin hand-off channel): four files, then a
/// TCP socket with unsent data to a peer that never reads and `SO_LINGER` 30 s. Before
/// the fix the primary's control buffer held four; the kernel dropped the fifth inside
/// the primary, whose `recvmsg` then waited out the linger in `tcp_close`, and nothing
/// was served. (That needs the worker's own copy closed before the primary reads the
/// record, a race a worker usually wins; here the driver stops the primary meanwhile,
/// so it always does.) Now: refused at the worker's `sendmsg`, or received whole (253 fit) and
/// the socket closed abortively, the worker killed; 50 round-robin requests are
/// answered, and a message round trip through the primary.
pub fn rogue_five_descriptors(how: &str, contained: bool) -> Outcome {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?.to_string();
    let rogue = format!("fds5-{how}");
    let mut env = vec![("SC_ROGUE", rogue.as_str()), ("SC_ROGUE_PEER", &peer_addr)];
    let refused = passrights(contained, &mut env);
    let (mut srv, targets) = spec("round-robin", 2, 2, &env).start()?;
    // Worker 1 waits for the go before it starts accepting, so worker 2 answers this.
    let go = client::ask(&targets[0], "tell rogue-go", T)?;
    check(go.text.contains("sent"), || format!("rogue-go: {go:?}"))?;
    // The primary stopped while the rogue sends and closes its copy (see `rogue`).
    let primary = srv.pid();
    proc::signal(primary, "STOP")?;
    proc::wait_stopped(primary, T)?;
    let sent = srv.expect_containing("rogue: five sent", T);
    proc::signal(primary, "CONT")?;
    sent?;
    rogue_refused_or_killed(&mut srv, &rogue, refused, T)?;
    let load = client::load(&targets[0], 50, 4, "hi", T);
    all_ok(&load, 50, &rogue)?;
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    drop(peer);
    stop_and_check(&mut srv)
}

/// Item 2: worker 1 (run as root here, to open the test's mount; `/dev/fuse` is 0666 on
/// stock distributions, so an unprivileged worker can mount its own with `unshare -Ur`)
/// attaches a file on a FUSE file system to an online record. Every `close(2)` of a
/// FUSE file sends `FLUSH` and waits for the answer, which the test's server keeps back
/// from every thread of the primary until the end. Before the fix the primary's loop
/// closed it and hung there (nothing reported, nothing served). Now: refused at the
/// worker's `sendmsg` (and no `FLUSH` ever comes from the primary), or received, the
/// worker killed, and the file closed by a thread of the primary that is not its main
/// thread, while the main thread serves on and forks the rogue's replacement, which
/// listens (it did not inherit the file). Skipped without root, `/dev/fuse` or mount.
pub fn rogue_fuse_file(contained: bool) -> Outcome {
    if let Some(why) = fuse::unavailable() {
        println!("    skipped: {why}");
        return Ok(());
    }
    let fs = Fuse::mount()?;
    let file = fs.file().display().to_string();
    let mut env = vec![
        ("SC_ROGUE", "file-online"),
        ("SC_ROGUE_FILE", file.as_str()),
    ];
    let refused = passrights(contained, &mut env);
    let (mut srv, targets) = spec("round-robin", 2, 2, &env).start()?;
    // Dropped before `srv` when the scenario fails: a primary stuck in FLUSH goes on.
    let _release = fs.releaser();
    let primary = srv.pid();
    fs.hold_flushes_of(primary);
    let go = client::ask(&targets[0], "tell rogue-go", T)?;
    check(go.text.contains("sent"), || format!("rogue-go: {go:?}"))?;
    rogue_refused_or_killed(&mut srv, "file-online", refused, T)?;
    if !refused {
        let closer = fs.wait_held(T)?;
        println!("    FLUSH from thread {closer} of the primary ({primary}), kept unanswered");
        check(closer != primary, || {
            "the primary's main thread closed the FUSE file".to_string()
        })?;
        // With that closer stuck, the primary still forks, and the new worker (which
        // would wait in its own close_range had it inherited the file) listens.
        srv.seen_or_expect("listening 3 ", T)?;
    }
    let load = client::load(&targets[0], 50, 4, "hi", T);
    all_ok(&load, 50, "file-online")?;
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    if refused {
        let from_primary: Vec<_> = fs
            .flushes()
            .into_iter()
            .filter(|f| f.1 == primary)
            .collect();
        check(from_primary.is_empty(), || {
            format!("refused, yet the primary flushed the file: {from_primary:?}")
        })?;
    }
    fs.release();
    stop_and_check(&mut srv)
}

/// A local client of a round-robin Unix listener sends a descriptor into its
/// connection (`SCM_RIGHTS` on the stream: a TCP socket with unsent data and a 30 s
/// linger, its own copy closed), and no worker ever takes the connection (the one
/// worker has no accepting thread). At `SIGTERM` the primary lets go of the connection
/// (pending in its queue) or of the listener (whose backlog holds it); that last close
/// releases the descriptor queued in it, so before the fix the loop sat in `tcp_close`
/// for the linger time. Now Unix connections and listeners the primary lets go are
/// closed on a closer thread, and the cluster stops within the bound, exit 0.
pub fn pending_unix_connection_with_descriptor() -> Outcome {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("cluster-pending-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("rr.sock");
    let mut s = spec("round-robin", 1, 0, &[]);
    s.listen = format!("unix:{}", path.display());
    let (mut srv, _) = s.start()?;
    let client = std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.to_string())?;
    // A TCP socket whose close would linger: data its peer never reads, SO_LINGER 30 s.
    let mut stuck = std::net::TcpStream::connect(peer.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    stuck.set_nonblocking(true).map_err(|e| e.to_string())?;
    let chunk = [b'x'; 64 * 1024];
    for _ in 0..1024 {
        use std::io::Write;
        match stuck.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    cluster::Worker::set_linger_for_tests(stuck.as_fd(), Some(30)).map_err(|e| e.to_string())?;
    cluster::Worker::send_raw_record_on_for_tests(client.as_fd(), b"x", Some(stuck.as_fd()))
        .map_err(|e| format!("sending the descriptor into the connection: {e}"))?;
    drop(stuck); // the copy in the connection is the last one
                 // No credit ever comes: the connection waits in the listener's backlog, or in the
                 // primary's queue if it was accepted ahead. Either way the primary's close of it,
                 // or of the listener that holds it, is the last one.
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    clean_end(&srv, &end)?;
    drop(client);
    drop(peer);
    std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
}
