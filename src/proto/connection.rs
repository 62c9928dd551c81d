//! One WebSocket connection's protocol state, for either end, without I/O:
//! what to do with a ping, a close, a protocol error, a keepalive tick or a
//! close deadline, written once.
//!
//! The machine owns the frame decoder, the close handshake, the keepalive
//! state and one deadline at a time (an enum of [`Timer`]s), counted in the
//! driver's [`Time`]. It never reads a clock: every call that depends on time
//! takes `now`. Settings shared by many connections ([`Config`]) are passed by
//! reference to each call, never copied into the connection; so is the
//! [`Output`] frames go to, which on the client end masks them ([`Masked`]).
//! Small on purpose: the server keeps one per connection.
//!
//! # Call order
//!
//! A driver (the server's event loop, the blocking client, a test) does:
//!
//! 1. **Create**: [`Connection::server`] or [`Connection::client`] when the transport is up; the handshake
//!    deadline starts. When the HTTP upgrade is done, [`open`](Connection::open);
//!    if the server refuses it, [`reject`](Connection::reject) after queuing the answer.
//! 2. **On input**: once per transport read, [`handle_read`](Connection::handle_read)
//!    (traffic postpones the keepalive ping); then, while input remains and
//!    [`can_read`](Connection::can_read), [`decode`](Connection::decode) with
//!    the rest of the input, handing each [`Received`] to the application
//!    (or the same in two steps: [`poll_input`](Connection::poll_input), then
//!    [`received`](Connection::received)).
//!    Pings are answered, closes echoed and protocol errors failed inside
//!    `decode`, into the caller's [`Output`]; a close or protocol error comes
//!    back as [`Step::ended`].
//! 3. **On end of input or a transport error**: [`handle_eof`](Connection::handle_eof)
//!    or [`handle_error`](Connection::handle_error).
//! 4. **On a timer**: at [`poll_timeout`](Connection::poll_timeout) (or later),
//!    [`handle_timeout`](Connection::handle_timeout).
//! 5. **On send**: while [`is_open`](Connection::is_open),
//!    [`send`](Connection::send); to close, [`close`](Connection::close); to
//!    fail the connection (a send budget exceeded), [`fail`](Connection::fail).
//! 6. **After each of the above**: write what the [`Output`] holds; if the
//!    call returned a [`CloseReason`] (the connection ended; each connection
//!    returns one at most once), tell the application; once
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
/// also hold frames shared between connections. The client end masks every
/// frame: its output does (see [`Masked`]), so the machine holds no keys.
pub trait Output {
    /// Bytes queued and not yet written (for the send budget of pongs).
    fn queued(&self) -> usize;
    /// Appends one complete frame (masked, if this is the client end's output).
    fn push_frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]);
}

impl Output for Vec<u8> {
    fn queued(&self) -> usize {
        self.len()
    }

    fn push_frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        encode_frame_with_rsv(self, opcode, true, rsv, None, payload);
    }
}

/// The client end's output into a byte buffer: each frame masked with the
/// next key from `masks`.
#[derive(Debug)]
pub struct Masked<'a> {
    /// Where the frames go.
    pub bytes: &'a mut Vec<u8>,
    /// The source of masking keys.
    pub masks: &'a mut MaskRng,
}

impl Output for Masked<'_> {
    fn queued(&self) -> usize {
        self.bytes.len()
    }

    fn push_frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        encode_frame_with_rsv(self.bytes, opcode, true, rsv, Some(self.masks.next_key()), payload);
    }
}

/// A point in time as the driver counts it: an [`Instant`], or a coarser
/// tick of the driver's own (the server's timer wheel keeps `u32` ticks, so
/// its connections do not hold a 16-byte `Instant`).
pub trait Time: Copy + Ord {
    /// The first point at or after `self + duration`.
    fn after(self, duration: Duration) -> Self;
}

