//! The hand-over record: what a primary leaves the next program of its own process
//! across `execve` in a binary upgrade.
//!
//! The sockets themselves cross `execve` as descriptors (their `FD_CLOEXEC` cleared
//! just before it); the record says which number is what:
//!
//! - the pid of the process that wrote it (an upgrade is in place: the next program
//!   runs in the same process, so the pid it reads must be its own);
//! - each listening handle: the key workers ask for it by (port 0 stays 0), the address
//!   it is bound to, its kind, its sockets (shared: the one socket; round-robin: the
//!   listener, then the connections accepted and not yet handed out; reuse-port: the
//!   anchor, then each worker's socket; datagram: the shared socket, or each socket of
//!   the group), and the Unix socket file it created (its
//!   directory, held open, and the file's identity), so the next program removes that
//!   file, and only that file, when it closes the handle;
//! - each worker still running: its id, its pid and the primary's end of its control
//!   channel, so the next program can tell it to finish and reap it;
//! - the path the program was started from, and the next worker and handle ids (never
//!   reused, so a late message from an old worker cannot name a new one).
//!
//! Text, one entry per `;`, fields split by spaces, paths and addresses in hex (a Unix
//! path may hold any byte but NUL).
//!
//! # Where it lives, and why it is not simply believed
//!
//! The record is written into a sealed memfd (`memfd_create` with `MFD_ALLOW_SEALING`,
//! then `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`), which crosses
//! `execve` like the sockets; the environment variable [`VAR`] names only its
//! descriptor number. Until version 2 the record itself was the variable's value, and
//! a fresh start believed whatever it found there. Environments leak (`sudo -E`,
//! `env_keep`, an `EnvironmentFile` the service's user can write), and such a record
//! made a root primary `kill(-1, SIGKILL)` (a worker pid of -1), adopt and later close
//! the application's own log descriptor as a worker's channel, remove a file through a
//! descriptor it named as a directory, run a path of its choosing at the next
//! `SIGUSR2`, or panic on `next 4294967295`.
//!
//! So a record is believed only when everything about it says it was written by an
//! upgrade of this very process (`vouch.rs`): the descriptor is a memfd with exactly
//! those seals, owned by this process's user; the pid in it is this process's; every
//! worker pid is above 1 and a child of this process; every channel is an `AF_UNIX`
//! `SOCK_SEQPACKET` socket made by this process; every listening descriptor is the
//! kind of socket the record says; a directory is a directory; the program is the one
//! this process runs; every number is bounded. [`Handover::parse`] is pure: it reads
//! text into numbers and names and touches no descriptor, so the checks all run
//! before anything is claimed, and a record that fails one is refused whole (nothing
//! closed, nothing adopted) with a warning that names the check, and the program
//! starts fresh. The memfd is also what removes the 128 KiB limit of one environment
//! string (`MAX_ARG_STRLEN`): ~250 long Unix paths made every upgrade fail `E2BIG`.

use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::addr::ListenAddr;
use crate::sys::fd::{self, FileId};

/// The environment variable that names the descriptor of the memfd holding the record.
pub(crate) const VAR: &str = "CLUSTER_UPGRADE";

/// The record's first field. Version 2 added the writer's pid and moved the record
/// out of the environment into a memfd; a version-1 record (an upgrade from a program
/// built before that) is refused, and so is that program's trial (see `trial.rs`):
/// crossing to this version takes one restart.
const VERSION: &str = "cluster-upgrade-2";

/// Bounds on what a record may say, checked by [`Handover::parse`]: the largest
/// worker or handle id (the ids count up from there, far from `u32::MAX`), and the most
/// workers, handles and descriptors per handle a record may list.
pub(crate) const MAX_ID: u32 = i32::MAX as u32;
const MAX_ENTRIES: usize = 1 << 16;
const MAX_FDS_PER_HANDLE: usize = 1 << 20;

