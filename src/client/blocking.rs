//! The blocking client: one connection on the calling thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::{time_left, Stream};
use super::{mask_rng, ClientBuilder, ClientError, Upgrade, Url, MAX_REFUSAL_BODY};
use crate::proto::compress::{DeflateState, Deflater, RSV1};
use crate::proto::deflate::DeflateAgreement;
use crate::proto::{
    encode_frame_with_rsv, CloseCode, CloseHandshake, CloseReason, Decoder, Event, Limits, MaskRng, Message, OpCode,
    ProtocolError, ReadyEvent, Role,
};

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
#[derive(Debug)]
pub struct Client {
    reader: Reader,
    writer: Writer,
    deflate: Option<Box<Deflate>>,
    limits: Limits,
    protocol: Option<String>,
    close_timeout: Duration,
}

/// The receive side: the decoder and the bytes read but not yet decoded.
#[derive(Debug)]
struct Reader {
    decoder: Decoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The send side, and the state of the close handshake.
#[derive(Debug)]
struct Writer {
    stream: Stream,
    buf: Vec<u8>,
    rng: MaskRng,
    close: CloseHandshake,
    /// Why the connection ended, once it has.
    ended: Option<CloseReason>,
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
        let deadline = Instant::now() + settings.timeout;
        let mut stream = Stream::connect(url, settings, deadline)?;
        let mut upgrade = Upgrade::new(url, settings)?;
        stream.set_timeout(Some(time_left(deadline)?))?;
        stream.write_all(&upgrade.request)?;
        let mut buf = vec![0; READ_BUFFER];
        let (used, read) = loop {
            stream.set_timeout(Some(time_left(deadline)?))?;
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(used) = upgrade.push(&buf[..n], settings)? {
                break (used, n);
            }
        };
        let accepted = match upgrade.finish(settings) {
            Ok(accepted) => accepted,
            Err((ClientError::Status { status, .. }, length)) => {
                let body = read_body(&mut stream, &buf[used..read], length, deadline);
                return Err(ClientError::Status { status, body });
            }
            Err((e, _)) => return Err(e),
        };
        stream.set_timeout(None)?;
        let mut decoder = Decoder::new(Role::Client);
        let deflate = match (accepted.deflate, settings.deflate) {
            (Some(agreement), Some(config)) => {
                decoder.allow_extension_rsv(RSV1);
                let state = DeflateState::new(Role::Client, agreement, config);
                Some(Box::new(Deflate { state, deflater: Deflater::default() }))
            }
            _ => None,
        };
        Ok(Client {
            reader: Reader { decoder, buf, start: used, end: read },
            writer: Writer { stream, buf: Vec::new(), rng: mask_rng()?, close: CloseHandshake::Open, ended: None },
            deflate,
            limits: settings.limits,
            protocol: accepted.protocol,
            close_timeout: settings.close_timeout,
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
        self.writer.stream.socket().peer_addr()
    }

    /// Whether messages can still be sent (no close frame sent or received).
    pub fn is_open(&self) -> bool {
        self.writer.close.is_open()
    }

    /// How long [`recv`](Self::recv) waits before failing with
    /// [`ClientError::Timeout`] (the connection stays usable); `None`, the
    /// default, waits for ever. Also bounds each send.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        Ok(self.writer.stream.set_timeout(timeout)?)
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
        self.writer.check_open()?;
        self.writer.frame(OpCode::Ping, 0, payload)
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), ClientError> {
        self.writer.check_open()?;
        match self.deflate.as_deref_mut().filter(|d| d.state.compresses(payload.len())) {
            Some(Deflate { state, deflater }) => {
                deflater.compress(state, payload);
                self.writer.frame(opcode, RSV1, &deflater.scratch)
            }
            None => self.writer.frame(opcode, 0, payload),
        }
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
        if let Some(frame) = self.writer.close.start(code, reason) {
            self.writer.frame(OpCode::Close, 0, frame.payload())?;
        }
        if self.writer.close.is_done() {
            return Ok(());
        }
        self.writer.stream.set_timeout(Some(self.close_timeout))?;
        loop {
            match self.poll_ready(false) {
                // Data after our close frame is not delivered (poll_ready skips it).
                Ok(_) => continue,
                // 1006 is never sent: it marks a connection that ended without a close frame.
                Err(ClientError::Closed { code, .. }) if code != CloseCode::ABNORMAL => return Ok(()),
                Err(e) => {
                    // Every other failure has ended the connection already; a
                    // timeout waiting for the server's answer has not.
                    self.writer.end(CloseReason::CloseTimeout);
                    self.writer.stream.shutdown();
                    return Err(e);
                }
            }
        }
    }

    fn next(&mut self, pongs: bool) -> Result<Incoming<'_>, ClientError> {
        let (at, ready) = self.poll_ready(pongs)?;
        // Split borrows: the event borrows the reader (and the inflate
        // buffer), while failing the connection needs only the writer.
        let Client { reader, writer, deflate, limits, .. } = self;
        let event = match reader.decoder.event(&reader.buf[at..], ready) {
            Ok(event) => event,
            Err(e) => return Err(writer.fail(e)),
        };
        match event {
            Event::Message(message) => Ok(Incoming::Message(message)),
            Event::Pong(payload) => Ok(Incoming::Pong(payload)),
            Event::Compressed { text, payload } => {
                let Deflate { state, deflater } =
                    deflate.as_deref_mut().expect("RSV1 is only allowed once permessage-deflate is agreed");
                deflater
                    .decompress(state, text, payload, limits.max_message_size)
                    .map(Incoming::Message)
                    .map_err(|e| writer.fail(e))
            }
            Event::Ping(_) | Event::Close(..) => unreachable!("poll_ready handles control frames"),
        }
    }

