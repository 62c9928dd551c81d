//! The handler as the worker calls it: every callback passes through, and
//! what arrives and how connections end is counted on the way (the worker's
//! `WorkerMetrics`), so that no decoding path has to remember to count.

use std::any::Any;
use std::time::Duration;

use super::{Conn, Conns, Handler, UpgradeRequest};
use crate::dial::ClientError;
use crate::proto::handshake::server::HttpRequest;
use crate::proto::{CloseReason, Message, OpCode};
use crate::runtime::{Accept, HttpResponse, Reject};

/// A handler whose calls are counted. Every method of [`Handler`] is
/// forwarded: a method added to the trait must be added here too, or the
/// wrapped handler's own would never run.
#[derive(Clone)]
pub(super) struct Counted<H>(pub(super) H);

impl<H: Handler> Handler for Counted<H> {
    type Data = H::Data;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<H::Data>, Reject> {
        self.0.on_upgrade(request)
    }

    fn on_open(&mut self, conn: &mut Conn<'_, H::Data>) {
        self.0.on_open(conn);
    }

    #[inline]
    fn on_message(&mut self, conn: &mut Conn<'_, H::Data>, message: Message<'_>) {
        let opcode = match message {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        };
        conn.ctx.metrics.message_in(opcode, message.as_bytes().len());
        self.0.on_message(conn, message);
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, H::Data>) {
        self.0.on_drain(conn);
    }

    fn on_close(&mut self, conn: &mut Conn<'_, H::Data>, reason: &CloseReason) {
        conn.ctx.metrics.closed(reason);
        self.0.on_close(conn, reason);
    }

    fn on_connect_error(&mut self, data: H::Data, error: ClientError) {
        self.0.on_connect_error(data, error);
    }

    fn on_http(&mut self, request: &HttpRequest<'_>) -> Option<HttpResponse> {
        self.0.on_http(request)
    }

    fn on_pong(&mut self, conn: &mut Conn<'_, H::Data>, payload: &[u8]) {
        conn.ctx.metrics.message_in(OpCode::Pong, payload.len());
        self.0.on_pong(conn, payload);
    }

    fn on_notify(&mut self, conns: &mut Conns<'_, H::Data>, message: Box<dyn Any + Send>) {
        self.0.on_notify(conns, message);
    }

    fn pending_work(&mut self, conn: &mut Conn<'_, H::Data>) -> bool {
        self.0.pending_work(conn)
    }

    fn on_turn(&mut self, conns: &mut Conns<'_, H::Data>) -> Option<Duration> {
        self.0.on_turn(conns)
    }
}
