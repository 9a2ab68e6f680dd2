//! A minimal FUSE file system for the scenarios (issue 19, item 2): one directory with
//! one file, `f`, served by a thread of the driver over `/dev/fuse` with plain `read`
//! and `write` (no libfuse, no `unsafe`). It answers everything at once except
//! `FLUSH` from a thread of the process it is told to hold ([`Fuse::hold_flushes_of`]):
//! those it keeps unanswered until [`Fuse::release`], as a hostile worker's file system
//! would keep them forever. Since `flush` runs on every `close(2)` of a FUSE file, the
//! closer waits in the kernel (state D once the request is read) until then.
//!
//! Mounted with util-linux `mount -i -t fuse -o fd=0,…`, the `/dev/fuse` file given as
//! `mount`'s standard input (so no descriptor needs passing), and `umount -l` at the
//! end. Needs root and `/dev/fuse`: [`unavailable`] says why not.
//!
//! Wire format: `include/uapi/linux/fuse.h` (protocol 7.x; this server says 7.31).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// Opcodes (`enum fuse_opcode`).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

const ROOT: u64 = 1;
const FILE: u64 = 2;
const CONTENT: &[u8] = b"hello\n";

/// Why the FUSE scenarios cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !super::proc::is_root() {
        return Some("not root (mounting a FUSE file system needs it)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let mount = Command::new("mount")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !mount.is_ok_and(|s| s.success()) {
        return Some("no mount(8)".into());
    }
    None
}

#[derive(Default)]
struct State {
    /// Hold `FLUSH` from the threads of this process (0: hold none).
    victim: u32,
    released: bool,
    /// `unique` of each held request, and the thread that asked.
    held: Vec<(u64, u32)>,
    /// Every `FLUSH` seen: (thread id, its process).
    flushes: Vec<(u32, u32)>,
}

/// A mounted instance; unmounted (lazily) when dropped, after releasing what it held.
pub struct Fuse {
    dir: PathBuf,
    dev: Arc<File>,
    state: Arc<(Mutex<State>, Condvar)>,
    server: Option<JoinHandle<()>>,
}

impl Fuse {
    /// Mounts a new instance on a fresh directory and starts serving it.
    pub fn mount() -> Result<Fuse, String> {
        static MOUNTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cluster-fuse-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let dev = File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| format!("open /dev/fuse: {e}"))?;
        let stdin = dev.try_clone().map_err(|e| format!("dup /dev/fuse: {e}"))?;
        let out = Command::new("mount")
            .args(["-i", "-t", "fuse", "-o"])
            .arg("fd=0,rootmode=40000,user_id=0,group_id=0,allow_other")
            .arg("none")
            .arg(&dir)
            .stdin(stdin)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!(
                "mount -t fuse: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = Arc::new(dev);
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let server = {
            let (dev, state) = (dev.clone(), state.clone());
            std::thread::spawn(move || serve(&dev, &state))
        };
        Ok(Fuse {
            dir,
            dev,
            state,
            server: Some(server),
        })
    }

    /// The file on this mount.
    pub fn file(&self) -> PathBuf {
        self.dir.join("f")
    }

    /// From now on, `FLUSH` from any thread of process `pid` stays unanswered until
    /// [`release`](Fuse::release).
    pub fn hold_flushes_of(&self, pid: u32) {
        self.state.0.lock().unwrap().victim = pid;
    }