    /// Reads and decodes until a message (or a pong, if asked for) is ready;
    /// answers pings and the close handshake on the way. Returns where the
    /// event's input starts in the read buffer.
    fn poll_ready(&mut self, pongs: bool) -> Result<(usize, ReadyEvent), ClientError> {
        loop {
            if let Some(reason) = &self.writer.ended {
                return Err(reason.into());
            }
            let reader = &mut self.reader;
            if reader.start == reader.end {
                self.fill()?;
                continue;
            }
            let polled = match reader.decoder.poll(&mut reader.buf[reader.start..reader.end], &self.limits) {
                Ok(polled) => polled,
                Err(e) => return Err(self.writer.fail(e)),
            };
            let at = reader.start;
            reader.start += polled.consumed;
            let Some(ready) = polled.ready else { continue };
            if ready.is_data() || ready.is_pong() {
                if self.writer.close.is_open() && (ready.is_data() || pongs) {
                    return Ok((at, ready));
                }
                continue;
            }
            let control = match reader.decoder.event(&reader.buf[at..], ready) {
                Ok(Event::Ping(payload)) => {
                    let mut copy = [0; 125];
                    copy[..payload.len()].copy_from_slice(payload);
                    Control::Ping(copy, payload.len())
                }
                Ok(Event::Close(code, reason)) => Control::Close(code, reason.to_string()),
                Ok(_) => unreachable!("data and pongs are handled above"),
                Err(e) => return Err(self.writer.fail(e)),
            };
            match control {
                Control::Ping(payload, len) => {
                    if self.writer.close.is_open() {
                        self.writer.frame(OpCode::Pong, 0, &payload[..len])?;
                    }
                }
                Control::Close(code, reason) => {
                    if let Some(reply) = self.writer.close.receive(code) {
                        // The server may be gone already; the close is complete either way.
                        let _ = self.writer.frame(OpCode::Close, 0, reply.payload());
                    }
                    self.writer.end(CloseReason::Peer { code, reason });
                    self.await_server_close();
                }
            }
        }
    }

    /// Reads more input (only called once the last read is decoded).
    fn fill(&mut self) -> Result<(), ClientError> {
        let reader = &mut self.reader;
        match self.writer.stream.read(&mut reader.buf) {
            Ok(0) => {
                self.writer.close.fail(CloseCode::ABNORMAL, "");
                self.writer.end(CloseReason::NoCloseFrame);
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
                self.writer.close.fail(CloseCode::ABNORMAL, "");
                let e = Arc::new(e);
                self.writer.end(CloseReason::ReadFailed(e.clone()));
                Err(ClientError::Io(io::Error::new(e.kind(), e)))
            }
        }
    }

    /// After the close handshake the server closes TCP first (RFC 6455
    /// §7.1.1); wait for that, up to the close timeout, then close ours.
    fn await_server_close(&mut self) {
        let deadline = Instant::now() + self.close_timeout;
        let mut scratch = [0; 4096];
        while let Ok(left) = time_left(deadline) {
            let _ = self.writer.stream.set_timeout(Some(left));
            match self.writer.stream.read(&mut scratch) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        self.writer.stream.shutdown();
    }
}

/// A control frame, copied out of the read buffer so it can be answered.
enum Control {
    Ping([u8; 125], usize),
    Close(Option<CloseCode>, String),
}

impl Writer {
    /// Sends one masked frame with a fresh key.
    fn frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) -> Result<(), ClientError> {
        self.buf.clear();
        encode_frame_with_rsv(&mut self.buf, opcode, true, rsv, Some(self.rng.next_key()), payload);
        let result = self.stream.write_all(&self.buf);
        if self.buf.capacity() > KEPT_SEND_BUFFER {
            self.buf = Vec::new();
        }
        result.map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                return ClientError::Timeout;
            }
            self.close.fail(CloseCode::ABNORMAL, "");
            let e = Arc::new(e);
            self.end(CloseReason::WriteFailed(e.clone()));
            ClientError::Io(io::Error::new(e.kind(), e))
        })
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match &self.ended {
            Some(reason) => Err(reason.into()),
            None if !self.close.is_open() => {
                Err(ClientError::Closed { code: CloseCode::NORMAL, reason: "closing".to_string() })
            }
            None => Ok(()),
        }
    }

    /// Records why the connection ended (the first reason wins).
    fn end(&mut self, reason: CloseReason) {
        self.ended.get_or_insert(reason);
    }

    /// Fails the connection for a protocol error of the server's: a close
    /// frame with the error's code (unless ours went already), then TCP closed.
    fn fail(&mut self, error: ProtocolError) -> ClientError {
        if let Some(frame) = self.close.fail(error.close_code(), &error.to_string()) {
            let _ = self.frame(OpCode::Close, 0, frame.payload());
        }
        self.end(CloseReason::Protocol(error));
        self.stream.shutdown();
        ClientError::Protocol(error)
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
