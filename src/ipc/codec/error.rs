//! [`ProtocolError`]: why a record was refused, raised by the codec and the channel
//! (and by the primary for records that decode but break the protocol). A leaf of its
//! own, so that the crate's `Error` can carry it without depending on the codec.

use std::fmt;

use super::limits::MAX_RECORD_LEN;

/// Why a record was refused. Each one closes the offending worker's channel; none
/// panics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Shorter than the 8-byte header.
    Short {
        /// Bytes received.
        len: usize,
    },
    /// Longer than the largest record (or truncated by the receive buffer).
    Oversized {
        /// Bytes received (at least).
        len: usize,
    },
    /// The header's length field disagrees with the record's size.
    LengthMismatch {
        /// Payload bytes the header claims.
        declared: usize,
        /// Payload bytes present.
        actual: usize,
    },
    /// An unknown message kind.
    UnknownKind(u8),
    /// The reserved header bytes are not zero.
    Reserved,
    /// The payload does not fit its kind.
    Malformed {
        /// The message kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Descriptors arrived with a kind that carries none, or more than one arrived.
    UnexpectedFd {
        /// The message kind.
        kind: &'static str,
        /// How many arrived (all closed).
        count: usize,
    },
    /// A kind that must carry a descriptor arrived without one.
    MissingFd {
        /// The message kind.
        kind: &'static str,
    },
    /// The kernel truncated the control data (`MSG_CTRUNC`): descriptors were lost, for
    /// instance at `RLIMIT_NOFILE`. Those that arrived were closed.
    ControlTruncated,
    /// The worker keeps sending requests but does not read the replies.
    NotReading,
    /// More messages in one second than the cluster's
    /// [`message_limit`](crate::Builder::message_limit).
    Flooding {
        /// The limit.
        limit: u32,
    },
    /// A message that is valid but must not travel in this direction or on this channel.
    Unexpected {
        /// The message kind.
        kind: &'static str,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Short { len } => {
                write!(f, "record of {len} bytes is shorter than its header")
            }
            ProtocolError::Oversized { len } => {
                write!(
                    f,
                    "record of {len} bytes exceeds the limit of {MAX_RECORD_LEN}"
                )
            }
            ProtocolError::LengthMismatch { declared, actual } => {
                write!(
                    f,
                    "header declares {declared} payload bytes, record has {actual}"
                )
            }
            ProtocolError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            ProtocolError::Reserved => f.write_str("reserved header bytes are not zero"),
            ProtocolError::Malformed { kind, reason } => {
                write!(f, "malformed {kind} message: {reason}")
            }
            ProtocolError::UnexpectedFd { kind, count } => {
                write!(
                    f,
                    "{kind} message arrived with {count} descriptor(s) it must not carry"
                )
            }
            ProtocolError::MissingFd { kind } => {
                write!(f, "{kind} message arrived without its descriptor")
            }
            ProtocolError::ControlTruncated => {
                f.write_str("control data truncated (MSG_CTRUNC): descriptors were dropped")
            }
            ProtocolError::Unexpected { kind } => write!(f, "{kind} message is not expected here"),
            ProtocolError::NotReading => {
                f.write_str("requests keep coming but replies are not read")
            }
            ProtocolError::Flooding { limit } => {
                write!(f, "more than {limit} messages in one second")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
