//! [`Conns`]: a worker's connections, for callbacks that are not about one of them.

use slab::Slab;

use super::conn::{Conn, WorkerState};
use super::handle::{ConnId, ServerHandle};
use super::worker::WorkerConn;

/// The open connections of one worker, as seen from
/// [`Handler::on_notify`](super::Handler::on_notify) and
/// [`Handler::on_turn`](super::Handler::on_turn).
///
/// Sends through it are queued like any other and written at the end of the
/// loop turn; a connection a send closes (over its outbound budget) gets its
/// `on_close` once the callback returns.
pub struct Conns<'w, D> {
    pub(crate) slab: &'w mut Slab<WorkerConn<D>>,
    pub(crate) ctx: &'w mut WorkerState,
}

impl<D> std::fmt::Debug for Conns<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns").field("worker", &self.ctx.worker).field("len", &self.slab.len()).finish()
    }
}

impl<D> Conns<'_, D> {
    /// This worker's index (see [`ConnId::worker`]).
    pub fn worker(&self) -> usize {
        self.ctx.worker
    }

    /// A handle to the whole server.
    pub fn server(&self) -> &ServerHandle {
        &self.ctx.handle
    }

    /// Connection `id`, if it lives on this worker and is open.
    pub fn get(&mut self, id: ConnId) -> Option<Conn<'_, D>> {
        if id.worker() != self.ctx.worker {
            return None;
        }
        let key = id.key();
        let WorkerConn { machine, conn } = self.slab.get_mut(key)?;
        if conn.generation & 0xff_ffff != id.generation() || !machine.is_open() {
            return None;
        }
        Some(Conn { key, conn, control: machine.control(), ctx: self.ctx })
    }

    /// Runs `f` on every open connection of this worker.
    pub fn for_each(&mut self, mut f: impl FnMut(&mut Conn<'_, D>)) {
        for (key, WorkerConn { machine, conn }) in self.slab.iter_mut() {
            if machine.is_open() {
                f(&mut Conn { key, conn, control: machine.control(), ctx: self.ctx });
            }
        }
    }
}
