//! Plain file-descriptor calls: `pipe2`, `fcntl`, `read`, `write`, `dup`, `open`,
//! `close_range`, and the directory-relative `fstatat`/`unlinkat` that remove a socket
//! file without following a path twice.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{cvt, cvt_r};

/// Corresponds to `pipe2(2)` with `O_CLOEXEC | O_NONBLOCK`; returns `(read end, write end)`.
///
/// The primary's signal handler writes into such a pipe: non-blocking so the handler
/// never stalls, close-on-exec so no exec'd program inherits it.
pub(crate) fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Sets or clears `O_NONBLOCK` with `fcntl(2)` (`F_GETFL`, then `F_SETFL`).
///
/// Careful: the flag belongs to the open file description, which every process holding
/// a copy of the descriptor shares.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL on a borrowed (open) fd reads its status flags.
    let flags = cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let wanted = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if wanted != flags {
        // SAFETY: F_SETFL with an int argument on an open fd.
        cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, wanted) })?;
    }
    Ok(())
}

/// Whether `O_NONBLOCK` is set on the open file description (`fcntl(F_GETFL)`).
pub(crate) fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFL on a borrowed (open) fd reads its status flags.
    let flags = cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// Whether `FD_CLOEXEC` is set on the descriptor (`fcntl(F_GETFD)`).
#[cfg(test)]
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFD on a borrowed (open) fd reads its descriptor flags.
    let flags = cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// Sets or clears `FD_CLOEXEC` (`fcntl(F_SETFD)`): cleared, the descriptor survives an
/// `execve` of this process (a binary upgrade passes its listening sockets so).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a borrowed (open) fd sets its descriptor flags only.
    cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) })?;
    Ok(())
}

