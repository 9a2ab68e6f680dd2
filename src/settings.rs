//! Per-worker settings, applied in each forked worker before the worker function runs:
//! working directory, silenced stdio, and the user to run as, with a privilege drop
//! that is complete and verified.
//!
//! Order in the child, and why (the steps before and after are in `worker/mod.rs`):
//! 1. `chdir`, while still privileged (the directory may be readable by root only);
//! 2. stdio to `/dev/null`, if asked; with a [`User`] and no silencing, stdin alone: a
//!    worker that dropped privileges reads nothing from the terminal or pipe the
//!    primary was started from;
//! 3. with a [`User`], the privilege drop, as OpenSSH's `permanently_set_uid` does it:
//!    1. `PR_CAPBSET_DROP` of the whole bounding set, *before* `setuid`: only
//!       `CAP_SETPCAP` may drop it, and a root primary's worker loses that at step 3.2
//!       (a primary without `CAP_SETPCAP` keeps its bounding set; see step 3.4);
//!    2. `setgroups`, `setgid`, `setuid` (to the worker's own uid with
//!       [`User::per_worker_uids`], chosen in the primary: `primary/uids.rs`), in that order: groups and gid can only be
//!       changed while privileged, and once `setuid` has dropped root nothing else can
//!       be changed. `setuid` from root to another user also empties the capability
//!       sets, but from a non-root user with capabilities (a systemd unit's
//!       `AmbientCapabilities=`) it empties nothing, so:
//!    3. `PR_CAP_AMBIENT_CLEAR_ALL`, then `capset` with every set empty (effective,
//!       permitted, inheritable);
//!    4. `PR_SET_NO_NEW_PRIVS`: no later `execve` grants anything back (no set-user-id
//!       binary, no file capabilities, whatever the bounding set says);
//!    5. verification, trusting none of the above: `getresuid` and `getresgid` must
//!       show the target in all three slots, `getgroups` exactly its groups, `capget`
//!       no capability at all, `PR_GET_NO_NEW_PRIVS` 1, and `setuid(0)` must *fail*
//!       (unless the target is root itself). Anything left and the worker function
//!       never runs;
//! 4. only then `PR_SET_PDEATHSIG` (in `worker/mod.rs`): the kernel *clears* the
//!    parent-death signal when a process's credentials change (`commit_creds`), so
//!    setting it earlier would lose it.
//!
//! Capabilities are per thread; all of this runs while the worker has one thread, and
//! threads it starts later inherit the empty sets.
//!
//! A failure at any step is fatal for that worker: it tells the primary which step and
//! the `errno` (reported as [`Error::WorkerSetup`]) and exits with code 78
//! (`EX_CONFIG`), which counts as a crash for the respawn back-off.

use std::io;
use std::path::PathBuf;

use crate::error::Error;
use crate::setup_stage::SetupStage;
use crate::sys::user::{self, UserIds};
use crate::sys::{caps, fd, process};

/// The exit code of a worker whose setup failed (`EX_CONFIG`).
pub const SETUP_FAILED_EXIT: i32 = 78;

/// A user to run workers as, resolved in the primary (`getpwnam_r`, `getgrouplist`).
///
/// ```no_run
/// let nobody = cluster::User::named("nobody")?;
/// let builder = cluster::Cluster::builder().user(nobody);
/// # drop(builder);
/// # Ok::<(), cluster::Error>(())
/// ```
///
/// All workers share the user's uid unless [`per_worker_uids`](User::per_worker_uids)
/// gives each its own: a process may signal (`kill(2)`: `SIGSTOP`, `SIGKILL`) and, where
/// Yama allows, `ptrace` any process of its own uid, so workers of one uid are one
/// security domain: one compromised worker can stop or kill its siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    ids: UserIds,
    /// How many uids, from `ids.uid` on, the workers take, one each; 0: they all
    /// share `ids.uid`.
    uids: u32,
}

impl User {
    /// Looks the user up by name: its uid, primary gid and supplementary groups.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the user when it does not exist or cannot be looked up.
    pub fn named(name: &str) -> Result<User, Error> {
        match user::lookup(name) {
            Ok(ids) => Ok(User {
                name: name.to_string(),
                ids,
                uids: 0,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::Config(format!("no user named {name:?}")))
            }
            Err(e) => Err(Error::Config(format!("cannot look up user {name:?}: {e}"))),
        }
    }

    /// A user given by ids, with `gid` as its only group.
    pub fn from_ids(uid: u32, gid: u32) -> User {
        User {
            name: uid.to_string(),
            ids: UserIds {
                uid,
                gid,
                groups: vec![gid],
            },
            uids: 0,
        }
    }

