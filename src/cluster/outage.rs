//! Living through Redis outages: the wait between reconnection attempts, a
//! log line when an outage starts and one when it ends, and the link's
//! [`Health`] that tells the app ([`ClusterEvent`]).

use std::fmt;
use std::sync::{Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::adapter::lock;
use super::link::LinkState;
use crate::app::ClusterEvent;

/// Logs an outage once when it starts and once when it ends; a watched
/// one (the writer's, the subscriber's) also tells the link's [`Health`].
pub(super) struct Outage {
    what: &'static str,
    /// The node's id in hex (one process may run several links).
    node: String,
    since: Option<Instant>,
    /// The link whose health this outage counts in, if any.
    link: Option<Weak<LinkState>>,
}

impl Outage {
    /// No outage yet of `what` (the reader) of `node`: logged only. Its
    /// connection opens only when a job comes, so it notices outages late
    /// and recoveries later: the link's health does not wait for it.
    pub(super) fn new(what: &'static str, node: &str) -> Outage {
        Outage { what, node: node.into(), since: None, link: None }
    }

    /// No outage yet of `what` of `node`, a connection the link keeps open
    /// (the publisher, the subscriber): its outages count in `link`'s [`Health`].
    pub(super) fn watched(what: &'static str, node: &str, link: &Weak<LinkState>) -> Outage {
        Outage { what, node: node.into(), since: None, link: Some(link.clone()) }
    }

    pub(super) fn failed(&mut self, error: &dyn fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            // A warning: the node goes on alone, messages to other nodes are lost meanwhile.
            tracing::warn!(link = self.what, node = %self.node, %error, "Redis lost; local delivery goes on, retrying");
            if let Some(link) = self.link.as_ref().and_then(Weak::upgrade) {
                link.health.failed(self.what, error);
            }
        }
    }

    pub(super) fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(link = self.what, node = %self.node, after_s = since.elapsed().as_secs_f64(), "Redis back");
            if let Some(link) = self.link.as_ref().and_then(Weak::upgrade) {
                link.health.recovered(self.what);
            }
        }
    }
}

/// A link's health: which of its watched connections are in an outage,
/// since when, and who hears of the changes (the adapter, for the app).
/// The node's outage starts when the first of them fails and ends when
/// the last of those recovers: one [`ClusterEvent::StoreLost`] and one
/// [`ClusterEvent::StoreBack`] per outage.
#[derive(Default)]
pub(super) struct Health {
    outage: Mutex<NodeOutage>,
    watcher: OnceLock<Box<dyn Fn(ClusterEvent) + Send + Sync>>,
}

/// The connections in an outage, and since when the first of them was.
#[derive(Default)]
struct NodeOutage {
    down: Vec<&'static str>,
    since: Option<Instant>,
}

impl Health {
    /// Has `watcher` hear every event from now on (only the first call counts).
    pub(super) fn watch(&self, watcher: impl Fn(ClusterEvent) + Send + Sync + 'static) {
        let _ = self.watcher.set(Box::new(watcher));
    }

    /// Hands `event` to the watcher, if any; it must not block.
    pub(super) fn report(&self, event: ClusterEvent) {
        if let Some(watcher) = self.watcher.get() {
            watcher(event);
        }
    }

    /// Whether no watched connection is in an outage.
    pub(super) fn up(&self) -> bool {
        lock(&self.outage).since.is_none()
    }

    fn failed(&self, link: &'static str, error: &dyn fmt::Display) {
        let mut outage = lock(&self.outage);
        if !outage.down.contains(&link) {
            outage.down.push(link);
        }
        if outage.since.is_none() {
            outage.since = Some(Instant::now());
            // Under the lock: a recovery on another thread is reported after.
            self.report(ClusterEvent::StoreLost { link, error: error.to_string() });
        }
    }

    fn recovered(&self, link: &'static str) {
        let mut outage = lock(&self.outage);
        outage.down.retain(|down| *down != link);
        if outage.down.is_empty() {
            if let Some(since) = outage.since.take() {
                self.report(ClusterEvent::StoreBack { after: since.elapsed() });
            }
        }
    }
}

/// The next wait between attempts: doubling, capped.
pub(super) fn backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(50), max)
}