impl Time for Instant {
    fn after(self, duration: Duration) -> Instant {
        self + duration
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
#[derive(Clone, Debug)]
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

/// What one [`Connection::decode`] call did.
///
/// Why the connection ended is a field of its own rather than a variant of
/// [`Received`]: in one enum with the `String` a [`CloseReason`] may hold,
/// every message's discriminant was read through that string's niche, which
/// cost the server's read loop 17 instructions per message (callgrind).
#[derive(Debug)]
pub struct Step<'a, T = Instant> {
    /// How many input bytes were used.
    pub used: usize,
    /// Something for the application, if a message or pong is complete.
    pub received: Option<Received<'a>>,
    /// Why the connection ended, if this call ended it (a close frame from
    /// the peer, or a protocol error of its): handed out once.
    pub ended: Option<CloseReason>,
    /// The connection's state apart from its decoder, to answer or close with
    /// while `received` (which may borrow the decoder) is held.
    pub control: &'a mut Control<T>,
}

/// What [`Connection::poll_input`] found.
#[derive(Debug)]
pub enum Input {
    /// Something for the application is complete: take it with [`Connection::received`].
    Ready(ReadyEvent),
    /// The connection ended (a close frame from the peer, or a protocol
    /// error of its): handed out once.
    Ended(CloseReason),
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The HTTP upgrade is under way.
    Handshake,
    /// Past the upgrade: where the close handshake stands.
    Upgraded(CloseHandshake),
    /// The upgrade was refused: nothing is sent after the HTTP answer.
    Refused,
    /// The transport should be dropped now.
    Finished,
}

/// One connection's protocol state, with deadlines in the driver's [`Time`].
/// See the [module docs](self) for the call order.
///
/// Why the connection ended is not kept: the call that ends it returns the
/// [`CloseReason`], once (a later end, say the close deadline after a
/// keepalive timeout, returns `None`). A driver that needs it afterwards
/// keeps it.
#[derive(Debug)]
pub struct Connection<T = Instant> {
    decoder: Decoder,
    state: Control<T>,
}

/// A connection's state apart from its decoder: what sends and closes. It
/// is handed out beside each message ([`Connection::received`]), which
/// borrows the decoder, so the application can answer or close while it
/// holds the message.
///
/// Flat rather than an `Option<(Timer, T)>`, whose padding would cost a
/// server connection 8 bytes: with `u32` ticks this is 8 bytes.
#[derive(Debug)]
pub struct Control<T = Instant> {
    /// When the armed timer is due (meaningless while none is).
    deadline: T,
    timer: Option<Timer>,
    phase: Phase,
    /// The end reason was handed out: it is handed out once.
    ended: bool,
}

impl<T: Time> Connection<T> {
    /// The server end of a connection whose transport is up at `now`: the
    /// handshake deadline starts.
    pub fn server(now: T, config: &Config) -> Connection<T> {
        Connection::new(Role::Server, now, config)
    }

    /// The client end of a connection whose transport is up at `now`: the
    /// handshake deadline starts. Its frames must go out through an
    /// [`Output`] that masks them ([`Masked`]).
    pub fn client(now: T, config: &Config) -> Connection<T> {
        Connection::new(Role::Client, now, config)
    }

    fn new(role: Role, now: T, config: &Config) -> Connection<T> {
        Connection {
            decoder: Decoder::new(role),
            state: Control {
                deadline: now.after(config.handshake_timeout),
                timer: Some(Timer::Handshake),
                phase: Phase::Handshake,
                ended: false,
            },
        }
    }

    /// The upgrade is done: messages flow, and the keepalive starts.
    pub fn open(&mut self, now: T, config: &Config) {
        let state = &mut self.state;
        if state.phase == Phase::Handshake {
            state.phase = Phase::Upgraded(CloseHandshake::Open);
            state.timer = None;
            if let Some(keepalive) = config.keepalive {
                state.arm(Timer::Idle, now.after(keepalive.idle));
            }
        }
    }

    /// The upgrade was refused, its HTTP answer sent through the transport:
    /// nothing more will be sent, and once the answer is written the
    /// transport's write side may shut (see [`is_closed`](Self::is_closed)).
    /// The close deadline bounds the wait for the peer to go. No reason is
    /// handed out: the connection never opened.
    pub fn reject(&mut self, now: T, config: &Config) {
        let state = &mut self.state;
        if state.phase == Phase::Handshake {
            state.phase = Phase::Refused;
            state.ended = true;
            state.arm(Timer::Close, now.after(config.close_timeout));
        }
    }

    /// Allows compressed messages in (permessage-deflate was agreed).
    pub fn allow_compressed(&mut self, rsv: u8) {
        self.decoder.allow_extension_rsv(rsv);
    }

    /// Whether the upgrade is still under way.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state.phase, Phase::Handshake)
    }

