//! The checks, and how they are shown: one block per mode, then one table.

use std::net::SocketAddr;
use std::time::Duration;

use crate::launch::{Stopped, STOP_WAIT};
use crate::procs::{self, Proc};
use crate::{load, Options};

/// RSS may grow by this much …
pub const RSS_SLACK_KIB: u64 = 256;
/// … or by this share of what it was, whichever is larger.
pub const RSS_SLACK_PERCENT: u64 = 5;

/// How much a process that had `before` KiB may grow.
pub fn rss_allowance(before: u64) -> u64 {
    RSS_SLACK_KIB.max(before * RSS_SLACK_PERCENT / 100)
}

/// The server's processes at one moment: the primary and its children.
pub struct Snapshot {
    pub primary: Option<Proc>,
    /// Zombies included: they are what the check looks for.
    pub children: Vec<Proc>,
}

impl Snapshot {
    pub fn take(pid: u32) -> Snapshot {
        Snapshot {
            primary: procs::read(pid),
            children: procs::children(pid),
        }
    }

    /// The children that are not zombies: the workers.
    pub fn workers(&self) -> impl Iterator<Item = &Proc> {
        self.children.iter().filter(|p| p.state != 'Z')
    }

    pub fn zombies(&self) -> usize {
        self.children.iter().filter(|p| p.state == 'Z').count()
    }

    pub fn all(&self) -> impl Iterator<Item = &Proc> {
        self.primary.iter().chain(self.children.iter())
    }

    /// The same process (pid and start time) in `self`.
    fn find(&self, p: &Proc) -> Option<&Proc> {
        self.all().find(|q| q.pid == p.pid && q.start == p.start)
    }

    /// Whether every process of `before` is here with as many descriptors.
    pub fn same_fd_counts(&self, before: &Snapshot) -> bool {
        before
            .all()
            .all(|b| self.find(b).is_some_and(|a| a.fds.len() == b.fds.len()))
    }
}

/// What one mode did.
pub struct Report {
    pub mode: &'static str,
    pub pid: u32,
    pub addr: SocketAddr,
    pub own_session: bool,
    pub warmup: load::Outcome,
    pub load: load::Outcome,
    pub before: Snapshot,
    pub after: Snapshot,
    /// From the end of the load to the after snapshot.
    pub settled: Duration,
    pub stopped: Stopped,
    /// Processes of the server still there after it stopped.
    pub left: Vec<u32>,
}

fn role(r: &Report, p: &Proc) -> &'static str {
    if p.pid == r.pid {
        "primary"
    } else {
        "worker"
    }
}

