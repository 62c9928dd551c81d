//! Health checks for load balancers and orchestrators, served from
//! [`App::on_http`](super::App::on_http): [`healthz`] (the process answers)
//! and [`readyz`] (this node should be given connections).
//!
//! The HTTP handler is set before the app runs: [`Probes`] answers both
//! paths from it, and is told the running app once
//! [`listen`](super::App::listen) returns (until then `/readyz` answers 503).
//!
//! ```no_run
//! use emitws::app::{health::Probes, App};
//!
//! let probes = Probes::default();
//! let mut app = App::new();
//! let answer = probes.clone();
//! app.on_http(move |request| answer.answer(request.path()));
//! let running = app.listen("127.0.0.1:9000")?;
//! probes.running(running.app());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::sync::{Arc, OnceLock};

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

/// `/healthz` and `/readyz` for an app's [`on_http`](super::App::on_http),
/// which is set before the app runs. Cheap to clone: clones share the app.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    app: Arc<OnceLock<AppHandle>>,
}

impl Probes {
    /// Answers `/healthz` ([`healthz`]) and `/readyz` ([`readyz`]; 503
    /// until [`running`](Self::running)); `None` for any other path.
    pub fn answer(&self, path: &str) -> Option<HttpResponse> {
        match path {
            "/healthz" => Some(healthz()),
            "/readyz" => Some(match self.app.get() {
                Some(app) => readyz(app),
                None => HttpResponse::new(503, "text/plain", "not ready: not started"),
            }),
            _ => None,
        }
    }

    /// The app runs: `/readyz` asks it from now on. Only the first call counts.
    pub fn running(&self, app: AppHandle) {
        let _ = self.app.set(app);
    }
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
