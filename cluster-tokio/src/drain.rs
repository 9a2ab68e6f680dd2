//! The disconnect as a future, and the keep-alive drain of a rolling restart.
//!
//! A worker is asked to go by its primary (a shutdown, a reload, a recycle, an
//! upgrade) or by a signal to the whole group. [`disconnected`] completes then: it
//! waits for [`cluster::Worker::disconnect_fd`] to be readable, in tokio's reactor.
//!
//! hyper's graceful shutdown answers the requests in flight and closes idle
//! keep-alive connections at once; a client whose next request is already on its way
//! on such a connection sees it fail (67 to 136 failed requests per rolling restart
//! of an axum cluster, measured before this; Node 24: 95 to 102). [`Drain`] closes the
//! gap: from the disconnect, every response says `Connection: close` for a grace
//! period, so each busy keep-alive client is told to reconnect (to a worker that
//! stays) before the server closes what is left.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use tower::util::MapResponseLayer;

/// Completes once this worker is asked to go; outside a cluster worker, never (pair
/// it with `tokio::signal::ctrl_c()` there). Must be polled inside a tokio runtime
/// with I/O enabled.
pub async fn disconnected() {
    match Stop::watch() {
        Ok(Some(stop)) => stop.asked().await,
        Ok(None) => std::future::pending().await,
        // No descriptor to spare: look every 50 ms instead.
        Err(_) => {
            if let Some(worker) = cluster::Worker::current() {
                while !worker.is_disconnecting() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The worker's disconnect, watched in the reactor (a socket's `accept` would go on
/// after it: the socket stays open for the other workers or the replacement).
#[derive(Debug)]
pub(crate) struct Stop {
    worker: cluster::Worker,
    pipe: tokio::net::unix::pipe::Receiver,
}

impl Stop {
    /// Outside a cluster worker: `None`.
    pub(crate) fn watch() -> io::Result<Option<Stop>> {
        let Some(worker) = cluster::Worker::current() else {
            return Ok(None);
        };
        let fd = worker.disconnect_fd().try_clone_to_owned()?;
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
        Ok(Some(Stop { worker, pipe }))
    }

    /// Completes once the worker is asked to go.
    pub(crate) async fn asked(&self) {
        while !self.worker.is_disconnecting() {
            if self.pipe.readable().await.is_err() {
                // The reactor lost it: look every 50 ms instead.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The keep-alive drain (see the module docs): a tower layer for the application,
/// and the shutdown future for `with_graceful_shutdown`.
#[derive(Debug, Clone)]
pub struct Drain {
    draining: Arc<AtomicBool>,
    grace: Duration,
}

/// The drain's grace period by default: long enough for a closed-loop keep-alive
/// client to make one more request and be told to close.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(250);

impl Default for Drain {
    fn default() -> Drain {
        Drain::new(DEFAULT_GRACE)
    }
}

impl Drain {
    /// A drain whose grace period is `grace`.
    pub fn new(grace: Duration) -> Drain {
        Drain {
            draining: Arc::new(AtomicBool::new(false)),
            grace,
        }
    }

    /// The layer that adds `Connection: close` to every response once the worker is
    /// asked to go (`Router::layer(drain.layer())`).
    pub fn layer<B>(
        &self,
    ) -> MapResponseLayer<impl FnOnce(http::Response<B>) -> http::Response<B> + Clone> {
        let draining = self.draining.clone();
        MapResponseLayer::new(move |mut response: http::Response<B>| {
            if draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        })
    }

    /// The future for `with_graceful_shutdown`: once the worker is asked to go, the
    /// layer starts answering `Connection: close`; after the grace period the future
    /// completes, and the server's graceful shutdown answers what is in flight and
    /// closes the rest.
    pub fn on_disconnect(&self) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.clone();
        async move {
            disconnected().await;
            drain.draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(drain.grace).await;
        }
    }

    /// Whether the worker was asked to go and responses say `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