impl Report {
    /// Every check that failed, in words; empty if the mode passed.
    pub fn failures(&self, o: &Options) -> Vec<String> {
        let mut f = Vec::new();
        if self.warmup.errors > 0 {
            f.push(format!(
                "{} errors in the warm-up (first: {})",
                self.warmup.errors,
                self.warmup.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.load.ok < o.connections {
            f.push(format!(
                "NOT reached: {} of {} connections in {} s",
                self.load.ok, o.connections, o.seconds
            ));
        }
        if self.load.errors > 0 {
            f.push(format!(
                "{} connections failed (first: {})",
                self.load.errors,
                self.load.first_error.as_deref().unwrap_or("?")
            ));
        }
        let served = self.load.by_worker.len();
        if served < o.workers {
            f.push(format!("only {served} of {} workers served", o.workers));
        }
        for b in self.before.all() {
            let Some(a) = self.after.find(b) else {
                f.push(format!(
                    "{} pid {} is gone (died or was replaced)",
                    role(self, b),
                    b.pid
                ));
                continue;
            };
            if a.fds.len() != b.fds.len() {
                f.push(format!(
                    "{} pid {}: {} descriptors before, {} after: {}",
                    role(self, b),
                    b.pid,
                    b.fds.len(),
                    a.fds.len(),
                    shorten(&procs::fd_diff(&b.fds, &a.fds), 8)
                ));
            }
            let grew = a.rss_kib.saturating_sub(b.rss_kib);
            if grew > rss_allowance(b.rss_kib) {
                f.push(format!(
                    "{} pid {}: RSS {} → {} KiB, +{grew} over the allowance of {}",
                    role(self, b),
                    b.pid,
                    b.rss_kib,
                    a.rss_kib,
                    rss_allowance(b.rss_kib)
                ));
            }
        }
        for a in self.after.all() {
            if self.before.find(a).is_none() && a.state != 'Z' {
                f.push(format!("new process pid {} (a replacement?)", a.pid));
            }
        }
        if self.before.primary.is_none() {
            f.push("no primary at the first snapshot".into());
        }
        for (when, s) in [("before", &self.before), ("after", &self.after)] {
            if s.zombies() > 0 {
                f.push(format!("{} zombie children {when}", s.zombies()));
            }
            if s.workers().count() != o.workers {
                f.push(format!(
                    "{} live children {when}, expected {}",
                    s.workers().count(),
                    o.workers
                ));
            }
        }
        match &self.stopped.exit {
            None => f.push(format!(
                "still running {} s after SIGTERM (killed)",
                STOP_WAIT.as_secs()
            )),
            Some((status, _)) if !status.success() => {
                f.push(format!("the primary exited with {status}"))
            }
            Some(_) => {}
        }
        if !self.left.is_empty() {
            f.push(format!(
                "processes left after the shutdown: {:?}",
                self.left
            ));
        }
        if !self.stopped.stderr_closed {
            f.push("some process still holds the server's stderr after it stopped".into());
        }
        f
    }

    /// The block for one mode.
    pub fn print(&mut self, failures: &[String]) {
        let l = &mut self.load;
        println!(
            "\n== {}: primary pid {} on {}, after a warm-up of {} connections ({} errors)",
            self.mode, self.pid, self.addr, self.warmup.ok, self.warmup.errors
        );
        let (ratio, _) = l.balance(self.after.workers().count());
        let shares: Vec<String> = l
            .by_worker
            .iter()
            .map(|(w, n)| format!("{w}:{n}"))
            .collect();
        let (p50, p99, max) = (
            l.percentile_ms(0.5),
            l.percentile_ms(0.99),
            l.percentile_ms(1.0),
        );
        println!(
            "load: {} connections in {:.1} s = {:.0} conn/s, {} errors; p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
            l.ok,
            l.elapsed.as_secs_f64(),
            l.rate(),
            l.errors,
        );
        println!(
            "served by worker (X-Worker:count): {} (max/min {ratio:.2})",
            shares.join(" ")
        );
        println!(
            "snapshots: before = after the warm-up; after = {} ms after the load",
            self.settled.as_millis()
        );
        println!(
            "  process  pid      state  fds before → after   RSS KiB before → after (Δ, allowed)"
        );
        for b in self.before.all() {
            let after = self.after.find(b);
            let (fds, rss, state) =
                after.map_or(("gone".to_string(), "gone".to_string(), '-'), |a| {
                    (
                        a.fds.len().to_string(),
                        format!(
                            "{} ({:+}, ≤ +{})",
                            a.rss_kib,
                            a.rss_kib as i64 - b.rss_kib as i64,
                            rss_allowance(b.rss_kib)
                        ),
                        a.state,
                    )
                });
            println!(
                "  {:<8} {:<8} {:<6} {:>3} → {:<13} {} → {}",
                role(self, b),
                b.pid,
                state,
                b.fds.len(),
                fds,
                b.rss_kib,
                rss
            );
        }
        if let Some(p) = &self.before.primary {
            println!("  primary's descriptors: {}", summarize(&p.fds));
        }
        if let Some(w) = self.before.children.first() {
            println!("  a worker's descriptors: {}", summarize(&w.fds));
        }
        println!(
            "children of the primary after: {} live, {} zombies",
            self.after.workers().count(),
            self.after.zombies()
        );
        match &self.stopped.exit {
            Some((status, t)) => println!(
                "SIGTERM: the primary exited ({status}) after {} ms; processes left: {}{}",
                t.as_millis(),
                if self.left.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", self.left)
                },
                if self.own_session {
                    " (its whole session checked)"
                } else {
                    " (its workers checked)"
                }
            ),
            None => println!("SIGTERM: no exit within {} s, killed", STOP_WAIT.as_secs()),
        }
        // The primary's lines (one write each) always; the workers' per-worker counts
        // (several writes each, so interleaved) only when something failed.
        let mut hidden = 0;
        for line in &self.stopped.stderr {
            if failures.is_empty() && !line.starts_with("hello: ") {
                hidden += 1;
            } else {
                println!("  server stderr: {line}");
            }
        }
        if hidden > 0 {
            println!("  (and {hidden} lines of the workers' served counts)");
        }
        if failures.is_empty() {
            println!("verdict: PASS");
        } else {
            println!("verdict: FAIL");
            for f in failures {
                println!("  - {f}");
            }
        }
    }
}

/// The first `n` items, and how many more.
fn shorten(items: &[String], n: usize) -> String {
    let mut s = items[..items.len().min(n)].join(", ");
    if items.len() > n {
        s += &format!(" … and {} more", items.len() - n);
    }
    s
}

/// Descriptors by kind: `socket ×3, pipe ×2, /dev/null ×1`.
fn summarize(fds: &[String]) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in fds {
        *kinds.entry(t.split(':').next().unwrap_or(t)).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a → b` when every value pair is the same, else each pair.
fn pairs(list: &[(u64, u64)]) -> String {
    match list.first() {
        Some(&(b, a)) if list.len() == 1 => format!("{b} → {a}"),
        Some(&(b, a)) if list.iter().all(|&p| p == (b, a)) => format!("{b} → {a} (each)"),
        Some(_) => list
            .iter()
            .map(|(b, a)| format!("{b}→{a}"))
            .collect::<Vec<_>>()
            .join(", "),
        None => "–".to_string(),
    }
}

/// The summary table.
pub fn print_table(rows: &[(Report, Vec<String>)]) {
    println!(
        "\n| mode | connections | errors | conn/s | primary fds | worker fds | primary RSS KiB | worker RSS KiB (min–max), max Δ | zombies | left after SIGTERM | verdict |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (r, failures) in rows {
        let matched = |only_workers: bool| -> Vec<(&Proc, &Proc)> {
            r.before
                .all()
                .filter(|b| (b.pid != r.pid) == only_workers)
                .filter_map(|b| Some((b, r.after.find(b)?)))
                .collect()
        };
        let fds = |ps: &[(&Proc, &Proc)]| -> String {
            pairs(
                &ps.iter()
                    .map(|(b, a)| (b.fds.len() as u64, a.fds.len() as u64))
                    .collect::<Vec<_>>(),
            )
        };
        let (primary, workers) = (matched(false), matched(true));
        let primary_rss = primary.first().map_or("–".to_string(), |(b, a)| {
            format!("{} → {}", b.rss_kib, a.rss_kib)
        });
        let worker_rss = workers
            .iter()
            .map(|(b, a)| a.rss_kib as i64 - b.rss_kib as i64)
            .max()
            .map_or("–".to_string(), |d| {
                let range = |v: Vec<u64>| {
                    let (lo, hi) = (v.iter().min(), v.iter().max());
                    format!("{}–{}", lo.unwrap_or(&0), hi.unwrap_or(&0))
                };
                format!(
                    "{} → {}, {d:+}",
                    range(workers.iter().map(|(b, _)| b.rss_kib).collect()),
                    range(workers.iter().map(|(_, a)| a.rss_kib).collect())
                )
            });
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.load.ok,
            r.load.errors + r.warmup.errors,
            r.load.rate(),
            fds(&primary),
            fds(&workers),
            primary_rss,
            worker_rss,
            r.after.zombies(),
            r.left.len(),
            if failures.is_empty() { "PASS" } else { "FAIL" }
        );
    }
}
