//! Property tests of the record format: whatever bytes arrive, [`Message::decode`]
//! returns a message or an error (never panics), and every descriptor that arrives with
//! a record is closed, whether the record is accepted or refused.
//!
//! The inputs come from a small std-only pseudo-random generator (splitmix64) with a
//! fixed seed, so every run checks the same records and a failure is reproducible. Set
//! `CLUSTER_PROPERTY_SEED` (decimal or `0x…`) to explore other records; a failing case
//! prints its seed, its index and its bytes (the bytes alone reproduce it: feed them to
//! `Message::decode`).
//!
//! Three tests:
//!
//! 1. [`random_messages_round_trip`]: random *valid* messages of every kind encode, then
//!    decode to themselves, and only with the descriptor count their kind carries.
//! 2. [`a_million_records_decode_to_a_message_or_an_error`]: a million records (fully
//!    random bytes, valid encodings, and valid encodings mutated by bit flips, byte
//!    replacements, truncation, extension, header corruption, kind changes and shifted
//!    payloads) are each decoded with 0 and 1 descriptors declared, one in eight also with
//!    2 to 6. Decoding must not panic; a record that decodes must re-encode to exactly
//!    its own bytes (the encoding is canonical), and every error must describe the record
//!    truthfully.
//! 3. [`every_descriptor_that_arrives_is_closed`]: a sample of those records goes through
//!    a real socketpair [`Channel`], each with a copy of one pipe's read end, and is read
//!    back with `recv` or in batches with `recv_many`. Everything that comes back is
//!    dropped; then the test drops its own read end and a write to the pipe must fail
//!    with `EPIPE`: no copy of the read end is open anywhere, so none leaked.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use super::channel::{Channel, Incoming, RecvError};
use super::codec::{
    FdRule, ListenGrant, Message, ProtocolError, Transport, HEADER_LEN, MAX_MESSAGE_LEN,
    MAX_RECORD_LEN,
};
use crate::addr::{ListenAddr, PeerAddr};
use crate::options::ListenOptions;
use crate::setup_stage::SetupStage;
use crate::sock_type::SockType;
use crate::sys::fd;
use crate::sys::scm::{BATCH, BATCH_RECORD};

/// Records decoded by the million-record test (each one two or more times).
const RECORDS: usize = 1_000_000;
/// Random valid messages checked by the round-trip test.
const MESSAGES: usize = 100_000;
/// Records sent through a real channel, each with a descriptor.
const CHANNEL_RECORDS: usize = 20_000;
/// The seed used unless `CLUSTER_PROPERTY_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5EED_C1A5_7E12_0000;

// ---------------------------------------------------------------------------------------
// The generator

/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// 2014; the generator that seeds xoshiro): a 64-bit counter stepped by the golden
/// ratio, then mixed. Tiny, fast, and every seed (even 0) gives a good stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-and-shift (Lemire) without the
    /// rejection step: no division, and a bias of at most `n / 2^64`, nothing for the
    /// small `n` used here.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True once in `n` times, on average.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }

    /// A byte, with the edge values 0, 1, 0x7F, 0x80 and 0xFF more likely than by chance.
    fn byte(&mut self) -> u8 {
        const EDGES: [u8; 5] = [0, 1, 0x7F, 0x80, 0xFF];
        if self.one_in(4) {
            EDGES[self.below(EDGES.len())]
        } else {
            self.next() as u8
        }
    }

    /// A `u32`, with the edges of every integer width more likely than by chance.
    fn u32(&mut self) -> u32 {
        const EDGES: [u32; 12] = [
            0,
            1,
            2,
            0x7F,
            0x80,
            0xFF,
            0xFFFF,
            0x1_0000,
            i32::MAX as u32,
            0x8000_0000,
            u32::MAX - 1,
            u32::MAX,
        ];
        if self.one_in(4) {
            EDGES[self.below(EDGES.len())]
        } else {
            self.next() as u32
        }
    }

    fn i32(&mut self) -> i32 {
        self.u32() as i32
    }
}

/// The seed of this run: `CLUSTER_PROPERTY_SEED` when set, else [`DEFAULT_SEED`].
fn seed() -> u64 {
    match std::env::var("CLUSTER_PROPERTY_SEED") {
        Err(_) => DEFAULT_SEED,
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("CLUSTER_PROPERTY_SEED={s:?}: {e}"))
        }
    }
}

