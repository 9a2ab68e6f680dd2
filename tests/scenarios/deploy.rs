//! What a deployment sends a cluster: a service manager's control-group kill (the
//! primary and every worker signalled at once), Ctrl-C in a terminal, a `kill` of the
//! primary alone. Requests already begun are answered, the cluster exits 0, and no
//! worker is forked once the signal came.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
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