    /// One uid per worker, as qmail gives each of its daemons a uid of its own and
    /// Android each app: worker processes run as distinct uids from `first_uid` to
    /// `first_uid + count - 1`, each with this user's gid and supplementary groups, so
    /// that none can signal or `ptrace` another (the kernel's permission check for
    /// `kill(2)` compares uids: `EPERM`). The uids need no entry in `/etc/passwd`;
    /// choose a range nothing else uses, no file is owned by, and no other service
    /// allocates from (systemd's `DynamicUser=` takes uids from 61184–65519).
    ///
    /// Which uid a worker gets: the lowest of the range that no worker the primary
    /// still tracks runs as (alive, or not reaped yet, leaving or not). So a worker
    /// forked while another is still there never shares its uid: not a respawn, not
    /// the successor a reload, a recycle or a binary upgrade starts *before* the worker
    /// it replaces is gone (a compromised old worker could otherwise stop its
    /// successor and stay). An upgrade runs every worker of the new program beside every
    /// one of the previous program, so the range must hold twice the workers:
    /// [`Builder::start`](crate::Builder::start) refuses a smaller range, and
    /// [`Cluster::set_workers`](crate::Cluster::set_workers) (and `SIGTTIN`) refuses
    /// to grow the cluster beyond half of it, with [`Error::Config`]. A fork that finds
    /// every uid taken (the cluster scaled down and up while the old workers drain)
    /// fails like a failed `fork`: reported, and retried with the respawn back-off
    /// once a worker is reaped.
    ///
    /// What the uids do not separate: files the workers can all open through this
    /// user's groups, and processes a worker starts that outlive it (they keep its
    /// uid, which a later worker may get; a cgroup, as systemd gives a service, ends
    /// them).
    ///
    /// ```no_run
    /// let user = cluster::User::named("nobody")?.per_worker_uids(61184, 16)?;
    /// let builder = cluster::Cluster::builder().workers(8).user(user);
    /// # drop(builder);
    /// # Ok::<(), cluster::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a range that holds root (uid 0), runs past the largest
    /// uid (4294967294: `(uid_t) -1` means "unchanged" to `setuid`), or is empty.
    pub fn per_worker_uids(mut self, first_uid: u32, count: u32) -> Result<User, Error> {
        let last = first_uid.checked_add(count.saturating_sub(1));
        match last {
            _ if count == 0 => Err(Error::Config("per_worker_uids: a range of 0 uids".into())),
            _ if first_uid == 0 => Err(Error::Config(
                "per_worker_uids: the range starts at uid 0 (root)".into(),
            )),
            Some(last) if last < u32::MAX => {
                self.ids.uid = first_uid;
                self.uids = count;
                Ok(self)
            }
            _ => Err(Error::Config(format!(
                "per_worker_uids: {count} uids from {first_uid} run past the largest \
                 uid, {}",
                u32::MAX - 1
            ))),
        }
    }

    /// The name it was looked up by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user id (with [`per_worker_uids`](User::per_worker_uids), the first of the
    /// range).
    pub fn uid(&self) -> u32 {
        self.ids.uid
    }

    /// How many uids the workers take, from [`uid`](User::uid) on: 1 unless
    /// [`per_worker_uids`](User::per_worker_uids) gave a range.
    pub fn uid_count(&self) -> u32 {
        self.uids.max(1)
    }

    /// The uids, as the first and the last, when there is a range.
    pub(crate) fn uid_range(&self) -> Option<(u32, u32)> {
        (self.uids > 0).then(|| (self.ids.uid, self.ids.uid + (self.uids - 1)))
    }

    /// This user with `uid` (one of its range) as the only uid: what one worker runs as.
    pub(crate) fn with_uid(&self, uid: u32) -> User {
        let mut one = self.clone();
        one.ids.uid = uid;
        one.uids = 0;
        one
    }

    /// How it is named in messages: `"nobody"`, or `"nobody" (uids 61184-61192)`.
    pub(crate) fn describe(&self) -> String {
        match self.uid_range() {
            Some((first, last)) => format!("{:?} (uids {first}-{last})", self.name),
            None => format!("{:?}", self.name),
        }
    }

    /// The primary group id.
    pub fn gid(&self) -> u32 {
        self.ids.gid
    }
}

/// The settings of every worker of a cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSettings {
    pub(crate) user: Option<User>,
    pub(crate) directory: Option<PathBuf>,
    pub(crate) silent: bool,
}

