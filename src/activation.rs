//! systemd socket activation (`sd_listen_fds(3)`, with libc only): the listening
//! sockets a service manager passed this process as descriptors 3, 4, … with
//! `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, found by name for
//! [`ListenAddr::Systemd`](crate::ListenAddr::Systemd).
//!
//! The variables are read once, on first use (the primary uses them at
//! [`Builder::start`](crate::Builder::start), before any fork), and taken out of the
//! environment, so no worker, and nothing a worker starts, takes the sockets for its
//! own. `LISTEN_PID`, when set, must be this process: the variables were meant for
//! it, not for a parent that passed its environment on; unset (`systemfd --no-pid`,
//! the development loop axum and actix document), the sockets are taken as this
//! process's, as `listenfd` does. Once they are known to be this process's,
//! the passed descriptors are marked close-on-exec, as `sd_listen_fds(3)` does: a
//! program the application starts (a log shipper, a shell command) must not hold the
//! service's listening sockets, nor keep its port bound after the service stopped.

use std::sync::OnceLock;

use crate::sys::process;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// What the service manager passed.
#[derive(Debug)]
struct Passed {
    /// Descriptor numbers with their names (`LISTEN_FDNAMES`, when given).
    fds: Vec<(i32, Option<String>)>,
}

/// Read once: the passed sockets, or why there are none to use.
static PASSED: OnceLock<Result<Passed, String>> = OnceLock::new();

/// Reads (once) and clears the activation variables.
pub(crate) fn take_from_env() {
    PASSED.get_or_init(read_env);
}

fn read_env() -> Result<Passed, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let fds =
        fds.ok_or("LISTEN_FDS is not set: no socket was passed (systemd socket activation)")?;
    let count: i32 = crate::number::parse(&fds)
        .filter(|&n| n > 0 && n < 1024)
        .ok_or_else(|| format!("LISTEN_FDS is {fds:?}, not a number of sockets"))?;
    let me = process::getpid();
    match pid.as_deref().map(crate::number::parse::<i32>) {
        Some(Some(p)) if p == me => {}
        Some(Some(p)) => {
            return Err(format!(
                "LISTEN_PID is {p}, not this process ({me}): the sockets were passed to another"
            ))
        }
        Some(None) => {
            return Err(format!(
                "LISTEN_PID is {:?}, not a pid",
                pid.unwrap_or_default()
            ))
        }
        // systemfd --no-pid and listenfd's own tests pass sockets without naming a
        // pid: they are this process's, as no other was named.
        None => {}
    }
    let names: Vec<Option<String>> = match names {
        Some(n) => n.split(':').map(|s| Some(s.to_string())).collect(),
        None => vec![None; count as usize],
    };
    if names.len() != count as usize {
        return Err(format!(
            "LISTEN_FDNAMES names {} socket(s), LISTEN_FDS says {count}",
            names.len()
        ));
    }
    let fds: Vec<(i32, Option<String>)> = (0..count).map(|i| FIRST_FD + i).zip(names).collect();
    for &(fd, _) in &fds {
        // A number that is not open is reported when it is used (`EBADF`, naming it).
        let _ = crate::sys::fd::set_cloexec_number(fd);
    }
    Ok(Passed { fds })
}

/// The descriptor passed for `name` (`None`: the one socket passed).
///
/// # Errors
///
/// A message naming the variable or the name at fault.
pub(crate) fn descriptor(name: Option<&str>) -> Result<i32, String> {
    let passed = PASSED
        .get_or_init(read_env)
        .as_ref()
        .map_err(Clone::clone)?;
    match name {
        Some(name) => passed
            .fds
            .iter()
            .find(|(_, n)| n.as_deref() == Some(name))
            .map(|&(fd, _)| fd)
            .ok_or_else(|| {
                let known: Vec<&str> = passed
                    .fds
                    .iter()
                    .filter_map(|(_, n)| n.as_deref())
                    .collect();
                format!("no passed socket is named {name:?} (LISTEN_FDNAMES: {known:?})")
            }),
        None => match passed.fds.as_slice() {
            [(fd, _)] => Ok(*fd),
            more => Err(format!(
                "{} sockets were passed (LISTEN_FDS); name one with systemd:NAME",
                more.len()
            )),
        },
    }
}