/// What kind of handle a passed one was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Shared,
    RoundRobin,
    ReusePort,
    /// A datagram handle's one shared socket.
    Datagram,
    /// A datagram handle's reuse-port group: every socket.
    DatagramGroup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::RoundRobin => "round-robin",
            Kind::ReusePort => "reuse-port",
            Kind::Datagram => "datagram",
            Kind::DatagramGroup => "datagram-group",
        }
    }

    /// Whether a handle of this kind serves datagrams (the key's other half).
    pub(crate) fn is_datagram(self) -> bool {
        matches!(self, Kind::Datagram | Kind::DatagramGroup)
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Shared,
            Kind::RoundRobin,
            Kind::ReusePort,
            Kind::Datagram,
            Kind::DatagramGroup,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// A socket file a handle created: its directory (a descriptor) and the file's identity.
#[derive(Debug)]
pub(crate) struct PassedFile<F> {
    pub(crate) dir: F,
    pub(crate) name: CString,
    pub(crate) id: FileId,
}

/// One listening handle (see the module docs for what `fds` holds).
#[derive(Debug)]
pub(crate) struct PassedHandle<F> {
    pub(crate) key: ListenAddr,
    pub(crate) local: ListenAddr,
    pub(crate) kind: Kind,
    pub(crate) fds: Vec<F>,
    pub(crate) file: Option<PassedFile<F>>,
}

/// One worker still running.
#[derive(Debug)]
pub(crate) struct PassedWorker<F> {
    pub(crate) id: u32,
    pub(crate) pid: i32,
    pub(crate) control: F,
}

/// The whole record: descriptor numbers (`RawFd`) on the way out, owned descriptors
/// once read back.
#[derive(Debug)]
pub(crate) struct Handover<F> {
    /// The pid of the process that wrote the record.
    pub(crate) pid: i32,
    pub(crate) program: PathBuf,
    pub(crate) next_worker: u32,
    pub(crate) next_handle: u32,
    pub(crate) handles: Vec<PassedHandle<F>>,
    pub(crate) workers: Vec<PassedWorker<F>>,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.len() % 2 != 0 {
        return Err(format!("odd-length hex {s:?}"));
    }
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks_exact(2) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => return Err(format!("bad hex {s:?}")),
        }
    }
    Ok(out)
}

/// An address as bytes: a Unix path as it is, anything else as it is written.
fn addr_bytes(a: &ListenAddr) -> Vec<u8> {
    match a {
        ListenAddr::Unix(p) => [b"unix:", p.as_os_str().as_bytes()].concat(),
        other => other.to_string().into_bytes(),
    }
}

fn addr_from(s: &str) -> Result<ListenAddr, String> {
    let bytes = unhex(s)?;
    if let Some(path) = bytes.strip_prefix(b"unix:") {
        return Ok(ListenAddr::Unix(PathBuf::from(OsStr::from_bytes(path))));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("address {s:?} is not UTF-8"))?;
    text.parse().map_err(|e| format!("address {text:?}: {e}"))
}

fn num<T: TryFrom<i64> + TryFrom<u64>>(s: Option<&str>, what: &str) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("{what} missing"))?;
    crate::number::parse(s).ok_or_else(|| format!("{what} {s:?} is not a number"))
}

impl Handover<RawFd> {
    /// The record as the value of [`VAR`].
    pub(crate) fn encode(&self) -> String {
        let mut out = String::from(VERSION);
        let _ = write!(
            out,
            ";pid {};program {};next {} {}",
            self.pid,
            hex(self.program.as_os_str().as_bytes()),
            self.next_worker,
            self.next_handle
        );
        for h in &self.handles {
            let fds: Vec<String> = h.fds.iter().map(|f| f.to_string()).collect();
            let _ = write!(
                out,
                ";handle {} {} {} {}",
                h.kind.name(),
                hex(&addr_bytes(&h.key)),
                hex(&addr_bytes(&h.local)),
                fds.join(",")
            );
            if let Some(f) = &h.file {
                let _ = write!(
                    out,
                    ";file {} {} {} {} {} {}",
                    f.dir,
                    hex(f.name.as_bytes()),
                    f.id.dev,
                    f.id.ino,
                    f.id.changed.0,
                    f.id.changed.1
                );
            }
        }
        for w in &self.workers {
            let _ = write!(out, ";worker {} {} {}", w.id, w.pid, w.control);
        }
        out
    }

