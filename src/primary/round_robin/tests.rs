//! Unit tests of the round-robin handle, in-process: the handle listens on a loopback
//! port, and each "worker" is the worker's end of a hand-off channel held by the test,
//! which sends credits and receives connections as a worker thread would.

use super::*;
use crate::bind::{self, BindOptions};
use crate::ipc::channel::Incoming;
use crate::options::ListenOptions;
use crate::primary::scheduler::{FewestDispatched, Fifo, Scheduler};
use crate::sys::fd;
use std::net::TcpStream;

fn handle() -> RoundRobinHandle {
    handle_with_prefetch(0)
}

/// A handle that may queue up to `prefetch` connections ahead in a worker's channel.
fn handle_with_prefetch(prefetch: u32) -> RoundRobinHandle {
    let opts = BindOptions {
        nonblocking: true,
        ..BindOptions::default()
    };
    let bound = bind::bind(&"127.0.0.1:0".parse().unwrap(), opts, &ListenOptions::new()).unwrap();
    RoundRobinHandle::new(bound, 128, Duration::ZERO, prefetch).unwrap()
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
    serve_with(h, n, &mut FewestDispatched)
}

/// Connects `n` clients and hands them out, `scheduler` choosing.
fn serve_with(h: &mut RoundRobinHandle, n: usize, scheduler: &mut dyn Scheduler) -> Vec<TcpStream> {
    let addr = h.local().as_tcp().unwrap();
    let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..n {
        h.set_readable();
        h.pump(Instant::now(), scheduler, &mut |_| {});
    }
    clients
}

/// The member of `worker` (its only one).
fn member(h: &RoundRobinHandle, worker: u32) -> &Member {
    let mut of = h.members.iter().filter(|m| m.worker == WorkerId(worker));
    let m = of.next().expect("a member of that worker");
    assert!(of.next().is_none(), "worker {worker} has one member");
    m
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

// Dispatch order.

#[test]
fn fifo_serves_the_oldest_credit_first() {
    let mut h = handle();
    let workers: Vec<Channel> = (1..=3).map(|w| join(&mut h, w)).collect();
    // Credits arrive from workers 2, 3, 1 in that order, each read before the next.
    for k in [1, 2, 0] {
        credit(&workers[k], 1);
        h.on_member_readable();
    }
    let mut order = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.extend(serve_with(&mut h, 1, &mut Fifo));
        let got: Vec<usize> = workers.iter().map(received).collect();
        assert_eq!(
            got.iter().sum::<usize>(),
            1,
            "one connection, one worker: {got:?}"
        );
        order.push(got.iter().position(|&n| n == 1).unwrap() + 1);
    }
    assert_eq!(order, [2, 3, 1]);
}

#[test]
fn fewest_dispatched_evens_out_where_fifo_follows_the_oldest_credit() {
    // Worker 1 has had three connections, worker 2 none; then both wait, worker 1's
    // credits the older ones.
    let setup = || {
        let mut h = handle();
        let (one, two) = (join(&mut h, 1), join(&mut h, 2));
        credit(&one, 3);
        let clients = serve(&mut h, 3);
        assert_eq!((received(&one), received(&two)), (3, 0));
        credit(&one, 3);
        h.on_member_readable();
        credit(&two, 3);
        h.on_member_readable();
        (h, one, two, clients)
    };

    let (mut h, one, two, _clients) = setup();
    let _more = serve_with(&mut h, 3, &mut FewestDispatched);
    assert_eq!(
        (received(&one), received(&two)),
        (0, 3),
        "the one behind catches up"
    );
    assert_eq!(member(&h, 1).dispatched, member(&h, 2).dispatched);

    let (mut h, one, two, _clients) = setup();
    let _more = serve_with(&mut h, 3, &mut Fifo);
    assert_eq!(
        (received(&one), received(&two)),
        (3, 0),
        "FIFO: oldest credits first"
    );
}

// Credits.

#[test]
fn a_worker_with_no_credit_gets_nothing() {
    let mut h = handle();
    let (one, two) = (join(&mut h, 1), join(&mut h, 2));
    credit(&one, 2);
    let _clients = serve(&mut h, 3);
    assert_eq!((received(&one), received(&two)), (2, 0));
    // The third waits in the kernel's backlog, not in the primary.
    assert!(h.pending.is_empty());
    assert_eq!(h.dropped(), 0);
    // Worker 2's first credit takes it.
    credit(&two, 1);
    h.set_readable();
    h.pump(Instant::now(), &mut FewestDispatched, &mut |_| {});
    assert_eq!((received(&one), received(&two)), (0, 1));
}

#[test]
fn a_credit_first_pays_for_a_connection_queued_ahead() {
    let mut h = handle_with_prefetch(1);
    let one = join(&mut h, 1);
    credit(&one, 1);
    // The first goes to the waiting thread, the second is queued ahead of the next.
    let _clients = serve(&mut h, 2);
    assert_eq!(received(&one), 2);
    assert_eq!((member(&h, 1).credits, member(&h, 1).queued), (0, 1));
    // The thread that took the first asks again: it takes the one queued ahead, so
    // its credit is spent on it and nothing becomes free.
    credit(&one, 1);
    h.on_member_readable();
    assert_eq!((member(&h, 1).credits, member(&h, 1).queued), (0, 0));
    assert!(h.free.is_empty());
    // The next credit is free.
    credit(&one, 1);
    h.on_member_readable();
    assert_eq!((member(&h, 1).credits, member(&h, 1).queued), (1, 0));
    assert_eq!(h.free.len(), 1);
}

