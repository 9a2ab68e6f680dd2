//! The file of a Unix listening socket: finding a stale one before `bind`, and removing
//! the one this process created, never anything else.
//!
//! A socket file is a name in a directory. Removing it by path at shutdown would
//! resolve the path again, long after it was bound, and a path can change meaning in
//! between: a worker that may write to `/srv/run/d` can replace `d` with a symlink to
//! `/etc`, and a root primary's `unlink("/srv/run/d/passwd")` would then follow it. So
//! the directory is opened once, before the socket is bound (`O_PATH`, a handle that
//! keeps naming that directory whatever happens to the path), the file's inode is
//! recorded right after `bind`, and removal is `unlinkat(dir, name)` (which never
//! follows the last component) only while `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`
//! still shows that inode. A file someone else put there later is left alone. An
//! inode number freed by a removal is soon reused, so the identity includes the
//! inode's change time: a file created later differs in it (since Linux 6.13, ext4,
//! xfs, btrfs and tmpfs give a fine-grained time to a change after a `stat`, which is
//! exactly this case; on older kernels two files made within one clock tick of a few
//! milliseconds could look the same, and the later one would be removed).
//!
//! A stale file (a socket nobody listens on, left by a dead server) is probed with a
//! *non-blocking* `connect`: a live listener whose backlog is full answers `EAGAIN`,
//! which counts as in use. A blocking probe would wait for room in that backlog, for
//! good if its owner does not accept.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::fd::{self, FileId};
use crate::sys::sockaddr::{Domain, SockAddr};
use crate::sys::socket;

/// The directory a Unix socket path lives in, held open, and the socket's name in it.
#[derive(Debug)]
pub(crate) struct SocketDir {
    dir: OwnedFd,
    name: CString,
}

/// A socket file this process created: removed by [`SocketFile::remove`] only while it
/// is still the same file.
#[derive(Debug)]
pub(crate) struct SocketFile {
    at: SocketDir,
    id: FileId,
}

