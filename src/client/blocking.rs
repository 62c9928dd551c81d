//! The blocking client: one connection on the calling thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::{time_left, Stream};
use super::{mask_rng, start_upgrade, ClientBuilder, ClientError, Url, MAX_REFUSAL_BODY};
use crate::proto::compress::{DeflateState, Deflater, RSV1};
use crate::proto::connection::{Config, Connection, Input, Masked, Received};
use crate::proto::deflate::DeflateAgreement;
use crate::proto::handshake::client::ResponseError;
use crate::proto::{CloseCode, CloseReason, MaskRng, Message, OpCode, ReadyEvent, Role};

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 64 << 10;
/// A send buffer that grew past this for a big message is not kept.
const KEPT_SEND_BUFFER: usize = 1 << 20;

/// What [`Client::recv_event`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text or binary message.
    Message(Message<'a>),
    /// A pong (the answer to [`Client::ping`], or unsolicited).
    Pong(&'a [u8]),
}

/// An open WebSocket connection, used from one thread. See [`super::connect`].
///
/// Received messages are borrowed from the client's read buffer (or, for a
/// message that spanned several reads or was compressed, from the buffer it
/// was assembled in): no copy between the socket and the caller. Pings are
/// answered as they arrive; a close frame from the server is answered and
/// ends the connection, after which every call returns
/// [`ClientError::Closed`].
///
/// The protocol is [`proto::connection`](crate::proto::connection)'s; this
/// drives it over a blocking socket.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    config: Config,
    /// Why the connection ended, once it has (the machine hands it out once).
    ended: Option<CloseReason>,
    stream: Stream,
    /// Frames to write, written at once after each call to the machine.
    out: Vec<u8>,
    /// The keys every frame is masked with (the client end masks).
    masks: MaskRng,
    reader: Reader,
    deflate: Option<Box<Deflate>>,
    protocol: Option<String>,
}

/// The bytes read but not yet decoded.
#[derive(Debug)]
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// permessage-deflate, once agreed: the same state and buffers as a
/// runtime connection's, with a [`Deflater`] of its own.
#[derive(Debug)]
struct Deflate {
    state: DeflateState,
    deflater: Deflater,
}

impl Client {
    pub(crate) fn connect(url: &Url, settings: &ClientBuilder) -> Result<Client, ClientError> {
        let started = Instant::now();
        let deadline = started + settings.timeout;
        let mut stream = Stream::connect(url, settings, deadline)?;
        let mut upgrade = start_upgrade(url, settings)?;
        stream.set_timeout(Some(time_left(deadline)?))?;
        stream.write_all(&upgrade.request)?;
        let mut buf = vec![0; READ_BUFFER];
        let (used, read) = loop {
            stream.set_timeout(Some(time_left(deadline)?))?;
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(used) = upgrade.push(&buf[..n]).map_err(ClientError::Handshake)? {
                break (used, n);
            }
        };
        let accepted = match upgrade.finish() {
            Ok(accepted) => accepted,
            Err(ResponseError::NotSwitching(status)) => {
                let body = read_body(&mut stream, &buf[used..read], upgrade.refusal_length(), deadline);
                return Err(ClientError::Status { status, body });
            }
            Err(e) => return Err(ClientError::Handshake(e)),
        };
        stream.set_timeout(None)?;
        let config = Config {
            limits: settings.limits,
            keepalive: None,
            handshake_timeout: settings.timeout,
            close_timeout: settings.close_timeout,
            // Frames are written as they are made: nothing queues up.
            max_buffered: usize::MAX,
        };
        let mut conn = Connection::client(started, &config);
        conn.open(Instant::now(), &config);
        let deflate = match (accepted.deflate, settings.deflate) {
            (Some(agreement), Some(deflate)) => {
                conn.allow_compressed(RSV1);
                let state = DeflateState::new(Role::Client, agreement, deflate);
                Some(Box::new(Deflate { state, deflater: Deflater::default() }))
            }
            _ => None,
        };
        Ok(Client {
            conn,
            config,
            ended: None,
            stream,
            out: Vec::new(),
            masks: mask_rng()?,
            reader: Reader { buf, start: used, end: read },
            deflate,
            protocol: accepted.protocol,
        })
    }

    /// The subprotocol the server chose, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The permessage-deflate parameters, if compression was agreed.
    pub fn deflate(&self) -> Option<&DeflateAgreement> {
        self.deflate.as_ref().map(|d| d.state.agreement())
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.socket().peer_addr()
    }

