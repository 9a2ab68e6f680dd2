//! The server process as the driver sees it: this executable run again with `--serve`,
//! its stdout lines (see `server.rs`) folded into [`Seen`], signalled by pid only, and
//! killed by pid if it is still running when its handle drops (error paths included).
//!
//! It is not put in a session of its own (`setsid`, as `compare` does for fair
//! scheduling): in the driver's process group, a Ctrl-C reaches the server too and
//! stops it gracefully. And if the driver dies anyway, the server notices that its
//! parent changed and shuts down (`server.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cluster::Mode;

use crate::procs;

/// What the server has said so far.
#[derive(Debug, Default)]
pub struct Seen {
    pub addr: Option<SocketAddr>,
    /// Live workers by id: pid, and whether it listens.
    pub live: BTreeMap<u32, (u32, bool)>,
    pub forks: u64,
    pub exits: u64,
    /// Every worker pid forked, for the check that none is left.
    pub pids: Vec<u32>,
    /// `stats FORKS CRASHES DROPPED`, printed as the server stops.
    pub stats: Option<String>,
    /// Its stdout closed.
    pub eof: bool,
}

impl Seen {
    fn fold(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<u32>().ok());
        match (w.first().copied(), num(1), num(2)) {
            (Some("ready"), ..) => self.addr = w.get(1).and_then(|a| a.parse().ok()),
            (Some("fork"), Some(id), Some(pid)) => {
                self.forks += 1;
                self.pids.push(pid);
                self.live.insert(id, (pid, false));
            }
            (Some("listening"), Some(id), _) => {
                if let Some(w) = self.live.get_mut(&id) {
                    w.1 = true;
                }
            }
            (Some("exit"), Some(id), _) => {
                self.exits += 1;
                self.live.remove(&id);
            }
            (Some("stats"), ..) => self.stats = Some(w[1..].join(" ")),
            _ => eprintln!("chaos: unexpected line from the server: {line:?}"),
        }
    }

    /// Workers alive and listening.
    pub fn listening(&self) -> usize {
        self.live.values().filter(|w| w.1).count()
    }
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub seen: Arc<(Mutex<Seen>, Condvar)>,
}

/// How the server ended.
pub struct Stopped {
    /// Its exit status, if it exited by itself after `SIGTERM` in time.
    pub status: Option<ExitStatus>,
    /// Worker pids that still exist after it exited.
    pub left: Vec<u32>,
}

impl Server {
    /// Starts the server and waits (at most 10 s) for its `ready` line.
    pub fn start(mode: Mode, workers: usize) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(["--serve", mode.as_str(), "--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            seen: seen.clone(),
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.0.lock().unwrap().fold(&line);
                seen.1.notify_all();
            }
            seen.0.lock().unwrap().eof = true;
            seen.1.notify_all();
        });
        let (lock, cvar) = &*server.seen;
        let (seen, _) = cvar
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(10), |s| {
                s.addr.is_none() && !s.eof
            })
            .unwrap();
        server.addr = seen.addr.ok_or("the server did not print its ready line")?;
        drop(seen);
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `n` workers are alive and listening (by the server's own report)
    /// and `/proc` shows exactly `n` children, none a zombie; at most `timeout`.
    /// Returns the last count from each source.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let reported = self.seen.0.lock().unwrap().listening();
            let kids = procs::children(self.pid());
            let running = kids.iter().filter(|k| k.1 != 'Z').count();
            let zombies = kids.len() - running;
            if (reported == n && running == n && zombies == 0) || Instant::now() >= deadline {
                return (reported, running);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SIGTERM` by pid; waits at most `timeout` for a graceful exit (`SIGKILL` after),
    /// then checks that no worker it forked still exists.
    pub fn stop(mut self, timeout: Duration) -> Stopped {
        signal(self.pid(), "TERM");
        let mut child = self.child.take().expect("a running server");
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        // Its last lines (the stats) may still be in the pipe.
        let (lock, cvar) = &*self.seen;
        drop(cvar.wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(1), |s| !s.eof));
        let comm = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.file_name()?.to_str()?.chars().take(15).collect()))
            .unwrap_or_else(|| "chaos".to_string());
        let left = self.seen.0.lock().unwrap().pids.clone();
        let left = left
            .into_iter()
            .filter(|&p| procs::exists(p, &comm))
            .collect();
        Stopped { status, left }
    }
}

impl Drop for Server {
    /// An error path: the server is still running. `SIGKILL` by pid (its workers get
    /// `SIGTERM` from the kernel when it dies: `PR_SET_PDEATHSIG`).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kill -SIG PID`: examples use no `unsafe`, and std cannot signal a pid it did not
/// spawn. Returns whether the signal was sent.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
