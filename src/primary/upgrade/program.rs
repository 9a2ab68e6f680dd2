//! What an upgrade runs: the program file at the path this one was started from,
//! resolved once at start, with the same arguments; and the environment it gets.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::handover;
use crate::sys::fd;
use crate::sys::process;

/// The environment variable that makes the next program's `Builder::start` a trial
/// (see `trial.rs`): it names the descriptor of a sealed memfd that vouches for the
/// report pipe and holds the record the program would get.
pub(super) const TRIAL_VAR: &str = "CLUSTER_UPGRADE_TRIAL";

/// The variable in which versions before the memfd handed the trial its record: never
/// read any more, and not passed on.
pub(super) const OLD_TRIAL_RECORD_VAR: &str = "CLUSTER_UPGRADE_TRIAL_RECORD";

/// The program to run at an upgrade, resolved once, at start.
#[derive(Debug)]
pub(super) struct Program {
    pub(super) path: PathBuf,
    pub(super) c_path: CString,
    pub(super) argv: Vec<CString>,
}

impl Program {
    /// The absolute path `argv[0]` named when the process started (searched in `PATH`
    /// when it has no `/`), and the arguments. Not `/proc/self/exe`: once a deploy has
    /// replaced the file, that names the old, deleted one.
    pub(super) fn resolve() -> Result<Program, String> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let arg0 = args.first().ok_or("the process has no argv[0]")?;
        let path = find_program(Path::new(arg0))?;
        Program::at(path, &args)
    }

    pub(super) fn at(path: PathBuf, args: &[OsString]) -> Result<Program, String> {
        let c_path = fd::c_path(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| "an argument holds a NUL byte".to_string())?;
        Ok(Program { path, c_path, argv })
    }
}

/// OpenSSH's `StrictModes` for the program an upgrade runs (as `sshd` checks a user's
/// `authorized_keys` before believing it): the file must belong to root or to this
/// process's user, and be writable by nobody else (no group or other write bit).
/// Otherwise anybody who can write it chooses the code the primary, often root, runs
/// next. Checked before the trial and again just before the `execve` in place.
/// Only the file: its directories are not walked (a deploy directory writable by
/// others lets them replace the file, which this check then sees, unless they do it
/// between this check and `execve`).
///
/// # Errors
///
/// The path and the reason: it cannot be read, its owner, or its mode.
pub(super) fn check_owner_and_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let euid = process::geteuid();
    if m.uid() != 0 && m.uid() != euid {
        return Err(format!(
            "refused to run {}: it belongs to uid {}, neither root nor this process's \
             user (uid {euid})",
            path.display(),
            m.uid()
        ));
    }
    let mode = m.mode() & 0o7777;
    let by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "others",
        (true, true) => "its group and others",
    };
    Err(format!(
        "refused to run {}: it is writable by {by} (mode {mode:04o}); only its owner \
         may write a program the primary runs",
        path.display()
    ))
}

/// `arg0` made absolute: joined to the working directory when it holds a `/`, else the
/// first executable file of that name in `PATH`.
fn find_program(arg0: &Path) -> Result<PathBuf, String> {
    let cwd = || std::env::current_dir().map_err(|e| format!("working directory: {e}"));
    if arg0.as_os_str().as_bytes().contains(&b'/') {
        // (`components` drops the `.` of `./prog`.)
        return Ok(if arg0.is_absolute() {
            arg0.to_path_buf()
        } else {
            cwd()?.join(arg0).components().collect()
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(arg0);
        if is_executable(&candidate) {
            return Ok(if candidate.is_absolute() {
                candidate
            } else {
                cwd()?.join(candidate)
            });
        }
    }
    Err(format!("{} is not in PATH", arg0.display()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The environment for the next program: this one's, without the upgrade's variables,
/// with the service manager's given back, and `extra`.
pub(super) fn next_env(
    service_env: &[(OsString, OsString)],
    extra: &[(&str, &OsStr)],
) -> Vec<CString> {
    let skip = |k: &OsStr| {
        k == handover::VAR
            || k == TRIAL_VAR
            || k == OLD_TRIAL_RECORD_VAR
            || service_env.iter().any(|(s, _)| s == k)
    };
    std::env::vars_os()
        .filter(|(k, _)| !skip(k))
        .chain(service_env.iter().cloned())
        .chain(
            extra
                .iter()
                .map(|(k, v)| (OsString::from(*k), (*v).to_owned())),
        )
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect()
}
