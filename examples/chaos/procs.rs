//! What `/proc` says about processes and their sockets: a process's children and their
//! state, whether a pid still exists, and which TCP connections a process holds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// `/proc/PID/stat` after the command name: state, ppid, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.get(s.rfind(')')? + 2..)?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The children of `pid` and their state letters (`Z` for a zombie), by scanning
/// `/proc` (`/proc/PID/task/TID/children` needs `CONFIG_PROC_CHILDREN`).
pub fn children(pid: u32) -> Vec<(u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let f = stat_fields(child)?;
            let state = f.first()?.chars().next()?;
            (f.get(1)?.parse::<u32>().ok()? == pid).then_some((child, state))
        })
        .collect()
}

/// Whether `pid` is still a process named `comm` (a reused pid has another name).
pub fn exists(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
}

/// Waits (at most `timeout`) until every thread of `pid` is stopped (`T`) or gone: a
/// signal is delivered when each thread next leaves the kernel, not when `kill` returns,
/// and a thread woken in `accept` may still take a connection first.
pub fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true; // gone
        };
        let running = tasks.flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            !matches!(state, None | Some('T' | 't' | 'Z' | 'X'))
        });
        if !running {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The client ports of the TCP connections to `server_port` that process `pid` holds:
/// the socket inodes in its descriptor table (`/proc/PID/fd`), matched against the
/// kernel's socket table. `ss` asks the kernel for just the connections on that port
/// (sock_diag); `/proc/net/tcp` would list every socket on the machine, `TIME_WAIT`
/// ones included, hundreds of thousands after a few seconds of this load.
pub fn held_ports(pid: u32, server_port: u16) -> Result<HashSet<u16>, String> {
    let fds =
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let s = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            s.parse().ok()
        })
        .collect();
    let out = Command::new("ss")
        .args(["-tnHe", "state", "established", "state", "close-wait"])
        .arg(format!("sport = :{server_port}"))
        .output()
        .map_err(|e| format!("ss: {e}"))?;
    if !out.status.success() {
        return Err(format!("ss: {}", out.status));
    }
    // A line: [STATE] RECV-Q SEND-Q LOCAL PEER … ino:INODE …
    let ports = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = words
                .iter()
                .find_map(|w| w.strip_prefix("ino:")?.parse().ok())?;
            let peer = words
                .iter()
                .filter_map(|w| w.parse::<SocketAddr>().ok())
                .nth(1)?;
            inodes.contains(&inode).then_some(peer.port())
        })
        .collect();
    Ok(ports)
}
