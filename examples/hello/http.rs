//! A deliberately small HTTP/1.1 server loop for one connection: enough to benchmark and
//! to show how a blocking worker serves keep-alive clients, not a general HTTP library.
//!
//! - Requests are read into a fixed 8 KiB buffer; a head that does not fit gets `431`.
//! - A malformed request line or header, or a bad `Content-Length`, gets `400` and the
//!   connection is closed; `Transfer-Encoding` bodies get `501`.
//! - Keep-alive is the HTTP/1.1 default, `Connection: close` (or HTTP/1.0 without
//!   `keep-alive`) closes after the response; pipelined requests are answered in order.
//! - Reads wake every [`TICK`] so an idle connection notices a shutdown, and a client
//!   that sends nothing for [`IDLE_LIMIT`] is dropped: a silent or vanished client costs
//!   a thread for at most that long.
//! - A graceful stop (shutdown, reload, upgrade) loses no request: a request whose first
//!   byte has arrived is answered, with `Connection: close`; so is the next request on a
//!   busy keep-alive connection, and a new connection's first request if it comes
//!   within [`FIRST_REQUEST_WAIT`]. A connection idle between requests is closed only
//!   after a last [`GRACE`] look finds nothing arrived, and then with a FIN and a
//!   lingering close (at most [`LINGER`]), not a reset. Once stopping, a connection has
//!   [`STOP_BUDGET`] to finish what it began, so a trickling client cannot hold the stop
//!   up to the shutdown timeout.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use cluster::{ListenOptions, Stream};

/// How often a blocked read wakes to look at the stop flag.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a connection may stay silent.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// At a graceful stop, how long an idle keep-alive connection is still watched for a
/// request already on its way before it is closed.
pub const GRACE: Duration = Duration::from_millis(50);
/// At a graceful stop, how long a new connection may stay silent before it counts as
/// idle: its client connected to send a request.
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(1);
/// At a graceful stop, how long a closed connection's input is drained at most.
pub const LINGER: Duration = Duration::from_secs(1);
/// At a graceful stop, how long a connection may take to finish the request it began
/// (a client trickling bytes must not hold the stop up until the shutdown timeout).
pub const STOP_BUDGET: Duration = Duration::from_secs(2);

const BUF: usize = 8192;

/// A thread's request buffer, kept from one connection to the next (zeroing 8 KiB for
/// each new connection showed in a profile of short connections).
pub struct Buffer(Box<[u8]>);

impl Buffer {
    pub fn new() -> Buffer {
        Buffer(vec![0; BUF].into_boxed_slice())
    }
}

/// How the listener is set up for [`serve`]: `TCP_NODELAY` (responses go out at once),
/// set once on the listening socket and inherited by every TCP connection. No timeouts:
/// [`serve`] sets them on a connection the first time it has to wait, so a connection
/// answered without waiting (`Connection: close` with the request already there) costs
/// no `setsockopt`.
pub fn listen_options() -> ListenOptions {
    ListenOptions::new().nodelay(true)
}

/// What [`serve`] tells the thread pool, and asks it.
pub trait Waiting {
    /// Whether enough other threads accept, so this one may wait without asking.
    fn covered(&self) -> bool;
    /// The connection is about to wait for its client: make sure enough other threads
    /// accept meanwhile.
    fn before_wait(&self);
    /// Whether the worker is stopping.
    fn stopping(&self) -> bool;
}

/// How long a new connection waits for its first request before its thread hands the
/// lead on (when too few others accept): a request nearly always follows its
/// connection within this, and waiting for it costs the worker less than waking
/// another thread to accept; a client that says nothing holds the worker's `accept`
/// this long at most. Once, and only before the first response: a keep-alive client
/// that asks again within it would otherwise hold the `accept` for as long as it asks.
pub const LEAD_WAIT: Duration = Duration::from_millis(5);

/// One connection as [`serve`] reads and writes it: a read or write that need not wait
/// is one system call. One that must wait while too few other threads accept tells the
/// pool first ([`Waiting::before_wait`]), except that a new connection's first read may
/// wait [`LEAD_WAIT`] for its request before that; and the first long wait bounds the
/// connection's waits: reads wake every [`TICK`], writes give up after [`IDLE_LIMIT`].
struct Conn<'a> {
    stream: &'a mut Stream,
    waiting: &'a dyn Waiting,
    bound: Bound,
    /// A response has been written: the first request's grace is over.
    replied: bool,
}

/// The timeouts set on a connection so far.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// None: the connection has not waited yet.
    Unset,
    /// Reads wait [`LEAD_WAIT`]: the first request's grace, used (it is given once).
    Lead,
    /// Reads wake every [`TICK`], writes give up after [`IDLE_LIMIT`].
    Tick,
}

