//! What one worker can do to the rest: write into the application's log through what
//! the primary prints for it, signal its siblings, hold memory `max_rss` does not see.

use std::time::Duration;

use crate::util::check::{all_ok, check, clean_end, exited_ok, stop_and_check, Outcome, Spec};
use crate::util::client::{self, Target};
use crate::util::proc::{self, Server};

const T: Duration = Duration::from_secs(10);

/// A worker (trusted, silenced: it writes nothing itself) asks for
/// `unix:/tmp/x\n[primary] forged line\x1b[2J`, outside the allowlist. The primary's
/// report of it (`Error::ListenDenied`, `Event::ListenFailed`, printed with `Display`
/// by the scenario server as an application would log them) is one line each, with
/// the newline and the ESC shown escaped: no line of the primary's output begins with
/// the forged text, and no ESC byte reaches its stdout or stderr.
pub fn log_injection_escaped() -> Outcome {
    let forged = "unix:/tmp/x\n[primary] forged line\x1b[2J";
    let shown = "unix:/tmp/x\\n[primary] forged line\\u{1b}[2J";
    let s = Spec {
        mode: "round-robin",
        workers: 1,
        listen: "127.0.0.1:0".into(),
        threads: 1,
        env: vec![
            ("SC_ALLOW", "127.0.0.1:0".into()),
            ("SC_ASK", forged.into()),
            ("SC_SILENT", "1".into()),
            ("SC_RESPAWN", "never".into()),
        ],
    };
    let (mut srv, _targets) = s.start()?;
    let denied = srv.seen_or_expect_containing("asked to listen on unix:/tmp/x", T)?;
    println!("    {denied}");
    check(
        denied.starts_with("error worker 1 ")
            && denied.contains(&format!("asked to listen on {shown}: refused")),
        || format!("the refusal is not one escaped line: {denied:?}"),
    )?;
    let failed = srv.seen_or_expect("listen-failed 1 unix:", T)?;
    check(
        failed.starts_with(&format!(
            "listen-failed 1 {shown} cannot listen on {shown}:"
        )),
        || format!("the failed listen is not one escaped line: {failed:?}"),
    )?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    // Lines of stderr come as `err: …`.
    let forged_line = srv.seen.iter().chain(&end.rest).find(|l| {
        l.trim_start_matches("err: ")
            .starts_with("[primary] forged line")
    });
    check(forged_line.is_none(), || {
        format!("a line of the primary's output is the worker's: {forged_line:?}")
    })?;
    let esc =
        srv.seen.iter().chain(&end.rest).any(|l| l.contains('\x1b')) || end.stderr.contains('\x1b');
    check(!esc, || {
        format!(
            "an ESC byte reached the primary's output: {:?} / {:?}",
            srv.seen, end.stderr
        )
    })?;
    clean_end(&srv, &end)
}

/// `n` consecutive uids that no account in /etc/passwd has and no process runs as,
/// from systemd's dynamic range down (61184-65519) up.
fn unused_uids(n: u32) -> Result<u32, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    let mut taken: Vec<u32> = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    for e in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            taken.extend(proc::ids_of(pid).map(|(uid, _)| uid));
        }
    }
    (61184..65519 - n)
        .find(|first| (*first..first + n).all(|uid| !taken.contains(&uid)))
        .ok_or_else(|| format!("no {n} unused uids in 61184-65519"))
}

/// The pids of the live workers `ids`, from the `fork` lines.
fn pids(srv: &Server, ids: &[u32]) -> Result<Vec<u32>, String> {
    ids.iter()
        .map(|&id| proc::worker_pid(&srv.seen, id))
        .collect()
}

/// What the worker that got `stop-siblings` reported: (pid, result) per sibling.
fn stop_siblings(t: &Target) -> Result<(u32, Vec<(u32, String)>), String> {
    let reply = client::ask(t, "stop-siblings", T)?;
    let list = reply
        .text
        .strip_prefix("stopped ")
        .ok_or_else(|| format!("{reply:?}"))?;
    let results = list
        .split(',')
        .filter_map(|r| {
            let (pid, result) = r.split_once(':')?;
            Some((pid.parse().ok()?, result.to_string()))
        })
        .collect();
    Ok((reply.worker, results))
}

