//! What every scenario checks: the scenario server's start, and the hygiene of a run
//! (exit status, the primary's descriptors and children, workers gone, no panic).

use std::time::Duration;

use super::client::{Load, Target};
use super::proc::{self, Server};

pub type Outcome = Result<(), String>;

pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Outcome {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

pub struct Spec<'a> {
    pub mode: &'a str,
    pub workers: usize,
    pub listen: String,
    pub threads: usize,
    /// Extra environment for the server (SC_RESPAWN, SC_USER, …).
    pub env: Vec<(&'a str, String)>,
}

/// `workers` workers of `threads` accepting threads each on 127.0.0.1:0, in `mode`, with
/// more environment.
pub fn spec<'a>(
    mode: &'a str,
    workers: usize,
    threads: usize,
    env: &[(&'a str, &str)],
) -> Spec<'a> {
    Spec {
        mode,
        workers,
        listen: "127.0.0.1:0".into(),
        threads,
        env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

/// Every one of `total` requests of a load run was answered.
pub fn all_ok(load: &Load, total: u64, what: &str) -> Outcome {
    check(load.errors.is_empty() && load.ok == total, || {
        format!(
            "{what}: {} of {total} ok, first error {:?}",
            load.ok,
            load.errors.first()
        )
    })
}

impl Spec<'_> {
    pub fn start(&self) -> Result<(Server, Vec<Target>), String> {
        self.start_under(&[])
    }

    /// Like `start`, with the server run by another program first (`wrapper`: its
    /// command line up to the server's, e.g. `prlimit --nofile=64:256 --`).
    pub fn start_under(&self, wrapper: &[&str]) -> Result<(Server, Vec<Target>), String> {
        let mut env = vec![
            ("SC_MODE", self.mode.to_string()),
            ("SC_WORKERS", self.workers.to_string()),
            ("SC_LISTEN", self.listen.clone()),
            ("SC_THREADS", self.threads.to_string()),
        ];
        env.extend(self.env.iter().cloned());
        let cmd = proc::self_command_under(wrapper, &env);
        let mut srv = Server::spawn(cmd)?;
        let ready = srv.expect("ready ", Duration::from_secs(20))?;
        let targets = ready["ready ".len()..]
            .split(',')
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((srv, targets))
    }
}

/// SIGTERM, then: exit status 0 within the bound, the primary's hygiene line clean,
/// every worker gone, no panic on stderr.
pub fn stop_and_check(srv: &mut Server) -> Outcome {
    srv.signal("TERM")?;
    let end = exited_ok(srv, Duration::from_secs(10))?;
    clean_end(srv, &end)
}

/// What a server printed after the last line a scenario read, once it exited.
pub struct Ended {
    pub rest: Vec<String>,
    pub stderr: String,
}

/// Waits (bounded) for the server to exit with status 0; returns the rest of its
/// output for the scenario's own checks.
pub fn exited_ok(srv: &mut Server, timeout: Duration) -> Result<Ended, String> {
    let status = srv.wait(timeout)?;
    let rest = srv.rest(Duration::from_secs(2));
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("server exited with {status}; stderr:\n{stderr}")
    })?;
    Ok(Ended { rest, stderr })
}

/// After the server exited: its hygiene line clean, no panic, every worker gone.
pub fn clean_end(srv: &Server, end: &Ended) -> Outcome {
    check_hygiene(&end.rest, &end.stderr)?;
    srv.check_workers_gone(Duration::from_secs(2))
}

pub fn check_hygiene(lines: &[String], stderr: &str) -> Outcome {
    let line = lines
        .iter()
        .find(|l| l.starts_with("hygiene "))
        .ok_or_else(|| format!("no hygiene line in {lines:?}; stderr:\n{stderr}"))?;
    let field = |name: &str| -> String {
        line.split(&format!("{name}="))
            .nth(1)
            .map(|s| s.split(" ").next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    check(field("fds_before") == field("fds_after"), || {
        format!("the primary leaked descriptors: {line}")
    })?;
    check(field("children") == "[]", || {
        format!("the primary left children: {line}")
    })?;
    check(!stderr.contains("panicked"), || {
        format!("a process panicked:\n{stderr}")
    })
}

/// The primary reported worker 1 for breaking the protocol and killed it (an exit by
/// SIGKILL it did not ask for); prints the report, tagged `what`.
pub fn rogue_killed(srv: &mut Server, what: &str, timeout: Duration) -> Outcome {
    let error = srv.seen_or_expect_containing("worker 1 broke the protocol", timeout)?;
    println!("    {what}: {error}");
    let exit = srv.seen_or_expect("exit 1 ", timeout)?;
    check(
        exit.contains("signal 9") && exit.contains("requested=false"),
        || format!("{what}: the rogue's exit: {exit}"),
    )
}

/// Worker 1 attached descriptors to a record. Where the primary refuses them
/// (`refused`: Linux 6.16+, `SO_PASSRIGHTS` off on its ends), the worker's `sendmsg`
/// failed with `EPERM` and nothing reached the primary; elsewhere the primary received
/// them, reported the worker and killed it.
pub fn rogue_refused_or_killed(
    srv: &mut Server,
    what: &str,
    refused: bool,
    timeout: Duration,
) -> Outcome {
    if !refused {
        return rogue_killed(srv, what, timeout);
    }
    let line = srv.seen_or_expect_containing("worker 1: rogue send: ", timeout)?;
    println!("    {what}: {line}");
    check(line.contains("Operation not permitted"), || {
        format!("{what}: the rogue's sendmsg: {line}")
    })?;
    check(
        !srv.seen.iter().any(|l| l.contains("broke the protocol")),
        || format!("{what}: refused, yet reported: {:?}", srv.seen),
    )
}