impl Conn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bound == Bound::Tick && self.waiting.covered() {
            return self.stream.read(buf);
        }
        match self.stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        if self.bound == Bound::Unset && !self.replied && !self.waiting.covered() {
            self.stream.set_read_timeout(Some(LEAD_WAIT))?;
            self.bound = Bound::Lead;
            match self.stream.read(buf) {
                Err(e) if is_timeout(&e) => {}
                done => return done,
            }
        }
        self.wait_long()?;
        self.stream.read(buf)
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.replied = true;
        while !data.is_empty() {
            match self.stream.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_long()?;
                    return self.stream.write_all(data);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Before a wait that may be long: another thread accepts meanwhile, and the wait
    /// is bounded.
    fn wait_long(&mut self) -> io::Result<()> {
        self.waiting.before_wait();
        if self.bound != Bound::Tick {
            self.stream.set_read_timeout(Some(TICK))?;
            self.stream.set_write_timeout(Some(IDLE_LIMIT))?;
            self.bound = Bound::Tick;
        }
        Ok(())
    }
}

const MAX_HEADERS: usize = 64;

/// What the server answers; the routes live in `main.rs`.
pub struct Response {
    pub status: &'static str,
    pub body: Vec<u8>,
    /// Exit the process right after sending (for `/crash`).
    pub then_crash: bool,
}

/// What the router gets to see of a request.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

struct Head {
    len: usize,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
    method_head: bool,
}

