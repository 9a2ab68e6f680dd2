//! [`WorkerId`]: how the cluster names a worker, a plain value every layer uses.

use std::fmt;

/// A worker's id: 1, 2, 3, … in fork order, never reused within a cluster (Node's
/// `worker.id`). A respawned worker gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