    /// Reads a record: numbers and names only. Pure: it touches no descriptor and
    /// makes no system call, so whatever the text says, nothing has happened yet
    /// (`vouch.rs` checks what the numbers name; [`Handover::claim`] takes them). An
    /// upgrade's trial reads the record it would get this way, so a program that
    /// cannot read it fails the trial, not the upgrade.
    ///
    /// # Errors
    ///
    /// A malformed or missing field, a number out of its bounds ([`MAX_ID`], worker
    /// ids from 1 up to the next id, descriptors from 3), too many entries, a relative
    /// program path.
    pub(crate) fn parse(text: &str) -> Result<Handover<RawFd>, String> {
        let mut entries = text.split(';');
        if entries.next() != Some(VERSION) {
            return Err(format!("not a {VERSION} record"));
        }
        let mut h = Handover {
            pid: 0,
            program: PathBuf::new(),
            next_worker: 1,
            next_handle: 0,
            handles: Vec::new(),
            workers: Vec::new(),
        };
        let fd_num = |n: Option<&str>, what: &str| -> Result<RawFd, String> {
            let n: RawFd = num(n, what)?;
            if n < 3 {
                return Err(format!("{what} {n} is not an inherited descriptor"));
            }
            Ok(n)
        };
        let id = |n: Option<&str>, what: &str| -> Result<u32, String> {
            let n: u32 = num(n, what)?;
            if n > MAX_ID {
                return Err(format!("{what} {n} is above {MAX_ID}"));
            }
            Ok(n)
        };
        let mut pid = None;
        for entry in entries {
            let mut f = entry.split(' ');
            match f.next() {
                Some("pid") => pid = Some(num::<i32>(f.next(), "pid")?),
                Some("program") => {
                    let bytes = unhex(f.next().unwrap_or(""))?;
                    h.program = PathBuf::from(OsStr::from_bytes(&bytes));
                }
                Some("next") => {
                    h.next_worker = id(f.next(), "next worker id")?;
                    h.next_handle = id(f.next(), "next handle id")?;
                }
                Some("handle") => {
                    if h.handles.len() >= MAX_ENTRIES {
                        return Err(format!("more than {MAX_ENTRIES} handles"));
                    }
                    let kind = f.next().and_then(Kind::parse).ok_or("bad handle kind")?;
                    let key = addr_from(f.next().unwrap_or(""))?;
                    let local = addr_from(f.next().unwrap_or(""))?;
                    let list = f.next().unwrap_or("");
                    if list.split(',').nth(MAX_FDS_PER_HANDLE).is_some() {
                        return Err(format!("more than {MAX_FDS_PER_HANDLE} descriptors"));
                    }
                    let fds = list
                        .split(',')
                        .map(|n| fd_num(Some(n), "descriptor"))
                        .collect::<Result<Vec<RawFd>, String>>()?;
                    h.handles.push(PassedHandle {
                        key,
                        local,
                        kind,
                        fds,
                        file: None,
                    });
                }
                Some("file") => {
                    let dir = fd_num(f.next(), "directory descriptor")?;
                    let name = CString::new(unhex(f.next().unwrap_or(""))?)
                        .map_err(|_| "NUL in a socket file name")?;
                    let id = FileId {
                        dev: num(f.next(), "device")?,
                        ino: num(f.next(), "inode")?,
                        changed: (num(f.next(), "ctime")?, num(f.next(), "ctime ns")?),
                        is_socket: true,
                    };
                    let last = h.handles.last_mut().ok_or("a file before any handle")?;
                    if last.file.is_some() {
                        return Err("two files for one handle".into());
                    }
                    last.file = Some(PassedFile { dir, name, id });
                }
                Some("worker") => {
                    if h.workers.len() >= MAX_ENTRIES {
                        return Err(format!("more than {MAX_ENTRIES} workers"));
                    }
                    h.workers.push(PassedWorker {
                        id: id(f.next(), "worker id")?,
                        pid: num(f.next(), "worker pid")?,
                        control: fd_num(f.next(), "control descriptor")?,
                    });
                }
                other => return Err(format!("unknown entry {other:?}")),
            }
            if let Some(extra) = f.next() {
                return Err(format!("extra field {extra:?} in {entry:?}"));
            }
        }
        h.pid = pid.ok_or("no pid")?;
        if !h.program.is_absolute() {
            return Err(format!("program {:?} is not an absolute path", h.program));
        }
        if let Some(w) = h
            .workers
            .iter()
            .find(|w| w.id == 0 || w.id >= h.next_worker)
        {
            return Err(format!(
                "worker id {} is not between 1 and the next id {}",
                w.id, h.next_worker
            ));
        }
        Ok(h)
    }

