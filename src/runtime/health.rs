//! What a readiness check asks of the engine.

use std::sync::atomic::Ordering;

use super::handle::ServerHandle;

impl ServerHandle {
    /// Whether the server takes new connections: false once
    /// [`shutdown`](Self::shutdown) has begun (or a drain stops accepting).
    /// A load balancer's readiness check reports this.
    pub fn is_accepting(&self) -> bool {
        !self.shared.stopping.load(Ordering::Acquire)
    }
}
