//! The examples, driven exactly as their contract says: `hello` (ready line, X-Worker,
//! keep-alive, errors, slow clients, shutdown) and `messages`.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::util::check::{check, exited_ok, Outcome};
use crate::util::client::{self, Conn, Target};
use crate::util::proc::{self, Server};

pub fn start_hello(args: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
    let mut cmd = std::process::Command::new(proc::example("hello")?);
    cmd.args(args);
    cmd.env_remove("CLUSTER_SCHED_POLICY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn(cmd)
}

pub fn http_get(conn: &mut Conn, path: &str, close: bool) -> Result<(), String> {
    let extra = if close { "Connection: close\r\n" } else { "" };
    // One write: pieces written apiece would wait on Nagle's algorithm.
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    conn.write_all(req.as_bytes()).map_err(|e| e.to_string())
}

/// The demo's contract: `ready ADDR`, 200 with `X-Worker` 1..N, keep-alive, `Connection:
/// close`, 400 for garbage, SIGTERM → exit 0 with each worker's count on stderr.
pub fn hello_contract(mode: &str) -> Outcome {
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0", "--workers", "2", "--mode", mode],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let t = Duration::from_secs(5);
    // Keep-alive: three requests on one connection, then Connection: close.
    let mut conn = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let mut workers = std::collections::BTreeSet::new();
    {
        for i in 0..4 {
            http_get(&mut conn, "/", i == 3)?;
            let mut r = BufReader::new(&mut conn);
            let resp = client::read_response(&mut r)?;
            check(resp.status == 200 && resp.body == b"hello world\n", || {
                format!("bad response {resp:?}")
            })?;
            let w: u32 = resp
                .header("X-Worker")
                .and_then(|v| v.parse().ok())
                .ok_or("no X-Worker")?;
            check((1..=2).contains(&w), || {
                format!("X-Worker {w} out of range")
            })?;
            workers.insert(w);
            if i == 3 {
                check(client::closed_by_server(&mut r), || {
                    "Connection: close not honoured".into()
                })?;
            }
        }
    }
    check(workers.len() == 1, || {
        "one keep-alive connection was served by two workers".into()
    })?;
    // Malformed: 400, then the server closes.
    let mut bad = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    bad.write_all(b"NOT A REQUEST\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(&mut bad);
    let resp = client::read_response(&mut r)?;
    check(resp.status == 400, || {
        format!("garbage got {}", resp.status)
    })?;
    check(client::closed_by_server(&mut r), || {
        "connection left open after 400".into()
    })?;
    // Many connections: both workers serve.
    for _ in 0..40 {
        let mut c = Conn::connect(&target, t).map_err(|e| e.to_string())?;
        http_get(&mut c, "/", true)?;
        let resp = client::read_response(&mut BufReader::new(&mut c))?;
        if let Some(w) = resp.header("X-Worker").and_then(|v| v.parse().ok()) {
            workers.insert(w);
        }
    }
    check(workers.len() == 2, || {
        format!("only workers {workers:?} served")
    })?;
    // An idle keep-alive client must not hold up the shutdown.
    let _idle = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let stopped = Instant::now();
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    let took = stopped.elapsed();
    let stderr = srv.stderr();
    check(status.success(), || {
        format!("hello exited with {status}: {stderr}")
    })?;
    check(took < Duration::from_secs(5), || {
        format!("shutdown took {took:?}")
    })?;
    for w in 1..=2 {
        check(stderr.contains(&format!("worker {w}: served ")), || {
            format!("no count for worker {w}: {stderr}")
        })?;
    }
    srv.check_workers_gone(Duration::from_secs(2))
}

/// Clients that send nothing, or half a request, or vanish mid-request cost nothing
/// lasting: others are served meanwhile, and the silent one is closed by the server
/// after its idle limit (5 s) instead of holding a thread forever.
pub fn hello_slow_clients() -> Outcome {
    let mut srv = start_hello(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let t = Duration::from_secs(10);
    let mut silent = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    let mut half = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    half.write_all(b"GET / HTTP/1.1\r\nHost:")
        .map_err(|e| e.to_string())?;
    {
        let mut gone = Conn::connect(&target, t).map_err(|e| e.to_string())?;
        gone.write_all(b"GET / HT").map_err(|e| e.to_string())?;
    } // closed mid-request
      // Both of the worker's threads may be held by the silent and the half client; the
      // next request waits for one of them to give up (at most 5 s), then is served.
    let waited = Instant::now();
    let mut c = Conn::connect(&target, t).map_err(|e| e.to_string())?;
    http_get(&mut c, "/", true)?;
    let resp = client::read_response(&mut BufReader::new(&mut c))?;
    check(resp.status == 200, || format!("status {}", resp.status))?;
    println!(
        "    served after {:.1}s next to a silent and a half-sent client",
        waited.elapsed().as_secs_f64()
    );
    // The silent client is closed by the server (EOF), within the read timeout.
    let mut r = BufReader::new(&mut silent);
    check(client::closed_by_server(&mut r), || {
        "the silent connection was not closed by the server".into()
    })?;
    drop(half);
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    check(status.success(), || format!("exit {status}"))?;
    srv.check_workers_gone(Duration::from_secs(2))
}

/// hello on a Unix socket and on IPv6.
pub fn hello_families() -> Outcome {
    let path = std::env::temp_dir().join(format!("cluster-hello-{}.sock", std::process::id()));
    for listen in [format!("unix:{}", path.display()), "[::1]:0".to_string()] {
        let mut srv = start_hello(&["--listen", &listen, "--workers", "2"], &[])?;
        let ready = srv.expect("ready ", Duration::from_secs(20))?;
        let target = Target::parse(&ready["ready ".len()..])?;
        let mut c = Conn::connect(&target, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        http_get(&mut c, "/", true)?;
        let resp = client::read_response(&mut BufReader::new(&mut c))?;
        check(resp.status == 200, || {
            format!("{listen}: status {}", resp.status)
        })?;
        srv.signal("INT")?;
        let status = srv.wait(Duration::from_secs(10))?;
        check(status.success(), || format!("{listen}: exit {status}"))?;
        srv.check_workers_gone(Duration::from_secs(2))?;
    }
    check(!path.exists(), || "socket file left behind".into())
}

/// hello on an address in use exits non-zero at once, naming the address; a bad mode
/// in the environment is refused by name.
pub fn hello_errors() -> Outcome {
    let taken = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = taken.local_addr().map_err(|e| e.to_string())?.to_string();
    for mode in ["round-robin", "shared"] {
        let mut srv = start_hello(&["--listen", &addr, "--workers", "2", "--mode", mode], &[])?;
        let status = srv.wait(Duration::from_secs(10))?;
        let stderr = srv.stderr();
        check(!status.success(), || {
            format!("{mode}: exit {status} on an address in use")
        })?;
        check(
            stderr.contains(&format!("cannot listen on {addr}"))
                && stderr.contains("Address already in use"),
            || format!("{mode}: stderr does not name the address: {stderr}"),
        )?;
        srv.check_workers_gone(Duration::from_secs(2))?;
    }
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0"],
        &[("CLUSTER_SCHED_POLICY", "round_robin")],
    )?;
    let status = srv.wait(Duration::from_secs(10))?;
    let stderr = srv.stderr();
    check(
        !status.success()
            && stderr.contains("CLUSTER_SCHED_POLICY")
            && stderr.contains("round_robin"),
        || format!("bad policy: exit {status}, stderr {stderr}"),
    )?;
    let mut srv = start_hello(
        &["--listen", "127.0.0.1:0", "--workers", "1"],
        &[("CLUSTER_SCHED_POLICY", "none")],
    )?;
    srv.expect("ready ", Duration::from_secs(20))?;
    srv.signal("TERM")?;
    check(srv.wait(Duration::from_secs(10))?.success(), || {
        "policy none: bad exit".into()
    })
}

/// Bad command lines and settings: each a clear error that names the value, exit
/// status 2, and no worker started.
pub fn hello_bad_input() -> Outcome {
    let long = format!("unix:/tmp/{}", "a".repeat(200));
    // (arguments, environment, what stderr must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--listen", "127.0.0.1:99999"],
            vec![],
            "\"127.0.0.1:99999\"",
        ),
        (vec!["--listen", "nonsense"], vec![], "\"nonsense\""),
        (vec!["--listen", "[::1"], vec![], "\"[::1\""),
        (
            vec!["--listen", &long],
            vec![],
            "the Unix socket path is 205 bytes long",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--workers", "0"],
            vec![],
            "\"0\"",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--workers", "many"],
            vec![],
            "\"many\"",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--mode", "bogus"],
            vec![],
            "\"bogus\"",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--user", "no-such-user-xyz"],
            vec![],
            "\"no-such-user-xyz\"",
        ),
        (
            vec!["--listen", "127.0.0.1:0"],
            vec![("CLUSTER_SCHED_POLICY", "round-rubin")],
            "round-rubin",
        ),
    ];
    for (args, env, needle) in cases {
        let mut srv = start_hello(&args, &env)?;
        let status = srv.wait(Duration::from_secs(10))?;
        let stderr = srv.stderr();
        check(status.code() == Some(2), || {
            format!("{args:?} {env:?}: exit {status}, stderr {stderr}")
        })?;
        check(
            stderr.contains(needle) && !stderr.contains("panicked"),
            || format!("{args:?} {env:?}: stderr does not name {needle}: {stderr}"),
        )?;
        check(!srv.seen.iter().any(|l| l.starts_with("ready")), || {
            format!("{args:?}: started anyway")
        })?;
        check(proc::children_of(srv.pid()).is_empty(), || {
            format!("{args:?}: left a child")
        })?;
    }
    Ok(())
}

/// The demo's supervision: /pid, /crash and its respawn, SIGHUP reload, SIGTTIN and
/// SIGTTOU, as reported on its stderr; then a clean SIGTERM.
pub fn hello_supervision() -> Outcome {
    let mut srv = start_hello(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--threads",
            "2",
        ],
        &[],
    )?;
    let ready = srv.expect("ready ", Duration::from_secs(20))?;
    let target = Target::parse(&ready["ready ".len()..])?;
    let t = Duration::from_secs(5);
    let get = |path: &str| -> Result<client::HttpResponse, String> {
        let mut c = Conn::connect(&target, t).map_err(|e| e.to_string())?;
        http_get(&mut c, path, true)?;
        client::read_response(&mut BufReader::new(&mut c))
    };
    let workers: Vec<u32> = proc::children_of(srv.pid()).iter().map(|c| c.0).collect();
    let pid: u32 = String::from_utf8_lossy(&get("/pid")?.body)
        .trim()
        .parse()
        .map_err(|_| "bad /pid body")?;
    check(workers.contains(&pid), || {
        format!("/pid said {pid}, workers are {workers:?}")
    })?;
    // /crash: the worker aborts; the primary reports it and forks a replacement.
    let _ = get("/crash");
    let crash = srv.expect("err: hello: worker ", Duration::from_secs(5))?;
    check(
        crash.contains("signal 6") && crash.contains("crashed, respawning"),
        || crash.clone(),
    )?;
    srv.expect("err: hello: worker 3 started", Duration::from_secs(5))?;
    // SIGHUP: rolling restart.
    srv.signal("HUP")?;
    let done = srv.expect("err: hello: reload finished", Duration::from_secs(20))?;
    check(done.contains("2 replaced"), || done.clone())?;
    // SIGTTIN / SIGTTOU.
    srv.signal("TTIN")?;
    let started = srv.expect("err: hello: worker ", Duration::from_secs(5))?;
    check(
        started.ends_with(')') && started.contains("started"),
        || started.clone(),
    )?;
    srv.signal("TTOU")?;
    let gone = srv.expect("err: hello: worker ", Duration::from_secs(10))?;
    check(gone.contains("(asked to)"), || gone.clone())?;
    check(get("/")?.status == 200, || {
        "not serving after all that".into()
    })?;
    let workers: Vec<u32> = proc::children_of(srv.pid()).iter().map(|c| c.0).collect();
    srv.signal("TERM")?;
    let status = srv.wait(Duration::from_secs(10))?;
    check(status.success(), || format!("exit {status}"))?;
    proc::wait_until(
        "the demo's workers to be gone",
        Duration::from_secs(2),
        || {
            workers
                .iter()
                .all(|&p| proc::start_time(p).is_none() || proc::is_zombie(p))
        },
    )
}

/// The messages example: broadcast, a round trip each way, counts, and an oversized
/// message refused on both sides without breaking the channel.
pub fn messages_example() -> Outcome {
    let mut cmd = std::process::Command::new(proc::example("messages")?);
    cmd.args(["--workers", "3"]);
    let mut srv = Server::spawn(cmd)?;
    let end = exited_ok(&mut srv, Duration::from_secs(20))?;
    let out = end.rest;
    let all = out.join("\n");
    for want in [
        "broadcast to 3 workers, acknowledged by 3",
        "round trips: 3",
        "counts from 3 workers, total ",
        "worker side: oversized-refused 1 message of 65537 bytes exceeds the limit of 65536 bytes",
        "primary side: refused: message of 65537 bytes exceeds the limit of 65536 bytes",
        "the channel still works",
    ] {
        check(all.contains(want), || {
            format!("missing {want:?} in:\n{all}")
        })?;
    }
    let exits = out
        .iter()
        .filter(|l| l.ends_with("exited (exit code 0)"))
        .count();
    check(exits == 3, || format!("{exits} clean exits of 3:\n{all}"))
}