/// Takes ownership of descriptor number `n`, which the previous program of this very
/// process left open across `execve` and named in its hand-over record (a binary
/// upgrade), and sets `FD_CLOEXEC` on it again. Descriptors 0 to 2 are refused.
///
/// # Errors
///
/// `EBADF` when `n` is not open or is a standard stream.
pub(crate) fn take_inherited(n: i32) -> io::Result<OwnedFd> {
    if n <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_SETFD on an arbitrary number is harmless: EBADF when it is not open.
    cvt_r(|| unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the number is open (checked just above) and was left to this program by
    // the previous one across execve; nothing in this program has claimed it: the
    // record is read once, at `Builder::start`, and its numbers are checked distinct.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Sets `FD_CLOEXEC` on descriptor number `n`, one this process holds but no `OwnedFd`
/// claims (a socket a service manager passed, which `sd_listen_fds(3)` marks so too):
/// whatever this process later runs does not inherit it.
///
/// # Errors
///
/// `EBADF` when `n` is not open.
pub(crate) fn set_cloexec_number(n: i32) -> io::Result<()> {
    // SAFETY: F_SETFD on an arbitrary number only sets that descriptor's flags, or
    // fails with EBADF when it is not open; nothing is closed or claimed.
    cvt_r(|| unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Corresponds to `fcntl(F_DUPFD_CLOEXEC)`: a new descriptor for the same open file.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an open fd returns a new fd or -1.
    let new = cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Corresponds to `read(2)`, retried on `EINTR`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = cvt_r(|| unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// Opens `/dev/null` for reading and writing, with `O_CLOEXEC`.
pub(crate) fn open_dev_null() -> io::Result<OwnedFd> {
    let path = b"/dev/null\0";
    // SAFETY: `path` is a NUL-terminated string; open returns a new fd or -1.
    let fd = cvt_r(|| unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes standard descriptors 0, 1 and 2 copies of `src` with `dup2(2)` (which leaves
/// them without `FD_CLOEXEC`, as stdio should be). The standard descriptors belong to
/// no `OwnedFd` of this crate, so replacing them invalidates nothing.
pub(crate) fn redirect_stdio(src: BorrowedFd<'_>) -> io::Result<()> {
    for target in 0..=2 {
        // SAFETY: dup2 onto 0, 1 or 2, which no OwnedFd of this process claims.
        cvt_r(|| unsafe { libc::dup2(src.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// Makes standard input a copy of `src` with `dup2(2)` (see [`redirect_stdio`]).
pub(crate) fn redirect_stdin(src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: dup2 onto 0, which no OwnedFd of this process claims.
    cvt_r(|| unsafe { libc::dup2(src.as_raw_fd(), 0) })?;
    Ok(())
}

/// Corresponds to `close_range(2)` (Linux 5.9) over every gap between 0, 1, 2 and the
/// descriptors in `keep`: afterwards this process has open only stdio and `keep`.
/// Without `close_range` (`ENOSYS` on an older kernel, `EPERM` from a seccomp filter
/// that does not know it), each number listed in `/proc/self/fd` is closed instead.
///
/// Only for a freshly forked worker that has *forgotten* the primary's structures
/// (`std::mem::forget`, never dropped): the descriptors closed here must belong to no
/// live `OwnedFd`, or that owner would later close a number that by then means
/// something else. `keep` borrows the owners of what stays.
///
/// # Errors
///
/// The OS error of `close_range` (other than `ENOSYS`/`EPERM`) or of reading
/// `/proc/self/fd` when the fallback cannot list the descriptors.
pub(crate) fn close_all_except(keep: &[BorrowedFd<'_>]) -> io::Result<()> {
    // As `u32` (a descriptor is never negative), the type the crate's other sorts use:
    // one instantiation of `sort_unstable` in the binary instead of two (2.3 KiB).
    let mut kept: Vec<u32> = keep.iter().map(|fd| fd.as_raw_fd() as u32).collect();
    kept.extend([0, 1, 2]);
    kept.sort_unstable();
    kept.dedup();
    match close_gaps(&kept) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            close_listed(&kept)
        }
        other => other,
    }
}

/// `close_range(first, last, 0)` over each gap between the sorted numbers of `kept`,
/// and from the last of them to the end of the descriptor space.
fn close_gaps(kept: &[u32]) -> io::Result<()> {
    for (first, last) in gaps(kept) {
        close_range(first, last)?;
    }
    Ok(())
}

/// The ranges (inclusive) of descriptor numbers not in `kept` (sorted, no duplicates,
/// none negative): the gaps between them, and the rest up to `u32::MAX`.
fn gaps(kept: &[u32]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(kept.len() + 1);
    let mut first: u32 = 0;
    for &k in kept {
        if k > first {
            out.push((first, k - 1));
        }
        first = k + 1;
    }
    out.push((first, u32::MAX));
    out
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; the descriptors it closes belong to no
    // live owner (the caller's contract, see `close_all_except`). Not retried: like
    // close, it releases the descriptors even when interrupted.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_long::from(first),
            libc::c_long::from(last),
            0 as libc::c_long,
        )
    })?;
    Ok(())
}

/// The fallback: every number `/proc/self/fd` lists, except `kept` (and the directory's
/// own descriptor, which the listing closes itself).
fn close_listed(kept: &[u32]) -> io::Result<()> {
    let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| crate::number::parse(e.ok()?.file_name().to_str()?))
        .collect();
    // The listing's own descriptor is closed now, and was listed: closing that number
    // again gives EBADF, ignored below.
    for n in open {
        if kept.binary_search(&n).is_err() {
            // SAFETY: `n` belongs to no live owner (the caller's contract); close is
            // never retried (see the EINTR policy) and EBADF (a number that closed
            // meanwhile, as the listing's own) is harmless.
            unsafe { libc::close(n as RawFd) };
        }
    }
    Ok(())
}

/// Duplicates descriptor number `n` (one this process holds but no `OwnedFd` claims,
/// such as a socket passed by systemd) with `fcntl(F_DUPFD_CLOEXEC)`.
///
/// # Errors
///
/// `EBADF` when `n` is not open.
pub(crate) fn dup_number(n: i32) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an arbitrary number is harmless: EBADF when it is not open; the
    // original descriptor is neither closed nor claimed.
    let new = cvt_r(|| unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Corresponds to `open(2)` with `O_PATH | O_DIRECTORY | O_CLOEXEC`: a handle on a
/// directory that names it for the `*at` calls below, without the right to read it.
///
/// Whatever later happens to the path (a component renamed, replaced by a symlink), the
/// handle keeps naming the directory it named when it was opened.
///
/// # Errors
///
/// `InvalidInput` for a path with a NUL byte; the OS error (`ENOENT`, `ENOTDIR`, …).
pub(crate) fn open_directory(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated string; open returns a new fd or -1.
    let fd = cvt_r(|| unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Which file a name referred to: its device and inode, the time its inode last
/// changed (an inode number freed by a removal is soon given to a new file: the
/// change time tells the two apart), and whether it was a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) changed: (i64, i64),
    pub(crate) is_socket: bool,
}

/// Corresponds to `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`: the file `name` names in
/// `dir`, never a symlink's target (a symlink is reported as itself: not a socket).
///
/// # Errors
///
/// `ENOENT` when nothing has that name; `InvalidInput` for a name with a NUL byte.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<FileId> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value to be filled in.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is writable; `dir` is an open fd.
    cvt_r(|| unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        changed: (st.st_ctime, st.st_ctime_nsec),
        is_socket: st.st_mode & libc::S_IFMT == libc::S_IFSOCK,
    })
}

/// Corresponds to `unlinkat(2)` (flags 0): removes the entry `name` of `dir`. The last
/// component is never followed (a symlink is removed as itself) and `dir` is a handle,
/// not a path, so nothing outside that directory can be reached.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `dir` is an open fd.
    cvt_r(|| unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    Ok(())
}

/// A path as a C string.
pub(crate) fn c_path(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))
}

/// The path that names `name` inside the directory `dir` holds, through the kernel's
/// view of this process's descriptors: `/proc/self/fd/N/NAME`. A call given it resolves
/// `dir` itself, not whatever path once led there, for calls that have no `*at` form
/// (`bind(2)` and `connect(2)` of a Unix socket).
pub(crate) fn path_in(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(std::ffi::OsStr::from_bytes(name.to_bytes()));
    p
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn gaps_between_kept_descriptors() {
        assert_eq!(gaps(&[0, 1, 2]), vec![(3, u32::MAX)]);
        assert_eq!(
            gaps(&[0, 1, 2, 5, 6, 9]),
            vec![(3, 4), (7, 8), (10, u32::MAX)]
        );
        assert_eq!(gaps(&[1, 2]), vec![(0, 0), (3, u32::MAX)]);
    }
}

/// Every seal a hand-over record carries: the file can neither shrink, grow nor be
/// written, and no seal can be added or removed (`F_SEAL_SEAL`).
pub(crate) const ALL_SEALS: i32 =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;

/// Corresponds to `memfd_create(2)` with `MFD_CLOEXEC | MFD_ALLOW_SEALING`, then
/// `write(2)` of `data`, then `fcntl(F_ADD_SEALS)` with [`ALL_SEALS`]: an anonymous
/// file that holds `data` and that nobody, this process included, can change any
/// more. Linux-only (memfd since 3.17).
///
/// The binary upgrade carries its hand-over record in one (see
/// `primary/upgrade/handover.rs`): only a process can make a memfd, so a record in one
/// was written by a program, not typed into an environment.
pub(crate) fn sealed_memfd(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    let name = c_path(name.as_bytes())?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is NUL-terminated; memfd_create returns a new fd or -1.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), flags) })?;
    // SAFETY: the fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    io::Write::write_all(&mut file, data)?;
    let fd = OwnedFd::from(file);
    // SAFETY: F_ADD_SEALS takes an int; the fd is open.
    cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, ALL_SEALS) })?;
    Ok(fd)
}

