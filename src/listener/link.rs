//! The listener's link to the worker runtime it lives in, when it lives in a cluster
//! worker. The worker side depends on the listener, never the other way round: the
//! runtime registers itself here when the worker starts ([`register`]), `bind` asks
//! whether one is registered (Node's `cluster._getServer` asking `cluster.isWorker`),
//! and each listener the runtime creates is handed the link it reports to.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock, Weak};

use super::{Closable, Listener};
use crate::addr::ListenAddr;
use crate::connection::OpenCount;
use crate::options::ListenOptions;

/// What a listener needs from the worker runtime.
pub(crate) trait WorkerLink: Send + Sync {
    /// Asks the primary for a listener on `addr` (Node's `queryServer` round trip).
    fn listen(&self, addr: &ListenAddr, options: &ListenOptions) -> io::Result<Listener>;
    /// Asks the primary for a datagram socket on `addr` (the same round trip); the
    /// caller builds the socket from the grant and [`announce`](WorkerLink::announce)s it.
    fn ask_datagram(&self, addr: &ListenAddr, options: &ListenOptions)
        -> io::Result<DatagramGrant>;
    /// Keeps `endpoint`, granted as `handle`, to close when the worker disconnects, and
    /// tells the primary the worker receives on it. Whether the worker is disconnecting
    /// already (the caller then closes the endpoint).
    fn announce(&self, handle: u32, endpoint: Weak<dyn Closable>) -> bool;
    /// Closes `endpoint` with the worker's other listeners when the worker disconnects
    /// (an exclusive one, which the primary knows nothing of).
    fn track(&self, endpoint: Weak<dyn Closable>);
    /// Counts one accepted connection; the returned count keeps it open until dropped.
    fn accepted(&self) -> OpenCount;
    /// Connections open in this worker now (sent with each round-robin credit).
    fn open_now(&self) -> u32;
    /// The listener granted as `handle` closed: tell the primary.
    fn listener_closed(&self, handle: u32);
}

/// A datagram socket the primary granted: its address, the socket, and the handle
/// the worker names it by.
pub(crate) struct DatagramGrant {
    pub(crate) local: ListenAddr,
    pub(crate) fd: OwnedFd,
    pub(crate) handle: u32,
}

/// This process's worker runtime, once it started.
static LINK: OnceLock<Arc<dyn WorkerLink>> = OnceLock::new();

/// Registers the worker runtime (once per process); `false` if one already was.
pub(crate) fn register(link: Arc<dyn WorkerLink>) -> bool {
    LINK.set(link).is_ok()
}

/// The worker runtime, if this process is a cluster worker.
pub(crate) fn registered() -> Option<&'static Arc<dyn WorkerLink>> {
    LINK.get()
}
