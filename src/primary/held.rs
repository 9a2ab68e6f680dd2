//! Memory a worker holds outside its resident set: files in memory (`memfd_create`,
//! tmpfs such as `/dev/shm`) it keeps open without mapping them. Their pages belong to
//! no process's RSS (`VmRSS` = `RssAnon` + `RssFile` + `RssShmem` counts only what is
//! mapped), so without this a worker could grow without bound under
//! [`Builder::max_rss`](crate::Builder::max_rss) by writing into such a file instead
//! of its heap.
//!
//! How they are found, without ever touching a file system the worker chose (a file
//! on FUSE whose server never answers would hang `stat`, and `open` runs a device's
//! or a FIFO's open code):
//! 1. `readlink` of `/proc/PID/fd/N`: sockets, pipes and anonymous inodes read as
//!    `socket:[…]`, `pipe:[…]`, `anon_inode:…` and stop here, one system call each;
//! 2. the mount it is on, `mnt_id:` in `/proc/PID/fdinfo/N` (the kernel's own record,
//!    no file system code), must be one of the memory mounts: the one `memfd_create`
//!    uses (learnt once, from a memfd of the primary's own) and the tmpfs and ramfs
//!    mounts the primary sees;
//! 3. then it is opened with `O_PATH` through the link, which reaches the worker's
//!    open file itself and runs no open code, and its mount checked again on the
//!    primary's own descriptor (the worker may have put another file at N meanwhile);
//! 4. only then `fstat` (tmpfs answers from memory): a regular file counts with its
//!    allocated size, `st_blocks` × 512 (a sparse file counts what it holds).
//!
//! Each file counts once however many descriptors name it (device and inode). The
//! work is bounded: [`WINDOW`] descriptors per worker per sample (once a second),
//! taking up where the last sample stopped and starting again from 0 at the end of
//! the worker's descriptor table (`FDSize`), so a worker with thousands of
//! connections is looked at over several seconds, and what was found in the part not
//! looked at this time is still counted.
//!
//! Not counted: a memory file the worker also maps counts twice (its mapped pages are
//! already in the RSS), which errs towards recycling; files it created and closed
//! (they stay in tmpfs, charged to nobody), tmpfs mounts of its own (another mount
//! namespace), System V shared memory it detached, and its child processes. A cgroup's
//! `memory.max` counts all of it; `max_rss` recycles leaks, it does not contain memory.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::OnceLock;

use crate::sys::process::Pid;

/// Descriptors looked at per worker per sample.
pub(crate) const WINDOW: u32 = 256;

/// The memory files found among a worker's descriptors, and where the next look
/// starts.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The next descriptor number to look at.
    next: u32,
    /// Descriptor → (device, inode, bytes allocated), as last looked at.
    found: BTreeMap<u32, (u64, u64, u64)>,
}

impl Held {
    /// Looks at the next [`WINDOW`] descriptors of `pid`, whose table has room for
    /// `table` (see the module docs); returns the bytes of every memory file found so
    /// far, each file once.
    pub(crate) fn sample(&mut self, pid: Pid, table: u32) -> u64 {
        if let Some(mounts) = memory_mounts() {
            if self.next >= table {
                self.next = 0;
            }
            let end = self.next.saturating_add(WINDOW).min(table);
            for fd in self.next..end {
                match memory_file(pid, fd, mounts) {
                    Some(file) => self.found.insert(fd, file),
                    None => self.found.remove(&fd),
                };
            }
            self.found.retain(|&fd, _| fd < table);
            self.next = end;
        }
        let mut files: Vec<(u64, u64, u64)> = self.found.values().copied().collect();
        files.sort_unstable();
        files.dedup_by_key(|f| (f.0, f.1));
        files.iter().fold(0u64, |sum, f| sum.saturating_add(f.2))
    }
}