impl WorkerSettings {
    /// Steps 1–3 of the module docs, in the child.
    pub(crate) fn apply(&self) -> Result<(), (SetupStage, io::Error)> {
        if let Some(dir) = &self.directory {
            std::env::set_current_dir(dir).map_err(|e| (SetupStage::Directory, e))?;
        }
        if self.silent || self.user.is_some() {
            use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
            let null = fd::open_dev_null().map_err(|e| (SetupStage::Stdio, e))?;
            if self.silent {
                fd::redirect_stdio(null.as_fd()).map_err(|e| (SetupStage::Stdio, e))?;
            } else {
                fd::redirect_stdin(null.as_fd()).map_err(|e| (SetupStage::Stdio, e))?;
            }
            if null.as_raw_fd() <= 2 {
                // The primary ran with a standard descriptor closed, so /dev/null came
                // back as 0, 1 or 2, which is now stdio: keep it open.
                let _ = null.into_raw_fd();
            }
        }
        if let Some(u) = &self.user {
            drop_privileges(&u.ids)?;
        }
        Ok(())
    }
}

/// Step 3 of the module docs: become `ids` for good, or fail naming the step.
fn drop_privileges(ids: &UserIds) -> Result<(), (SetupStage, io::Error)> {
    let stage = |stage: SetupStage| move |e: io::Error| (stage, e);
    // Before setuid, while CAP_SETPCAP may still be there (see `caps::drop_bounding`).
    // Whether it could is not needed: with PR_SET_NO_NEW_PRIVS (below) the bounding set
    // grants nothing, and the verification checks every set that can.
    let _dropped = caps::drop_bounding().map_err(stage(SetupStage::Capabilities))?;
    process::set_groups(&ids.groups).map_err(stage(SetupStage::Groups))?;
    process::set_gid(ids.gid).map_err(stage(SetupStage::Gid))?;
    process::set_uid(ids.uid).map_err(stage(SetupStage::Uid))?;
    caps::clear_ambient().map_err(stage(SetupStage::Capabilities))?;
    caps::clear().map_err(stage(SetupStage::Capabilities))?;
    caps::set_no_new_privs().map_err(stage(SetupStage::NoNewPrivs))?;
    verify_drop(ids).map_err(stage(SetupStage::VerifyDrop))
}

/// Step 3.5: checks, with the kernel's own answers, that nothing of the old identity is
/// left. The error says what was found.
fn verify_drop(ids: &UserIds) -> io::Result<()> {
    let left = |what: String| io::Error::new(io::ErrorKind::PermissionDenied, what);
    let uids = caps::user_ids()?;
    if uids != [ids.uid; 3] {
        return Err(left(format!(
            "user ids (real, effective, saved) are {uids:?}, not {}",
            ids.uid
        )));
    }
    let gids = caps::group_ids()?;
    if gids != [ids.gid; 3] {
        return Err(left(format!(
            "group ids (real, effective, saved) are {gids:?}, not {}",
            ids.gid
        )));
    }
    let mut have = caps::groups()?;
    let mut want = ids.groups.clone();
    have.sort_unstable();
    have.dedup();
    want.sort_unstable();
    want.dedup();
    if have != want {
        return Err(left(format!(
            "supplementary groups are {have:?}, not {want:?}"
        )));
    }
    let sets = caps::get()?;
    if !sets.is_empty() {
        return Err(left(format!(
            "capabilities left: effective {:#x}, permitted {:#x}, inheritable {:#x}",
            sets.effective, sets.permitted, sets.inheritable
        )));
    }
    if !caps::no_new_privs()? {
        return Err(left("PR_SET_NO_NEW_PRIVS is not set".into()));
    }
    if ids.uid != 0 && process::set_uid(0).is_ok() {
        return Err(left("setuid(0) succeeded: root can be regained".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_worker_uids_are_checked() {
        let base = User::from_ids(65534, 65534);
        let r = base.clone().per_worker_uids(61184, 9).unwrap();
        assert_eq!((r.uid(), r.uid_count()), (61184, 9));
        assert_eq!(r.uid_range(), Some((61184, 61192)));
        assert_eq!(r.gid(), 65534);
        assert_eq!(r.with_uid(61190).ids.uid, 61190);
        assert_eq!(r.with_uid(61190).uid_range(), None);
        for (first, count, needle) in [
            (0, 4, "uid 0"),
            (61184, 0, "0 uids"),
            (u32::MAX - 2, 3, "largest"),
            (u32::MAX, 1, "largest"),
        ] {
            let e = base.clone().per_worker_uids(first, count).unwrap_err();
            assert!(e.to_string().contains(needle), "{first} {count}: {e}");
        }
        // The last uid there is, 4294967294, is allowed.
        assert!(base.clone().per_worker_uids(u32::MAX - 2, 2).is_ok());
        // A range of one carries no worker (one spare for a replacement): it stays a
        // range, for `start` to refuse.
        assert_eq!(
            base.per_worker_uids(70000, 1).unwrap().uid_range(),
            Some((70000, 70000))
        );
    }
}