/// Prints how to reproduce the current case if the test panics while it is alive.
/// (A guard rather than `catch_unwind`: nothing to do unless something failed.)
struct OnPanic<'a> {
    test: &'static str,
    seed: u64,
    case: usize,
    record: &'a [u8],
}

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed: CLUSTER_PROPERTY_SEED={:#x}, case {}, record of {} bytes: {:02x?}",
                self.test,
                self.seed,
                self.case,
                self.record.len(),
                self.record
            );
        }
    }
}

/// How many kinds of [`Message`] there are: [`variant`] numbers them `0..VARIANTS`.
const VARIANTS: usize = 15;

/// The kind of a message as an index, for the per-kind tallies. Exhaustive, so a new
/// kind does not compile until the generator below learns to make it.
fn variant(m: &Message<'_>) -> usize {
    match m {
        Message::Online => 0,
        Message::ListenRequest {
            sock: SockType::Stream,
            ..
        } => 1,
        Message::ListenRequest {
            sock: SockType::Datagram,
            ..
        } => 14,
        Message::ListenReply { .. } => 2,
        Message::Listening { .. } => 3,
        Message::ListenerClosed { .. } => 4,
        Message::NewConn { .. } => 5,
        Message::Ready { .. } => 6,
        Message::User(_) => 7,
        Message::Disconnect => 8,
        Message::SetupFailed { .. } => 9,
        Message::Stats { .. } => 10,
        Message::Probe => 11,
        Message::Ping => 12,
        Message::Pong { .. } => 13,
    }
}

/// How a generated record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Random bytes (sometimes behind a plausible header).
    Random,
    /// The encoding of a random valid message, unchanged.
    Valid,
    /// The encoding of a random valid message, then mutated.
    Mutated,
}

const SHAPES: [Shape; 3] = [Shape::Random, Shape::Valid, Shape::Mutated];

