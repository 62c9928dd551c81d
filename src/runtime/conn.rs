//! Per-connection state, and [`Conn`], the handler's view of a connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use mio::net::TcpStream;

use super::handle::{ConnId, ServerHandle, SharedFrame};
use super::outbuf::{OutQueue, QueuePool};
use super::settings::{BackpressurePolicy, Settings};
use super::timer::{Tick, Wheel, NO_ENTRY};
use super::worker::Dialing;
use crate::proto::compress::{DeflateState, Deflater, RSV1};
use crate::proto::connection::{Config, Control, Output};
use crate::proto::deflate::DeflateAgreement;
use crate::proto::handshake::server::RequestReader;
use crate::proto::{CloseCode, CloseReason, MaskRng, OpCode};
#[cfg(feature = "tls")]
use crate::tls::TlsStream;

/// Flag bits of [`Transport::flags`].
pub(crate) mod flag {
    /// In the worker's list of connections to flush this turn.
    pub const DIRTY: u16 = 1;
    /// The socket refused bytes; queued data is waiting for writability.
    pub const BACKLOGGED: u16 = 1 << 1;
    /// A send returned `Buffered`: call `on_drain` once the queue empties.
    pub const DRAIN_WANTED: u16 = 1 << 2;
    /// Our side of TCP is shut: input is discarded until the peer closes
    /// or the close deadline passes.
    pub const WRITE_SHUT: u16 = 1 << 3;
    /// `on_open` ran, so `on_close` is owed (once: the protocol machine
    /// hands out why the connection ended once).
    pub const OPENED: u16 = 1 << 4;
    /// The connection failed inside a callback (its send budget ran out);
    /// `on_close` is due after it returns.
    pub const CLOSE_PENDING: u16 = 1 << 5;
    /// The poller reported the peer's end of the stream: no further readiness
    /// will come, so reads must go on until they see it.
    pub const READ_CLOSED: u16 = 1 << 7;
    /// The socket is registered for writability too. Set the first time a
    /// write falls short and kept: a connection that sends big messages would
    /// otherwise re-register twice per message, while one that never fills its
    /// socket buffer is never woken by the ACKs of its writes.
    pub const WRITE_INTEREST: u16 = 1 << 8;
    /// An outgoing connection whose TCP connect is in progress.
    pub const CONNECTING: u16 = 1 << 9;
}

/// Everything a worker keeps for one connection apart from its protocol
/// state (the [`proto::connection::Connection`](crate::proto::connection::Connection)
/// beside it in [`WorkerConn`](super::worker::WorkerConn)): the socket and
/// what its transport needs (TLS, the write queue), the timer wheel entry
/// and the handler's data.
#[derive(Debug)]
pub(crate) struct Transport<D> {
    pub socket: TcpStream,
    pub generation: u32,
    pub flags: u16,
    /// This connection's entry in the timer wheel (its index), or
    /// `NO_ENTRY`. The protocol machine holds the deadline itself; the
    /// entry may be earlier (it is re-armed then) but never later.
    pub timer: u32,
    /// The code of the close frame this end started the close handshake
    /// with ([`Conn::close`]), 0 before: it decides what the close means
    /// even when the peer never answers (an app ends a session with it).
    /// It lies in what was padding: no connection grows.
    pub close_sent: u16,
    pub out: Option<Box<OutQueue>>,
    pub extra: Option<Box<RareState>>,
    pub data: D,
}

/// State only some connections need, boxed so that the rest pay 8 bytes
/// for it (and dropped once empty).
#[derive(Debug, Default)]
pub(crate) struct RareState {
    /// The upgrade, until the connection opens.
    pub upgrade: Option<Upgrading>,
    /// permessage-deflate, once agreed.
    pub deflate: Option<DeflateState>,
    /// The session of a `wss://` connection.
    #[cfg(feature = "tls")]
    pub tls: Option<Box<TlsStream>>,
    /// What only an outgoing connection has: we are its client end.
    pub client: Option<ClientSide>,
}