    /// Waits (at most `timeout`) until a `FLUSH` is held; returns the thread that asked.
    pub fn wait_held(&self, timeout: Duration) -> Result<u32, String> {
        let (lock, cond) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut s = lock.lock().unwrap();
        loop {
            if let Some(&(_, tid)) = s.held.first() {
                return Ok(tid);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no FLUSH held within {timeout:?}"));
            }
            s = cond.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Every `FLUSH` seen so far: (thread id, its process id).
    pub fn flushes(&self) -> Vec<(u32, u32)> {
        self.state.0.lock().unwrap().flushes.clone()
    }

    /// Answers every held `FLUSH`, and every later one at once.
    pub fn release(&self) {
        release(&self.dev, &self.state);
    }

    /// A guard that calls [`release`](Fuse::release) when dropped: declared after the
    /// server in a scenario, it is dropped first, so a primary stuck in a `FLUSH` can go
    /// on and be stopped even when the scenario fails.
    pub fn releaser(&self) -> Releaser {
        Releaser {
            dev: self.dev.clone(),
            state: self.state.clone(),
        }
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        self.release();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir(&self.dir);
        // The connection ends once nothing holds a file of it any more; the server's
        // read then fails and it returns. Bounded: a thread left blocked is harmless.
        if let Some(server) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !server.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if server.is_finished() {
                let _ = server.join();
            }
        }
    }
}

/// See [`Fuse::releaser`].
pub struct Releaser {
    dev: Arc<File>,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Drop for Releaser {
    fn drop(&mut self) {
        release(&self.dev, &self.state);
    }
}

fn release(dev: &File, state: &(Mutex<State>, Condvar)) {
    let mut s = state.0.lock().unwrap();
    s.released = true;
    for (unique, _) in std::mem::take(&mut s.held) {
        reply(dev, unique, 0, &[]);
    }
}

/// The process a thread belongs to (`Tgid:` in `/proc/TID/status`), 0 if gone.
fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One reply: `fuse_out_header` (len, error as a negative errno, unique), then `body`.
fn reply(mut dev: &File, unique: u64, error: i32, body: &[u8]) {
    let mut r = Vec::with_capacity(16 + body.len());
    r.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
    r.extend_from_slice(&error.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(body);
    // ENOENT: the request was interrupted meanwhile; nothing else to do either way.
    let _ = dev.write_all(&r);
}

/// `struct fuse_attr` (88 bytes) of the root or the file.
fn attr(node: u64) -> Vec<u8> {
    let (size, mode, nlink): (u64, u32, u32) = if node == ROOT {
        (0, 0o040755, 2)
    } else {
        (CONTENT.len() as u64, 0o100644, 1)
    };
    let mut a = Vec::with_capacity(88);
    for v in [node, size, 1, 0, 0, 0] {
        a.extend_from_slice(&v.to_le_bytes()); // ino, size, blocks, atime, mtime, ctime
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        // atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

/// `struct fuse_attr_out`: attr_valid (1 h), attr_valid_nsec, dummy, attr.
fn attr_out(node: u64) -> Vec<u8> {
    let mut o = 3600u64.to_le_bytes().to_vec();
    o.extend_from_slice(&[0; 8]);
    o.extend_from_slice(&attr(node));
    o
}

/// `struct fuse_entry_out`: nodeid, generation, entry_valid, attr_valid (1 h each),
/// their nanoseconds, attr.
fn entry_out(node: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(128);
    for v in [node, 1, 3600, 3600] {
        o.extend_from_slice(&v.to_le_bytes());
    }
    o.extend_from_slice(&[0; 8]);
    o.extend_from_slice(&attr(node));
    o
}

/// `struct fuse_init_out` (64 bytes): 7.31, readahead as asked, no flags, 16
/// background requests, congestion at 12, max_write 4096, time granularity 1 ns.
fn init_out(max_readahead: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(64);
    for v in [7u32, 31, max_readahead, 0] {
        o.extend_from_slice(&v.to_le_bytes());
    }
    o.extend_from_slice(&16u16.to_le_bytes());
    o.extend_from_slice(&12u16.to_le_bytes());
    o.extend_from_slice(&4096u32.to_le_bytes());
    o.extend_from_slice(&1u32.to_le_bytes());
    o.resize(64, 0); // max_pages, map_alignment, flags2, max_stack_depth, unused
    o
}

/// The server thread: one request per `read`, until the connection ends.
fn serve(dev: &File, state: &(Mutex<State>, Condvar)) {
    let mut buf = vec![0u8; 128 * 1024];
    let mut input: &File = dev;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(4 | 2 | 11)) => continue, // EINTR, ENOENT, EAGAIN
            Err(_) => return, // ENODEV: unmounted, or aborted
        };
        if n < 40 {
            continue;
        }
        let req = &buf[..n];
        // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, …
        let (opcode, unique, node, tid) = (
            u32_at(req, 4),
            u64_at(req, 8),
            u64_at(req, 16),
            u32_at(req, 32),
        );
        let body = &req[40..];
        match opcode {
            INIT => reply(dev, unique, 0, &init_out(u32_at(body, 8))),
            LOOKUP => {
                let name = body.split(|&b| b == 0).next().unwrap_or(b"");
                if node == ROOT && name == b"f" {
                    reply(dev, unique, 0, &entry_out(FILE));
                } else {
                    reply(dev, unique, -2, &[]); // ENOENT
                }
            }
            GETATTR => reply(dev, unique, 0, &attr_out(node)),
            // fuse_open_out: fh 1, no open flags (so every close flushes).
            OPEN => reply(
                dev,
                unique,
                0,
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            READ => {
                let offset = u64_at(body, 8) as usize;
                reply(dev, unique, 0, CONTENT.get(offset..).unwrap_or(&[]));
            }
            FLUSH => {
                let (lock, cond) = state;
                let mut s = lock.lock().unwrap();
                let process = process_of(tid);
                s.flushes.push((tid, process));
                if !s.released && s.victim != 0 && process == s.victim {
                    s.held.push((unique, tid));
                    cond.notify_all();
                } else {
                    reply(dev, unique, 0, &[]);
                }
            }
            RELEASE => reply(dev, unique, 0, &[]),
            FORGET | BATCH_FORGET | INTERRUPT => {} // no reply expected
            _ => reply(dev, unique, -38, &[]),      // ENOSYS
        }
    }
}