/// Corresponds to `fcntl(F_GET_SEALS)`: the file's seals. `EINVAL` for a file that
/// is not a memfd (or another shmem file: those report `F_SEAL_SEAL` alone).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GET_SEALS takes no argument; the fd is open.
    cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// Corresponds to `pread(2)` from offset 0 until end of file, at most `max` bytes
/// (`Ok(None)` when the file holds more): reads a file without moving its offset.
pub(crate) fn read_whole(fd: BorrowedFd<'_>, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // SAFETY: `chunk` is valid for writes of `chunk.len()` bytes; the offset is
        // the number of bytes read so far, at most `max` + one chunk.
        let n = cvt_r(|| unsafe {
            libc::pread(
                fd.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                out.len() as libc::off_t,
            )
        })?;
        if n == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(&chunk[..n as usize]);
        if out.len() > max {
            return Ok(None);
        }
    }
}

/// What `fstat(2)` says of an open file: its type (the `S_IFMT` bits), its
/// permission bits, its owner, and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) kind: libc::mode_t,
    pub(crate) mode: libc::mode_t,
    pub(crate) uid: libc::uid_t,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Corresponds to `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value to be filled in.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is writable; `fd` is open.
    cvt_r(|| unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat {
        kind: st.st_mode & libc::S_IFMT,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Corresponds to `fcntl(F_GETFL) & O_ACCMODE`: `O_RDONLY`, `O_WRONLY` or `O_RDWR`.
pub(crate) fn access_mode(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no argument; the fd is open.
    let flags = cvt_r(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    Ok(flags & libc::O_ACCMODE)
}

/// Looks at descriptor number `n` (one this process may hold without an `OwnedFd`:
/// inherited across `execve`) through `f`, without claiming, closing or changing it.
///
/// # Errors
///
/// `EBADF` when `n` is not open (or is negative).
pub(crate) fn look_at<R>(n: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> R) -> io::Result<R> {
    // SAFETY: F_GETFD on an arbitrary number is harmless: EBADF when it is not open.
    cvt_r(|| unsafe { libc::fcntl(n, libc::F_GETFD) })?;
    // SAFETY: `n` is open (checked just above); the view lives only for the call of
    // `f`, which gets a `BorrowedFd` and so cannot close it. `Builder::start`, the
    // only caller's caller, runs before the primary has any other thread, so nothing
    // closes `n` meanwhile.
    let fd = unsafe { BorrowedFd::borrow_raw(n) };
    Ok(f(fd))
}