    /// Every descriptor number the record names.
    pub(super) fn numbers(&self) -> Vec<RawFd> {
        let mut all = Vec::new();
        for h in &self.handles {
            all.extend(&h.fds);
            all.extend(h.file.as_ref().map(|f| f.dir));
        }
        all.extend(self.workers.iter().map(|w| w.control));
        all
    }
}

impl Handover<RawFd> {
    /// Claims the record's descriptors, once `vouch.rs` has checked every one of them
    /// (each open, distinct and what the record says it is).
    ///
    /// # Errors
    ///
    /// A descriptor that cannot be claimed after all; those claimed so far close as
    /// they drop.
    pub(crate) fn claim(self) -> Result<Handover<OwnedFd>, String> {
        let take = |n: RawFd| {
            fd::take_inherited(n).map_err(|e| format!("descriptor {n} of the record: {e}"))
        };
        let mut handles = Vec::new();
        for h in self.handles {
            handles.push(PassedHandle {
                key: h.key,
                local: h.local,
                kind: h.kind,
                fds: h.fds.into_iter().map(take).collect::<Result<_, _>>()?,
                file: match h.file {
                    Some(f) => Some(PassedFile {
                        dir: take(f.dir)?,
                        name: f.name,
                        id: f.id,
                    }),
                    None => None,
                },
            });
        }
        let mut workers = Vec::new();
        for w in self.workers {
            workers.push(PassedWorker {
                id: w.id,
                pid: w.pid,
                control: take(w.control)?,
            });
        }
        Ok(Handover {
            pid: self.pid,
            program: self.program,
            next_worker: self.next_worker,
            next_handle: self.next_handle,
            handles,
            workers,
        })
    }
}