/// Makes random messages and records.
struct Gen {
    rng: Rng,
    /// The kind byte of each kind, read from encoded messages rather than copied from
    /// the codec, so this test cannot drift from it.
    kinds: Vec<u8>,
    /// Every setup stage, found by asking `SetupStage::from_code` about every byte.
    stages: Vec<SetupStage>,
    /// The payload of the last `User` message.
    payload: Vec<u8>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut gen = Gen {
            rng: Rng(seed),
            kinds: Vec::new(),
            stages: (0..=u8::MAX).filter_map(SetupStage::from_code).collect(),
            payload: Vec::new(),
        };
        let mut buf = Vec::new();
        for v in 0..VARIANTS {
            buf.clear();
            gen.message(v).encode(&mut buf);
            gen.kinds.push(buf[0]);
        }
        gen
    }

    fn socket_addr(&mut self) -> SocketAddr {
        let port = self.rng.next() as u16;
        if self.rng.one_in(2) {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(self.rng.u32()), port))
        } else {
            let ip =
                Ipv6Addr::from(u128::from(self.rng.next()) << 64 | u128::from(self.rng.next()));
            SocketAddr::V6(SocketAddrV6::new(ip, port, self.rng.u32(), self.rng.u32()))
        }
    }

    /// A non-empty path without NUL bytes: mostly within the 107-byte socket-path
    /// limit, sometimes beyond it (the codec does not care; the bind does).
    fn path(&mut self) -> PathBuf {
        let len = if self.rng.one_in(8) {
            self.rng.range(108, 400)
        } else {
            self.rng.range(1, 107)
        };
        let mut bytes = vec![0u8; len];
        self.rng.fill(&mut bytes);
        for b in &mut bytes {
            if *b == 0 {
                *b = b'/';
            }
        }
        PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
    }

    fn listen_addr(&mut self) -> ListenAddr {
        match self.rng.below(5) {
            0 => ListenAddr::Tcp(self.socket_addr()),
            1 => ListenAddr::Unix(self.path()),
            2 => ListenAddr::Systemd(None),
            3 => ListenAddr::Systemd(Some(format!("name{}", self.rng.below(1000)))),
            _ => ListenAddr::Fd(self.rng.i32() & i32::MAX),
        }
    }

    /// Whole milliseconds, or none: the wire carries milliseconds, so these survive the
    /// round trip unchanged.
    fn duration(&mut self) -> Option<Duration> {
        match self.rng.u32() {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    fn options(&mut self) -> ListenOptions {
        ListenOptions::new()
            .backlog(self.rng.i32())
            .nodelay(self.rng.one_in(2))
            .read_timeout(self.duration())
            .write_timeout(self.duration())
            .defer_accept(self.duration())
    }

    /// A random valid message of kind number `v` (see [`variant`]). A `User` message
    /// borrows its payload from the generator.
    fn message(&mut self, v: usize) -> Message<'_> {
        match v {
            0 => Message::Online,
            1 | 14 => Message::ListenRequest {
                seq: self.rng.u32(),
                options: self.options(),
                addr: self.listen_addr(),
                sock: if v == 1 {
                    SockType::Stream
                } else {
                    SockType::Datagram
                },
            },
            2 => Message::ListenReply {
                seq: self.rng.u32(),
                result: if self.rng.one_in(2) {
                    Ok(ListenGrant {
                        handle: self.rng.u32(),
                        transport: match self.rng.below(3) {
                            0 => Transport::Socket,
                            1 => Transport::Handoff,
                            _ => Transport::Datagram,
                        },
                        local: self.listen_addr(),
                    })
                } else {
                    Err((self.rng.i32() & i32::MAX).max(1))
                },
            },
            3 => Message::Listening {
                handle: self.rng.u32(),
            },
            4 => Message::ListenerClosed {
                handle: self.rng.u32(),
            },
            5 => Message::NewConn {
                peer: match self.rng.below(3) {
                    0 => PeerAddr::Unix(None),
                    1 => PeerAddr::Unix(Some(self.path())),
                    _ => PeerAddr::Tcp(self.socket_addr()),
                },
                attempts: self.rng.below(256) as u8,
            },
            6 => Message::Ready {
                count: self.rng.u32().max(1),
                open: self.rng.u32(),
            },
            7 => {
                // Mostly short; one in 500 within 16 bytes of the largest message.
                let len = if self.rng.one_in(500) {
                    MAX_MESSAGE_LEN - self.rng.below(16)
                } else {
                    self.rng.below(300)
                };
                self.payload.resize(len, 0);
                self.rng.fill(&mut self.payload);
                Message::User(&self.payload)
            }
            8 => Message::Disconnect,
            9 => Message::SetupFailed {
                stage: self.stages[self.rng.below(self.stages.len())],
                errno: self.rng.i32(),
            },
            10 => Message::Stats {
                accepted: self.rng.next(),
                open: self.rng.u32(),
            },
            11 => Message::Probe,
            12 => Message::Ping,
            13 => Message::Pong {
                heartbeat_ms: self.rng.u32(),
            },
            _ => unreachable!("kind number {v} >= VARIANTS"),
        }
    }

    /// Replaces `out` with a record of a random shape: a quarter random bytes, a tenth
    /// valid encodings, the rest mutated valid encodings.
    fn record(&mut self, out: &mut Vec<u8>) -> Shape {
        out.clear();
        match self.rng.below(100) {
            0..=24 => {
                self.random_record(out);
                Shape::Random
            }
            25..=34 => {
                let v = self.rng.below(VARIANTS);
                self.message(v).encode(out);
                Shape::Valid
            }
            _ => {
                let v = self.rng.below(VARIANTS);
                self.message(v).encode(out);
                self.mutate(out);
                Shape::Mutated
            }
        }
    }

    /// Random bytes, 0 to 300 of them, one in 2000 times near the largest record (on
    /// either side of it). Half of them get a plausible header (a known kind, zero
    /// reserved bytes, the right length) so that the payload parsers see random input
    /// instead of every one stopping at the header checks.
    fn random_record(&mut self, out: &mut Vec<u8>) {
        let len = if self.rng.one_in(2000) {
            self.rng.range(MAX_RECORD_LEN - 16, MAX_RECORD_LEN + 16)
        } else {
            self.rng.below(301)
        };
        out.resize(len, 0);
        self.rng.fill(out);
        if len >= HEADER_LEN && self.rng.one_in(2) {
            out[0] = self.kinds[self.rng.below(self.kinds.len())];
            out[1..4].fill(0);
            set_declared_len(out);
        }
    }

    /// Applies one to three mutations to `rec`. Three times in four the header's length
    /// field is then made to agree with the record again (unless a mutation corrupted
    /// it on purpose), so most mutated records get past the header into the payload
    /// parser.
    fn mutate(&mut self, rec: &mut Vec<u8>) {
        let mut fix_length = !self.rng.one_in(4);
        for _ in 0..self.rng.range(1, 3) {
            match self.rng.below(8) {
                // Flip one to four bits.
                0 if !rec.is_empty() => {
                    for _ in 0..self.rng.range(1, 4) {
                        let i = self.rng.below(rec.len());
                        rec[i] ^= 1 << self.rng.below(8);
                    }
                }
                // Replace one to four bytes.
                1 if !rec.is_empty() => {
                    for _ in 0..self.rng.range(1, 4) {
                        let i = self.rng.below(rec.len());
                        rec[i] = self.rng.byte();
                    }
                }
                // Truncate anywhere, header included.
                2 => {
                    let keep = self.rng.below(rec.len() + 1);
                    rec.truncate(keep);
                }
                // Extend by 1 to 16 bytes, sometimes by up to 300.
                3 => {
                    let extra = if self.rng.one_in(8) {
                        self.rng.range(1, 300)
                    } else {
                        self.rng.range(1, 16)
                    };
                    for _ in 0..extra {
                        let b = self.rng.byte();
                        rec.push(b);
                    }
                }
                // Corrupt the header's length field (and leave it corrupt).
                4 if rec.len() >= HEADER_LEN => {
                    let actual = (rec.len() - HEADER_LEN) as u32;
                    let declared = match self.rng.below(4) {
                        0 => actual.wrapping_add(1),
                        1 => actual.wrapping_sub(1),
                        2 => MAX_MESSAGE_LEN as u32 + self.rng.below(2) as u32,
                        _ => self.rng.u32(),
                    };
                    rec[4..8].copy_from_slice(&declared.to_le_bytes());
                    fix_length = false;
                }
                // Change the kind: to another known kind (the payload is then read
                // as the wrong kind) or to any byte.
                5 if !rec.is_empty() => {
                    rec[0] = if self.rng.one_in(4) {
                        self.rng.byte()
                    } else {
                        self.kinds[self.rng.below(self.kinds.len())]
                    };
                }
                // Insert or remove a payload byte, shifting every field after it.
                6 if rec.len() > HEADER_LEN => {
                    let i = self.rng.range(HEADER_LEN, rec.len() - 1);
                    if self.rng.one_in(2) {
                        rec.remove(i);
                    } else {
                        let b = self.rng.byte();
                        rec.insert(i, b);
                    }
                }
                // Overwrite a 16- or 32-bit field anywhere in the payload with an edge
                // value (this is what hits path lengths, errnos, counts and ports).
                7 if rec.len() >= HEADER_LEN + 2 => {
                    let width = if self.rng.one_in(2) { 2 } else { 4 };
                    let width = width.min(rec.len() - HEADER_LEN);
                    let at = self.rng.range(HEADER_LEN, rec.len() - width);
                    let value = self.rng.u32().to_le_bytes();
                    rec[at..at + width].copy_from_slice(&value[..width]);
                }
                // The chosen mutation does not apply to a record this short.
                _ => {}
            }
        }
        if fix_length && rec.len() >= HEADER_LEN {
            set_declared_len(rec);
        }
    }
}