enum Parse {
    /// Not a whole head yet.
    Partial,
    Done(Head),
    Bad(&'static str),
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse<'a>(buf: &'a [u8], route: &mut dyn FnMut(Request<'_>)) -> Parse {
    let Some(end) = find_head_end(buf) else {
        return Parse::Partial;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Bad("400 Bad Request");
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Bad("400 Bad Request");
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Parse::Bad("400 Bad Request");
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Parse::Bad("400 Bad Request"),
    };
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for (n, h) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Parse::Bad("431 Request Header Fields Too Large");
        }
        let Some((name, value)) = h.split_once(':') else {
            return Parse::Bad("400 Bad Request");
        };
        if !is_token(name) {
            return Parse::Bad("400 Bad Request"); // also refuses obsolete line folding
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for opt in value.split(',').map(str::trim) {
                if opt.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if opt.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let Ok(v) = value.parse::<usize>() else {
                return Parse::Bad("400 Bad Request");
            };
            if value.bytes().any(|b| !b.is_ascii_digit()) || content_length.is_some_and(|c| c != v)
            {
                return Parse::Bad("400 Bad Request");
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    route(Request {
        method,
        path: target,
    });
    Parse::Done(Head {
        len: end + 4,
        keep_alive,
        content_length: content_length.unwrap_or(0),
        chunked,
        method_head: method == "HEAD",
    })
}

fn write_response(
    conn: &mut Conn<'_>,
    worker: u32,
    r: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + r.body.len());
    write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Worker: {}\r\nConnection: {}\r\n\r\n",
        r.status,
        r.body.len(),
        worker,
        if keep_alive { "keep-alive" } else { "close" }
    )?;
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    conn.write_all(&out)
}

fn error_response(status: &'static str) -> Response {
    Response {
        status,
        body: format!("{status}\n").into_bytes(),
        then_crash: false,
    }
}

/// Serves one connection until the client closes it, asks to close, misbehaves, stays
/// silent too long, or `stopping()` turns true (then after the current request, or at
/// once if the connection is idle and stays so for [`GRACE`]). Returns the number of
/// requests answered.
///
/// Once it has to wait, reads time out after [`TICK`], so an idle connection keeps
/// looking at `stopping`.
pub fn serve(
    stream: &mut Stream,
    buf: &mut Buffer,
    worker: u32,
    waiting: &dyn Waiting,
    router: &dyn Fn(&Request<'_>) -> Response,
) -> u64 {
    let stopping = || waiting.stopping();
    let stopping: &dyn Fn() -> bool = &stopping;
    let mut conn = Conn {
        stream,
        waiting,
        bound: Bound::Unset,
        replied: false,
    };
    let buf = &mut buf.0[..];
    let mut len = 0;
    let mut silent = Duration::ZERO;
    let mut answered = 0;
    let mut budget = StopBudget::default();
    loop {
        // Answer every complete request in the buffer.
        loop {
            let mut response = None;
            let parsed = parse(&buf[..len], &mut |req| response = Some(router(&req)));
            let head = match parsed {
                Parse::Partial => break,
                Parse::Bad(status) => {
                    let _ =
                        write_response(&mut conn, worker, &error_response(status), false, false);
                    return answered;
                }
                Parse::Done(head) => head,
            };
            if head.chunked {
                let _ = write_response(
                    &mut conn,
                    worker,
                    &error_response("501 Not Implemented"),
                    false,
                    false,
                );
                return answered;
            }
            // Skip the body: what is buffered, then the rest from the socket.
            let buffered = len - head.len;
            let body_left = head.content_length.saturating_sub(buffered);
            let consumed = head.len + head.content_length.min(buffered);
            buf.copy_within(consumed..len, 0);
            len -= consumed;
            if !skip_body(&mut conn, body_left, stopping) {
                return answered;
            }
            let response = response.unwrap_or_else(|| error_response("500 Internal Server Error"));
            let keep_alive = head.keep_alive && !stopping() && !response.then_crash;
            if write_response(&mut conn, worker, &response, keep_alive, head.method_head).is_err() {
                return answered;
            }
            answered += 1;
            if response.then_crash {
                std::process::abort(); // the demo's /crash: die abnormally, on purpose
            }
            if !keep_alive {
                return answered;
            }
        }
        if len == buf.len() {
            let _ = write_response(
                &mut conn,
                worker,
                &error_response("431 Request Header Fields Too Large"),
                false,
                false,
            );
            return answered;
        }
        if budget.spent(stopping) {
            return answered;
        }
        match conn.read(&mut buf[len..]) {
            Ok(0) => return answered,
            Ok(n) => {
                len += n;
                silent = Duration::ZERO;
            }
            Err(e) if is_timeout(&e) => {
                silent += TICK;
                if silent >= IDLE_LIMIT {
                    return answered;
                }
                // A request that has begun is answered, however the stop comes. An idle
                // connection gets a last look before it is closed: at once between the
                // requests of a keep-alive connection; after FIRST_REQUEST_WAIT of
                // silence on a new one (its client connected to send a request, and a
                // loaded machine may take a moment to; one that never does must not
                // hold up the stop).
                if len == 0 && stopping() && (answered > 0 || silent >= FIRST_REQUEST_WAIT) {
                    match last_look(conn.stream, buf) {
                        Some(n) => len = n,
                        None => return answered,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return answered,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A connection's time at a graceful stop: [`STOP_BUDGET`] from the moment it saw the
/// stop.
#[derive(Default)]
struct StopBudget(Option<Instant>);

impl StopBudget {
    /// Whether the stop has come and the budget is spent.
    fn spent(&mut self, stopping: &dyn Fn() -> bool) -> bool {
        if !stopping() {
            return false;
        }
        self.0.get_or_insert_with(Instant::now).elapsed() >= STOP_BUDGET
    }
}

/// Reads and drops `left` bytes of request body, allowing the client [`IDLE_LIMIT`] of
/// silence ([`STOP_BUDGET`] in all once stopping); false when the body did not come.
fn skip_body(conn: &mut Conn<'_>, mut left: usize, stopping: &dyn Fn() -> bool) -> bool {
    let mut silent = Duration::ZERO;
    let mut budget = StopBudget::default();
    let mut sink = [0u8; 4096];
    while left > 0 {
        if budget.spent(stopping) {
            return false;
        }
        let want = left.min(sink.len());
        match conn.read(&mut sink[..want]) {
            Ok(0) => return false,
            Ok(n) => {
                left -= n;
                silent = Duration::ZERO;
            }
            Err(e) if is_timeout(&e) => {
                silent += TICK;
                if silent >= IDLE_LIMIT {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// At a graceful stop, an idle keep-alive connection: watches it for [`GRACE`] more,
/// and returns what arrived meanwhile (a request to answer, with `Connection: close`).
/// `None` when nothing came: the write side is then shut first (a FIN) and the input
/// drained for up to [`GRACE`] (nginx's lingering close), so a client whose request
/// crossed the FIN reads a clean end of stream rather than a reset.
fn last_look(stream: &mut Stream, buf: &mut [u8]) -> Option<usize> {
    let _ = stream.set_read_timeout(Some(GRACE));
    let got = loop {
        match stream.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break 0,
        }
    };
    if got > 0 {
        let _ = stream.set_read_timeout(Some(TICK));
        return Some(got);
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drained for LINGER at most (nginx's `lingering_time`): a client that keeps
    // sending cannot hold the stop up.
    let until = Instant::now() + LINGER;
    while Instant::now() < until && matches!(stream.read(buf), Ok(1..)) {}
    None
}