/// The parser's property test (a million random and mutated records); the file lives
/// with the other tests, out of `src/`, but is compiled here as a unit-test module so
/// it reaches crate-private items (`cargo test --lib upgrade_record`).
#[cfg(test)]
#[path = "../../../tests/property/upgrade_record.rs"]
mod property;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover<RawFd> {
        Handover {
            pid: 4321,
            program: PathBuf::from("/srv/app/bin/hello world"),
            next_worker: 9,
            next_handle: 4,
            handles: vec![
                PassedHandle {
                    key: "127.0.0.1:0".parse().unwrap(),
                    local: "127.0.0.1:40123".parse().unwrap(),
                    kind: Kind::RoundRobin,
                    fds: vec![5, 6, 7],
                    file: None,
                },
                PassedHandle {
                    key: ListenAddr::Unix(PathBuf::from(OsStr::from_bytes(b"/tmp/a b\xff;s"))),
                    local: ListenAddr::Unix(PathBuf::from("/tmp/a b")),
                    kind: Kind::Shared,
                    fds: vec![8],
                    file: Some(PassedFile {
                        dir: 9,
                        name: CString::new("a b").unwrap(),
                        id: FileId {
                            dev: 2049,
                            ino: 77,
                            changed: (1_700_000_000, 12),
                            is_socket: true,
                        },
                    }),
                },
            ],
            workers: vec![PassedWorker {
                id: 3,
                pid: 4242,
                control: 10,
            }],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let text = sample().encode();
        assert!(!text.contains('\0') && !text.contains('='));
        let back = Handover::parse(&text).unwrap();
        assert_eq!(back.pid, 4321);
        assert_eq!(back.program, sample().program);
        assert_eq!((back.next_worker, back.next_handle), (9, 4));
        assert_eq!(back.handles.len(), 2);
        assert_eq!(back.handles[0].key, sample().handles[0].key);
        assert_eq!(back.handles[0].local, sample().handles[0].local);
        assert_eq!(back.handles[0].fds, vec![5, 6, 7]);
        assert_eq!(back.handles[1].key, sample().handles[1].key);
        let file = back.handles[1].file.as_ref().unwrap();
        assert_eq!(
            (file.dir, file.id),
            (9, sample().handles[1].file.as_ref().unwrap().id)
        );
        assert_eq!(back.workers[0].pid, 4242);
        assert_eq!(back.numbers(), vec![5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn datagram_handles_read_back() {
        let mut h = sample();
        h.handles = vec![
            PassedHandle {
                key: "127.0.0.1:0".parse().unwrap(),
                local: "127.0.0.1:5353".parse().unwrap(),
                kind: Kind::DatagramGroup,
                fds: vec![11, 12, 13],
                file: None,
            },
            PassedHandle {
                key: "127.0.0.1:0".parse().unwrap(),
                local: "127.0.0.1:40123".parse().unwrap(),
                kind: Kind::Shared,
                fds: vec![14],
                file: None,
            },
            PassedHandle {
                key: "[::1]:53".parse().unwrap(),
                local: "[::1]:53".parse().unwrap(),
                kind: Kind::Datagram,
                fds: vec![15],
                file: None,
            },
        ];
        let text = h.encode();
        assert!(text.contains(";handle datagram-group ") && text.contains(";handle datagram "));
        let back = Handover::parse(&text).unwrap();
        let kinds: Vec<Kind> = back.handles.iter().map(|h| h.kind).collect();
        assert_eq!(kinds, [Kind::DatagramGroup, Kind::Shared, Kind::Datagram]);
        // The same key for a datagram and a stream handle: told apart by kind.
        assert_eq!(back.handles[0].key, back.handles[1].key);
        assert!(back.handles[0].kind.is_datagram() && !back.handles[1].kind.is_datagram());
        assert_eq!(back.handles[0].fds, vec![11, 12, 13]);
    }

    #[test]
    fn a_bad_record_is_refused_by_the_parser() {
        let p = "cluster-upgrade-2;pid 7;program 2f61";
        for bad in [
            String::new(),
            "cluster-upgrade-0".into(),
            // Version 1 (the record in the environment) is not read any more.
            "cluster-upgrade-1;program 2f61;next 2 1".into(),
            // No pid; a relative program.
            "cluster-upgrade-2;program 2f61".into(),
            "cluster-upgrade-2;pid 7;program 61".into(),
            format!("{p};next x 1"),
            format!("{p};handle tcp 00 00 5"),
            format!("{p};file 5 00 1 2 3 4"),
            format!("{p};worker 1 2 3 4"),
            format!("{p};program 0"),
            format!("{p};what"),
            // Bounds: ids (the panic of `next 4294967295`), worker ids, descriptors.
            format!("{p};next 4294967295 1"),
            format!("{p};next 2 4294967295"),
            format!("{p};next 2 1;worker 2 100 5"),
            format!("{p};next 2 1;worker 0 100 5"),
            format!("{p};next 2 1;worker 1 100 2"),
            format!("{p};next 2 1;worker 1 100 -1"),
            format!("{p};handle shared 00 00 1"),
        ] {
            assert!(Handover::parse(&bad).is_err(), "{bad:?}");
        }
        let ok = format!("{p};next {MAX_ID} 1;worker 1 -1 5");
        // (A worker pid of -1 parses: refusing it takes the process, see `vouch.rs`.)
        assert_eq!(Handover::parse(&ok).unwrap().workers[0].pid, -1);
    }
}
