//! The table, its legend, and the verdict (the exit status).

use cluster::Mode;

use crate::clients::Tally;
use crate::Options;

/// One mode's results.
#[derive(Default)]
pub struct Row {
    pub mode: String,
    pub tally: Tally,
    pub before_ack: u64,
    pub after_ack: u64,
    /// Failures no killed worker held; `None` when a kill's list could not be read.
    pub lost: Option<u64>,
    /// The first few lost connections, described.
    pub lost_examples: Vec<String>,
    pub kills: usize,
    pub forks: u64,
    pub workers_end: (usize, usize),
    pub clean_exit: bool,
    pub stats: String,
    pub error: Option<String>,
}

pub fn print_table(rows: &[Row], o: &Options) {
    println!(
        "\n{} workers, {} clients, {} s per mode, a kill every {}..{} ms\n",
        o.workers,
        o.clients,
        o.seconds,
        o.kill_every.as_millis() / 2,
        o.kill_every.as_millis() * 3 / 2
    );
    println!("| mode | connections | ok | failed before ack | failed after ack | lost | connect errors | kills | forks | workers at end | clean exit | conn/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in rows {
        if let Some(e) = &r.error {
            println!("| {} | error: {e} |", r.mode);
            continue;
        }
        let t = &r.tally;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {:.0} |",
            r.mode,
            t.connections,
            t.ok,
            r.before_ack,
            r.after_ack,
            r.lost.map_or("?".to_string(), |n| n.to_string()),
            t.connect_errors,
            r.kills,
            r.forks,
            r.workers_end.0.min(r.workers_end.1),
            o.workers,
            if r.clean_exit { "yes" } else { "NO" },
            t.connections as f64 / t.elapsed.as_secs_f64().max(1e-9),
        );
    }
    println!();
    for r in rows.iter().filter(|r| r.error.is_none()) {
        let causes: Vec<String> = r
            .tally
            .causes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let causes = if causes.is_empty() {
            "none".to_string()
        } else {
            causes.join(", ")
        };
        println!("{}: failures by cause: {causes}; {}", r.mode, r.stats);
        for e in &r.lost_examples {
            println!("{}: lost: {e}", r.mode);
        }
    }
    println!(
        "\nbefore ack: the client got nothing; after ack: it got the ack byte, not the answer. \
         lost: failed, and held by no worker killed while it was open (frozen first, its \
         descriptors listed). A failure before ack that a killed worker held: its thread had \
         been woken with the connection (or had just accepted it) and died before acking it. \
         workers at end: alive and listening, by the server's events and /proc, within 5 s \
         of the last kill. forks include the first {}.",
        o.workers
    );
}

/// Whether the run passed: see the module docs.
pub fn verdict(rows: &[Row], workers: usize) -> bool {
    let mut pass = true;
    for r in rows {
        let mut fail = |why: String| {
            eprintln!("chaos: {}: {why}", r.mode);
            pass = false;
        };
        if let Some(e) = &r.error {
            fail(e.clone());
            continue;
        }
        if r.mode == Mode::RoundRobin.as_str() {
            if let Some(n @ 1..) = r.lost {
                fail(format!(
                    "{n} failed connections were held by no killed worker"
                ));
            }
            if r.tally.connect_errors > 0 {
                fail(format!("{} connects failed", r.tally.connect_errors));
            }
        }
        if r.workers_end != (workers, workers) {
            let (reported, running) = r.workers_end;
            fail(format!(
                "worker count not restored: {reported} listening, {running} running, of {workers}"
            ));
        }
        if !r.clean_exit {
            fail(format!("the server did not stop cleanly ({})", r.stats));
        }
    }
    pass
}