/// An upgrade under way: the connection reads one of the two heads.
#[derive(Debug)]
pub(crate) enum Upgrading {
    /// An accepted connection's upgrade request, while it arrives.
    Request(RequestReader),
    /// An outgoing connection's upgrade, until the server accepts it.
    Dialing(Box<Dialing>),
}

/// The client end of an outgoing connection.
#[derive(Debug)]
pub(crate) struct ClientSide {
    /// A client masks every frame.
    pub masks: MaskRng,
    /// Its `ClientBuilder`'s limits and timeout rather than the server's.
    pub config: Rc<Config>,
}

impl RareState {
    fn is_empty(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return false;
        }
        self.upgrade.is_none() && self.deflate.is_none() && self.client.is_none()
    }
}

/// Where a connection's queued bytes go: the socket, or the TLS session over it.
pub(crate) struct Sink<'a> {
    socket: &'a mut TcpStream,
    #[cfg(feature = "tls")]
    tls: Option<&'a mut TlsStream>,
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.write(self.socket, buf);
        }
        self.socket.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return self.write(first);
        }
        self.socket.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D> Transport<D> {
    pub fn has(&self, bit: u16) -> bool {
        self.flags & bit != 0
    }

    pub fn queued(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.len())
    }

    /// Whether this is an outgoing connection that is not open yet.
    pub fn is_dialing(&self) -> bool {
        self.extra.as_deref().is_some_and(|extra| matches!(extra.upgrade, Some(Upgrading::Dialing(_))))
    }

    /// An outgoing connection's upgrade: `None` once it is open, or if it is an accepted connection.
    pub fn dialing(&mut self) -> Option<&mut Dialing> {
        match self.extra.as_deref_mut()?.upgrade.as_mut()? {
            Upgrading::Dialing(dialing) => Some(dialing),
            Upgrading::Request(_) => None,
        }
    }

    /// The masking key for the next frame: `None` on the server side of a connection.
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        Some(self.extra.as_deref_mut()?.client.as_mut()?.masks.next_key())
    }

    /// Whether we are the client end: an outgoing connection.
    fn is_client(&self) -> bool {
        self.extra.as_deref().is_some_and(|extra| extra.client.is_some())
    }

    pub fn deflate(&mut self) -> Option<&mut DeflateState> {
        self.extra.as_deref_mut()?.deflate.as_mut()
    }

    /// An outgoing connection's own protocol settings: `None` means the server's apply.
    pub fn own_config(&self) -> Option<&Rc<Config>> {
        Some(&self.extra.as_deref()?.client.as_ref()?.config)
    }

    /// The protocol settings that apply to it, given the server's.
    pub fn config<'a>(&'a self, server: &'a Config) -> &'a Config {
        self.own_config().map_or(server, |own| own)
    }

    /// The upgrade is over (the connection opens): what it kept is dropped,
    /// and the boxed extra state with it if nothing else is left.
    pub fn end_upgrade(&mut self) {
        if let Some(extra) = self.extra.as_deref_mut() {
            extra.upgrade = None;
        }
        self.tidy_extra();
    }

    /// Drops the boxed extra state once nothing is left in it.
    pub fn tidy_extra(&mut self) {
        if self.extra.as_deref().is_some_and(RareState::is_empty) {
            self.extra = None;
        }
    }

    #[cfg(feature = "tls")]
    fn tls(&mut self) -> Option<&mut TlsStream> {
        self.extra.as_deref_mut()?.tls.as_deref_mut()
    }

    /// Whether reads come through TLS, which may hold decrypted bytes back:
    /// a short read then does not mean the socket is drained.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(extra) = self.extra.as_deref() {
            return extra.tls.is_some();
        }
        false
    }

    /// Whether this is a TLS connection whose handshake is under way: a
    /// transport error now is the TLS handshake failing.
    pub fn is_tls_handshaking(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.extra.as_deref().and_then(|extra| extra.tls.as_deref()) {
            return tls.is_handshaking();
        }
        false
    }

    /// Reads what the peer sent (decrypted, on a TLS connection).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.extra.as_deref_mut().and_then(|e| e.tls.as_deref_mut()) {
            return tls.read(&mut self.socket, buf);
        }
        self.socket.read(buf)
    }

    /// Where queued bytes are written.
    pub fn sink(&mut self) -> Sink<'_> {
        Sink {
            #[cfg(feature = "tls")]
            tls: self.extra.as_deref_mut().and_then(|e| e.tls.as_deref_mut()),
            socket: &mut self.socket,
        }
    }

    /// Sends TLS records still waiting (handshake messages, the end of a
    /// write). `Ok(false)`: the socket would block first.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.extra.as_deref_mut().and_then(|e| e.tls.as_deref_mut()) {
            return match tls.flush(&mut self.socket) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(e),
            };
        }
        Ok(true)
    }

    /// Whether TLS records wait to be sent.
    pub fn tls_wants_write(&mut self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls() {
            return tls.wants_write();
        }
        false
    }

    /// Before our side of TCP shuts: a TLS close_notify, if it fits.
    pub fn close_tls(&mut self) {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls() {
            tls.close();
        }
        let _ = self.flush_tls();
    }
}

