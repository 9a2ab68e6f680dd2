//! Errors: `io::Error` at the syscall layer, this small enum above it.

use std::fmt;
use std::io;

use crate::addr::ListenAddr;
use crate::ipc::codec::error::ProtocolError;
use crate::setup_stage::SetupStage;
use crate::worker_id::WorkerId;

/// What can go wrong in the primary.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed; `context` says what the crate was doing.
    Io {
        /// What was being done, e.g. "fork worker 3".
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A setting is invalid; the message names the value.
    Config(String),
    /// A cluster was started inside a worker process.
    NotPrimary,
    /// A message was refused before sending: the payload is larger than
    /// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN).
    MessageTooLarge {
        /// The payload's length.
        len: usize,
    },
    /// There is no live worker with this id.
    NoSuchWorker(WorkerId),
    /// A worker could not be set up (chdir, setuid, …) and exited.
    WorkerSetup {
        /// The worker.
        worker: WorkerId,
        /// The step that failed.
        stage: SetupStage,
        /// The OS error.
        source: io::Error,
    },
    /// A reload stopped early; the message says why (the workers not yet replaced keep
    /// running).
    Reload(String),
    /// A binary upgrade ([`Cluster::upgrade`](crate::Cluster::upgrade), `SIGUSR2`) could
    /// not start or failed; the message says why. The cluster keeps serving as it was.
    Upgrade(String),
    /// A worker asked to listen on an address the cluster does not allow
    /// ([`Builder::listen_only`](crate::Builder::listen_only)), or, run as another user,
    /// with options the cluster does not allow for it; it was refused (`EACCES`),
    /// nothing was bound.
    ListenDenied {
        /// The worker.
        worker: WorkerId,
        /// The address it asked for.
        addr: ListenAddr,
        /// Why: the address is not allowed, or the options are not those allowed.
        reason: &'static str,
    },
    /// A worker broke the channel protocol; it was disconnected and killed.
    Protocol {
        /// The worker.
        worker: WorkerId,
        /// What it sent.
        error: ProtocolError,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Config(msg) => f.write_str(msg),
            Error::NotPrimary => {
                f.write_str("a cluster cannot be started inside one of its workers")
            }
            Error::MessageTooLarge { len } => write!(
                f,
                "message of {len} bytes exceeds the limit of {} bytes",
                crate::ipc::codec::limits::MAX_MESSAGE_LEN
            ),
            Error::NoSuchWorker(id) => write!(f, "no live worker {id}"),
            Error::Protocol { worker, error } => {
                write!(f, "worker {worker} broke the protocol: {error}")
            }
            Error::WorkerSetup {
                worker,
                stage,
                source,
            } => {
                write!(
                    f,
                    "worker {worker} could not be set up: {stage} failed: {source}"
                )
            }
            Error::Reload(reason) => write!(f, "reload stopped: {reason}"),
            Error::Upgrade(reason) => write!(f, "upgrade failed: {reason}"),
            Error::ListenDenied {
                worker,
                addr,
                reason,
            } => write!(
                f,
                "worker {worker} asked to listen on {addr}: refused, {reason}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Protocol { error, .. } => Some(error),
            Error::WorkerSetup { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A listener could not be created: the address and the OS error.
///
/// Listen calls return it inside an `io::Error` of the same kind (`AddrInUse`,
/// `PermissionDenied`, …); get it back with `err.get_ref()` and `downcast_ref`, or just
/// print the `io::Error`: "cannot listen on 127.0.0.1:80: Permission denied (os error 13)".
#[derive(Debug)]
pub struct ListenError {
    addr: ListenAddr,
    source: io::Error,
}

impl ListenError {
    pub(crate) fn new(addr: ListenAddr, source: io::Error) -> ListenError {
        ListenError { addr, source }
    }

    /// Wraps `source` as an `io::Error` of the same kind that names `addr`.
    pub(crate) fn io(addr: &ListenAddr, source: io::Error) -> io::Error {
        let kind = source.kind();
        io::Error::new(kind, ListenError::new(addr.clone(), source))
    }

    /// The address that could not be listened on.
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The `errno`, when the failure came from the OS.
    pub fn os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The `errno` behind an error: its own, that of a [`ListenError`] inside it, or the
/// one its kind stands for (to send it to a worker as a number).
pub(crate) fn errno_of(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    if let Some(n) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ListenError>())
        .and_then(|l| errno_of(&l.source))
    {
        return Some(n);
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => Some(libc::EACCES),
        io::ErrorKind::AddrInUse => Some(libc::EADDRINUSE),
        io::ErrorKind::AddrNotAvailable => Some(libc::EADDRNOTAVAIL),
        io::ErrorKind::NotFound => Some(libc::ENOENT),
        io::ErrorKind::InvalidInput => Some(libc::EINVAL),
        _ => None,
    }
}
