//! Whether a hand-over record was written by an upgrade of this very process: the
//! checks a record passes before any descriptor it names is claimed (see
//! `handover.rs` for why). Each check looks and changes nothing (`fstat`,
//! `getsockopt`, `fcntl(F_GET_SEALS)`, `waitid(WNOWAIT)`); the first that fails
//! refuses the record whole, and says which check it was.
//!
//! What each check rules out:
//!
//! - *memfd*: the descriptor [`VAR`](super::handover::VAR) names is a regular file with
//!   exactly the four seals, owned by this process's user. Nothing but a process makes
//!   a memfd, and once sealed nobody can change it, so what is read is what the
//!   previous program wrote (an environment variable alone can be typed by anybody who
//!   reaches the environment).
//! - *pid*: the record's pid is this process's (an upgrade runs in place).
//! - *program*: the program the record names is the one this process runs (the same
//!   file as `/proc/self/exe`) or the path this process resolves from its own
//!   `argv[0]`: a record cannot choose what runs at the next `SIGUSR2`.
//! - *descriptors*: every number is open, named once, and not the record's own memfd.
//! - *worker*: every worker pid is above 1 (never `kill(-1)` nor `kill(0)`) and a child
//!   of this process (`waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)` succeeds only
//!   for one), and its channel is an `AF_UNIX` `SOCK_SEQPACKET` socket that this
//!   process made (`SO_PEERCRED` of a `socketpair` end names the process that called
//!   `socketpair`, for both ends; Linux offers no call that names the holder of the
//!   other end, so "that worker's" rests on the child check).
//! - *socket*: every listening descriptor is a socket (`fstat`) of the record's family
//!   (`SO_DOMAIN`, from the bound address) and type (`SO_TYPE`: stream, or datagram
//!   for the datagram kinds); a round-robin listener listens (`SO_ACCEPTCONN`) and the
//!   connections after it do not.
//! - *directory*: a socket file's directory descriptor is a directory.
//!
//! Bounds on the numbers are [`Handover::parse`]'s.

use std::fmt;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;

use super::handover::{Handover, Kind, PassedHandle};
use crate::addr::ListenAddr;
use crate::sys::fd::{self, ALL_SEALS};
use crate::sys::process;
use crate::sys::socket;

/// The largest record read from a memfd: far more than any real one (300 handles on
/// long Unix paths take about 160 KiB), small enough to read at start without a care.
pub(super) const MAX_RECORD_BYTES: usize = 64 << 20;

/// `value` for a warning: at most 48 characters of it, escaped (`{:?}`).
pub(crate) fn shown(value: &str) -> String {
    let mut cut: String = value.chars().take(48).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Why a record was refused: the check that failed, and what it found.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) check: &'static str,
    pub(crate) detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "check {:?} failed: {}", self.check, self.detail)
    }
}

fn refuse<T>(check: &'static str, detail: String) -> Result<T, Refused> {
    Err(Refused { check, detail })
}

/// The memfd a variable's value names, and what it holds: checked to be a sealed memfd
/// of this user before it is read (it is neither claimed nor closed here).
pub(crate) fn read_memfd(value: &str) -> Result<(RawFd, Vec<u8>), Refused> {
    let Some(n) = crate::number::parse::<RawFd>(value).filter(|&n| n > 2) else {
        return refuse(
            "memfd",
            "the value is not a descriptor number (a record in the environment is not \
             believed)"
                .into(),
        );
    };
    let euid = process::geteuid();
    let read = fd::look_at(n, |fd| -> Result<Vec<u8>, Refused> {
        let st = fd::fstat(fd).map_err(|e| Refused {
            check: "memfd",
            detail: format!("descriptor {n}: fstat: {e}"),
        })?;
        if st.kind != libc::S_IFREG {
            return refuse("memfd", format!("descriptor {n} is not a regular file"));
        }
        match fd::seals(fd) {
            Ok(s) if s == ALL_SEALS => {}
            Ok(s) => {
                return refuse(
                    "memfd",
                    format!("descriptor {n} has seals {s:#x}, not {ALL_SEALS:#x}"),
                )
            }
            Err(e) => {
                return refuse(
                    "memfd",
                    format!("descriptor {n} is not a sealed memfd (F_GET_SEALS: {e})"),
                )
            }
        }
        if st.uid != euid {
            return refuse(
                "memfd",
                format!("descriptor {n} belongs to uid {}, not {euid}", st.uid),
            );
        }
        match fd::read_whole(fd, MAX_RECORD_BYTES) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => refuse(
                "bounds",
                format!("the record is larger than {MAX_RECORD_BYTES} bytes"),
            ),
            Err(e) => refuse("memfd", format!("descriptor {n}: read: {e}")),
        }
    });
    match read {
        Ok(r) => r.map(|bytes| (n, bytes)),
        Err(e) => refuse("memfd", format!("descriptor {n}: {e}")),
    }
}

