//! A worker's share of a graceful shutdown: its listener goes at once; a
//! connection upgrading is dropped; an open one is closed with 1001 — at
//! once, or, if the handler says it still has work under way
//! ([`Handler::pending_work`]: the event layer's deferred replies), as soon
//! as that work is done, and at the latest when the reply grace ends. Data
//! cannot follow a close frame, so a reply must go out before the 1001.

use super::*;

/// The close reason a shutdown sends with 1001.
const SHUTTING_DOWN: &str = "server shutting down";

/// Connections whose close waits for their handler's work.
pub(super) struct Finishing {
    /// (key, generation) of each.
    waiting: Vec<(usize, u32)>,
    /// When they are closed regardless.
    grace_ends: Instant,
}

impl<H: Handler> Worker<H> {
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let now = Instant::now();
        let settings = self.ctx.settings.clone();
        tracing::info!(worker = self.ctx.worker, connections = self.slab.len(), "shutting down");
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.ctx.handle.shared.stopping.store(true, Ordering::Release);
        if let Some(acceptor) = &self.ctx.handle.acceptor {
            let _ = acceptor.wake();
        }
        let keys: Vec<usize> = self.slab.iter().map(|(key, _)| key).collect();
        let mut waiting = Vec::new();
        for key in keys {
            if self.slab[key].machine.is_handshaking() {
                self.abort(key, CloseReason::Shutdown);
            } else if !self.close_unless_busy(key, false, CloseCode::GOING_AWAY, SHUTTING_DOWN) {
                waiting.push((key, self.slab[key].conn.generation));
            }
        }
        let grace = if waiting.is_empty() { Duration::ZERO } else { settings.reply_grace };
        self.shutdown_deadline = Some(now + grace + settings.shutdown_timeout);
        if !waiting.is_empty() {
            self.finishing = Some(Finishing { waiting, grace_ends: now + grace });
        }
    }

    /// When the reply grace ends, while connections wait for it.
    pub(super) fn grace_due(&self) -> Option<Instant> {
        self.finishing.as_ref().map(|finishing| finishing.grace_ends)
    }

    /// Closes the waiting connections whose work is done, or all of them
    /// once the grace is over. Runs every turn: a deferred reply wakes the
    /// loop, so a connection closes in the turn that sends its last reply.
    pub(super) fn finish_step(&mut self, now: Instant) {
        let Some(mut finishing) = self.finishing.take() else { return };
        let force = now >= finishing.grace_ends;
        finishing.waiting.retain(|&(key, generation)| {
            let same = self.slab.get(key).is_some_and(|slot| slot.conn.generation == generation);
            same && !self.close_unless_busy(key, force, CloseCode::GOING_AWAY, SHUTTING_DOWN)
        });
        if !finishing.waiting.is_empty() {
            self.finishing = Some(finishing);
        }
    }

    /// Closes open connection `key` with `code` and `reason` unless its
    /// handler has work under way (and `force` is off); whether it is closed
    /// (or not open). Shutdowns (1001) and drains (1012) both wait this way.
    pub(super) fn close_unless_busy(&mut self, key: usize, force: bool, code: CloseCode, reason: &str) -> bool {
        let Worker { slab, handler, ctx, .. } = self;
        let WorkerConn { machine, conn } = &mut slab[key];
        if !machine.is_open() {
            return true;
        }
        let control = machine.control();
        let mut open = Conn { key, conn, control, ctx };
        let close = force || !handler.pending_work(&mut open);
        if close {
            open.close(code, reason);
        }
        settle(handler, key, conn, control, ctx);
        close
    }
}
