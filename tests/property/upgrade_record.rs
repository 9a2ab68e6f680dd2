//! Property test of the upgrade's hand-over record parser (`Handover::parse`), as
//! `codec.rs` is for the IPC records: a million records, random, valid, and valid ones
//! mutated, each read by `parse` and, when it reads, checked by `vouch`. Neither may
//! panic, and no descriptor may be touched: the records name a few sentinel
//! descriptors this test holds (pipes, a socket), and after the million every sentinel
//! is still open, with its flags as they were, and its pipe still joins its two ends.
//!
//! The inputs come from a small std-only generator (splitmix64, as in `codec.rs`) with
//! a fixed seed, so every run checks the same records and a failure is reproducible;
//! `CLUSTER_PROPERTY_SEED` (decimal or `0x…`) explores others. A panicking record is
//! printed with its index.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use super::{Handover, Kind, PassedFile, PassedHandle, PassedWorker, MAX_ID};
use crate::primary::upgrade::vouch;
use crate::sys::fd::{self, FileId};
use crate::sys::process;

/// Records read by the test.
const RECORDS: usize = 1_000_000;
/// Valid records the mutations start from.
const BASES: usize = 4096;
/// The seed used unless `CLUSTER_PROPERTY_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5EED_0019_0005_0000;

/// splitmix64 (see `codec.rs`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A number as the record writes it, with edges more likely than by chance.
    fn number(&mut self) -> String {
        const EDGES: [&str; 16] = [
            "0",
            "1",
            "2",
            "3",
            "-1",
            "-0",
            "+1",
            "2147483647",
            "2147483648",
            "4294967295",
            "4294967296",
            "-2147483648",
            "18446744073709551615",
            "99999999999999999999999",
            "",
            "0x10",
        ];
        if self.one_in(3) {
            (*self.pick(&EDGES)).to_string()
        } else {
            (self.next() % 100_000).to_string()
        }
    }
}

fn seed() -> u64 {
    let Ok(s) = std::env::var("CLUSTER_PROPERTY_SEED") else {
        return DEFAULT_SEED;
    };
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap_or(DEFAULT_SEED),
        None => s.parse().unwrap_or(DEFAULT_SEED),
    }
}

const KINDS: [Kind; 5] = [
    Kind::Shared,
    Kind::RoundRobin,
    Kind::ReusePort,
    Kind::Datagram,
    Kind::DatagramGroup,
];

const ADDRS: [&str; 6] = [
    "127.0.0.1:0",
    "127.0.0.1:8080",
    "[::1]:443",
    "unix:/run/app.sock",
    "fd:3",
    "systemd:web",
];

/// A valid record whose descriptors are drawn from `fds` (the sentinels).
fn valid(rng: &mut Rng, fds: &[RawFd], program: &std::path::Path) -> Handover<RawFd> {
    let pid = if rng.one_in(2) {
        process::getpid()
    } else {
        rng.next() as i32
    };
    let mut h = Handover {
        pid,
        // Mostly a short path (mutations matter more than the path's length), now and
        // then this program's, for the checks to go further.
        program: if rng.one_in(4) {
            program.to_path_buf()
        } else {
            "/srv/app".into()
        },
        next_worker: 1 + rng.below(MAX_ID as usize) as u32,
        next_handle: rng.below(1000) as u32,
        handles: Vec::new(),
        workers: Vec::new(),
    };
    for _ in 0..rng.below(3) {
        let n = 1 + rng.below(3);
        h.handles.push(PassedHandle {
            key: rng.pick(&ADDRS).parse().unwrap(),
            local: rng.pick(&ADDRS).parse().unwrap(),
            kind: *rng.pick(&KINDS),
            fds: (0..n).map(|_| *rng.pick(fds)).collect(),
            file: rng.one_in(3).then(|| PassedFile {
                dir: *rng.pick(fds),
                name: std::ffi::CString::new("app.sock").unwrap(),
                id: FileId {
                    dev: rng.next(),
                    ino: rng.next(),
                    changed: (rng.next() as i64, rng.below(1_000_000_000) as i64),
                    is_socket: true,
                },
            }),
        });
    }
    for _ in 0..rng.below(3) {
        let any = rng.next() as i32;
        h.workers.push(PassedWorker {
            id: 1 + rng.below(h.next_worker as usize) as u32,
            pid: *rng.pick(&[-1, 0, 1, process::getpid(), any]),
            control: *rng.pick(fds),
        });
    }
    h
}