/// Worker state that sends and timers need, kept apart from the connection
/// slab and the handler so all three can be borrowed at once.
#[derive(Debug)]
pub(crate) struct WorkerState {
    pub worker: usize,
    pub settings: Arc<Settings>,
    pub handle: ServerHandle,
    pub wheel: Wheel,
    pub now_tick: u32,
    /// Connections with bytes queued this turn.
    pub dirty: Vec<usize>,
    /// Emptied write queues, for the connections that write next.
    pub pool: QueuePool,
    pub deflater: Deflater,
    /// The protocol settings of accepted connections (from `settings`).
    /// Counted, so that a callback can hold them while it borrows the rest.
    pub config: Rc<Config>,
    /// Connections a send pushed over their outbound budget during a
    /// callback: their `on_close` is due once it returns (see `settle`).
    /// Only these are revisited after a `Conns` callback, not every
    /// connection it reached (20 instructions per fan-out delivery).
    pub close_pending: Vec<usize>,
    /// This worker's counters (it is their one writer).
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl WorkerState {
    /// The connection's write queue, taken from the pool if it has none, and
    /// the connection marked for flushing at the end of the turn.
    pub fn queue<'c, D>(&mut self, key: usize, conn: &'c mut Transport<D>) -> &'c mut OutQueue {
        self.mark_dirty(key, conn);
        conn.out.get_or_insert_with(|| self.pool.take())
    }

    /// Queues one frame, masked if we are the client end.
    pub fn push_frame<D>(&mut self, key: usize, conn: &mut Transport<D>, opcode: OpCode, rsv: u8, payload: &[u8]) {
        let mask = conn.next_mask();
        self.queue(key, conn).push_frame_masked(opcode, rsv, mask, payload);
    }

    /// Marks the connection for flushing at the end of the turn.
    pub fn mark_dirty<D>(&mut self, key: usize, conn: &mut Transport<D>) {
        if !conn.has(flag::DIRTY) {
            conn.flags |= flag::DIRTY;
            self.dirty.push(key);
        }
    }

    /// The protocol settings for `conn`, to hold across callbacks.
    pub fn config_of<D>(&self, conn: &Transport<D>) -> Rc<Config> {
        conn.own_config().unwrap_or(&self.config).clone()
    }

    /// This loop turn's tick, the protocol machine's `now`.
    #[inline]
    pub fn now(&self) -> Tick {
        Tick(self.now_tick)
    }

    /// Follows the protocol machine after a call that may have changed it:
    /// the wheel entry is made no later than its deadline, and a connection
    /// that will send nothing more is marked so that the flush shuts its
    /// write side.
    #[inline]
    pub fn follow<D>(&mut self, key: usize, conn: &mut Transport<D>, control: &Control<Tick>) {
        if let Some(Tick(tick)) = control.poll_timeout() {
            self.arm_wheel(key, conn, tick);
        }
        if control.is_closed() && !conn.has(flag::WRITE_SHUT) {
            self.mark_dirty(key, conn);
        }
    }

    /// Arms the connection's wheel entry for `tick` unless it is armed
    /// sooner (an earlier entry is cancelled: a connection has one entry at
    /// most; one armed too soon re-arms when it fires).
    #[inline]
    pub fn arm_wheel<D>(&mut self, key: usize, conn: &mut Transport<D>, tick: u32) {
        let sooner = match self.wheel.armed_tick(conn.timer, key as u32, conn.generation) {
            Some(armed) => tick < armed,
            None => true,
        };
        if sooner {
            self.disarm(key, conn);
            conn.timer = self.wheel.arm(key as u32, conn.generation, tick);
        }
    }

    /// Cancels the connection's wheel entry, if it has one.
    pub fn disarm<D>(&mut self, key: usize, conn: &mut Transport<D>) {
        if conn.timer != NO_ENTRY {
            self.wheel.cancel(conn.timer, key as u32, conn.generation);
            conn.timer = NO_ENTRY;
        }
    }
}