impl SocketDir {
    /// Opens the directory of `path` (following the path as it is now, once).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a path without a file name; the OS error of `open`.
    pub(crate) fn open(path: &Path) -> io::Result<SocketDir> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(SocketDir {
            dir: fd::open_directory(parent)?,
            name: fd::c_path(name.as_bytes())?,
        })
    }

    /// The socket's address as `bind` and `connect` should use it: with `pinned`, the
    /// name inside the held directory (`/proc/self/fd/N/NAME`), so that a directory on
    /// the path swapped for a symlink since [`open`](SocketDir::open) changes nothing;
    /// else (or when that form does not fit in `sun_path`) the path as given.
    ///
    /// The price of pinning: the socket's own name (`getsockname`, and a client's
    /// `getpeername`) is that `/proc` path. The primary pins when its workers are
    /// untrusted (`Builder::user`), since then a worker that may write to a directory on
    /// an allowed path could otherwise make the root primary create a socket file
    /// anywhere.
    pub(crate) fn address(&self, path: &SockAddr, pinned: bool) -> SockAddr {
        if !pinned {
            return *path;
        }
        SockAddr::from_unix_path(&fd::path_in(self.dir.as_fd(), &self.name)).unwrap_or(*path)
    }

    /// Removes a stale socket file (nobody listens on it); leaves everything else
    /// alone: `EADDRINUSE` for a live socket (its backlog full included) and for a file
    /// that is not a socket (someone else's data, or a symlink). `addr` is what
    /// [`address`](SocketDir::address) gave.
    pub(crate) fn remove_stale(&self, addr: &SockAddr) -> io::Result<()> {
        let before = match self.stat() {
            Ok(id) => id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !before.is_socket {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        let probe = socket::stream_socket(Domain::Unix, true)?;
        match socket::connect(probe.as_fd(), addr) {
            // Somebody accepts, or will: in use. EAGAIN: a listener with a full backlog.
            Ok(()) => Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
            // EPROTOTYPE: a live socket of the other type (a datagram socket is bound
            // there, or a stream one when probing for a datagram bind): in use too.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EPROTOTYPE)) => {
                Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Stale. Remove it if the name still means the file probed.
                if self.stat().ok() == Some(before) {
                    match fd::unlink_at(self.dir.as_fd(), &self.name) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e),
                    }
                } else {
                    Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// After `bind` created the file: remembers which file it is.
    ///
    /// # Errors
    ///
    /// The OS error of `fstatat`; `EADDRINUSE` if the name no longer shows a socket (it
    /// was replaced between `bind` and now: the file is not ours to remove).
    pub(crate) fn created(self) -> io::Result<SocketFile> {
        let id = self.stat()?;
        if !id.is_socket {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        Ok(SocketFile { at: self, id })
    }

    fn stat(&self) -> io::Result<FileId> {
        fd::stat_at(self.dir.as_fd(), &self.name)
    }
}

impl SocketFile {
    /// What a binary upgrade passes on: the directory, the name, the file's identity.
    pub(crate) fn parts(&self) -> (BorrowedFd<'_>, &CStr, FileId) {
        (self.at.dir.as_fd(), &self.at.name, self.id)
    }

    /// The file a previous program of this process created, from its [`parts`](Self::parts).
    pub(crate) fn from_parts(dir: OwnedFd, name: CString, id: FileId) -> SocketFile {
        SocketFile {
            at: SocketDir { dir, name },
            id,
        }
    }

    /// Removes the file if the name in its directory still shows it; says nothing when
    /// it is already gone or was replaced (then it is not ours any more).
    pub(crate) fn remove(self) {
        if self.at.stat().ok() == Some(self.id) {
            let _ = fd::unlink_at(self.at.dir.as_fd(), &self.at.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cluster-sf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// What a worker that may write in `root` can do: move `root/d` to `root/d.old`
    /// and put a symlink to `root/to` in its place.
    fn swap_for_symlink(root: &std::path::Path, to: &str) {
        std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
        std::os::unix::fs::symlink(root.join(to), root.join("d")).unwrap();
    }

    #[test]
    fn removes_only_the_file_it_created_through_the_directory_it_opened() {
        let root = scratch("swap");
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::create_dir(root.join("victim")).unwrap();
        let path = root.join("d/s.sock");
        let dir = SocketDir::open(&path).unwrap();
        let _l = UnixListener::bind(&path).unwrap();
        let file = dir.created().unwrap();
        // The directory is swapped for a symlink to another one holding a file of the
        // same name: removing must not reach through the symlink.
        swap_for_symlink(&root, "victim");
        std::fs::write(root.join("victim/s.sock"), b"keep").unwrap();
        file.remove();
        assert!(root.join("victim/s.sock").exists(), "followed the symlink");
        assert!(
            !root.join("d.old/s.sock").exists(),
            "did not remove its own file"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_pinned_bind_lands_in_the_directory_opened_not_behind_a_symlink() {
        let root = scratch("pinned");
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::create_dir(root.join("elsewhere")).unwrap();
        let path = root.join("d/s.sock");
        let dir = SocketDir::open(&path).unwrap();
        // Between the check and the bind, `d` becomes a symlink to another directory.
        swap_for_symlink(&root, "elsewhere");
        let addr = dir.address(&SockAddr::from_unix_path(&path).unwrap(), true);
        dir.remove_stale(&addr).unwrap();
        let fd = socket::stream_socket(Domain::Unix, false).unwrap();
        socket::bind(fd.as_fd(), &addr).unwrap();
        assert!(
            root.join("d.old/s.sock").exists(),
            "not in the directory opened"
        );
        assert!(
            !root.join("elsewhere/s.sock").exists(),
            "created behind the symlink"
        );
        dir.created().unwrap().remove();
        assert!(!root.join("d.old/s.sock").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_replaced_file_is_left_alone() {
        let root = scratch("replaced");
        let path = root.join("s.sock");
        let dir = SocketDir::open(&path).unwrap();
        let l = UnixListener::bind(&path).unwrap();
        let file = dir.created().unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap(); // someone else's now
        file.remove();
        assert!(path.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_and_live_files() {
        let root = scratch("stale");
        let path = root.join("s.sock");
        let addr = SockAddr::from_unix_path(&path).unwrap();
        // A live listener whose backlog is full: in use, and no wait.
        let live = UnixListener::bind(&path).unwrap();
        let mut queued = Vec::new();
        loop {
            let c = socket::stream_socket(Domain::Unix, true).unwrap();
            match socket::connect(c.as_fd(), &addr) {
                Ok(()) => queued.push(c),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(queued.len() < 10_000);
        }
        let dir = SocketDir::open(&path).unwrap();
        let e = dir.remove_stale(&addr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        // Dead: removed.
        drop(live);
        drop(queued);
        dir.remove_stale(&addr).unwrap();
        assert!(!path.exists());
        // Not a socket: never removed.
        std::fs::write(&path, b"data").unwrap();
        let e = dir.remove_stale(&addr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        assert!(path.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
