//! One WebSocket connection's protocol state, for either end, without I/O:
//! what to do with a ping, a close, a protocol error, a keepalive tick or a
//! close deadline, written once.
//!
//! The machine owns the frame decoder, the close handshake, the keepalive
//! state, the masking keys (client end) and one deadline at a time (an enum of
//! [`Timer`]s). It never reads a clock: every call that depends on time takes
//! `now`. Settings shared by many connections ([`Config`]) are passed by
//! reference to each call, never copied into the connection.
//!
//! # Call order
//!
//! A driver (the server's event loop, the blocking client, a test) does:
//!
//! 1. **Create**: [`Connection::server`] or [`Connection::client`] when the transport is up; the handshake
//!    deadline starts. When the HTTP upgrade is done, [`open`](Connection::open).
//! 2. **On input**: once per transport read, [`handle_read`](Connection::handle_read)
//!    (traffic postpones the keepalive ping); then, while input remains and
//!    [`can_read`](Connection::can_read), [`decode`](Connection::decode) with
//!    the rest of the input, handing each [`Received`] to the application
//!    (or the same in two steps: [`poll_input`](Connection::poll_input), then
//!    [`received`](Connection::received)).
//!    Pings are answered, closes echoed and protocol errors failed inside
//!    `decode`, into the caller's [`Output`].
//! 3. **On end of input or a transport error**: [`handle_eof`](Connection::handle_eof)
//!    or [`handle_error`](Connection::handle_error).
//! 4. **On a timer**: at [`poll_timeout`](Connection::poll_timeout) (or later),
//!    [`handle_timeout`](Connection::handle_timeout).
//! 5. **On send**: while [`is_open`](Connection::is_open),
//!    [`send`](Connection::send) (masked on the client end); to close,
//!    [`close`](Connection::close); to fail the connection (a send budget
//!    exceeded), [`fail`](Connection::fail).
//! 6. **After each of the above**: write what the [`Output`] holds; report
//!    [`poll_ended`](Connection::poll_ended) to the application (once); once
//!    [`is_closed`](Connection::is_closed), shut the transport's write side
//!    after the output is written, and drop the transport once
//!    [`is_finished`](Connection::is_finished); re-arm the timer from
//!    [`poll_timeout`](Connection::poll_timeout).

use std::time::{Duration, Instant};

use super::{
    encode_frame_with_rsv, CloseCode, CloseHandshake, CloseReason, Decoder, Event, Limits, MaskRng, Message, OpCode,
    ProtocolError, ReadyEvent, Role,
};

/// Settings shared by every connection of a server (or one client's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Frame and message size limits.
    pub limits: Limits,
    /// Keepalive pings, or `None` for none.
    pub keepalive: Option<Keepalive>,
    /// Time to finish the upgrade.
    pub handshake_timeout: Duration,
    /// Time allowed for the close handshake.
    pub close_timeout: Duration,
    /// Outbound bytes a connection may queue: a pong that would pass it is not sent.
    pub max_buffered: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            keepalive: Some(Keepalive::default()),
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            max_buffered: 1 << 20,
        }
    }
}

/// Keepalive: ping after `idle` without traffic; after `timeout` more without
/// any, close with `close_code` (a close frame, then the usual close timeout
/// before TCP is dropped). The server's is
/// [`Settings::keepalive`](crate::runtime::Settings::keepalive).
///
/// ```
/// use std::time::Duration;
/// use emitws::proto::connection::Keepalive;
/// let keepalive = Keepalive { idle: Duration::from_secs(10), ..Keepalive::default() };
/// assert_eq!(keepalive.close_code.0, 1001);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before a ping is sent (default 30 s).
    pub idle: Duration,
    /// Further silence after the ping before the connection is closed (default 30 s).
    pub timeout: Duration,
    /// The code of the close frame sent when `timeout` passes (default 1001,
    /// going away; the event layer uses 4408, see PROTOCOL.md).
    pub close_code: CloseCode,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { idle: Duration::from_secs(30), timeout: Duration::from_secs(30), close_code: CloseCode::GOING_AWAY }
    }
}

/// Where the machine puts frames to send: a byte buffer, or a queue that can
/// also hold frames shared between connections.
pub trait Output {
    /// Bytes queued and not yet written (for the send budget of pongs).
    fn queued(&self) -> usize;
    /// Appends one complete frame.
    fn push_frame(&mut self, opcode: OpCode, rsv: u8, mask: Option<[u8; 4]>, payload: &[u8]);
}