/// Makes the header's length field agree with the record's size.
fn set_declared_len(rec: &mut [u8]) {
    let payload = (rec.len() - HEADER_LEN) as u32;
    rec[4..8].copy_from_slice(&payload.to_le_bytes());
}

/// How many descriptors a message's kind travels with.
fn fds_for(m: &Message<'_>) -> usize {
    match m.fd_rule() {
        FdRule::None => 0,
        FdRule::One => 1,
    }
}

/// Every `ProtocolError` variant, in the order [`error_index`] numbers them.
const ERRORS: [&str; 12] = [
    "Short",
    "Oversized",
    "LengthMismatch",
    "UnknownKind",
    "Reserved",
    "Malformed",
    "UnexpectedFd",
    "MissingFd",
    "ControlTruncated",
    "NotReading",
    "Unexpected",
    "Flooding",
];

/// The errors `Message::decode` itself can return (the others come from the channel
/// and the primary): the million-record test must see each of them.
const DECODE_ERRORS: [&str; 8] = [
    "Short",
    "Oversized",
    "LengthMismatch",
    "UnknownKind",
    "Reserved",
    "Malformed",
    "UnexpectedFd",
    "MissingFd",
];

fn error_index(e: &ProtocolError) -> usize {
    match e {
        ProtocolError::Short { .. } => 0,
        ProtocolError::Oversized { .. } => 1,
        ProtocolError::LengthMismatch { .. } => 2,
        ProtocolError::UnknownKind(_) => 3,
        ProtocolError::Reserved => 4,
        ProtocolError::Malformed { .. } => 5,
        ProtocolError::UnexpectedFd { .. } => 6,
        ProtocolError::MissingFd { .. } => 7,
        ProtocolError::ControlTruncated => 8,
        ProtocolError::NotReading => 9,
        ProtocolError::Unexpected { .. } => 10,
        ProtocolError::Flooding { .. } => 11,
    }
}

