//! A worker's share of a drain (see `ServerHandle::drain`): its listener
//! goes at once; its connections, as they were when the drain began, are
//! closed with 1012 a few at a time, evenly over the drain's span, so the
//! nodes that take the clients over see them arrive at a steady rate. A
//! connection whose handler has work under way when its turn comes (a
//! deferred reply, [`Handler::pending_work`]) is closed as soon as that work
//! is done, and at the latest at the drain's deadline, as in a shutdown.

use super::*;
use crate::runtime::handle::{DrainPlan, DRAIN_CLOSE_CODE};

/// A worker's drain under way.
pub(super) struct Draining {
    plan: Arc<DrainPlan>,
    /// The connections to close, as (key, generation), the last to close first.
    queue: Vec<(usize, u32)>,
    /// The queue's length when the drain began.
    total: usize,
    /// Connections whose turn came while their handler had work under way.
    busy: Vec<(usize, u32)>,
}

impl Draining {
    /// How many of the queue should be closed by `now`: a straight line from
    /// none at the start to all at the deadline, rounded up (the first close
    /// goes out at once).
    fn due_by(&self, now: Instant) -> usize {
        let span = self.plan.deadline.saturating_duration_since(self.plan.started).as_nanos();
        let elapsed = now.saturating_duration_since(self.plan.started).as_nanos();
        if elapsed >= span {
            return self.total;
        }
        (self.total as u128 * elapsed).div_ceil(span).max(1).min(self.total as u128) as usize
    }

    /// When the next close is due (the deadline, for the final sweep, once
    /// the queue is empty).
    fn next_due(&self) -> Instant {
        let closed = self.total - self.queue.len();
        if self.queue.is_empty() {
            return self.plan.deadline;
        }
        let span = self.plan.deadline.saturating_duration_since(self.plan.started);
        // The instant the straight line reaches `closed + 1` (`due_by` rounds up).
        let share = (closed as f64 / self.total as f64).min(1.0);
        self.plan.started + span.mul_f64(share)
    }
}

impl<H: Handler> Worker<H> {
    /// Starts this worker's share of a drain: no more accepts, the
    /// connections queued for their closes. Ignored during a shutdown or
    /// another drain.
    pub(super) fn begin_drain(&mut self, plan: Arc<DrainPlan>) {
        if self.draining.is_some() || self.shutdown_deadline.is_some() {
            return;
        }
        if let Some(mut listener) = self.listener.take() {
            // Dropped: new connections are refused, not left in the backlog.
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let mut queue: Vec<(usize, u32)> = self.slab.iter().map(|(key, slot)| (key, slot.conn.generation)).collect();
        queue.reverse();
        self.draining = Some(Draining { plan, total: queue.len(), queue, busy: Vec::new() });
    }

    /// When this worker's drain wants its next turn, if one is under way.
    pub(super) fn drain_due(&self) -> Option<Instant> {
        self.draining.as_ref().map(Draining::next_due)
    }

    /// Sends the closes due by `now`; at the deadline, closes what opened
    /// since the drain began and drops what is still upgrading, and the
    /// drain is over. A shutdown ends the drain: it closes the rest itself.
    pub(super) fn drain_step(&mut self, now: Instant) {
        let Some(draining) = self.draining.as_mut() else { return };
        if self.shutdown_deadline.is_some() {
            self.draining = None;
            return;
        }
        let due = draining.due_by(now);
        let mut closing = std::mem::take(&mut draining.busy);
        while draining.total - draining.queue.len() < due {
            let Some(next) = draining.queue.pop() else { break };
            closing.push(next);
        }
        let at_deadline = now >= draining.plan.deadline;
        let plan = draining.plan.clone();
        if at_deadline {
            closing.extend(self.slab.iter().map(|(key, slot)| (key, slot.conn.generation)));
            self.draining = None;
        }
        let mut busy = Vec::new();
        for (key, generation) in closing {
            if !self.close_drained(key, generation, &plan, at_deadline) {
                busy.push((key, generation));
            }
        }
        if let Some(draining) = self.draining.as_mut() {
            draining.busy = busy;
        }
    }

    /// Closes one connection with the drain's code and redirect, if it is
    /// still the one queued and open and its handler has no work under way
    /// (at the deadline, regardless); at the deadline, one still upgrading is
    /// dropped (it has no close handshake to hear). False when it waits for
    /// its handler's work.
    fn close_drained(&mut self, key: usize, generation: u32, plan: &DrainPlan, at_deadline: bool) -> bool {
        let Some(slot) = self.slab.get(key).filter(|slot| slot.conn.generation == generation) else { return true };
        if slot.machine.is_open() {
            if !self.close_unless_busy(key, at_deadline, DRAIN_CLOSE_CODE, &plan.redirect) {
                return false;
            }
            plan.closes_sent.fetch_add(1, Ordering::Relaxed);
        } else if at_deadline && slot.machine.is_handshaking() {
            self.abort(key, CloseReason::Shutdown);
        }
        true
    }
}
