//! Unit tests of the round-robin handle, in-process: the handle listens on a loopback
//! port, and each "worker" is the worker's end of a hand-off channel held by the test,
//! which sends credits and receives connections as a worker thread would.

use super::*;
use crate::bind::{self, BindOptions};
use crate::ipc::channel::Incoming;
use crate::options::ListenOptions;
use crate::primary::scheduler::FewestDispatched;
use crate::sys::fd;
use std::net::TcpStream;

fn handle() -> RoundRobinHandle {
    let opts = BindOptions {
        nonblocking: true,
        ..BindOptions::default()
    };
    let bound = bind::bind(&"127.0.0.1:0".parse().unwrap(), opts, &ListenOptions::new()).unwrap();
    RoundRobinHandle::new(bound, 128, Duration::ZERO, 0).unwrap()
}

/// A worker's end of a new member, as the worker would hold it.
fn join(h: &mut RoundRobinHandle, worker: u32) -> Channel {
    let (_, end) = h.add(WorkerId(worker)).unwrap();
    Channel::from_fd(fd::dup_cloexec(end).unwrap())
}

fn credit(ch: &Channel, count: u32) {
    ch.send(&Message::Ready { count, open: 0 }, None).unwrap();
}

/// Connections received on a worker's end.
fn received(ch: &Channel) -> usize {
    let mut buf = [0u8; 512];
    let mut n = 0;
    while let Ok(Incoming::Message(Message::NewConn { .. }, Some(_))) = ch.recv(&mut buf, true) {
        n += 1;
    }
    n
}

/// Connects `n` clients and hands them out.
fn serve(h: &mut RoundRobinHandle, n: usize) -> Vec<TcpStream> {
    let addr = h.local().as_tcp().unwrap();
    let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut sched = FewestDispatched;
    for _ in 0..n {
        h.set_readable();
        h.pump(Instant::now(), &mut sched, &mut |_| {});
    }
    clients
}

#[test]
fn a_worker_with_many_listeners_and_credits_gets_one_share() {
    let mut h = handle();
    // Worker 1 opens four listeners on the address and floods each with credits;
    // worker 2 has one listener and as many credits as it has connections to take.
    let greedy: Vec<Channel> = (0..4).map(|_| join(&mut h, 1)).collect();
    for ch in &greedy {
        credit(ch, 1000);
    }
    let honest = join(&mut h, 2);
    credit(&honest, 40);
    let _clients = serve(&mut h, 40);
    let to_greedy: usize = greedy.iter().map(received).sum();
    let to_honest = received(&honest);
    assert_eq!(to_greedy + to_honest, 40);
    assert_eq!(to_honest, 20, "greedy {to_greedy}, honest {to_honest}");
    assert!(h.take_faults().is_empty());
}

#[test]
fn credits_are_capped_per_worker_not_per_listener() {
    let mut h = handle();
    let a = join(&mut h, 1);
    let b = join(&mut h, 1);
    credit(&a, MAX_CREDITS);
    credit(&b, 1);
    let _clients = serve(&mut h, 1);
    let faults = h.take_faults();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(faults[0].0, WorkerId(1));
}
