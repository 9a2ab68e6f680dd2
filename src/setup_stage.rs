//! [`SetupStage`]: the steps a worker takes before its function runs, named in the
//! setup failure it reports. A plain value: the settings apply the steps, the wire
//! format carries their codes, and the crate's `Error` names them.

use std::fmt;

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
    /// Giving up the controlling terminal (`TIOCNOTTY`, checked; `setsid` where
    /// `/dev/tty` cannot be opened).
    Terminal,
    /// Dropping capabilities: the bounding set, the ambient set, then every other
    /// (`PR_CAPBSET_DROP`, `PR_CAP_AMBIENT_CLEAR_ALL`, `capset`).
    Capabilities,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// The check after the privilege drop found something left (an id, a group, a
    /// capability), or `setuid(0)` succeeded.
    VerifyDrop,
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
            SetupStage::Terminal => 10,
            SetupStage::Capabilities => 11,
            SetupStage::NoNewPrivs => 12,
            SetupStage::VerifyDrop => 13,
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
            10 => SetupStage::Terminal,
            11 => SetupStage::Capabilities,
            12 => SetupStage::NoNewPrivs,
            13 => SetupStage::VerifyDrop,
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
            SetupStage::Terminal => "give up the controlling terminal",
            SetupStage::Capabilities => "drop capabilities",
            SetupStage::NoNewPrivs => "PR_SET_NO_NEW_PRIVS",
            SetupStage::VerifyDrop => "verify the privilege drop",
        })
    }
}