/// Outcomes counted by kind and by error, to show (and check) that the generator
/// reaches every branch rather than stopping at the first check each time.
#[derive(Default)]
struct Tally {
    accepted: [u64; VARIANTS],
    refused: [u64; ERRORS.len()],
}

impl Tally {
    fn accepted_total(&self) -> u64 {
        self.accepted.iter().sum()
    }

    fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }

    fn refused(&self, name: &str) -> u64 {
        ERRORS
            .iter()
            .position(|e| *e == name)
            .map_or(0, |i| self.refused[i])
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "accepted by kind {:?}, refused", self.accepted)?;
        for (name, n) in ERRORS.iter().zip(self.refused) {
            if n > 0 {
                write!(f, " {name}={n}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// 1. Valid messages round-trip

#[test]
fn random_messages_round_trip() {
    let seed = seed();
    println!("CLUSTER_PROPERTY_SEED={seed:#x}");
    let mut gen = Gen::new(seed ^ 1); // each test draws its own stream
    let mut buf = Vec::new();
    for case in 0..MESSAGES {
        let v = gen.rng.below(VARIANTS);
        let msg = gen.message(v);
        assert_eq!(variant(&msg), v, "message({v}) made {msg:?}");
        buf.clear();
        msg.encode(&mut buf);
        let _report = OnPanic {
            test: "random_messages_round_trip",
            seed,
            case,
            record: &buf,
        };
        let fds = fds_for(&msg);
        assert_eq!(Message::decode(&buf, fds).as_ref(), Ok(&msg));
        // With any other descriptor count, the same record is refused.
        for wrong in [0, 1, 2].into_iter().filter(|&n| n != fds) {
            assert!(
                Message::decode(&buf, wrong).is_err(),
                "{msg:?} with {wrong}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. A million records: a message or an error, never a panic

/// Decodes `rec` as if `fds` descriptors came with it and checks what comes back:
/// an accepted record re-encodes to exactly its own bytes and carries exactly the
/// descriptors its kind does; an error says something true about the record. Returns
/// whether the record was accepted.
fn check_decode(rec: &[u8], fds: usize, reencoded: &mut Vec<u8>, tally: &mut Tally) -> bool {
    match Message::decode(rec, fds) {
        Ok(msg) => {
            assert_eq!(fds_for(&msg), fds, "{msg:?} accepted with {fds} fds");
            reencoded.clear();
            msg.encode(reencoded);
            assert_eq!(
                reencoded.as_slice(),
                rec,
                "{msg:?} does not re-encode to its record"
            );
            tally.accepted[variant(&msg)] += 1;
            true
        }
        Err(e) => {
            let payload = rec.len().saturating_sub(HEADER_LEN);
            match e {
                ProtocolError::Short { len } => assert!(len == rec.len() && len < HEADER_LEN),
                ProtocolError::Oversized { len } => {
                    assert!(len == rec.len() && len > MAX_RECORD_LEN);
                }
                ProtocolError::LengthMismatch { declared, actual } => {
                    assert!(actual == payload && declared != actual);
                }
                ProtocolError::UnknownKind(k) => assert_eq!(k, rec[0]),
                ProtocolError::Reserved => assert_ne!(rec[1..4], [0, 0, 0]),
                ProtocolError::UnexpectedFd { count, .. } => {
                    assert!(count == fds && fds > 0);
                }
                ProtocolError::MissingFd { .. } => assert_eq!(fds, 0),
                ProtocolError::Malformed { .. } => {}
                ProtocolError::ControlTruncated
                | ProtocolError::NotReading
                | ProtocolError::Flooding { .. }
                | ProtocolError::Unexpected { .. } => {
                    panic!("decode returned {e:?}, which only the channel or primary makes")
                }
            }
            tally.refused[error_index(&e)] += 1;
            false
        }
    }
}

#[test]
fn a_million_records_decode_to_a_message_or_an_error() {
    let seed = seed();
    println!("CLUSTER_PROPERTY_SEED={seed:#x}");
    let mut gen = Gen::new(seed ^ 2); // each test draws its own stream
    let mut rec = Vec::with_capacity(MAX_RECORD_LEN + 512);
    let mut reencoded = Vec::with_capacity(MAX_RECORD_LEN + 512);
    let mut tallies: [Tally; 3] = Default::default();
    let mut decodes = 0u64;
    for case in 0..RECORDS {
        let shape = gen.record(&mut rec);
        let _report = OnPanic {
            test: "a_million_records_decode_to_a_message_or_an_error",
            seed,
            case,
            record: &rec,
        };
        let tally = &mut tallies[shape as usize];
        // A record is one kind, and each kind carries a fixed number of descriptors,
        // so at most one of these two decodes succeeds; for an unmutated valid record,
        // exactly one does.
        let accepted = usize::from(check_decode(&rec, 0, &mut reencoded, tally))
            + usize::from(check_decode(&rec, 1, &mut reencoded, tally));
        decodes += 2;
        assert!(accepted <= 1, "accepted with 0 and with 1 descriptor");
        if shape == Shape::Valid {
            assert_eq!(accepted, 1, "a valid record was refused");
        }
        // No kind carries two or more descriptors.
        if gen.rng.one_in(8) {
            let fds = gen.rng.range(2, 6);
            assert!(!check_decode(&rec, fds, &mut reencoded, tally));
            decodes += 1;
        }
    }
    for (shape, tally) in SHAPES.iter().zip(&tallies) {
        println!("{shape:?}: {tally}");
    }
    println!("{RECORDS} records, {decodes} decodes");

    // The generator must reach every branch, or passing says little: some of the
    // random and mutated records decode, every kind is accepted somewhere, and every
    // error decode can return is seen.
    for shape in [Shape::Random, Shape::Mutated] {
        let t = &tallies[shape as usize];
        assert!(t.accepted_total() > 0, "no {shape:?} record decoded");
        assert!(t.refused_total() > 0, "every {shape:?} record decoded");
    }
    let mutated = &tallies[Shape::Mutated as usize];
    for (v, n) in mutated.accepted.iter().enumerate() {
        assert!(*n > 0, "no mutated record decoded as kind number {v}");
    }
    for name in DECODE_ERRORS {
        let seen: u64 = tallies.iter().map(|t| t.refused(name)).sum();
        assert!(seen > 0, "no record was refused as {name}");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Every descriptor that arrives is closed

/// What came back from the channel.
#[derive(Default)]
struct ChannelTally {
    /// Accepted records (each with its descriptor), by `recv` and by `recv_many`.
    accepted: [u64; 2],
    /// Refused records (their descriptors closed by the channel), likewise.
    refused: [u64; 2],
}

/// Sends `rec` with a copy of `pass`, without blocking. Returns `false` when the queue is
/// full (the caller reads first and tries again); an empty record is refused by the
/// socket layer (a descriptor must travel with at least one byte) and counts as sent.
fn send(a: &Channel, rec: &[u8], pass: BorrowedFd<'_>) -> bool {
    match a.send_encoded(rec, Some(pass), true) {
        Ok(()) => true,
        Err(e) if rec.is_empty() => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("send_encoded of {} bytes: {e}", rec.len()),
    }
}

/// Drops whatever one received record produced, after checking it: an accepted record
/// came with exactly the one descriptor its kind carries, and it is close-on-exec.
fn settle(got: Result<Incoming<'_>, ProtocolError>, batch: usize, tally: &mut ChannelTally) {
    match got {
        Ok(Incoming::Message(msg, fd)) => {
            assert_eq!(msg.fd_rule(), FdRule::One, "{msg:?} accepted with an fd");
            let fd = fd.expect("an accepted record lost its descriptor");
            assert!(fd::is_cloexec(fd.as_fd()).unwrap());
            tally.accepted[batch] += 1;
        }
        Ok(Incoming::Eof) => panic!("EOF while the sender is open"),
        // Counted as refused: the test process is not at its descriptor limit, so this
        // is only the MSG_CTRUNC of more descriptors than the buffer holds.
        Ok(Incoming::FdLost(_)) | Err(_) => tally.refused[batch] += 1,
    }
}

/// Reads with `recv_many` until nothing is queued; returns how many records came.
fn drain_many(
    b: &Channel,
    bufs: &mut [[u8; BATCH_RECORD]; BATCH],
    tally: &mut ChannelTally,
) -> usize {
    let mut total = 0;
    loop {
        match b.recv_many(bufs, &mut |got| settle(got, 1, tally)) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("recv_many: {e}"),
        }
    }
}

/// The leak check needs the pipe's read end to have no holder but this test. That holds
/// because no unit test in this binary forks: a child forked by another test's thread
/// would inherit copies of every descriptor open at that moment, close-on-exec or not.
/// A write to a pipe nobody can read fails with `EPIPE` rather than killing the process
/// because Rust's runtime sets `SIGPIPE` to ignored before `main` (the test harness's
/// too), and nothing in this crate changes that in the test process.
#[test]
fn every_descriptor_that_arrives_is_closed() {
    let seed = seed();
    println!("CLUSTER_PROPERTY_SEED={seed:#x}");
    let mut gen = Gen::new(seed ^ 3); // each test draws its own stream
    let (a, b) = Channel::pair().unwrap();
    let (read_end, write_end) = fd::pipe_nonblocking().unwrap();
    let mut write_end = File::from(write_end);
    // While the read end is open, the write succeeds: so EPIPE at the end means
    // "no read end left", not "this write path fails anyway".
    assert_eq!(write_end.write(b"x").unwrap(), 1);

    let mut rec = Vec::with_capacity(MAX_RECORD_LEN + 512);
    let mut buf = vec![0u8; MAX_RECORD_LEN + 1];
    let mut bufs = [[0u8; BATCH_RECORD]; BATCH];
    let mut tally = ChannelTally::default();
    let mut case = 0;
    while case < CHANNEL_RECORDS {
        if gen.rng.one_in(4) {
            // A batch, read back with `recv_many`: records longer than BATCH_RECORD
            // come back as oversized errors, their descriptors closed all the same.
            let (mut sent, mut received) = (0, 0);
            for _ in 0..gen.rng.range(1, BATCH) {
                gen.record(&mut rec);
                let _report = OnPanic {
                    test: "every_descriptor_that_arrives_is_closed (recv_many)",
                    seed,
                    case,
                    record: &rec,
                };
                if !send(&a, &rec, read_end.as_fd()) {
                    received += drain_many(&b, &mut bufs, &mut tally);
                    assert!(send(&a, &rec, read_end.as_fd()), "queue full when empty");
                }
                sent += usize::from(!rec.is_empty());
                case += 1;
            }
            received += drain_many(&b, &mut bufs, &mut tally);
            assert_eq!(received, sent, "records lost or duplicated in a batch");
        } else {
            // One record, read back with `recv`.
            gen.record(&mut rec);
            let _report = OnPanic {
                test: "every_descriptor_that_arrives_is_closed (recv)",
                seed,
                case,
                record: &rec,
            };
            assert!(send(&a, &rec, read_end.as_fd()), "queue full when empty");
            if !rec.is_empty() {
                match b.recv(&mut buf, true) {
                    Ok(incoming) => settle(Ok(incoming), 0, &mut tally),
                    Err(RecvError::Protocol(e)) => settle(Err(e), 0, &mut tally),
                    Err(RecvError::Io(e)) => panic!("recv: {e}"),
                }
            }
            case += 1;
        }
    }
    println!(
        "{CHANNEL_RECORDS} records: recv accepted {} refused {}, recv_many accepted {} refused {}",
        tally.accepted[0], tally.refused[0], tally.accepted[1], tally.refused[1]
    );
    for path in 0..2 {
        assert!(
            tally.accepted[path] > 0,
            "no record accepted by path {path}"
        );
        assert!(tally.refused[path] > 0, "no record refused by path {path}");
    }

    // Nothing is left in flight (a queued record would still hold a copy).
    match b.recv(&mut buf, true) {
        Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("expected an empty channel, got {other:?}"),
    }
    // Every copy that arrived has been dropped; drop the original too. If any copy
    // were still open anywhere, the pipe would still have a reader and accept the byte.
    drop(read_end);
    let err = write_end
        .write(b"x")
        .expect_err("a copy of the pipe's read end is still open: a descriptor leaked");
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
}
