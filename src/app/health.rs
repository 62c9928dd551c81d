//! Health checks for load balancers and orchestrators, served from
//! [`App::on_http`](super::App::on_http): [`healthz`] (the process answers)
//! and [`readyz`] (this node should be given connections).
//!
//! The HTTP handler is set before the app runs, so it reaches the running app
//! through a cell filled once [`listen`](super::App::listen) returns; until
//! then `/readyz` answers 503.
//!
//! ```no_run
//! use std::sync::{Arc, OnceLock};
//! use emitws::app::{health, App, AppHandle};
//!
//! let running_app: Arc<OnceLock<AppHandle>> = Arc::default();
//! let mut app = App::new();
//! let probe = running_app.clone();
//! app.on_http(move |request| match request.path() {
//!     "/healthz" => Some(health::healthz()),
//!     "/readyz" => Some(probe.get().map_or_else(health::not_started, health::readyz)),
//!     _ => None,
//! });
//! let running = app.listen("127.0.0.1:9000")?;
//! running_app.get_or_init(|| running.app());
//! # Ok::<(), std::io::Error>(())
//! ```

use super::handle::AppHandle;
use crate::runtime::HttpResponse;

/// `/healthz`: 200 `ok`. That the process answers at all is the check.
pub fn healthz() -> HttpResponse {
    HttpResponse::new(200, "text/plain", "ok")
}

/// `/readyz`: 200 `ready` when [`AppHandle::readiness`] passes, else 503
/// with the reason.
pub fn readyz(app: &AppHandle) -> HttpResponse {
    match app.readiness() {
        Ok(()) => HttpResponse::new(200, "text/plain", "ready"),
        Err(reason) => HttpResponse::new(503, "text/plain", format!("not ready: {reason}")),
    }
}

/// `/readyz` before the app runs: 503.
pub fn not_started() -> HttpResponse {
    HttpResponse::new(503, "text/plain", "not ready: not started")
}

impl AppHandle {
    /// Whether this node should be given connections: it accepts them (it
    /// is not shutting down or draining) and, in a cluster, its adapter
    /// reaches the other nodes ([`Adapter::healthy`](super::Adapter::healthy)).
    ///
    /// # Errors
    ///
    /// A short reason when it should not: not started, not accepting, or
    /// the adapter's.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(server) = self.0.server.get() else { return Err("not started".into()) };
        if !server.is_accepting() {
            return Err("not accepting connections (shutting down or draining)".into());
        }
        match &self.0.setup.adapter {
            Some(adapter) => adapter.healthy(),
            None => Ok(()),
        }
    }
}