/// Whether `program` is the program this process runs: the same file as
/// `/proc/self/exe`, or the path resolved from `argv[0]` now.
fn is_this_program(program: &Path, resolved: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    if resolved == Some(program) {
        return true;
    }
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    match (
        std::fs::metadata(program),
        std::fs::metadata("/proc/self/exe"),
    ) {
        (Ok(a), Ok(b)) => id(a) == id(b),
        _ => false,
    }
}

/// Checks `h` (read from memfd `memfd`) against this process: see the module docs.
/// `resolved`: the program path this process resolves from its own `argv[0]`.
pub(crate) fn vouch(
    h: &Handover<RawFd>,
    memfd: RawFd,
    resolved: Option<&Path>,
) -> Result<(), Refused> {
    let me = process::getpid();
    if h.pid != me {
        return refuse(
            "pid",
            format!("the record was written by pid {}, this is {me}", h.pid),
        );
    }
    if !is_this_program(&h.program, resolved) {
        return refuse(
            "program",
            format!(
                "{} is not the program this process runs",
                h.program.display()
            ),
        );
    }
    let mut numbers: Vec<RawFd> = h.numbers();
    numbers.sort_unstable();
    if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
        return refuse("descriptors", format!("descriptor {} named twice", w[0]));
    }
    if numbers.binary_search(&memfd).is_ok() {
        return refuse(
            "descriptors",
            format!("descriptor {memfd} is the record's own memfd"),
        );
    }
    let mut ids: Vec<u32> = h.workers.iter().map(|w| w.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return refuse("worker", format!("worker id {} named twice", w[0]));
    }
    for w in &h.workers {
        if w.pid <= 1 || !process::is_child(w.pid) {
            return refuse(
                "worker",
                format!(
                    "worker {}'s pid {} is not a child of this process",
                    w.id, w.pid
                ),
            );
        }
        look(w.control, "worker", |fd| {
            let what = format!("worker {}'s channel (descriptor {})", w.id, w.control);
            socket_is(fd, "worker", &what, libc::AF_UNIX, libc::SOCK_SEQPACKET)?;
            match socket::peer_pid(fd) {
                Ok(p) if p == me => Ok(()),
                Ok(p) => refuse("worker", format!("{what} was made by pid {p}, not {me}")),
                Err(e) => refuse("worker", format!("{what}: SO_PEERCRED: {e}")),
            }
        })?;
    }
    for p in &h.handles {
        vouch_handle(p)?;
    }
    Ok(())
}

