//! What a server costs, read from `/proc`: CPU time (utime + stime, all threads, in
//! clock ticks of 10 ms) and resident memory (`VmRSS`) of a primary and its children.

/// One process's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Proc {
    pub pid: u32,
    /// CPU time so far, in clock ticks.
    pub ticks: u64,
    /// CPU time of its children that exited and were reaped (`cutime + cstime`): the
    /// workers a recycle replaced.
    pub reaped_ticks: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
}

/// Clock ticks per second (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.get(s.rfind(')')? + 2..)?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn read(pid: u32) -> Option<Proc> {
    let f = stat_fields(pid)?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let reaped_ticks = f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(Proc {
        pid,
        ticks,
        reaped_ticks,
        rss_kib,
    })
}

/// The primary `pid` and each of its children (the workers).
pub fn snapshot(pid: u32) -> (Option<Proc>, Vec<Proc>) {
    let primary = read(pid);
    let mut workers = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let parent = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                if let Some(p) = read(child) {
                    workers.push(p);
                }
            }
        }
    }
    (primary, workers)
}

/// CPU seconds used between two snapshots, primary and workers (workers matched by pid;
/// one that appeared in between counts from zero; one that was reaped in between counts
/// through the primary's `cutime + cstime`, less what it had used before).
pub fn cpu_between(
    before: &(Option<Proc>, Vec<Proc>),
    after: &(Option<Proc>, Vec<Proc>),
) -> (f64, f64) {
    let primary = match (before.0, after.0) {
        (Some(a), Some(b)) => b.ticks.saturating_sub(a.ticks),
        _ => 0,
    };
    let live: u64 = after
        .1
        .iter()
        .map(|b| {
            let a = before
                .1
                .iter()
                .find(|a| a.pid == b.pid)
                .map_or(0, |a| a.ticks);
            b.ticks.saturating_sub(a)
        })
        .sum();
    let reaped = match (before.0, after.0) {
        (Some(a), Some(b)) => b.reaped_ticks.saturating_sub(a.reaped_ticks),
        _ => 0,
    };
    let gone_before: u64 = before
        .1
        .iter()
        .filter(|a| !after.1.iter().any(|b| b.pid == a.pid))
        .map(|a| a.ticks)
        .sum();
    let workers = (live + reaped).saturating_sub(gone_before);
    (
        primary as f64 / TICKS_PER_SEC,
        workers as f64 / TICKS_PER_SEC,
    )
}