    /// Whether messages may be sent and are delivered.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    /// Whether input is still decoded (open, or waiting for the peer's close).
    #[inline]
    pub fn can_read(&self) -> bool {
        matches!(self.state.phase, Phase::Upgraded(CloseHandshake::Open | CloseHandshake::Sent))
    }

    /// Whether nothing more will be sent: once the output is written, the
    /// transport's write side may shut.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Whether the transport should be dropped now.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.phase, Phase::Finished)
    }

    /// Whether the connection has ended (its reason was handed out).
    pub fn has_ended(&self) -> bool {
        self.state.ended
    }

    /// The next deadline, for the driver's timer.
    pub fn poll_timeout(&self) -> Option<T> {
        self.state.poll_timeout()
    }

    /// The timer armed, if any.
    pub fn timer(&self) -> Option<Timer> {
        self.state.timer
    }

    /// Input arrived at `now`: the peer is alive, the keepalive starts over.
    #[inline]
    pub fn handle_read(&mut self, now: T, config: &Config) {
        if let (true, Some(keepalive)) = (self.is_open(), config.keepalive) {
            self.state.arm(Timer::Idle, now.after(keepalive.idle));
        }
    }

    /// Decodes from `input` until something for the application is complete
    /// or the input runs out; says how many bytes were used, that thing, and
    /// why the connection ended if it did, and hands out the connection's
    /// [`Control`] to answer or close with while the thing (which may borrow
    /// the decoder) is held. Control frames are dealt with here: a ping
    /// answered (within the send budget), a close echoed, a protocol error
    /// failed with its rule's code (both end the connection). Data after our
    /// close frame is not delivered.
    /// Call again with `&mut input[used..]` while input remains and
    /// [`can_read`](Self::can_read).
    ///
    /// One pass, for the server's read loop, where it costs fewer
    /// instructions per message than [`poll_input`](Self::poll_input) and
    /// [`received`](Self::received) do.
    #[inline]
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
        now: T,
        config: &Config,
        out: &mut impl Output,
    ) -> Step<'a, T> {
        let len = input.len();
        if !self.can_read() {
            return Step { used: len, received: None, ended: None, control: &mut self.state };
        }
        let Connection { decoder, state } = self;
        let polled = match decoder.poll(input, &config.limits) {
            Ok(polled) => polled,
            Err(error) => {
                let ended = state.fail(CloseReason::Protocol(error), now, config, out);
                return Step { used: len, received: None, ended, control: state };
            }
        };
        let used = polled.consumed;
        let Some(ready) = polled.ready else { return Step { used, received: None, ended: None, control: state } };
        let input: &'a [u8] = input;
        let received = match decoder.event(input, ready) {
            Ok(Event::Message(message)) => Received::Message(message),
            Ok(Event::Compressed { text, payload }) => Received::Compressed { text, payload },
            Ok(Event::Pong(payload)) => Received::Pong(payload),
            event => {
                let ended = control_frame(state, event, now, config, out);
                return Step { used, received: None, ended, control: state };
            }
        };
        if !state.is_open() {
            // After our close frame, data and pongs are no longer delivered.
            return Step { used, received: None, ended: None, control: state };
        }
        Step { used, received: Some(received), ended: None, control: state }
    }

    /// [`decode`](Self::decode) in two steps, for a driver that returns what
    /// it received from a read loop (which the borrow checker refuses to let
    /// a borrowed value leave): `poll_input` consumes input and deals with
    /// control frames without borrowing, and says whether something for the
    /// application is complete (or the connection ended); [`received`](Self::received)
    /// then hands it out.
    #[inline]
    pub fn poll_input(
        &mut self,
        input: &mut [u8],
        now: T,
        config: &Config,
        out: &mut impl Output,
    ) -> (usize, Option<Input>) {
        let len = input.len();
        if !self.can_read() {
            return (len, None);
        }
        let Connection { decoder, state } = self;
        let polled = match decoder.poll(input, &config.limits) {
            Ok(polled) => polled,
            Err(error) => return (len, state.fail(CloseReason::Protocol(error), now, config, out).map(Input::Ended)),
        };
        let Some(ready) = polled.ready else { return (polled.consumed, None) };
        if ready.is_data() || ready.is_pong() {
            // After our close frame, data and pongs are no longer delivered.
            return (polled.consumed, state.is_open().then_some(Input::Ready(ready)));
        }
        (polled.consumed, control_frame(state, decoder.event(input, ready), now, config, out).map(Input::Ended))
    }

    /// Whether what [`poll_input`](Self::poll_input) found complete is a
    /// compressed message (which [`received`](Self::received) hands out as
    /// [`Received::Compressed`]).
    pub fn is_compressed(&self, ready: ReadyEvent) -> bool {
        ready.is_data() && self.decoder.is_compressed()
    }

    /// What [`poll_input`](Self::poll_input) found complete, and the
    /// connection's [`Control`] to answer or close with while it is held.
    /// `input` must be the input given to that call (at least up to what it
    /// used), with no other call in between.
    ///
    /// # Errors
    ///
    /// The peer broke the protocol: the connection is failed already, its
    /// close frame in `out`. The error holds why it ended
    /// ([`CloseReason::Protocol`]), or `None` if it had ended before.
    #[inline]
    pub fn received<'a>(
        &'a mut self,
        input: &'a [u8],
        ready: ReadyEvent,
        now: T,
        config: &Config,
        out: &mut impl Output,
    ) -> Result<(Received<'a>, &'a mut Control<T>), Option<CloseReason>> {
        let Connection { decoder, state } = self;
        match decoder.event(input, ready) {
            Ok(Event::Message(message)) => Ok((Received::Message(message), state)),
            Ok(Event::Compressed { text, payload }) => Ok((Received::Compressed { text, payload }, state)),
            Ok(Event::Pong(payload)) => Ok((Received::Pong(payload), state)),
            Ok(Event::Ping(_) | Event::Close(..)) => unreachable!("poll_input hands out only data and pongs"),
            Err(error) => Err(state.fail(CloseReason::Protocol(error), now, config, out)),
        }
    }

    /// Gives the decoder's buffer for the last message back once the input
    /// chunk is done with, so a quiet connection holds none.
    #[inline]
    pub fn release_buffers(&mut self) {
        self.decoder.release_buffers();
    }

    /// Queues a data, ping or pong frame. Returns `false`, queuing nothing,
    /// unless the connection is open.
    #[inline]
    pub fn send(&mut self, opcode: OpCode, rsv: u8, payload: &[u8], out: &mut impl Output) -> bool {
        self.state.send(opcode, rsv, payload, out)
    }

    /// The state that sends and closes, for a callback that gets no message.
    pub fn control(&mut self) -> &mut Control<T> {
        &mut self.state
    }

    /// Starts the close handshake with `code` and `reason` (unless a close
    /// frame went already); the close deadline starts.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: T, config: &Config, out: &mut impl Output) {
        self.state.close(code, reason, now, config, out);
    }

    /// Fails the connection for `reason`: a close frame with its code (unless
    /// one went already), nothing more sent after it. Returns `reason` if
    /// this ended the connection (it had not ended before, and was past the
    /// upgrade).
    pub fn fail(&mut self, reason: CloseReason, now: T, config: &Config, out: &mut impl Output) -> Option<CloseReason> {
        self.state.fail(reason, now, config, out)
    }

    /// The transport ended (a read returned 0 bytes). Returns
    /// [`CloseReason::NoCloseFrame`] unless the connection had ended before.
    pub fn handle_eof(&mut self) -> Option<CloseReason> {
        self.finish(CloseReason::NoCloseFrame)
    }

    /// The transport failed (a read or write error, as `reason` says).
    /// Returns `reason` unless the connection had ended before.
    pub fn handle_error(&mut self, reason: CloseReason) -> Option<CloseReason> {
        self.finish(reason)
    }

    /// Acts on the timer if it is due at `now`: the handshake deadline drops
    /// the connection; idleness sends a keepalive ping; no answer to it
    /// starts the close with the keepalive's code; the close deadline drops
    /// it. Returns why the connection ended, if this ended it.
    pub fn handle_timeout(&mut self, now: T, config: &Config, out: &mut impl Output) -> Option<CloseReason> {
        let state = &mut self.state;
        let timer = state.timer?;
        if state.deadline > now {
            return None;
        }
        state.timer = None;
        match timer {
            Timer::Handshake => self.finish(CloseReason::HandshakeTimeout),
            Timer::Idle => {
                if let (true, Some(keepalive)) = (state.is_open(), config.keepalive) {
                    out.push_frame(OpCode::Ping, 0, b"");
                    state.arm(Timer::Pong, now.after(keepalive.timeout));
                }
                None
            }
            Timer::Pong => {
                let keepalive = config.keepalive?;
                // The peer may be slow rather than gone: tell it why; the
                // application hears now, the close deadline ends it.
                let reason = CloseReason::KeepaliveTimeout(keepalive.close_code);
                state.close(reason.code(), &reason.reason(), now, config, out);
                state.end(|| reason)
            }
            Timer::Close => self.finish(CloseReason::CloseTimeout),
        }
    }

    /// The transport is to be dropped now, for `reason` unless the connection ended already.
    fn finish(&mut self, reason: CloseReason) -> Option<CloseReason> {
        self.state.phase = Phase::Finished;
        self.state.timer = None;
        self.state.end(|| reason)
    }
}

