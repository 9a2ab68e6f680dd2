//! The server under test: this program run again with `--serve`, which is the `hello`
//! demo's own code (a primary must not fork inside a threaded process, and the soak
//! runs load threads). Like `compare`, it runs in its own session (`setsid(1)` execs in
//! place, so the pid stays the one we spawned), which also lets the soak find every
//! process the server ever made after it stopped: they all share its session id.
//!
//! Stopping is by pid only: `kill -TERM PID` for the graceful shutdown, and
//! [`Child::kill`] (SIGKILL to our direct child) only if that did not work in time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the graceful shutdown may take (the demo's own deadline is 4 s).
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Whether the server leads its own session (`setsid` was there).
    pub own_session: bool,
    /// The server's stderr, line by line (the demo reports crashes there, and each
    /// worker's count of served connections when it stops).
    stderr: mpsc::Receiver<String>,
}

/// How the server stopped.
pub struct Stopped {
    /// The exit status, and how long after SIGTERM; `None` if it had to be killed.
    pub exit: Option<(ExitStatus, Duration)>,
    pub stderr: Vec<String>,
    /// Whether the stderr pipe closed, i.e. no process holds it any more.
    pub stderr_closed: bool,
}

impl Server {
    /// Starts `mode` with `workers` workers of `threads` threads on a free loopback
    /// port, and waits for its `ready ADDR` line.
    pub fn start(mode: &str, workers: usize, threads: usize) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = if Command::new("setsid").arg("--version").output().is_ok() {
            let mut c = Command::new("setsid");
            c.arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(["--serve", "--listen", "127.0.0.1:0", "--mode", mode])
            .args(["--workers", &workers.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("start the server: {e}"))?;
        let pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (line_tx, line_rx) = mpsc::channel();
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.into_iter().flat_map(|o| BufReader::new(o).lines()) {
                let Ok(line) = line else { break };
                let _ = line_tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in stderr.into_iter().flat_map(|e| BufReader::new(e).lines()) {
                let Ok(line) = line else { break };
                let _ = err_tx.send(line);
            }
        });
        let mut server = Server {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            own_session: false,
            stderr: err_rx,
        };
        // From here on, dropping `server` stops the child.
        let line = line_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the server did not print its ready line in 20 s".to_string())?;
        server.addr = line
            .strip_prefix("ready ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected line from the server: {line:?}"))?;
        server.own_session = crate::procs::read(pid).is_some_and(|p| p.session == pid);
        Ok(server)
    }

    /// SIGTERM by pid, then waits up to [`STOP_WAIT`]; SIGKILL if it is still there.
    pub fn stop(mut self) -> Stopped {
        let exit = self.child.take().map(|mut child| {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some((status, t0.elapsed())),
                    Ok(None) if t0.elapsed() < STOP_WAIT => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            }
        });
        // Every process that inherited stderr must be gone for the pipe to close; give
        // stragglers a moment, but not forever.
        let mut stderr = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let stderr_closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => stderr.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(mpsc::RecvTimeoutError::Timeout) => break false,
            }
        };
        Stopped {
            exit: exit.flatten(),
            stderr,
            stderr_closed,
        }
    }
}

impl Drop for Server {
    /// An early return or a panic still stops the server (by pid).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let deadline = Instant::now() + STOP_WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
