//! The killer: at random intervals, one random live worker dies by `SIGKILL`, by pid.
//!
//! Just before, it is frozen with `SIGSTOP` and the connections in its descriptor table
//! are written down (`procs::held_ports`): the connections that die with it. A
//! connection no worker has taken (in the kernel's accept queue, in the primary, or
//! sent to the worker's hand-off channel and not yet received) is not in any table, and
//! must survive. One a thread had been woken for but had not yet received is in the
//! table: the thread completes its `accept`/`recvmsg` in the kernel before it stops (or
//! dies: `SIGKILL` alone does the same). Without the freeze the list would race with the
//! worker's next `accept`. The freeze lasts a few milliseconds (`ss`); to the rest of
//! the cluster it looks like a worker that hung before it died.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::process::{signal, Seen};
use crate::procs;

/// SplitMix64: a small, seeded, std-only generator (good enough to pick times and pids).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One kill.
#[derive(Debug)]
pub struct Kill {
    /// When the worker was frozen: it took nothing after this.
    pub at: Instant,
    /// The client ports of the connections it held; `None` if they could not be read.
    pub held: Option<HashSet<u16>>,
}

/// Kills workers until `stop`, one every `every / 2 ..= 3 * every / 2` (uniform);
/// without `freeze`, by `SIGKILL` alone (then what they held is unknown).
pub fn run(
    seen: &(Mutex<Seen>, Condvar),
    server_port: u16,
    every: Duration,
    rng: &mut Rng,
    freeze: bool,
    stop: &AtomicBool,
) -> Vec<Kill> {
    let mut kills = Vec::new();
    // Killed, and not yet reported gone: not to be picked again.
    let mut killed: HashSet<u32> = HashSet::new();
    let every_us = every.as_micros().max(2) as u64;
    // Kill times are drawn ahead, from the previous one, so the time a kill takes
    // (three processes: kill, ss, kill) does not slow the rate.
    let mut wake = Instant::now();
    loop {
        wake += Duration::from_micros(every_us / 2 + rng.below(every_us + 1));
        while Instant::now() < wake {
            if stop.load(Ordering::Relaxed) {
                return kills;
            }
            std::thread::sleep((wake - Instant::now()).min(Duration::from_millis(10)));
        }
        let live: Vec<u32> = {
            let s = seen.0.lock().unwrap();
            killed.retain(|p| s.live.values().any(|w| w.0 == *p));
            s.live
                .values()
                .map(|w| w.0)
                .filter(|p| !killed.contains(p))
                .collect()
        };
        if live.is_empty() {
            continue;
        }
        let pid = live[rng.below(live.len() as u64) as usize];
        if !freeze {
            if signal(pid, "KILL") {
                killed.insert(pid);
                kills.push(Kill {
                    at: Instant::now(),
                    held: None,
                });
            }
            continue;
        }
        if !signal(pid, "STOP") {
            continue; // it exited meanwhile
        }
        // Frozen when every thread has stopped, not when `kill` returns: the stop is
        // begun by whichever thread handles the signal first, and the others keep
        // running (and accepting) until it does, which on a loaded machine can take
        // milliseconds.
        let frozen = procs::wait_stopped(pid, Duration::from_millis(500));
        let at = Instant::now();
        let held = if frozen {
            procs::held_ports(pid, server_port)
        } else {
            Err("it did not stop within 500 ms".to_string())
        };
        let held = held
            .map_err(|e| eprintln!("chaos: cannot list worker {pid}'s connections: {e}"))
            .ok();
        if signal(pid, "KILL") {
            killed.insert(pid);
            kills.push(Kill { at, held });
        }
    }
}
