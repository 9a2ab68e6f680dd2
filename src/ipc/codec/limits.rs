//! The sizes of the record format (see the module docs of `codec`): a leaf, so that
//! the crate's errors can name the message limit without depending on the codec.

/// Bytes of the record header.
pub(crate) const HEADER_LEN: usize = 8;

/// The largest user message, in bytes, that [`Cluster::send`](crate::Cluster::send) and
/// [`Worker::send`](crate::Worker::send) accept (64 KiB). Larger payloads are refused
/// with an error before anything is sent; the channel stays usable.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// The largest record on the wire: a header and the largest payload.
pub(crate) const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_MESSAGE_LEN;