/// Where the protocol machine puts its frames (pongs, close frames,
/// keepalive pings): the connection's write queue, masked on an outgoing
/// connection.
pub(crate) struct Outbox<'a, D> {
    pub key: usize,
    pub conn: &'a mut Transport<D>,
    pub ctx: &'a mut WorkerState,
}

impl<D> Output for Outbox<'_, D> {
    fn queued(&self) -> usize {
        self.conn.queued()
    }

    /// The machine's own frames (pongs, pings on keepalive, close frames):
    /// counted here, off the data path.
    fn push_frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        self.ctx.metrics.message_out(opcode, payload.len());
        self.ctx.push_frame(self.key, self.conn, opcode, rsv, payload);
    }
}

/// What became of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a send can be refused"]
pub enum SendStatus {
    /// Queued behind nothing: it goes out when this loop turn ends.
    Sent,
    /// Queued behind bytes the socket has not taken yet; [`Handler::on_drain`](super::Handler::on_drain)
    /// fires when everything is written.
    Buffered,
    /// Not queued: the connection is closing, or the send would exceed the
    /// outbound budget (and with [`BackpressurePolicy::Close`] the connection
    /// is now closing with 1008).
    Refused,
}

/// A connection as seen from a [`Handler`](super::Handler) callback.
pub struct Conn<'w, D> {
    pub(crate) key: usize,
    pub(crate) conn: &'w mut Transport<D>,
    /// The protocol machine's state apart from its decoder, which may be
    /// holding the message being handled.
    pub(crate) control: &'w mut Control<Tick>,
    pub(crate) ctx: &'w mut WorkerState,
}

impl<D> std::fmt::Debug for Conn<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id()).field("open", &self.is_open()).finish()
    }
}

