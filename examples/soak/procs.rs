//! What the soak checks about each server process, read from `/proc`: its open
//! descriptors (`/proc/PID/fd`, with their targets so a difference can be shown), its
//! resident memory (`VmRSS` in `/proc/PID/status`), and from `/proc/PID/stat` its state
//! (`Z` for a zombie), session and start time (which tells a process from a
//! later one that got the same pid).

use std::collections::BTreeMap;

/// One process at one moment.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    /// Start time after boot, in clock ticks: with the pid, names one process.
    pub start: u64,
    pub session: u32,
    /// `R`, `S`, `D`, `Z`, … as in `ps`.
    pub state: char,
    pub rss_kib: u64,
    /// What each open descriptor points at (`socket:[INODE]`, `pipe:[INODE]`,
    /// `/dev/null`, …), sorted.
    pub fds: Vec<String>,
}

/// The fields of `/proc/PID/stat` after the command name, which may itself hold spaces
/// and parentheses: field 3 of proc(5) (the state) is index 0 here.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.get(s.rfind(')')? + 2..)?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn open_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .map(|e| {
                    std::fs::read_link(e.path())
                        .map_or_else(|_| "?".to_string(), |t| t.display().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// Reads one process; `None` if it is gone.
pub fn read(pid: u32) -> Option<Proc> {
    let f = stat_fields(pid)?;
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0); // a zombie has no memory, and no VmRSS line
    Some(Proc {
        pid,
        state: f.first()?.chars().next()?,
        session: num(3)? as u32,
        start: num(19)?,
        rss_kib,
        fds: open_fds(pid),
    })
}

/// Every process on the machine, as (pid, parent, session); cheap: only `stat`.
fn all() -> Vec<(u32, u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            Some((pid, f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
        .collect()
}

/// The children of `ppid`, zombies included, by pid.
pub fn children(ppid: u32) -> Vec<Proc> {
    let mut out: Vec<Proc> = all()
        .into_iter()
        .filter(|&(_, parent, _)| parent == ppid)
        .filter_map(|(pid, _, _)| read(pid))
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The processes of session `sid`.
pub fn in_session(sid: u32) -> Vec<u32> {
    all()
        .into_iter()
        .filter(|&(_, _, s)| s == sid)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Whether the process `pid` that started at `start` still exists (as anything,
/// zombie included).
pub fn alive(pid: u32, start: u64) -> bool {
    stat_fields(pid)
        .and_then(|f| f.get(19)?.parse::<u64>().ok())
        .is_some_and(|s| s == start)
}

/// The descriptors in `after` but not in `before` (`+`) and the reverse (`-`), as a
/// multiset difference: what a leak looks like.
pub fn fd_diff(before: &[String], after: &[String]) -> Vec<String> {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for t in after {
        *count.entry(t).or_default() += 1;
    }
    for t in before {
        *count.entry(t).or_default() -= 1;
    }
    count
        .into_iter()
        .filter(|&(_, n)| n != 0)
        .map(|(t, n)| {
            format!("{}{t}{}", if n > 0 { '+' } else { '-' }, {
                if n.abs() > 1 {
                    format!(" ×{}", n.abs())
                } else {
                    String::new()
                }
            })
        })
        .collect()
}