/// Descriptor `fd` of `pid`, if it is a regular file on one of `mounts`: its device,
/// inode and allocated bytes. Steps 1–4 of the module docs.
fn memory_file(pid: Pid, fd: u32, mounts: &[u64]) -> Option<(u64, u64, u64)> {
    let link = format!("/proc/{pid}/fd/{fd}");
    let target = std::fs::read_link(&link).ok()?;
    if !target.as_os_str().as_encoded_bytes().starts_with(b"/") {
        return None; // a socket, a pipe, an anonymous inode
    }
    // Its mount, as the kernel records it for the worker's descriptor...
    if !mounts.contains(&mount_id(&format!("/proc/{pid}/fdinfo/{fd}"))?) {
        return None;
    }
    // ... and again for the file opened (O_PATH, std adds O_CLOEXEC: the access mode
    // is ignored, nothing is opened): the worker may have put another file at `fd`
    // in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&link)
        .ok()?;
    let own = format!("/proc/self/fdinfo/{}", file.as_raw_fd());
    if !mounts.contains(&mount_id(&own)?) {
        return None;
    }
    let meta = file.metadata().ok()?;
    meta.is_file()
        .then(|| (meta.dev(), meta.ino(), meta.blocks().saturating_mul(512)))
}

/// The mount a descriptor is on: `mnt_id:` of its `fdinfo` file.
fn mount_id(fdinfo: &str) -> Option<u64> {
    let info = std::fs::read_to_string(fdinfo).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|n| crate::number::u64(n.trim()))
}

/// The mounts whose files are memory, found once: `memfd_create`'s (from a memfd of
/// the primary's own), and every tmpfs and ramfs mount in `/proc/self/mountinfo`.
/// `None` when not even the first can be found (no `/proc`): nothing is counted.
fn memory_mounts() -> Option<&'static [u64]> {
    static MOUNTS: OnceLock<Option<Vec<u64>>> = OnceLock::new();
    MOUNTS
        .get_or_init(|| {
            let name = CStr::from_bytes_with_nul(b"cluster-held-probe\0").ok()?;
            let probe = crate::sys::shm::memfd_create(name).ok()?;
            let own = format!("/proc/self/fdinfo/{}", probe.as_raw_fd());
            let mut mounts = vec![mount_id(&own)?];
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            mounts.extend(info.lines().filter_map(|line| {
                let (fields, fs) = line.split_once(" - ")?;
                let fs_type = fs.split(' ').next()?;
                matches!(fs_type, "tmpfs" | "ramfs")
                    .then(|| crate::number::u64(fields.split(' ').next()?))?
            }));
            Some(mounts)
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// This process, as a worker would be seen: a memfd it writes 3 MiB into and keeps
    /// open unmapped, a duplicate of it (counted once), a socket and a file on disk
    /// (not counted).
    #[test]
    fn counts_an_unmapped_memfd_once() {
        let pid = crate::sys::process::getpid();
        let table = crate::sys::process::fd_table_size(pid).unwrap();
        let before = Held::default().sample(pid, table);
        let name = CStr::from_bytes_with_nul(b"held-test\0").unwrap();
        let memfd = crate::sys::shm::memfd_create(name).unwrap();
        let mut file = std::fs::File::from(memfd);
        file.write_all(&vec![7u8; 3 << 20]).unwrap();
        let dup = file.try_clone().unwrap();
        let _socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _disk = std::fs::File::open("/proc/self/exe").ok();
        // Over as many windows as the table takes.
        let table = crate::sys::process::fd_table_size(pid).unwrap();
        let mut held = Held::default();
        let mut bytes = 0;
        for _ in 0..table.div_ceil(WINDOW) {
            bytes = held.sample(pid, table);
        }
        // Other tests of this process may hold memory files of their own meanwhile.
        assert!(
            bytes >= before + (3 << 20) && bytes < before + (6 << 20),
            "{bytes} bytes held, {before} before"
        );
        drop((file, dup));
    }
}
