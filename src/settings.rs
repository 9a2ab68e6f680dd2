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
//!    2. `setgroups`, `setgid`, `setuid`, in that order: groups and gid can only be
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    ids: UserIds,
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
        }
    }

    /// The name it was looked up by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.ids.uid
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
