//! [`Home`]: the runtime a pool or a combiner was built on, where its
//! connections and batches run.
//!
//! Why not wherever they are first needed: an HTTP worker's runtime is one
//! thread serving its share of the requests, so a connection driven there has
//! its replies read only when that thread next polls its sockets and reaches the
//! task, behind every request queued on it (~0.5 ms per statement on the write
//! path under the 90/10 benchmark: docs/PERFORMANCE.md, "Eighth round"); and it
//! ends with its worker, taking the connection with it. A service builds its
//! pools on the process's main runtime, whose threads are idle while the workers
//! are busy and which outlives them.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Where to spawn: the runtime current when this was made, if there was one.
#[derive(Clone, Debug)]
pub(crate) struct Home(Option<Handle>);

impl Home {
    /// The runtime this is called on (none outside a runtime: then `spawn` uses
    /// the caller's).
    pub(crate) fn here() -> Self {
        Self(Handle::try_current().ok())
    }

    /// No home: [`Home::spawn`] runs tasks on the runtime of whoever spawns them.
    pub(crate) fn caller() -> Self {
        Self(None)
    }

    /// Runs `task` at home.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }
}
