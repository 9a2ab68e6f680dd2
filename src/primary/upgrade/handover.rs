//! The hand-over record: what a primary leaves the next program of its own process
//! across `execve` in a binary upgrade, in the environment variable [`VAR`].
//!
//! The sockets themselves cross `execve` as descriptors (their `FD_CLOEXEC` cleared
//! just before it); the record says which number is what:
//!
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
//! path may hold any byte but NUL). The record comes from this process's previous
//! program, so it is trusted as the process's own memory is; it is still checked
//! whole (every number distinct and open) before any descriptor is claimed.

use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::addr::ListenAddr;
use crate::sys::fd::{self, FileId};

/// The environment variable that carries the record.
pub(crate) const VAR: &str = "CLUSTER_UPGRADE";

/// The record's first field: a later version of the crate may read older records.
/// The datagram kinds came later without a new version: a record written before them
/// reads as it always did; a program from before them, handed a record with a
/// datagram handle (a downgrade), refuses it ("bad handle kind"). The trial is handed
/// the record too (`CLUSTER_UPGRADE_TRIAL_RECORD`) and reads it before it reports, so
/// from this version on such a program fails its trial and the running program keeps
/// serving; a program from before that check only fails after `execve`, which ends the
/// service.
const VERSION: &str = "cluster-upgrade-1";

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
    if s.len() % 2 != 0 {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad hex {s:?}"))
        })
        .collect()
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
            ";program {};next {} {}",
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

    /// Reads a record (numbers only: nothing is claimed yet). An upgrade's trial reads
    /// the record it would get this way, so a program that cannot read it fails the
    /// trial, not the upgrade.
    pub(super) fn parse(text: &str) -> Result<Handover<RawFd>, String> {
        let mut entries = text.split(';');
        if entries.next() != Some(VERSION) {
            return Err(format!("not a {VERSION} record"));
        }
        let mut h = Handover {
            program: PathBuf::new(),
            next_worker: 1,
            next_handle: 0,
            handles: Vec::new(),
            workers: Vec::new(),
        };
        for entry in entries {
            let mut f = entry.split(' ');
            match f.next() {
                Some("program") => {
                    let bytes = unhex(f.next().unwrap_or(""))?;
                    h.program = PathBuf::from(OsStr::from_bytes(&bytes));
                }
                Some("next") => {
                    h.next_worker = num(f.next(), "next worker id")?;
                    h.next_handle = num(f.next(), "next handle id")?;
                }
                Some("handle") => {
                    let kind = f.next().and_then(Kind::parse).ok_or("bad handle kind")?;
                    let key = addr_from(f.next().unwrap_or(""))?;
                    let local = addr_from(f.next().unwrap_or(""))?;
                    let fds = f
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(|n| num(Some(n), "descriptor"))
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
                    let dir = num(f.next(), "directory descriptor")?;
                    let name = CString::new(unhex(f.next().unwrap_or(""))?)
                        .map_err(|_| "NUL in a socket file name")?;
                    let id = FileId {
                        dev: num(f.next(), "device")?,
                        ino: num(f.next(), "inode")?,
                        changed: (num(f.next(), "ctime")?, num(f.next(), "ctime ns")?),
                        is_socket: true,
                    };
                    let last = h.handles.last_mut().ok_or("a file before any handle")?;
                    last.file = Some(PassedFile { dir, name, id });
                }
                Some("worker") => h.workers.push(PassedWorker {
                    id: num(f.next(), "worker id")?,
                    pid: num(f.next(), "worker pid")?,
                    control: num(f.next(), "control descriptor")?,
                }),
                other => return Err(format!("unknown entry {other:?}")),
            }
            if let Some(extra) = f.next() {
                return Err(format!("extra field {extra:?} in {entry:?}"));
            }
        }
        Ok(h)
    }

    /// Every descriptor number the record names.
    fn numbers(&self) -> Vec<RawFd> {
        let mut all = Vec::new();
        for h in &self.handles {
            all.extend(&h.fds);
            all.extend(h.file.as_ref().map(|f| f.dir));
        }
        all.extend(self.workers.iter().map(|w| w.control));
        all
    }
}

impl Handover<OwnedFd> {
    /// Reads the record and claims its descriptors.
    ///
    /// # Errors
    ///
    /// What is wrong with the record: a malformed field, a number named twice, a
    /// descriptor that is not open. Nothing is claimed then.
    pub(crate) fn decode(text: &str) -> Result<Handover<OwnedFd>, String> {
        let raw = Handover::parse(text)?;
        // Sorted as `u32`, the type of the crate's other sorts (one `sort_unstable` in
        // the binary, not two); a negative number stays distinct and prints as itself.
        let mut numbers: Vec<u32> = raw.numbers().into_iter().map(|n| n as u32).collect();
        numbers.sort_unstable();
        if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("descriptor {} named twice", w[0] as RawFd));
        }
        // Claimed one by one; on a failure, those claimed so far close as they drop.
        let take = |n: RawFd| {
            fd::take_inherited(n).map_err(|e| format!("descriptor {n} of the record: {e}"))
        };
        let mut handles = Vec::new();
        for h in raw.handles {
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
        for w in raw.workers {
            workers.push(PassedWorker {
                id: w.id,
                pid: w.pid,
                control: take(w.control)?,
            });
        }
        Ok(Handover {
            program: raw.program,
            next_worker: raw.next_worker,
            next_handle: raw.next_handle,
            handles,
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover<RawFd> {
        Handover {
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
    fn datagram_handles_read_back_and_older_records_still_read() {
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
        // A record of the version before datagrams (what the previous crate wrote).
        let old = "cluster-upgrade-1;program 2f61;next 2 1;handle shared \
                   3132372e302e302e313a30 3132372e302e302e313a3830 5";
        let back = Handover::parse(old).unwrap();
        assert_eq!(back.handles[0].kind, Kind::Shared);
        assert_eq!(back.handles[0].local.to_string(), "127.0.0.1:80");
    }

    #[test]
    fn a_bad_record_is_refused_before_anything_is_claimed() {
        for bad in [
            "",
            "cluster-upgrade-0",
            "cluster-upgrade-1;next x 1",
            "cluster-upgrade-1;handle tcp 00 00 5",
            "cluster-upgrade-1;file 5 00 1 2 3 4",
            "cluster-upgrade-1;worker 1 2 3 4",
            "cluster-upgrade-1;program 0",
            "cluster-upgrade-1;what",
        ] {
            assert!(Handover::decode(bad).is_err(), "{bad:?}");
        }
        // The same number twice, or a number that is not open: refused whole.
        let twice = "cluster-upgrade-1;worker 1 2 900;worker 2 3 900";
        assert!(Handover::decode(twice).unwrap_err().contains("twice"));
        let closed = "cluster-upgrade-1;worker 1 2 1000000";
        assert!(Handover::decode(closed).unwrap_err().contains("1000000"));
        let stdin = "cluster-upgrade-1;worker 1 2 0";
        assert!(Handover::decode(stdin).is_err());
    }
}