// Take-back of unreceived connections.

#[test]
fn unreceived_connections_of_a_member_that_shuts_down_are_served_elsewhere() {
    let mut h = handle();
    let (one, two) = (join(&mut h, 1), join(&mut h, 2));
    credit(&one, 2);
    let _clients = serve(&mut h, 2);
    // Worker 1 closes its listener without receiving them.
    one.shutdown().unwrap();
    h.on_member_readable();
    assert_eq!(h.members.len(), 1, "its member is gone");
    assert_eq!(h.pending.len(), 2, "both taken back");
    credit(&two, 2);
    h.pump(Instant::now(), &mut FewestDispatched, &mut |_| {});
    assert_eq!((received(&one), received(&two)), (0, 2));
    assert_eq!(h.dropped(), 0);
}

#[test]
fn a_connection_taken_back_is_not_sent_straight_back_to_its_worker() {
    let mut h = handle();
    // Worker 1 has two listeners here, worker 2 one.
    let (a, b, c) = (join(&mut h, 1), join(&mut h, 1), join(&mut h, 2));
    credit(&a, 1);
    let _clients = serve_with(&mut h, 1, &mut Fifo);
    // Worker 1's other listener now waits longer than worker 2.
    credit(&b, 1);
    h.on_member_readable();
    credit(&c, 1);
    h.on_member_readable();
    a.shutdown().unwrap();
    h.on_member_readable();
    assert_eq!(h.pending.len(), 1);
    h.pump(Instant::now(), &mut Fifo, &mut |_| {});
    assert_eq!((received(&a), received(&b), received(&c)), (0, 0, 1));
}

/// A new worker takes the one connection and closes its listener without receiving it:
/// the primary takes it back.
fn bounce_through(h: &mut RoundRobinHandle, worker: u32) {
    let ch = join(h, worker);
    credit(&ch, 1);
    h.pump(Instant::now(), &mut FewestDispatched, &mut |_| {});
    assert!(h.pending.is_empty(), "handed to worker {worker}");
    ch.shutdown().unwrap();
    h.on_member_readable();
    assert_eq!(received(&ch), 0);
}

#[test]
fn a_connection_that_bounced_up_to_max_attempts_times_is_still_served() {
    let mut h = handle();
    let _client = TcpStream::connect(h.local().as_tcp().unwrap()).unwrap();
    h.set_readable();
    for worker in 1..=MAX_ATTEMPTS {
        bounce_through(&mut h, worker);
        assert_eq!(h.pending.len(), 1, "taken back from worker {worker}");
        assert_eq!(h.pending[0].bounced_from, Some(WorkerId(worker)));
    }
    let last = join(&mut h, MAX_ATTEMPTS + 1);
    credit(&last, 1);
    h.pump(Instant::now(), &mut FewestDispatched, &mut |_| {});
    assert_eq!(received(&last), 1);
    assert_eq!(h.dropped(), 0);
}

/// A connection's bounce count survives each trip through a worker's queue (the record
/// carries it, and `take_back` reads it back), so after `MAX_ATTEMPTS` bounces it is
/// closed and its client sees EOF.
#[test]
fn a_connection_that_bounces_too_often_is_closed() {
    use std::io::Read;

    let mut h = handle();
    let addr = h.local().as_tcp().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    // A bound for a wrong outcome, not a wait: the read below returns at once if right.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    h.set_readable();
    for worker in 1..=MAX_ATTEMPTS + 1 {
        bounce_through(&mut h, worker);
        if worker <= MAX_ATTEMPTS {
            assert_eq!(h.pending.len(), 1, "back after {worker} bounce(s)");
            assert_eq!(h.pending[0].attempts, worker);
        }
    }
    assert!(h.pending.is_empty());
    assert_eq!(h.dropped(), 1, "closed after {MAX_ATTEMPTS} bounces");
    let mut buf = [0u8; 1];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "the client sees EOF, not a hang"
    );
}

// The bounded queue.

#[test]
fn no_accept_while_nothing_can_take_a_connection() {
    let mut h = handle();
    let now = Instant::now();
    assert!(h.listener_to_poll(now).is_none(), "no worker");
    let one = join(&mut h, 1);
    assert!(h.listener_to_poll(now).is_none(), "a worker, no credit");
    // Even told the listener is readable, the handle accepts nothing into its queue.
    let _clients = serve(&mut h, 1);
    assert!(h.pending.is_empty());
    credit(&one, 1);
    h.on_member_readable();
    assert!(h.listener_to_poll(now).is_some(), "a credit");
    h.set_readable();
    h.pump(now, &mut FewestDispatched, &mut |_| {});
    assert_eq!(received(&one), 1, "the client waited in the backlog");
    assert!(h.listener_to_poll(now).is_none(), "the credit is spent");
}

#[test]
fn with_prefetch_a_busy_worker_takes_connections_up_to_its_queue() {
    let mut h = handle_with_prefetch(1);
    let now = Instant::now();
    let one = join(&mut h, 1);
    assert!(h.listener_to_poll(now).is_some(), "room to queue one ahead");
    let _clients = serve(&mut h, 2);
    assert_eq!(
        received(&one),
        1,
        "one queued ahead, the other left in the backlog"
    );
    assert!(h.pending.is_empty());
    assert!(h.listener_to_poll(now).is_none(), "its queue is full");
}