    /// Whether messages can still be sent (no close frame sent or received).
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// How long [`recv`](Self::recv) waits before failing with
    /// [`ClientError::Timeout`] (the connection stays usable); `None`, the
    /// default, waits for ever. Also bounds each send.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.stream.set_timeout(timeout)?)
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send(OpCode::Text, text.as_bytes())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send(OpCode::Binary, bytes)
    }

    /// Sends a ping (at most 125 bytes); its pong comes back through
    /// [`recv_event`](Self::recv_event).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        if payload.len() > 125 {
            return Err(ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, "ping payload over 125 bytes")));
        }
        self.check_open()?;
        self.conn.send(OpCode::Ping, 0, payload, &mut Masked { bytes: &mut self.out, masks: &mut self.masks });
        self.write_out()
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), ClientError> {
        self.check_open()?;
        let out = &mut Masked { bytes: &mut self.out, masks: &mut self.masks };
        match self.deflate.as_deref_mut().filter(|d| d.state.compresses(payload.len())) {
            Some(Deflate { state, deflater }) => {
                deflater.compress(state, payload);
                self.conn.send(opcode, RSV1, &deflater.scratch, out);
            }
            None => {
                self.conn.send(opcode, 0, payload, out);
            }
        }
        self.write_out()
    }

    /// The next message. Pings are answered and pongs skipped on the way.
    pub fn recv(&mut self) -> Result<Message<'_>, ClientError> {
        match self.next(false)? {
            Incoming::Message(message) => Ok(message),
            Incoming::Pong(_) => unreachable!("pongs were not asked for"),
        }
    }

    /// The next message or pong.
    pub fn recv_event(&mut self) -> Result<Incoming<'_>, ClientError> {
        self.next(true)
    }

    /// Closes the connection: sends a close frame (unless one was sent),
    /// waits up to the close timeout for the server's, and for the server to
    /// close TCP. Messages still arriving are dropped. `Ok` once the close
    /// handshake completed.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), ClientError> {
        let out = &mut Masked { bytes: &mut self.out, masks: &mut self.masks };
        self.conn.close(code, reason, Instant::now(), &self.config, out);
        self.write_out()?;
        if self.conn.is_closed() {
            return Ok(());
        }
        self.stream.set_timeout(Some(self.config.close_timeout))?;
        loop {
            match self.poll_ready(false) {
                // Data after our close frame is not delivered (the machine skips it).
                Ok(_) => continue,
                // 1006 is never sent: it marks a connection that ended without a close frame.
                Err(ClientError::Closed(reason)) if reason.code() != CloseCode::ABNORMAL => return Ok(()),
                Err(e) => {
                    // A read that timed out waited the close timeout since
                    // our close frame went: the machine's deadline is due.
                    let out = &mut Masked { bytes: &mut self.out, masks: &mut self.masks };
                    let ended = self.conn.handle_timeout(Instant::now(), &self.config, out);
                    self.record(ended);
                    self.stream.shutdown();
                    return Err(e);
                }
            }
        }
    }

    fn next(&mut self, pongs: bool) -> Result<Incoming<'_>, ClientError> {
        let (at, ready) = self.poll_ready(pongs)?;
        // Split borrows: what was received borrows the machine and the
        // reader, while failing the connection writes through the stream.
        let Client { conn, config, ended, stream, out: bytes, masks, reader, deflate, .. } = self;
        let out = &mut Masked { bytes, masks };
        let now = Instant::now();
        if conn.is_compressed(ready) {
            // Apart from the plain case: the inflated message borrows the
            // deflater, so the machine is free again to fail the connection.
            let (text, payload) = match conn.received(&reader.buf[at..], ready, now, config, out) {
                Ok((Received::Compressed { text, payload }, _)) => (text, payload),
                Ok(_) => unreachable!("is_compressed checked above"),
                Err(reason) => return Err(fail_transport(stream, out.bytes, ended, reason)),
            };
            let Deflate { state, deflater } =
                deflate.as_deref_mut().expect("RSV1 is only allowed once permessage-deflate is agreed");
            let error = match deflater.decompress(state, text, payload, config.limits.max_message_size) {
                Ok(message) => return Ok(Incoming::Message(message)),
                Err(error) => error,
            };
            let reason = conn.fail(CloseReason::Protocol(error), now, config, out);
            return Err(fail_transport(stream, out.bytes, ended, reason));
        }
        match conn.received(&reader.buf[at..], ready, now, config, out) {
            Ok((Received::Message(message), _)) => Ok(Incoming::Message(message)),
            Ok((Received::Pong(payload), _)) => Ok(Incoming::Pong(payload)),
            Ok((Received::Compressed { .. }, _)) => {
                unreachable!("is_compressed checked above")
            }
            Err(reason) => Err(fail_transport(stream, out.bytes, ended, reason)),
        }
    }

    /// Reads and decodes until a message (or a pong, if asked for) is ready;
    /// the machine answers pings and the close handshake on the way. Returns
    /// where the input of what is ready starts in the read buffer.
    fn poll_ready(&mut self, pongs: bool) -> Result<(usize, ReadyEvent), ClientError> {
        loop {
            if let Some(reason) = &self.ended {
                return Err(reason.into());
            }
            let reader = &mut self.reader;
            if reader.start == reader.end {
                self.fill()?;
                continue;
            }
            let now = Instant::now();
            let input = &mut reader.buf[reader.start..reader.end];
            let out = &mut Masked { bytes: &mut self.out, masks: &mut self.masks };
            let (used, polled) = self.conn.poll_input(input, now, &self.config, out);
            let at = reader.start;
            reader.start += used;
            let written = self.write_out();
            match polled {
                Some(Input::Ready(ready)) if ready.is_data() || pongs => {
                    written?;
                    return Ok((at, ready));
                }
                Some(Input::Ended(CloseReason::Protocol(error))) => {
                    // The close frame went (if the server still reads); then TCP closes.
                    self.ended = Some(CloseReason::Protocol(error));
                    self.stream.shutdown();
                    return Err(ClientError::Protocol(error));
                }
                Some(Input::Ended(reason)) => {
                    self.ended = Some(reason);
                    // The server may be gone already; the close is complete either way.
                    self.await_server_close();
                }
                Some(Input::Ready(_)) | None => written?,
            }
        }
    }

    /// Reads more input (only called once the last read is decoded).
    fn fill(&mut self) -> Result<(), ClientError> {
        let reader = &mut self.reader;
        match self.stream.read(&mut reader.buf) {
            Ok(0) => {
                let ended = self.conn.handle_eof();
                self.record(ended);
                Ok(())
            }
            Ok(n) => {
                (reader.start, reader.end) = (0, n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(ClientError::Timeout)
            }
            Err(e) => {
                let e = Arc::new(e);
                let ended = self.conn.handle_error(CloseReason::ReadFailed(e.clone()));
                self.record(ended);
                Err(ClientError::Io(io::Error::new(e.kind(), e)))
            }
        }
    }

    /// Writes the frames the machine made.
    fn write_out(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > KEPT_SEND_BUFFER {
            self.out = Vec::new();
        }
        result.map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                return ClientError::Timeout;
            }
            let e = Arc::new(e);
            let ended = self.conn.handle_error(CloseReason::WriteFailed(e.clone()));
            self.record(ended);
            ClientError::Io(io::Error::new(e.kind(), e))
        })
    }

    /// Keeps why the connection ended, when a call to the machine ended it.
    fn record(&mut self, ended: Option<CloseReason>) {
        if ended.is_some() {
            self.ended = ended;
        }
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match &self.ended {
            Some(reason) => Err(reason.into()),
            None if !self.conn.is_open() => Err(ClientError::Closing),
            None => Ok(()),
        }
    }

    /// After the close handshake the server closes TCP first (RFC 6455
    /// §7.1.1); wait for that, up to the close timeout, then close ours.
    fn await_server_close(&mut self) {
        let deadline = Instant::now() + self.config.close_timeout;
        let mut scratch = [0; 4096];
        while let Ok(left) = time_left(deadline) {
            let _ = self.stream.set_timeout(Some(left));
            match self.stream.read(&mut scratch) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        self.stream.shutdown();
    }
}

