//! Living through Redis outages: the wait between reconnection attempts, and
//! a log line when an outage starts and one when it ends.

use std::fmt;
use std::time::{Duration, Instant};

/// Logs an outage once when it starts and once when it ends.
pub(super) struct Outage {
    what: &'static str,
    /// The node's id in hex (one process may run several links).
    node: String,
    since: Option<Instant>,
}

impl Outage {
    /// No outage yet of `what` (the publisher, the subscriber) of `node`.
    pub(super) fn new(what: &'static str, node: &str) -> Outage {
        Outage { what, node: node.into(), since: None }
    }

    pub(super) fn failed(&mut self, error: &dyn fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            // A warning: the node goes on alone, messages to other nodes are lost meanwhile.
            tracing::warn!(link = self.what, node = %self.node, %error, "Redis lost; local delivery goes on, retrying");
        }
    }

    pub(super) fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(link = self.what, node = %self.node, after_s = since.elapsed().as_secs_f64(), "Redis back");
        }
    }
}

/// The next wait between attempts: doubling, capped.
pub(super) fn backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(50), max)
}
