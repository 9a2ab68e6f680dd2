//! The one `unsafe` call of this package: registering the hand-off channel with
//! tokio's reactor for readiness.
//!
//! Since tokio 1.54, `AsyncFd`'s registration of a raw descriptor is `unsafe`: tokio
//! cannot see that the descriptor stays open and means the same file while
//! registered. Here it owns a duplicate of its own, so both hold by construction.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `fd` registered for readability with the current runtime's reactor.
///
/// # Errors
///
/// The reactor's error (no runtime with I/O enabled is a panic, as in tokio).
pub(crate) fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, an OwnedFd, which stays open and
    // names the same open file description until the AsyncFd drops it; nothing else
    // closes or replaces it, and `as_raw_fd` always returns that same number.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
