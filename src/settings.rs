//! Per-worker settings, applied in each forked worker before the worker function runs:
//! working directory, silenced stdio, and the user to run as.
//!
//! Order in the child, and why:
//! 1. `chdir`, while still privileged (the directory may be readable by root only);
//! 2. stdio to `/dev/null`, if asked; with a [`User`] and no silencing, stdin alone: a
//!    worker that dropped privileges reads nothing from the terminal or pipe the
//!    primary was started from;
//! 3. `setgroups`, `setgid`, `setuid`, in that order: groups and gid can only be changed
//!    while still root, and once `setuid` has dropped root nothing else can be changed.
//!    `setuid` from root to another user drops every capability, so a worker cannot
//!    regain root;
//! 4. only then `PR_SET_PDEATHSIG`: the kernel *clears* the parent-death signal when a
//!    process's credentials change (`commit_creds`), so setting it earlier would lose it.
//!
//! A failure at any step is fatal for that worker: it tells the primary which step and
//! the `errno` (reported as [`Error::WorkerSetup`]) and exits with code 78
//! (`EX_CONFIG`), which counts as a crash for the respawn back-off.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::error::Error;
use crate::sys::user::{self, UserIds};
use crate::sys::{fd, process};

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

/// What the child had to do when a step of its setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupStage {
    /// `chdir` to the working directory.
    Directory,
    /// Redirecting stdio to `/dev/null`.
    Stdio,
    /// `setgroups`.
    Groups,
    /// `setgid`.
    Gid,
    /// `setuid`.
    Uid,
    /// `PR_SET_PDEATHSIG`.
    DeathSignal,
    /// Resetting signal dispositions.
    Signals,
    /// Starting the worker runtime (handler, control thread).
    Runtime,
    /// Closing the descriptors the worker was not meant to inherit (`close_range`).
    Descriptors,
    /// `setsid`: leaving the primary's session and its controlling terminal.
    Session,
}

impl SetupStage {
    pub(crate) fn code(self) -> u8 {
        match self {
            SetupStage::Directory => 1,
            SetupStage::Stdio => 2,
            SetupStage::Groups => 3,
            SetupStage::Gid => 4,
            SetupStage::Uid => 5,
            SetupStage::DeathSignal => 6,
            SetupStage::Signals => 7,
            SetupStage::Runtime => 8,
            SetupStage::Descriptors => 9,
            SetupStage::Session => 10,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<SetupStage> {
        Some(match c {
            1 => SetupStage::Directory,
            2 => SetupStage::Stdio,
            3 => SetupStage::Groups,
            4 => SetupStage::Gid,
            5 => SetupStage::Uid,
            6 => SetupStage::DeathSignal,
            7 => SetupStage::Signals,
            8 => SetupStage::Runtime,
            9 => SetupStage::Descriptors,
            10 => SetupStage::Session,
            _ => return None,
        })
    }
}

impl fmt::Display for SetupStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupStage::Directory => "chdir",
            SetupStage::Stdio => "silence stdio",
            SetupStage::Groups => "setgroups",
            SetupStage::Gid => "setgid",
            SetupStage::Uid => "setuid",
            SetupStage::DeathSignal => "PR_SET_PDEATHSIG",
            SetupStage::Signals => "reset signals",
            SetupStage::Runtime => "start the worker runtime",
            SetupStage::Descriptors => "close inherited descriptors",
            SetupStage::Session => "setsid",
        })
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
            process::set_groups(&u.ids.groups).map_err(|e| (SetupStage::Groups, e))?;
            process::set_gid(u.ids.gid).map_err(|e| (SetupStage::Gid, e))?;
            process::set_uid(u.ids.uid).map_err(|e| (SetupStage::Uid, e))?;
        }
        Ok(())
    }
}