/// After the machine failed the connection for a protocol error of the
/// server's (`reason`, unless it had ended before): its close frame is
/// written (if the server still reads), then TCP closes.
fn fail_transport(
    stream: &mut Stream,
    out: &mut Vec<u8>,
    ended: &mut Option<CloseReason>,
    reason: Option<CloseReason>,
) -> ClientError {
    let _ = stream.write_all(out);
    out.clear();
    stream.shutdown();
    if reason.is_some() {
        *ended = reason;
    }
    match ended {
        Some(CloseReason::Protocol(error)) => ClientError::Protocol(*error),
        Some(other) => ClientError::Closed(other.clone()),
        None => unreachable!("the machine returns no reason only when it returned one before, which was kept"),
    }
}

/// The body of a refusal: what came with the head, then more up to its
/// `Content-Length` (or until the server closes), at most [`MAX_REFUSAL_BODY`].
fn read_body(stream: &mut Stream, first: &[u8], length: Option<usize>, deadline: Instant) -> Vec<u8> {
    let want = length.unwrap_or(MAX_REFUSAL_BODY).min(MAX_REFUSAL_BODY);
    let mut body = first[..first.len().min(want)].to_vec();
    let mut chunk = [0; 4096];
    while body.len() < want {
        let Ok(left) = time_left(deadline) else { break };
        if stream.set_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n.min(want - body.len())]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    body
}
