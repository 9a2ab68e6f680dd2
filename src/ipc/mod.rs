//! The primary ⇄ worker channels: the record format ([`codec`]) and the socket that
//! carries it ([`channel`]).
//!
//! Each worker has one **control channel** (a `SOCK_SEQPACKET` socketpair made before
//! `fork`) for everything but connections: online, listen request and reply, listening,
//! listener closed, user messages, disconnect. In round-robin mode each of the worker's
//! listeners also gets a **hand-off channel**, a socketpair made by the primary when the
//! worker asks to listen, whose worker end travels in the listen reply: connections and
//! their credits go over it, so a worker's accepting threads block on it exactly as they
//! would block in `accept(2)` on a socket.

pub(crate) mod channel;
pub(crate) mod codec;
/// Property tests of the record format; the file lives with the other tests, out of
/// `src/`, but is compiled here as a unit-test module so it reaches crate-private items
/// (`cargo test --lib property`).
#[cfg(test)]
#[path = "../../tests/property/codec.rs"]
mod property;