/// Workers run as `nobody`'s group with one uid each (`User::per_worker_uids`, 3
/// workers, 6 uids that no account has and no process runs as). One worker, playing
/// a compromised one, runs `kill -STOP` on each sibling (found in /proc): `EPERM` for
/// both; neither is stopped, and all three serve. A reload replaces all three, each
/// replacement with a uid no worker still running has; `SIGTTIN` for a fourth worker
/// is refused (the range carries 3), naming the range.
pub fn sibling_signals_refused() -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (workers run as other uids; CI runs as root)");
        return Ok(());
    }
    let first = unused_uids(6)?;
    let range = first..first + 6;
    let s = Spec {
        mode: "round-robin",
        workers: 3,
        listen: "127.0.0.1:0".into(),
        threads: 2,
        env: vec![
            ("SC_USER", "nobody".into()),
            ("SC_UIDS", format!("{first}:6")),
        ],
    };
    let (mut srv, targets) = s.start()?;
    let t = &targets[0];
    let distinct = |srv: &Server, ids: &[u32]| -> Result<Vec<u32>, String> {
        let uids: Vec<u32> = pids(srv, ids)?
            .iter()
            .map(|&p| {
                proc::ids_of(p)
                    .map(|(u, _)| u)
                    .ok_or(format!("pid {p} gone"))
            })
            .collect::<Result<_, _>>()?;
        let mut unique = uids.clone();
        unique.sort_unstable();
        unique.dedup();
        check(
            unique.len() == ids.len() && uids.iter().all(|u| range.contains(u)),
            || format!("workers {ids:?} run as uids {uids:?}, not distinct ones of {range:?}"),
        )?;
        Ok(uids)
    };
    let uids = distinct(&srv, &[1, 2, 3])?;
    println!("    workers 1, 2, 3 run as uids {uids:?}");
    let (rogue, results) = stop_siblings(t)?;
    println!("    worker {rogue}: kill -STOP on its siblings: {results:?}");
    check(
        results.len() == 2 && results.iter().all(|(_, r)| r == "EPERM"),
        || format!("worker {rogue} signalled its siblings: {results:?}"),
    )?;
    for pid in pids(&srv, &[1, 2, 3])? {
        let state = proc::children_of(srv.pid())
            .into_iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, s)| s);
        check(state.as_deref().is_some_and(|s| s != "T"), || {
            format!("worker pid {pid} is {state:?}")
        })?;
    }
    let load = client::load(t, 30, 1, "hi", T);
    all_ok(&load, 30, "after the attack")?;
    check(load.by_worker.len() == 3, || {
        format!("not every worker served: {}", load.shares())
    })?;
    println!("    then: {}", load.shares());
    // A reload: each replacement is forked while the worker it replaces serves.
    srv.signal("HUP")?;
    srv.expect("reload-finished 3 complete=true", Duration::from_secs(30))?;
    let new = distinct(&srv, &[4, 5, 6])?;
    println!("    after a reload, workers 4, 5, 6 run as uids {new:?}");
    // Worker 4 is forked while all three serve: the lowest uid none of them has.
    check(new[0] == first + 3, || {
        format!("the first replacement did not take a free uid: {new:?}")
    })?;
    srv.signal("TTIN")?;
    let refused = srv.expect("error 4 workers asked for", T)?;
    println!("    SIGTTIN: {refused}");
    check(
        refused.contains(&format!("uids {first}-{}", first + 5)) && refused.contains("at most 3"),
        || refused.clone(),
    )?;
    stop_and_check(&mut srv)
}

/// The same attack with the workers sharing `nobody`'s uid (`Builder::user` alone, the
/// default): `kill -STOP` succeeds on both siblings, they stop, and the attacker serves
/// every request that follows (round-robin takes back what it sent the stopped ones).
/// Then the driver continues them (`SIGCONT`) and the cluster stops cleanly.
pub fn sibling_signals_shared_uid() -> Outcome {
    if !proc::is_root() {
        println!("    skipped: not root (workers run as nobody; CI runs as root)");
        return Ok(());
    }
    let s = Spec {
        mode: "round-robin",
        workers: 3,
        listen: "127.0.0.1:0".into(),
        threads: 2,
        env: vec![("SC_USER", "nobody".into())],
    };
    let (mut srv, targets) = s.start()?;
    let t = &targets[0];
    let (rogue, results) = stop_siblings(t)?;
    println!("    worker {rogue}: kill -STOP on its siblings: {results:?}");
    let stopped: Vec<u32> = results.iter().map(|(p, _)| *p).collect();
    let attack = || -> Outcome {
        check(
            results.len() == 2 && results.iter().all(|(_, r)| r == "ok"),
            || format!("worker {rogue} could not signal its siblings: {results:?}"),
        )?;
        for &pid in &stopped {
            proc::wait_stopped(pid, T)?;
        }
        let load = client::load(t, 6, 1, "hi", T);
        all_ok(&load, 6, "with the siblings stopped")?;
        println!("    then: {}", load.shares());
        check(load.by_worker.keys().all(|&w| w == rogue), || {
            format!("a stopped worker served: {}", load.shares())
        })
    };
    let outcome = attack();
    // Continued whatever the outcome, so that the cluster can stop.
    let continued = proc::signal_all(&stopped, "CONT");
    outcome?;
    continued?;
    stop_and_check(&mut srv)
}

/// `max_rss` 32 MiB, 2 workers: one writes 40 MiB into a file in `/dev/shm` that has
/// no name (`O_TMPFILE`, what `memfd_create` gives) and keeps it open without mapping
/// it, so its resident set stays a few MiB. The primary counts the file and recycles
/// that worker (`max-rss`); the other is left alone, and the replacement serves.
pub fn max_rss_counts_held_memory() -> Outcome {
    let s = Spec {
        mode: "round-robin",
        workers: 2,
        listen: "127.0.0.1:0".into(),
        threads: 2,
        env: vec![("SC_MAX_RSS_MIB", "32".into())],
    };
    let (mut srv, targets) = s.start()?;
    let t = &targets[0];
    let reply = client::ask(t, "hold-shm 40", T)?;
    check(reply.text == "held 40", || format!("{reply:?}"))?;
    let holder = reply.worker;
    let rss = srv.seen_or_expect(&format!("rss {holder} "), T)?;
    let replacing = srv.expect("replacing ", Duration::from_secs(20))?;
    println!("    worker {holder} ({rss}): {replacing}");
    check(
        replacing.starts_with(&format!("replacing {holder} {} max-rss", reply.pid)),
        || format!("worker {holder} holding 40 MiB was not the one recycled: {replacing}"),
    )?;
    let exit = srv.expect(&format!("exit {holder} "), T)?;
    check(exit.contains("requested=true"), || exit.clone())?;
    let load = client::load(t, 10, 1, "hi", T);
    all_ok(&load, 10, "after the recycle")?;
    check(!load.by_worker.contains_key(&holder), || {
        format!("the recycled worker served: {}", load.shares())
    })?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    let replaced = srv
        .seen
        .iter()
        .chain(&end.rest)
        .filter(|l| l.starts_with("replacing "))
        .count();
    check(replaced == 1, || {
        format!("{replaced} workers were replaced, not 1: {:?}", srv.seen)
    })?;
    clean_end(&srv, &end)
}