impl<T: Time> Control<T> {
    /// Whether messages may be sent and are delivered.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Upgraded(CloseHandshake::Open))
    }

    /// See [`Connection::is_closed`].
    #[inline]
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Upgraded(CloseHandshake::Done) | Phase::Refused | Phase::Finished)
    }

    /// See [`Connection::poll_timeout`].
    #[inline]
    pub fn poll_timeout(&self) -> Option<T> {
        self.timer.map(|_| self.deadline)
    }

    /// See [`Connection::send`].
    #[inline]
    pub fn send(&mut self, opcode: OpCode, rsv: u8, payload: &[u8], out: &mut impl Output) -> bool {
        if !self.is_open() {
            return false;
        }
        out.push_frame(opcode, rsv, payload);
        true
    }

    /// Arms `timer` (the one timer) for `at`.
    #[inline]
    fn arm(&mut self, timer: Timer, at: T) {
        (self.timer, self.deadline) = (Some(timer), at);
    }

    /// The reason `reason` gives, if the connection had not ended: the end is handed out once.
    fn end(&mut self, reason: impl FnOnce() -> CloseReason) -> Option<CloseReason> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        Some(reason())
    }

    /// See [`Connection::close`].
    pub fn close(&mut self, code: CloseCode, reason: &str, now: T, config: &Config, out: &mut impl Output) {
        let Phase::Upgraded(close) = &mut self.phase else { return };
        if let Some(frame) = close.start(code, reason) {
            out.push_frame(OpCode::Close, 0, frame.payload());
            self.arm(Timer::Close, now.after(config.close_timeout));
        }
    }

    /// See [`Connection::fail`] (which also says what is returned).
    #[cold]
    pub fn fail(&mut self, reason: CloseReason, now: T, config: &Config, out: &mut impl Output) -> Option<CloseReason> {
        let Phase::Upgraded(close) = &mut self.phase else { return None };
        if close.is_done() {
            return None;
        }
        let was_closing = *close == CloseHandshake::Sent;
        if let Some(frame) = close.fail(reason.code(), &reason.reason()) {
            out.push_frame(OpCode::Close, 0, frame.payload());
        }
        if !was_closing {
            // Time to write what is queued and see the transport end; a close
            // already under way keeps its deadline.
            self.arm(Timer::Close, now.after(config.close_timeout));
        }
        self.end(|| reason)
    }
}

