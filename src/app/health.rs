//! Health checks for load balancers and orchestrators, served from
//! [`App::on_http`](super::App::on_http): [`healthz`] (the process answers)
//! and [`readyz`] (this node should be given connections).
//!
//! The HTTP handler is set before the app runs: the app's [`Probes`]
//! ([`App::probes`](super::App::probes)) answer both paths from it, and
//! follow the app once it listens (until then `/readyz` answers 503).
//!
//! ```no_run
//! use emitws::app::App;
//!
//! let mut app = App::new();
//! let probes = app.probes();
//! app.on_http(move |request| probes.answer(request.path()));
//! let running = app.listen("127.0.0.1:9000")?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::sync::{Arc, OnceLock, Weak};

use super::handle::{AppHandle, AppState};
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
/// They hold the app weakly (an app's own probes live in it): once it is
/// dropped `/readyz` answers 503 again.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    app: Arc<OnceLock<Weak<AppState>>>,
}

impl Probes {
    /// Answers `/healthz` ([`healthz`]) and `/readyz` ([`readyz`]; 503
    /// until [`running`](Self::running)); `None` for any other path.
    pub fn answer(&self, path: &str) -> Option<HttpResponse> {
        match path {
            "/healthz" => Some(healthz()),
            "/readyz" => Some(match self.app.get().and_then(Weak::upgrade) {
                Some(app) => readyz(&AppHandle(app)),
                None => HttpResponse::new(503, "text/plain", "not ready: not started"),
            }),
            _ => None,
        }
    }

    /// The app runs: `/readyz` asks it from now on. Only the first call
    /// counts. [`App::probes`](super::App::probes) makes this call itself;
    /// probes made with `Probes::default()` need it.
    pub fn running(&self, app: AppHandle) {
        let _ = self.app.set(Arc::downgrade(&app.0));
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
