//! An async runtime made before `Builder::start` is refused with an error that says
//! where it belongs, whether it has threads (`#[tokio::main]`) or not
//! (`flavor = "current_thread"`, whose epoll and eventfd descriptors every worker
//! would lose: before the refusal, each worker died with `Invalid argument (os error
//! 22)` and was respawned, forever).
//!
//! `harness = false`: `start` forks when it does not refuse, and the test harness's
//! threads would make that fork unsafe (and be refused themselves). Each check runs
//! in this single-threaded process, the current-thread runtime first, since the
//! multi-threaded one leaves threads behind.

use std::time::Duration;

use cluster::{Cluster, Error};

/// `start` with `runtime` alive: must be `Error::Config` containing every `needles`.
/// No descriptor may be left behind by the refusal.
fn refused(what: &str, needles: &[&str]) -> Result<(), String> {
    let before = open_fds();
    let started = Cluster::builder()
        .workers(1)
        .start(|_w| Ok::<(), String>(()));
    match started {
        Err(Error::Config(msg)) => {
            println!("{what}: refused: {msg}");
            for n in needles {
                if !msg.contains(n) {
                    return Err(format!("{what}: the refusal does not say {n:?}: {msg}"));
                }
            }
            let after = open_fds();
            if after != before {
                return Err(format!(
                    "{what}: descriptors {before:?} before, {after:?} after"
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!("{what}: refused, but not as a setting: {e}")),
        Ok(mut cluster) => {
            // Not refused: stop what was started before failing.
            cluster.shutdown();
            while !cluster.is_stopped() {
                if cluster.next_event_timeout(Duration::from_secs(10)).is_err() {
                    break;
                }
            }
            Err(format!("{what}: Builder::start did not refuse"))
        }
    }
}

fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn main() {
    let mut failed = Vec::new();
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        if let Err(e) = refused(
            "a current-thread runtime",
            &[
                "epoll",
                "before Builder::start",
                "inside the worker function",
            ],
        ) {
            failed.push(e);
        }
        drop(rt);
    }
    // Gone with the runtime: start is allowed again (not run: it would fork).
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a multi-thread runtime");
        if let Err(e) = refused(
            "a multi-thread runtime",
            &["threads", "inside the worker function"],
        ) {
            failed.push(e);
        }
        drop(rt);
    }
    for f in &failed {
        eprintln!("FAILED: {f}");
    }
    println!("{} passed, {} failed", 2 - failed.len(), failed.len());
    std::process::exit(i32::from(!failed.is_empty()));
}