/// A ping or close frame the decoder found complete, answered: a pong
/// (within the send budget), or the close echoed. Returns why the connection
/// ended, if this ended it. Out of line, so the loop over data messages
/// stays small.
#[inline(never)]
fn control_frame<T: Time>(
    state: &mut Control<T>,
    event: Result<Event, ProtocolError>,
    now: T,
    config: &Config,
    out: &mut impl Output,
) -> Option<CloseReason> {
    let open = state.is_open();
    match event {
        Ok(Event::Ping(payload)) => {
            // Pongs count against the send budget like any frame: a ping
            // flood from a peer that does not read cannot grow the queue.
            if open && out.queued() + payload.len() + 2 <= config.max_buffered {
                out.push_frame(OpCode::Pong, 0, payload);
            }
            None
        }
        Ok(Event::Close(code, reason)) => {
            let Phase::Upgraded(close) = &mut state.phase else { unreachable!("can_read checked above") };
            if let Some(reply) = close.receive(code) {
                out.push_frame(OpCode::Close, 0, reply.payload());
                state.arm(Timer::Close, now.after(config.close_timeout));
            }
            state.end(|| CloseReason::Peer { code, reason: reason.to_string() })
        }
        Ok(_) => unreachable!("data and pongs are handed out by the caller"),
        Err(error) => state.fail(CloseReason::Protocol(error), now, config, out),
    }
}

#[cfg(test)]
mod tests;