impl Output for Vec<u8> {
    fn queued(&self) -> usize {
        self.len()
    }

    fn push_frame(&mut self, opcode: OpCode, rsv: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
        encode_frame_with_rsv(self, opcode, true, rsv, mask, payload);
    }
}

/// The connection's deadlines; at most one is armed at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The upgrade must be done by then.
    Handshake,
    /// No traffic since: send a keepalive ping.
    Idle,
    /// No traffic since our keepalive ping: close.
    Pong,
    /// The close handshake (or the transport's end after it) must be done by then.
    Close,
}

/// What [`Connection::decode`] hands to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A text or binary message.
    Message(Message<'a>),
    /// A message compressed with permessage-deflate, still compressed.
    Compressed {
        /// A text message (else binary).
        text: bool,
        /// The compressed payload.
        payload: &'a [u8],
    },
    /// A pong.
    Pong(&'a [u8]),
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The HTTP upgrade is under way.
    Handshake,
    /// Past the upgrade: where the close handshake stands.
    Upgraded(CloseHandshake),
    /// The transport should be dropped now.
    Finished,
}

/// One connection's protocol state. See the [module docs](self) for the call order.
#[derive(Debug)]
pub struct Connection {
    decoder: Decoder,
    phase: Phase,
    timer: Option<(Timer, Instant)>,
    /// The client end's masking keys; `None` on the server end.
    masks: Option<MaskRng>,
    ended: Option<CloseReason>,
    ended_reported: bool,
}

impl Connection {
    /// The server end of a connection whose transport is up at `now`: the
    /// handshake deadline starts.
    pub fn server(now: Instant, config: &Config) -> Connection {
        Connection::new(Role::Server, None, now, config)
    }

    /// The client end of a connection whose transport is up at `now`, masking
    /// its frames with keys from `masks`: the handshake deadline starts.
    pub fn client(masks: MaskRng, now: Instant, config: &Config) -> Connection {
        Connection::new(Role::Client, Some(masks), now, config)
    }

    fn new(role: Role, masks: Option<MaskRng>, now: Instant, config: &Config) -> Connection {
        Connection {
            decoder: Decoder::new(role),
            phase: Phase::Handshake,
            timer: Some((Timer::Handshake, now + config.handshake_timeout)),
            masks,
            ended: None,
            ended_reported: false,
        }
    }

    /// The upgrade is done: messages flow, and the keepalive starts.
    pub fn open(&mut self, now: Instant, config: &Config) {
        if self.phase == Phase::Handshake {
            self.phase = Phase::Upgraded(CloseHandshake::Open);
            self.timer = config.keepalive.map(|keepalive| (Timer::Idle, now + keepalive.idle));
        }
    }

    /// Allows compressed messages in (permessage-deflate was agreed).
    pub fn allow_compressed(&mut self, rsv: u8) {
        self.decoder.allow_extension_rsv(rsv);
    }

    /// Whether messages may be sent and are delivered.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Upgraded(CloseHandshake::Open)
    }

    /// Whether input is still decoded (open, or waiting for the peer's close).
    pub fn can_read(&self) -> bool {
        matches!(self.phase, Phase::Upgraded(CloseHandshake::Open | CloseHandshake::Sent))
    }

    /// Whether nothing more will be sent: once the output is written, the
    /// transport's write side may shut.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Upgraded(CloseHandshake::Done) | Phase::Finished)
    }

    /// Whether the transport should be dropped now.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Why the connection ended, once it has (the first reason stays).
    pub fn ended(&self) -> Option<&CloseReason> {
        self.ended.as_ref()
    }

    /// Why the connection ended, the first time this is asked after it has:
    /// the moment to tell the application (once per connection).
    pub fn poll_ended(&mut self) -> Option<&CloseReason> {
        if self.ended_reported {
            return None;
        }
        self.ended_reported = self.ended.is_some();
        self.ended.as_ref()
    }

    /// The next deadline, for the driver's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer.map(|(_, at)| at)
    }

    /// The timer armed, if any.
    pub fn timer(&self) -> Option<Timer> {
        self.timer.map(|(timer, _)| timer)
    }

    /// Input arrived at `now`: the peer is alive, the keepalive starts over.
    pub fn handle_read(&mut self, now: Instant, config: &Config) {
        if let (true, Some(keepalive)) = (self.is_open(), config.keepalive) {
            self.timer = Some((Timer::Idle, now + keepalive.idle));
        }
    }

    /// Decodes from `input` until something for the application is complete
    /// or the input runs out; returns how many bytes were used and that thing.
    /// Control frames are dealt with here: a ping answered (within the send
    /// budget), a close echoed, a protocol error failed with its rule's code.
    /// Data after our close frame is not delivered. Call again with
    /// `&mut input[used..]` while input remains and [`can_read`](Self::can_read).
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
        now: Instant,
        config: &Config,
        out: &mut impl Output,
    ) -> (usize, Option<Received<'a>>) {
        let (used, ready) = self.poll_input(input, now, config, out);
        let received = ready.and_then(|ready| self.received(input, ready, now, config, out).ok());
        (used, received)
    }

    /// [`decode`](Self::decode) in two steps, for a driver that returns what
    /// it received from a read loop (which the borrow checker refuses to let
    /// a borrowed value leave): `poll_input` consumes input and deals with
    /// control frames without borrowing, and says whether something for the
    /// application is complete; [`received`](Self::received) then hands it out.
    pub fn poll_input(
        &mut self,
        input: &mut [u8],
        now: Instant,
        config: &Config,
        out: &mut impl Output,
    ) -> (usize, Option<ReadyEvent>) {
        let len = input.len();
        if !self.can_read() {
            return (len, None);
        }
        let Connection { decoder, phase, timer, masks, ended, .. } = self;
        let polled = match decoder.poll(input, &config.limits) {
            Ok(polled) => polled,
            Err(error) => {
                fail(phase, timer, masks, ended, CloseReason::Protocol(error), now, config, out);
                return (len, None);
            }
        };
        let Some(ready) = polled.ready else { return (polled.consumed, None) };
        let open = *phase == Phase::Upgraded(CloseHandshake::Open);
        if ready.is_data() || ready.is_pong() {
            // After our close frame, data and pongs are no longer delivered.
            return (polled.consumed, open.then_some(ready));
        }
        match decoder.event(input, ready) {
            Ok(Event::Ping(payload)) => {
                // Pongs count against the send budget like any frame: a ping
                // flood from a peer that does not read cannot grow the queue.
                if open && out.queued() + payload.len() + 2 <= config.max_buffered {
                    out.push_frame(OpCode::Pong, 0, next_mask(masks), payload);
                }
            }
            Ok(Event::Close(code, reason)) => {
                let Phase::Upgraded(close) = phase else { unreachable!("can_read checked above") };
                if let Some(reply) = close.receive(code) {
                    out.push_frame(OpCode::Close, 0, next_mask(masks), reply.payload());
                    *timer = Some((Timer::Close, now + config.close_timeout));
                }
                ended.get_or_insert_with(|| CloseReason::Peer { code, reason: reason.to_string() });
            }
            Ok(_) => unreachable!("data and pongs are handed out above"),
            Err(error) => fail(phase, timer, masks, ended, CloseReason::Protocol(error), now, config, out),
        }
        (polled.consumed, None)
    }

    /// Whether what [`poll_input`](Self::poll_input) found complete is a
    /// compressed message (which [`received`](Self::received) hands out as
    /// [`Received::Compressed`]).
    pub fn is_compressed(&self, ready: ReadyEvent) -> bool {
        ready.is_data() && self.decoder.is_compressed()
    }

    /// What [`poll_input`](Self::poll_input) found complete. `input` must be
    /// the input given to that call (at least up to what it used), with no
    /// other call in between.
    ///
    /// # Errors
    ///
    /// The peer broke the protocol (the connection is failed already, its
    /// close frame in `out`).
    pub fn received<'a>(
        &'a mut self,
        input: &'a [u8],
        ready: ReadyEvent,
        now: Instant,
        config: &Config,
        out: &mut impl Output,
    ) -> Result<Received<'a>, ProtocolError> {
        let Connection { decoder, phase, timer, masks, ended, .. } = self;
        match decoder.event(input, ready) {
            Ok(Event::Message(message)) => Ok(Received::Message(message)),
            Ok(Event::Compressed { text, payload }) => Ok(Received::Compressed { text, payload }),
            Ok(Event::Pong(payload)) => Ok(Received::Pong(payload)),
            Ok(Event::Ping(_) | Event::Close(..)) => unreachable!("poll_input hands out only data and pongs"),
            Err(error) => {
                fail(phase, timer, masks, ended, CloseReason::Protocol(error), now, config, out);
                Err(error)
            }
        }
    }

    /// Gives the decoder's buffer for the last message back once the input
    /// chunk is done with, so a quiet connection holds none.
    pub fn release_buffers(&mut self) {
        self.decoder.release_buffers();
    }

    /// Queues a data, ping or pong frame (masked on the client end). Returns
    /// `false`, queuing nothing, unless the connection is open.
    pub fn send(&mut self, opcode: OpCode, rsv: u8, payload: &[u8], out: &mut impl Output) -> bool {
        if !self.is_open() {
            return false;
        }
        out.push_frame(opcode, rsv, next_mask(&mut self.masks), payload);
        true
    }

    /// Starts the close handshake with `code` and `reason` (unless a close
    /// frame went already); the close deadline starts.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant, config: &Config, out: &mut impl Output) {
        let Phase::Upgraded(close) = &mut self.phase else { return };
        if let Some(frame) = close.start(code, reason) {
            out.push_frame(OpCode::Close, 0, next_mask(&mut self.masks), frame.payload());
            self.timer = Some((Timer::Close, now + config.close_timeout));
        }
    }

    /// Fails the connection for `reason`: a close frame with its code (unless
    /// one went already), nothing more sent after it.
    pub fn fail(&mut self, reason: CloseReason, now: Instant, config: &Config, out: &mut impl Output) {
        let Connection { phase, timer, masks, ended, .. } = self;
        fail(phase, timer, masks, ended, reason, now, config, out);
    }

    /// The transport ended (a read returned 0 bytes).
    pub fn handle_eof(&mut self) {
        self.finish(CloseReason::NoCloseFrame);
    }

    /// The transport failed (a read or write error, as `reason` says).
    pub fn handle_error(&mut self, reason: CloseReason) {
        self.finish(reason);
    }

    /// Acts on the timer if it is due at `now`: the handshake deadline drops
    /// the connection; idleness sends a keepalive ping; no answer to it
    /// starts the close with the keepalive's code; the close deadline drops it.
    pub fn handle_timeout(&mut self, now: Instant, config: &Config, out: &mut impl Output) {
        let Some((timer, at)) = self.timer else { return };
        if at > now {
            return;
        }
        self.timer = None;
        match timer {
            Timer::Handshake => self.finish(CloseReason::HandshakeTimeout),
            Timer::Idle => match config.keepalive {
                Some(keepalive) if self.is_open() => {
                    out.push_frame(OpCode::Ping, 0, next_mask(&mut self.masks), b"");
                    self.timer = Some((Timer::Pong, now + keepalive.timeout));
                }
                _ => {}
            },
            Timer::Pong => {
                if let Some(keepalive) = config.keepalive {
                    // The peer may be slow rather than gone: tell it why; the
                    // application hears now, the close deadline ends it.
                    let reason = CloseReason::KeepaliveTimeout(keepalive.close_code);
                    self.close(reason.code(), &reason.reason(), now, config, out);
                    self.ended.get_or_insert(reason);
                }
            }
            Timer::Close => self.finish(CloseReason::CloseTimeout),
        }
    }

    /// The transport is to be dropped now, for `reason` unless one was given already.
    fn finish(&mut self, reason: CloseReason) {
        self.phase = Phase::Finished;
        self.timer = None;
        self.ended.get_or_insert(reason);
    }
}

/// The masking key for the next frame: `None` on the server end.
fn next_mask(masks: &mut Option<MaskRng>) -> Option<[u8; 4]> {
    masks.as_mut().map(MaskRng::next_key)
}

/// [`Connection::fail`] on split borrows (the decoder may be borrowed).
#[allow(clippy::too_many_arguments)]
fn fail(
    phase: &mut Phase,
    timer: &mut Option<(Timer, Instant)>,
    masks: &mut Option<MaskRng>,
    ended: &mut Option<CloseReason>,
    reason: CloseReason,
    now: Instant,
    config: &Config,
    out: &mut impl Output,
) {
    let Phase::Upgraded(close) = phase else { return };
    if close.is_done() {
        return;
    }
    let was_closing = *close == CloseHandshake::Sent;
    if let Some(frame) = close.fail(reason.code(), &reason.reason()) {
        out.push_frame(OpCode::Close, 0, next_mask(masks), frame.payload());
    }
    if !was_closing {
        // Time to write what is queued and see the transport end; a close
        // already under way keeps its deadline.
        *timer = Some((Timer::Close, now + config.close_timeout));
    }
    ended.get_or_insert(reason);
}

#[cfg(test)]
mod tests;
