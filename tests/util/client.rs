//! Clients: the line protocol of the scenario server, a bounded load generator over it,
//! and a minimal HTTP/1.1 client for the `hello` example.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// Parses the address a server printed: `HOST:PORT` or `unix:PATH`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(Target::Tcp)
            .map_err(|e| format!("bad address {s:?}: {e}"))
    }
}

/// A connected stream of either kind.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn connect(t: &Target, timeout: Duration) -> std::io::Result<Conn> {
        let c = match t {
            Target::Tcp(a) => Conn::Tcp(TcpStream::connect_timeout(a, timeout)?),
            Target::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        };
        match &c {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
            }
        }
        Ok(c)
    }

    /// `shutdown(SHUT_WR)`: the client is done sending.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The scenario server's answer: `ok WORKER PID LISTENER_CLOEXEC CONN_CLOEXEC [TEXT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub worker: u32,
    pub pid: u32,
    pub cloexec: bool,
    pub text: String,
}

/// Sends one command line and reads the one-line answer; the server then closes.
pub fn ask(t: &Target, cmd: &str, timeout: Duration) -> Result<Reply, String> {
    let mut c = Conn::connect(t, timeout).map_err(|e| format!("connect: {e}"))?;
    c.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(&mut c)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        ["ok", w, p, l, c, rest @ ..] => Ok(Reply {
            worker: w.parse().map_err(|_| format!("bad reply {line:?}"))?,
            pid: p.parse().map_err(|_| format!("bad reply {line:?}"))?,
            cloexec: *l == "1" && *c == "1",
            text: rest.join(" "),
        }),
        [] => Err("connection closed without a reply".into()),
        _ => Err(format!("bad reply {line:?}")),
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: u64,
    pub errors: Vec<String>,
    pub by_worker: BTreeMap<u32, u64>,
    pub not_cloexec: u64,
}

impl Load {
    /// "w1=500 w2=498 … max/min=1.01 cv=0.012"
    pub fn shares(&self) -> String {
        let counts: Vec<f64> = self.by_worker.values().map(|&c| c as f64).collect();
        let mut s: Vec<String> = self
            .by_worker
            .iter()
            .map(|(w, c)| format!("w{w}={c}"))
            .collect();
        if !counts.is_empty() {
            let max = counts.iter().cloned().fold(f64::MIN, f64::max);
            let min = counts.iter().cloned().fold(f64::MAX, f64::min);
            let mean = counts.iter().sum::<f64>() / counts.len() as f64;
            let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64;
            s.push(format!(
                "max/min={:.2} cv={:.3}",
                max / min.max(1.0),
                var.sqrt() / mean.max(1.0)
            ));
        }
        s.join(" ")
    }
}

/// `total` connections from `clients` threads, each connection one `cmd`.
pub fn load(t: &Target, total: u64, clients: u64, cmd: &str, timeout: Duration) -> Load {
    let result = Arc::new(Mutex::new(Load::default()));
    std::thread::scope(|s| {
        for c in 0..clients {
            let result = result.clone();
            let n = total / clients + u64::from(c < total % clients);
            s.spawn(move || {
                let mut local = Load::default();
                for _ in 0..n {
                    match ask(t, cmd, timeout) {
                        Ok(r) => {
                            local.ok += 1;
                            *local.by_worker.entry(r.worker).or_default() += 1;
                            if !r.cloexec {
                                local.not_cloexec += 1;
                            }
                        }
                        Err(e) => local.errors.push(e),
                    }
                }
                let mut g = result.lock().unwrap();
                g.ok += local.ok;
                g.errors.extend(local.errors);
                g.not_cloexec += local.not_cloexec;
                for (w, n) in local.by_worker {
                    *g.by_worker.entry(w).or_default() += n;
                }
            });
        }
    });
    Arc::try_unwrap(result)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_default()
}

/// An HTTP response as far as the tests care.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (head, then `Content-Length` bytes of body) from `r`.
pub fn read_response(r: &mut BufReader<&mut Conn>) -> Result<HttpResponse, String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read status: {e}"))?;
    if line.is_empty() {
        return Err("connection closed before a response".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').ok_or(format!("bad header {l:?}"))?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Whether the server closed the connection (EOF within the timeout).
pub fn closed_by_server(r: &mut BufReader<&mut Conn>) -> bool {
    let mut b = [0u8; 1];
    matches!(r.read(&mut b), Ok(0))
}

/// Clients that keep asking until `stop` is set: `clients` threads, each one
/// connection at a time. `progress` counts successes as they happen.
pub fn load_until(
    t: &Target,
    clients: usize,
    stop: &std::sync::atomic::AtomicBool,
    progress: &std::sync::atomic::AtomicU64,
) -> Load {
    use std::sync::atomic::Ordering;
    let result = Mutex::new(Load::default());
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut local = Load::default();
                while !stop.load(Ordering::Relaxed) {
                    match ask(t, "hi", Duration::from_secs(10)) {
                        Ok(r) => {
                            local.ok += 1;
                            progress.fetch_add(1, Ordering::Relaxed);
                            *local.by_worker.entry(r.worker).or_default() += 1;
                        }
                        Err(e) => local.errors.push(e),
                    }
                }
                let mut g = result.lock().unwrap();
                g.ok += local.ok;
                g.errors.extend(local.errors);
                for (w, n) in local.by_worker {
                    *g.by_worker.entry(w).or_default() += n;
                }
            });
        }
    });
    result.into_inner().unwrap()
}