/// `text` changed once or a few times: bytes, entries, fields and numbers.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = bytes.len().max(1);
        match rng.below(8) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                if let Some(b) = bytes.get_mut(i) {
                    *b = *rng.pick(b";, 0123456789abcdef-\xff\x00");
                }
            }
            2 => bytes.truncate(rng.below(len)),
            3 => {
                let i = rng.below(len + 1).min(bytes.len());
                let entry = rng.pick(&[
                    ";pid ",
                    ";worker 1 ",
                    ";file ",
                    ";handle shared 00 00 ",
                    ";next ",
                    ";program ",
                    ";",
                    " ",
                    ",",
                ]);
                bytes.splice(i..i, entry.bytes());
            }
            4 | 5 => {
                // A number field replaced by an edge value.
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let fields: Vec<&str> = s.split(' ').collect();
                let i = rng.below(fields.len());
                let mut out = String::new();
                for (j, f) in fields.iter().enumerate() {
                    if j > 0 {
                        out.push(' ');
                    }
                    if j == i {
                        let keep: String = f.chars().take_while(|c| !c.is_ascii_digit()).collect();
                        let _ = write!(out, "{keep}{}", rng.number());
                    } else {
                        out.push_str(f);
                    }
                }
                bytes = out.into_bytes();
            }
            6 => {
                // An entry repeated, or two swapped.
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let mut entries: Vec<&str> = s.split(';').collect();
                let (a, b) = (rng.below(entries.len()), rng.below(entries.len()));
                if rng.one_in(2) {
                    entries.swap(a, b);
                } else {
                    let e = entries[a];
                    entries.insert(b, e);
                }
                bytes = entries.join(";").into_bytes();
            }
            _ => {
                let n = rng.below(16);
                bytes.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A sentinel's state: open, and its descriptor and file status flags.
fn state(f: &OwnedFd) -> (bool, i32) {
    (
        fd::is_cloexec(f.as_fd()).unwrap_or(false),
        fd::access_mode(f.as_fd()).unwrap_or(-1),
    )
}

#[test]
fn a_million_records_parse_or_are_refused_and_touch_no_descriptor() {
    let seed = seed();
    let mut rng = Rng(seed);
    // The sentinels: two pipes, a socket pair, a listener, a directory.
    let (r1, w1) = fd::pipe_nonblocking().unwrap();
    let (r2, w2) = fd::pipe_nonblocking().unwrap();
    let (s1, s2) = crate::sys::socket::seqpacket_pair().unwrap();
    let l = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let d = fd::open_directory(std::path::Path::new("/")).unwrap();
    let sentinels = [&r1, &w1, &r2, &w2, &s1, &s2, &l, &d];
    let before: Vec<_> = sentinels.iter().map(|f| state(f)).collect();
    let fds: Vec<RawFd> = sentinels.iter().map(|f| f.as_raw_fd()).collect();
    let memfd = fd::sealed_memfd("t", b"").unwrap();
    let program = std::env::current_exe().unwrap();
    let started = std::time::Instant::now();
    // Valid records to start from, made once (making one costs more than reading it).
    let bases: Vec<String> = (0..BASES)
        .map(|_| valid(&mut rng, &fds, &program).encode())
        .collect();
    let (mut parsed, mut vouched) = (0usize, 0usize);
    let mut text = String::new();
    for i in 0..RECORDS {
        let base = bases[rng.below(bases.len())].clone();
        text = match rng.below(10) {
            0 => base,
            1 => {
                let n = rng.below(64);
                (0..n)
                    .map(|_| *rng.pick(b"cluster-upgrade-2;pid 0123456789abcdef -,") as char)
                    .collect()
            }
            _ => mutate(&mut rng, &base),
        };
        let result = std::panic::catch_unwind(|| Handover::parse(&text));
        let Ok(result) = result else {
            panic!("seed {seed:#x}, record {i}: parse panicked on {text:?}");
        };
        if let Ok(h) = result {
            parsed += 1;
            // The checks look at what the record names, and change nothing (one in
            // four: they cost more than reading).
            if rng.one_in(4) && vouch::vouch(&h, memfd.as_raw_fd(), None).is_ok() {
                vouched += 1;
            }
        }
    }
    let _ = text;
    let after: Vec<_> = sentinels.iter().map(|f| state(f)).collect();
    assert_eq!(before, after, "a sentinel's flags changed");
    for f in sentinels {
        assert!(
            fd::is_cloexec(f.as_fd()).unwrap(),
            "a sentinel is not open any more"
        );
    }
    // The pipes still join their ends: nothing closed or replaced them.
    for (r, w) in [(&r1, &w1), (&r2, &w2)] {
        let mut f = std::fs::File::from(w.try_clone().unwrap());
        std::io::Write::write_all(&mut f, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(fd::read(r.as_fd(), &mut buf).unwrap(), 1);
    }
    println!(
        "{RECORDS} records (seed {seed:#x}): {parsed} parsed, {vouched} passed every check, \
         in {:.1?}",
        started.elapsed()
    );
}
