//! Limits a worker cannot push the primary past (issue 8): descriptors it sends that
//! would linger in `close`, budgets of descriptors and queued messages, a worker at
//! its own descriptor limit, non-blocking listeners, unbounded durations, lost
//! replies, adopted Unix sockets, and caps on the worker count. Each ends with the
//! usual hygiene check.

use std::time::Duration;

use crate::util::check::{check, stop_and_check, Outcome, Spec};
use crate::util::client;

fn spec<'a>(mode: &'a str, workers: usize, threads: usize, env: &[(&'a str, &str)]) -> Spec<'a> {
    Spec {
        mode,
        workers,
        listen: "127.0.0.1:0".into(),
        threads,
        env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

/// The bound on every wait for progress: well below the 15 s a lingering close took.
const T: Duration = Duration::from_secs(5);

/// Worker 1 hands the primary a TCP socket whose close would block 15 s (`SO_LINGER`
/// 15 s, unsent data, a peer that never reads), attached to a record (`how`: online on
/// the control channel, which the codec refuses; new-conn there, which decodes and the
/// primary refuses; new-conn on its round-robin hand-off channel). The primary closes
/// it without lingering: it reports and kills the rogue at once, and answers the next
/// request promptly.
pub fn rogue_lingering_socket(how: &str) -> Outcome {
    // The peer: a listener that never accepts, so nothing is ever read.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?.to_string();
    let rogue = format!("linger-{how}");
    let (mut srv, targets) = spec(
        "round-robin",
        2,
        2,
        &[("SC_ROGUE", &rogue), ("SC_ROGUE_PEER", &peer_addr)],
    )
    .start()?;
    // Worker 1 waits for the go before it starts accepting, so worker 2 serves this.
    let go = client::ask(&targets[0], "tell rogue-go", T)?;
    check(go.text.contains("sent"), || format!("rogue-go: {go:?}"))?;
    let error = srv.expect_containing("worker 1 broke the protocol", T)?;
    println!("    {how}: {error}");
    let exit = srv.seen_or_expect("exit 1 ", T)?;
    check(
        exit.contains("signal 9") && exit.contains("requested=false"),
        || format!("{how}: the rogue's exit: {exit}"),
    )?;
    let pong = client::ask(&targets[0], "tell ping", T)?;
    check(pong.text.contains("pong"), || format!("ping: {pong:?}"))?;
    drop(peer);
    stop_and_check(&mut srv)
}