impl<D> Conn<'_, D> {
    /// This connection's id, for [`ServerHandle`] sends from elsewhere.
    pub fn id(&self) -> ConnId {
        ConnId::new(self.ctx.worker, self.key, self.conn.generation)
    }

    /// The per-connection data.
    pub fn data(&self) -> &D {
        &self.conn.data
    }

    /// The per-connection data, mutably.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.conn.data
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.conn.socket.peer_addr()
    }

    /// Whether messages can still be sent (no close started).
    pub fn is_open(&self) -> bool {
        self.control.is_open()
    }

    /// Bytes queued and not yet taken by the socket.
    pub fn buffered(&self) -> usize {
        self.conn.queued()
    }

    /// The permessage-deflate parameters, if compression was agreed: with a
    /// client that offered it when [`Server::deflate`](super::Server::deflate)
    /// is on, or on an outgoing connection whose
    /// [`ClientBuilder::deflate`](crate::client::ClientBuilder::deflate) offered it.
    ///
    /// ```
    /// # use emitws::runtime::Conn;
    /// fn on_open(conn: &mut Conn<'_, ()>) {
    ///     if let Some(agreement) = conn.deflate() {
    ///         println!("compressing: {agreement}");
    ///     }
    /// }
    /// ```
    pub fn deflate(&self) -> Option<&DeflateAgreement> {
        Some(self.conn.extra.as_deref()?.deflate.as_ref()?.agreement())
    }

    /// A handle to the whole server, for broadcasts and sends to other connections.
    pub fn server(&self) -> &ServerHandle {
        &self.ctx.handle
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.send(OpCode::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> SendStatus {
        self.send(OpCode::Binary, bytes)
    }

    /// Sends a frame encoded once for many connections (see [`SharedFrame`]).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> SendStatus {
        let status = self.queue_shared(frame);
        if status != SendStatus::Refused {
            self.ctx.metrics.shared_out(frame, 1);
        }
        status
    }

    /// [`send_shared`](Self::send_shared), uncounted: for the loops that
    /// fan one frame out to many connections and count them once after
    /// (`WorkerMetrics::shared_out`), not once per connection.
    #[inline]
    pub(crate) fn queue_shared(&mut self, frame: &SharedFrame) -> SendStatus {
        if self.conn.extra.is_none() {
            // A plain accepted connection, the common case: no masking, no
            // compression, the frame as encoded (one test instead of two).
            let bytes = &frame.0.plain;
            return self.reserve(bytes.len(), |queue| queue.push_shared(bytes));
        }
        let payload = frame.payload();
        if self.conn.is_client() {
            // Outgoing connections mask every frame (and compress as the
            // client): a shared frame cannot be sent as it is.
            return self.send_uncounted(frame.0.opcode, payload);
        }
        let compressed = match self.conn.deflate().filter(|state| state.compresses(payload.len())) {
            Some(state) => match state.takes_shared() {
                Some(config) => {
                    let compressed = frame.0.compressed.get_or_compress(config, frame.0.opcode, payload);
                    // Counted here, off the uncompressed path (even if the budget then refuses it).
                    self.ctx.metrics.deflated(payload.len(), compressed.len());
                    Some(compressed)
                }
                // This connection's compression carries context: it compresses its own copy.
                None => return self.send_uncounted(frame.0.opcode, payload),
            },
            None => None,
        };
        let bytes = compressed.as_ref().unwrap_or(&frame.0.plain);
        self.reserve(bytes.len(), |queue| queue.push_shared(bytes))
    }

    /// Sends a ping (payloads over 125 bytes are refused).
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        if payload.len() > 125 {
            return SendStatus::Refused;
        }
        self.send(OpCode::Ping, payload)
    }

    /// Starts the close handshake. `on_close` follows when the peer answers
    /// (or the close timeout passes). The reason is cut to 123 bytes.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.control.is_open() {
            self.conn.close_sent = code.0;
        }
        self.drive(|control, now, config, out| control.close(code, reason, now, config, out));
    }

    /// The code of the close frame [`close`](Self::close) sent, if this end
    /// started the close handshake that way: in
    /// [`Handler::on_close`](super::Handler::on_close) it tells what this
    /// end meant even when the peer never answered (the reason then says
    /// 1006, a close timeout) or answered with another code.
    ///
    /// ```
    /// use emitws::proto::CloseReason;
    /// use emitws::runtime::Conn;
    /// // A close this end started decides; otherwise the reason's code.
    /// fn meant(conn: &Conn<'_, ()>, reason: &CloseReason) -> u16 {
    ///     conn.close_sent().unwrap_or(reason.code()).0
    /// }
    /// ```
    pub fn close_sent(&self) -> Option<CloseCode> {
        (self.conn.close_sent != 0).then_some(CloseCode(self.conn.close_sent))
    }

    /// Calls the protocol machine from a callback, with what it needs (the
    /// turn's tick, the settings, the write queue as its output), then
    /// follows it (see [`WorkerState::follow`]).
    pub(crate) fn drive<R>(
        &mut self,
        call: impl FnOnce(&mut Control<Tick>, Tick, &Config, &mut Outbox<'_, D>) -> R,
    ) -> R {
        let Conn { key, conn, control, ctx } = self;
        let (config, now) = (ctx.config_of(conn), ctx.now());
        let result = call(control, now, &config, &mut Outbox { key: *key, conn, ctx });
        ctx.follow(*key, conn, control);
        result
    }

    /// Milliseconds on this worker's clock (wrapping), read once per loop
    /// turn: free per message, precise to the wheel's 10 ms tick.
    #[cfg(feature = "app")]
    pub(crate) fn clock_ms(&self) -> u32 {
        self.ctx.now_tick.wrapping_mul(super::timer::TICK.as_millis() as u32)
    }

    /// This worker's counters (the event layer counts into them too).
    #[cfg(feature = "app")]
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::WorkerMetrics> {
        &self.ctx.metrics
    }

    /// The same connection, borrowed for a shorter time.
    #[cfg(feature = "app")]
    pub(crate) fn reborrow(&mut self) -> Conn<'_, D> {
        Conn { key: self.key, conn: self.conn, control: self.control, ctx: self.ctx }
    }

    pub(crate) fn send(&mut self, opcode: OpCode, payload: &[u8]) -> SendStatus {
        let status = self.send_uncounted(opcode, payload);
        if status != SendStatus::Refused {
            self.ctx.metrics.message_out(opcode, payload.len());
        }
        status
    }

    /// [`send`](Self::send), uncounted (see [`queue_shared`](Self::queue_shared)).
    fn send_uncounted(&mut self, opcode: OpCode, payload: &[u8]) -> SendStatus {
        // The budget counts the uncompressed size: a message must never be
        // compressed and then refused, as the peer's context would miss it.
        let frame_len = payload.len() + crate::proto::MAX_HEADER_LEN;
        if let Err(refused) = self.admit(frame_len) {
            return refused;
        }
        let Conn { key, conn, ctx, .. } = self;
        let data = matches!(opcode, OpCode::Text | OpCode::Binary);
        match conn.deflate().filter(|state| data && state.compresses(payload.len())) {
            Some(state) => {
                ctx.deflater.compress(state, payload);
                let compressed = std::mem::take(&mut ctx.deflater.scratch);
                ctx.metrics.deflated(payload.len(), compressed.len());
                // A client's frame is masked as it is queued: the mask covers the compressed payload.
                ctx.push_frame(*key, conn, opcode, RSV1, &compressed);
                ctx.deflater.scratch = compressed;
            }
            None => ctx.push_frame(*key, conn, opcode, 0, payload),
        }
        self.status()
    }

    fn reserve(&mut self, len: usize, push: impl FnOnce(&mut OutQueue)) -> SendStatus {
        if let Err(refused) = self.admit(len) {
            return refused;
        }
        push(self.ctx.queue(self.key, self.conn));
        self.status()
    }

    /// Whether `len` more bytes may be queued; failing the connection if the
    /// policy says so.
    #[inline]
    fn admit(&mut self, len: usize) -> Result<(), SendStatus> {
        if !self.control.is_open() {
            return Err(self.refused());
        }
        if self.conn.queued() + len > self.ctx.settings.max_buffered {
            self.over_budget();
            return Err(SendStatus::Refused);
        }
        Ok(())
    }

    /// A send to a connection that is closing: counted, out of line like `over_budget`.
    #[cold]
    #[inline(never)]
    fn refused(&mut self) -> SendStatus {
        self.ctx.metrics.sends_refused.inc();
        SendStatus::Refused
    }

    /// A send would pass the budget. Kept out of line: `admit` runs on every
    /// send and must stay small enough to inline (callgrind: 23 instructions
    /// per echo round trip when it was not).
    #[cold]
    #[inline(never)]
    fn over_budget(&mut self) {
        self.ctx.metrics.sends_refused.inc();
        if self.ctx.settings.backpressure == BackpressurePolicy::Close {
            // The peer is not reading: what is queued would never arrive
            // anyway, so make room for the close frame.
            if let Some(queue) = self.conn.out.as_mut() {
                queue.truncate_unstarted();
            }
            let ended =
                self.drive(|control, now, config, out| control.fail(CloseReason::SendBufferFull, now, config, out));
            if ended.is_some() {
                self.conn.flags |= flag::CLOSE_PENDING;
                self.ctx.close_pending.push(self.key);
            }
        }
    }

    fn status(&mut self) -> SendStatus {
        if self.conn.has(flag::BACKLOGGED) {
            self.conn.flags |= flag::DRAIN_WANTED;
            self.ctx.metrics.sends_buffered.inc();
            SendStatus::Buffered
        } else {
            SendStatus::Sent
        }
    }
}