/// Looks at number `n` through `f`; a number that is not open fails `check`.
fn look(
    n: RawFd,
    check: &'static str,
    f: impl FnOnce(BorrowedFd<'_>) -> Result<(), Refused>,
) -> Result<(), Refused> {
    match fd::look_at(n, f) {
        Ok(r) => r,
        Err(e) => refuse(check, format!("descriptor {n}: {e}")),
    }
}

/// `fd` is a socket of `domain` (any, when 0) and `ty`; else `check` fails.
fn socket_is(
    fd: BorrowedFd<'_>,
    check: &'static str,
    what: &str,
    domain: i32,
    ty: i32,
) -> Result<(), Refused> {
    let st = fd::fstat(fd).map_err(|e| Refused {
        check,
        detail: format!("{what}: fstat: {e}"),
    })?;
    if st.kind != libc::S_IFSOCK {
        return refuse(check, format!("{what} is not a socket"));
    }
    let opt = |name| socket::int_option(fd, libc::SOL_SOCKET, name).unwrap_or(-1);
    let (d, t) = (opt(libc::SO_DOMAIN), opt(libc::SO_TYPE));
    if (domain != 0 && d != domain) || t != ty {
        return refuse(
            check,
            format!("{what} is a socket of family {d} and type {t}, not {domain} and {ty}"),
        );
    }
    Ok(())
}

/// One listening handle's descriptors are what its kind says.
fn vouch_handle(p: &PassedHandle<RawFd>) -> Result<(), Refused> {
    // The family from the bound address (an adopted `fd:N` one may be any of three).
    let domain = match &p.local {
        ListenAddr::Tcp(a) if a.is_ipv4() => libc::AF_INET,
        ListenAddr::Tcp(_) => libc::AF_INET6,
        ListenAddr::Unix(_) => libc::AF_UNIX,
        ListenAddr::Fd(_) | ListenAddr::Systemd(_) => 0,
    };
    let ty = if p.kind.is_datagram() {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let one = matches!(p.kind, Kind::Shared | Kind::Datagram);
    if p.fds.is_empty() || (one && p.fds.len() != 1) {
        return refuse(
            "socket",
            format!(
                "{}: a {:?} handle with {} sockets",
                p.key,
                p.kind,
                p.fds.len()
            ),
        );
    }
    for (i, &n) in p.fds.iter().enumerate() {
        look(n, "socket", |fd| {
            let what = format!("{}'s socket (descriptor {n})", p.key);
            socket_is(fd, "socket", &what, domain, ty)?;
            if domain == 0 {
                let d = socket::int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
                if ![libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&d) {
                    return refuse("socket", format!("{what} is of family {d}"));
                }
            }
            if p.kind == Kind::RoundRobin {
                let listens =
                    socket::int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
                if listens != (i == 0) {
                    return refuse(
                        "socket",
                        format!(
                            "{what}: a round-robin {} {}",
                            if i == 0 { "listener" } else { "connection" },
                            if listens {
                                "listens"
                            } else {
                                "does not listen"
                            }
                        ),
                    );
                }
            }
            Ok(())
        })?;
    }
    if let Some(f) = &p.file {
        look(f.dir, "directory", |fd| match fd::fstat(fd) {
            Ok(st) if st.kind == libc::S_IFDIR => Ok(()),
            Ok(_) => refuse(
                "directory",
                format!(
                    "{}'s directory (descriptor {}) is not a directory",
                    p.key, f.dir
                ),
            ),
            Err(e) => refuse("directory", format!("descriptor {}: fstat: {e}", f.dir)),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::path::PathBuf;

    use super::*;
    use crate::primary::upgrade::handover::{PassedFile, PassedWorker};
    use crate::sys::fd::FileId;

    fn record() -> Handover<RawFd> {
        Handover {
            pid: process::getpid(),
            program: std::env::current_exe().unwrap(),
            next_worker: 10,
            next_handle: 10,
            handles: Vec::new(),
            workers: Vec::new(),
        }
    }

    fn handle(kind: Kind, local: &str, fds: Vec<RawFd>) -> PassedHandle<RawFd> {
        PassedHandle {
            key: local.parse().unwrap(),
            local: local.parse().unwrap(),
            kind,
            fds,
            file: None,
        }
    }

    /// The check that refuses `h`, or "" when none does.
    fn refused_by(h: &Handover<RawFd>, memfd: RawFd) -> &'static str {
        vouch(h, memfd, None).err().map_or("", |r| r.check)
    }

    #[test]
    fn a_value_that_names_no_sealed_memfd_is_refused_unread() {
        let dir = std::env::temp_dir().join(format!("cluster-vouch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = OwnedFd::from(std::fs::File::create(dir.join("log")).unwrap());
        let (r, _w) = fd::pipe_nonblocking().unwrap();
        for value in [
            "cluster-upgrade-1;program 2f;next 4294967295 1".to_string(),
            "-1".into(),
            "0".into(),
            "2".into(),
            log.as_raw_fd().to_string(),
            r.as_raw_fd().to_string(),
            "1000000".into(),
        ] {
            let err = read_memfd(&value).unwrap_err();
            assert_eq!(err.check, "memfd", "{value}: {err}");
        }
        // A sealed memfd reads back.
        let m = fd::sealed_memfd("t", b"hello").unwrap();
        let (n, bytes) = read_memfd(&m.as_raw_fd().to_string()).unwrap();
        assert_eq!((n, &bytes[..]), (m.as_raw_fd(), &b"hello"[..]));
        // Sealed: not even its maker can change it.
        let mut f = std::fs::File::from(m.try_clone().unwrap());
        assert!(std::io::Write::write_all(&mut f, b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_check_refuses_its_hostile_record_and_touches_nothing() {
        let dir = std::env::temp_dir().join(format!("cluster-vouch2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = OwnedFd::from(std::fs::File::create(dir.join("log")).unwrap());
        let logn = log.as_raw_fd();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcpn = tcp.as_raw_fd();
        let local = tcp.local_addr().unwrap().to_string();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udpn = udp.as_raw_fd();
        let (mine, _theirs) = crate::sys::socket::seqpacket_pair().unwrap();
        let dgram = UnixDatagram::unbound().unwrap();
        let dirfd = fd::open_directory(&dir).unwrap();
        let memfd = fd::sealed_memfd("t", b"").unwrap();
        // A child of this process (spawned, not forked: this harness has threads).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let kid = child.id() as i32;
        let worker = |pid, control| PassedWorker {
            id: 1,
            pid,
            control,
        };

        assert_eq!(refused_by(&record(), memfd.as_raw_fd()), "");
        let mut h = record();
        h.pid += 1;
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "pid");
        let mut h = record();
        h.program = PathBuf::from("/bin/sh");
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "program");
        // kill(-1), kill(0), init, a process that is not a child (the parent), a
        // child whose "channel" is the application's log, or a datagram socket.
        for (pid, control) in [
            (-1, mine.as_raw_fd()),
            (0, mine.as_raw_fd()),
            (1, mine.as_raw_fd()),
            (process::getppid(), mine.as_raw_fd()),
            (kid, logn),
            (kid, dgram.as_raw_fd()),
        ] {
            let mut h = record();
            h.workers.push(worker(pid, control));
            assert_eq!(
                refused_by(&h, memfd.as_raw_fd()),
                "worker",
                "{pid} {control}"
            );
        }
        let mut h = record();
        h.workers.push(worker(kid, mine.as_raw_fd()));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "");
        // Sockets of the wrong kind, or no socket.
        for (kind, fds) in [
            (Kind::Shared, vec![logn]),
            (Kind::Shared, vec![udpn]),
            (Kind::Shared, vec![tcpn, tcpn + 1000]),
            (Kind::Datagram, vec![tcpn]),
            (Kind::RoundRobin, vec![udpn]),
            (Kind::RoundRobin, vec![tcpn, tcpn]),
            (Kind::ReusePort, vec![]),
        ] {
            let mut h = record();
            h.handles.push(handle(kind, &local, fds.clone()));
            let want = if fds.len() == 2 && fds[0] == fds[1] {
                "descriptors"
            } else {
                "socket"
            };
            assert_eq!(refused_by(&h, memfd.as_raw_fd()), want, "{kind:?} {fds:?}");
        }
        // The family: a TCP socket for a Unix address.
        let mut h = record();
        h.handles.push(handle(Kind::Shared, "unix:/x", vec![tcpn]));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "socket");
        let mut h = record();
        h.handles.push(handle(Kind::Shared, &local, vec![tcpn]));
        h.handles.push(handle(Kind::Datagram, &local, vec![udpn]));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "");
        // A socket file's directory that is the log; the memfd named in the record.
        let file = |dir| PassedFile {
            dir,
            name: CString::new("s").unwrap(),
            id: FileId {
                dev: 0,
                ino: 0,
                changed: (0, 0),
                is_socket: true,
            },
        };
        h.handles[0].file = Some(file(logn));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "directory");
        h.handles[0].file = Some(file(dirfd.as_raw_fd()));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "");
        h.handles[0].file = Some(file(memfd.as_raw_fd()));
        assert_eq!(refused_by(&h, memfd.as_raw_fd()), "descriptors");

        // Nothing was claimed or closed: every descriptor is still open, still ours.
        for f in [
            log.as_fd(),
            tcp.as_fd(),
            udp.as_fd(),
            mine.as_fd(),
            dirfd.as_fd(),
        ] {
            assert!(fd::is_cloexec(f).unwrap());
        }
        assert!(process::is_child(kid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!process::is_child(kid));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 300 handles on Unix paths of 100 bytes: a record over 128 KiB, which the
    /// environment cannot carry (`execve` fails `E2BIG`: one string is at most
    /// `MAX_ARG_STRLEN`, 32 pages) and a memfd carries whole.
    #[test]
    fn a_record_too_big_for_the_environment_crosses_in_a_memfd() {
        let dir = std::env::temp_dir().join(format!("cluster-vouch3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut listeners = Vec::new();
        let mut h = record();
        for i in 0..300 {
            let name = format!("{i:0>width$}", width = 100 - dir.as_os_str().len() - 1);
            let path = dir.join(name);
            assert_eq!(path.as_os_str().len(), 100);
            let l = UnixListener::bind(&path).unwrap();
            let local = format!("unix:{}", path.display());
            h.handles
                .push(handle(Kind::Shared, &local, vec![l.as_raw_fd()]));
            listeners.push(l);
        }
        let text = h.encode();
        assert!(text.len() > 128 << 10, "{} bytes", text.len());
        let e2big = std::process::Command::new("true")
            .env(super::super::handover::VAR, &text)
            .status()
            .unwrap_err();
        assert_eq!(e2big.raw_os_error(), Some(libc::E2BIG));
        let memfd = fd::sealed_memfd("cluster-upgrade", text.as_bytes()).unwrap();
        let (n, bytes) = read_memfd(&memfd.as_raw_fd().to_string()).unwrap();
        let back = Handover::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        vouch(&back, n, None).unwrap();
        assert_eq!(back.handles.len(), 300);
        assert_eq!(back.numbers(), h.numbers());
        drop(listeners);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
