//! Shared helpers for the integration tests: a small blocking WebSocket client
//! on `std::net::TcpStream` (masked frames out, [`Decoder`] with
//! [`Role::Client`] in), raw HTTP helpers for handshake tests, and [`Echo`], a
//! handler that echoes and records every open and close.
//!
//! Everything here is bounded in time: sockets carry read timeouts, and every
//! wait on the server gives up (and fails the test) after [`WAIT`].

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use emitws::proto::handshake::server::{accept_key, RequestLimits, RequestReader};
use emitws::proto::{
    encode_frame, CloseCode, CloseReason, Decoder, Event, Limits, Message, OpCode, ProtocolError, Role,
};
use emitws::runtime::{Accept, Conn, ConnId, Handler, Reject, Server, ServerHandle, SharedFrame, UpgradeRequest};

/// How long a client read, or a wait on the server, may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(3);

/// The key and accept value from RFC 6455 §1.3.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A server with short timeouts and no keepalive: one worker, handshake and
/// close timeouts of 300 ms, shutdown timeout of 1 s.
pub fn quick_server() -> Server {
    Server::new()
        .workers(1)
        .handshake_timeout(ms(300))
        .close_timeout(ms(300))
        .shutdown_timeout(ms(1000))
        .keepalive(None)
}

/// A valid upgrade request for `path` with the RFC's sample key, plus extra headers.
pub fn upgrade_request(path: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A blocking loopback connection with read and write timeouts of [`WAIT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// An HTTP response head and its body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP response (head, then a `Content-Length` body) from `stream`.
/// Bytes that arrive after it are returned too (WebSocket frames after a 101).
pub fn read_reply(stream: &mut TcpStream) -> (HttpReply, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed before a complete response: {:?}", String::from_utf8_lossy(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the response: {e} (got so far {:?})", String::from_utf8_lossy(&buf)),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end - 4]).expect("response head is UTF-8").to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("header line {line:?}"));
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    let mut rest = buf.split_off(head_end);
    let mut reply = HttpReply { status, headers, body: Vec::new() };
    if let Some(len) = reply.header("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        while rest.len() < len {
            let mut chunk = [0; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed inside the response body"),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the response body: {e}"),
            }
        }
        let after = rest.split_off(len);
        reply.body = rest;
        rest = after;
    }
    (reply, rest)
}

/// Sends `request` on a fresh connection and reads the response.
pub fn http(addr: SocketAddr, request: &[u8]) -> (TcpStream, HttpReply, Vec<u8>) {
    let mut stream = connect(addr);
    stream.write_all(request).expect("write request");
    let (reply, rest) = read_reply(&mut stream);
    (stream, reply, rest)
}

/// A masked frame with a fixed mask, for bytes written outside a [`Client`].
pub fn masked_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, opcode, fin, Some([0x37, 0xfa, 0x21, 0x3d]), payload);
    out
}

/// How a read on a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed its side (read returned 0).
    Eof,
    /// The connection was reset or otherwise failed.
    Error(io::ErrorKind),
}

/// Waits for the server to close `stream`, failing on any byte received or
/// if it is still open after `within`.
pub fn expect_closed_raw(stream: &mut TcpStream, within: Duration) -> Closed {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the server did not close the connection within {within:?}");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut buf = [0; 1024];
        match stream.read(&mut buf) {
            Ok(0) => return Closed::Eof,
            Ok(n) => panic!("expected the connection to close, got {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Closed::Error(e.kind()),
        }
    }
}

/// A frame from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// A permessage-deflate message: (is text, compressed payload).
    Compressed(bool, Vec<u8>),
}

impl Frame {
    pub fn text(text: &str) -> Frame {
        Frame::Text(text.to_string())
    }
}

impl From<Event<'_>> for Frame {
    fn from(event: Event<'_>) -> Frame {
        match event {
            Event::Message(Message::Text(text)) => Frame::Text(text.to_string()),
            Event::Message(Message::Binary(bytes)) => Frame::Binary(bytes.to_vec()),
            Event::Ping(payload) => Frame::Ping(payload.to_vec()),
            Event::Pong(payload) => Frame::Pong(payload.to_vec()),
            Event::Close(code, reason) => Frame::Close(code.map(|c| c.0), reason.to_string()),
            Event::Compressed { text, payload } => Frame::Compressed(text, payload.to_vec()),
        }
    }
}

/// Why [`Client::try_recv`] returned no frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing arrived within the read timeout.
    Timeout,
    /// The server closed the TCP connection.
    Eof,
    /// The connection failed (reset, most likely).
    Io(io::ErrorKind),
    /// The server broke the protocol.
    Protocol(ProtocolError),
}

/// A blocking WebSocket client for tests.
pub struct Client {
    pub stream: TcpStream,
    decoder: Decoder,
    pending: Vec<u8>,
    masks: u32,
}

impl Client {
    /// Connects to `/` and completes the handshake.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/")
    }

    /// Connects to `path` and completes the handshake, failing unless it gets 101.
    pub fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (stream, reply, rest) = http(addr, &upgrade_request(path, &[]));
        assert_eq!(reply.status, 101, "upgrade of {path} refused: {reply:?}");
        assert_eq!(reply.header("sec-websocket-accept"), Some(SAMPLE_ACCEPT));
        Client::from_parts(stream, rest)
    }

    /// A client on an already upgraded stream; `rest` is what followed the 101.
    pub fn from_parts(stream: TcpStream, rest: Vec<u8>) -> Client {
        Client { stream, decoder: Decoder::new(Role::Client), pending: rest, masks: 0x5a17_c3e9 }
    }

    /// Accepts RSV1 from the server: permessage-deflate was agreed.
    pub fn accept_compressed(&mut self) {
        self.decoder.allow_extension_rsv(0b100);
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // Varied, never all-zero masks, so the server really has to unmask.
        self.masks = self.masks.wrapping_mul(1_103_515_245).wrapping_add(12_345) | 0x0101_0101;
        self.masks.to_be_bytes()
    }

    /// A masked frame, encoded but not sent.
    pub fn encode(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mask = self.next_mask();
        encode_frame(&mut out, opcode, fin, Some(mask), payload);
        out
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Like [`write_raw`](Self::write_raw), but reports failure (the server may have closed).
    pub fn try_write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let frame = self.encode(opcode, fin, payload);
        self.write_raw(&frame);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(OpCode::Text, true, text.as_bytes());
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.send(OpCode::Binary, true, bytes);
    }

    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(OpCode::Close, true, &payload);
    }

    /// The next frame, or why there is none within the socket's read timeout.
    pub fn try_recv(&mut self) -> Result<Frame, RecvError> {
        let limits = Limits::default().max_frame_size(1 << 30).max_message_size(1 << 30).max_fragments(u32::MAX);
        loop {
            if !self.pending.is_empty() {
                let decoded = self.decoder.decode(&mut self.pending, &limits).map_err(RecvError::Protocol)?;
                let consumed = decoded.consumed;
                let frame = decoded.event.map(Frame::from);
                self.pending.drain(..consumed);
                if let Some(frame) = frame {
                    return Ok(frame);
                }
                continue;
            }
            let mut buf = vec![0; 64 << 10];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(RecvError::Eof),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(RecvError::Timeout),
                Err(e) => return Err(RecvError::Io(e.kind())),
            }
        }
    }

    /// [`try_recv`](Self::try_recv) with a read timeout of `timeout` for this call.
    pub fn try_recv_within(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        self.stream.set_read_timeout(Some(timeout.max(ms(1)))).expect("read timeout");
        let result = self.try_recv();
        self.stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        result
    }

    /// The next frame; fails the test if none arrives within [`WAIT`].
    pub fn recv(&mut self) -> Frame {
        self.try_recv().unwrap_or_else(|e| panic!("expected a frame from the server: {e:?}"))
    }

    /// Expects the next frame to be a close frame with `code`; returns its reason.
    pub fn expect_close(&mut self, code: u16) -> String {
        match self.recv() {
            Frame::Close(Some(got), reason) if got == code => reason,
            other => panic!("expected a close frame with code {code}, got {other:?}"),
        }
    }

    /// Expects the server to close TCP cleanly (a FIN: read returns 0, not a
    /// reset) within [`WAIT`], with no further frame.
    pub fn expect_eof(&mut self) {
        assert!(self.pending.is_empty(), "bytes after the close frame: {:?}", self.pending);
        assert_eq!(expect_closed_raw(&mut self.stream, WAIT), Closed::Eof);
    }

    /// Expects nothing at all to arrive for `duration`.
    pub fn expect_silence(&mut self, duration: Duration) {
        match self.try_recv_within(duration) {
            Err(RecvError::Timeout) => {}
            other => panic!("expected silence for {duration:?}, got {other:?}"),
        }
    }

    /// Sends `text` and expects it back.
    pub fn echo(&mut self, text: &str) {
        self.send_text(text);
        assert_eq!(self.recv(), Frame::text(text), "echo of {text:?}");
    }

    /// The close handshake from our side: send `code`, get it echoed, see TCP closed.
    pub fn close(mut self, code: u16) {
        self.send_close(code, "");
        self.expect_close(code);
        self.expect_eof();
    }
}

/// What a recording handler saw.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// `on_open`: the connection and its tag (the request path).
    pub opened: Vec<(ConnId, String)>,
    /// `on_close`: the connection and why it ended.
    pub closed: Vec<(ConnId, CloseReason)>,
    /// The worker thread (by name) each connection opened on.
    pub threads: Vec<(ConnId, String)>,
}

impl Record {
    pub fn id_of(&self, tag: &str) -> Option<ConnId> {
        self.opened.iter().find(|(_, t)| t == tag).map(|(id, _)| *id)
    }

    pub fn close_codes(&self, id: ConnId) -> Vec<u16> {
        self.closed.iter().filter(|(i, _)| *i == id).map(|(_, reason)| reason.code().0).collect()
    }
}

/// Connection events recorded by handlers, with waits bounded by [`WAIT`].
#[derive(Debug, Default)]
pub struct Events {
    record: Mutex<Record>,
    changed: Condvar,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    pub fn snapshot(&self) -> Record {
        self.lock().clone()
    }

    /// Waits until `f` returns `Some`, failing the test after [`WAIT`].
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut(&Record) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut record = self.lock();
        loop {
            if let Some(value) = f(&record) {
                return value;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; record: {:?}", *record);
            record = self.changed.wait_timeout(record, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The id of the connection opened with this tag (request path).
    pub fn wait_opened(&self, tag: &str) -> ConnId {
        self.wait(&format!("on_open of {tag}"), |r| r.id_of(tag))
    }

    /// The first close reason reported for `id`.
    pub fn wait_closed(&self, id: ConnId) -> CloseReason {
        self.wait(&format!("on_close of {id}"), |r| r.closed.iter().find(|(i, _)| *i == id).map(|(_, why)| why.clone()))
    }

    /// Waits for `count` closes in all.
    pub fn wait_closes(&self, count: usize) -> Vec<(ConnId, CloseReason)> {
        self.wait(&format!("{count} closes"), |r| (r.closed.len() >= count).then(|| r.closed.clone()))
    }
}

/// Echoes every message; records opens (tagged with the request path) and closes.
/// Text commands: `!close <code>` makes the server start the close handshake,
/// `!ping <payload>` sends a ping, `!shared <text>` sends a [`SharedFrame`].
#[derive(Clone, Debug, Default)]
pub struct Echo {
    pub events: Arc<Events>,
}

impl Handler for Echo {
    type Data = String;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<String>, Reject> {
        Ok(Accept::new(request.path().to_string()))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let entry = (conn.id(), conn.data().clone());
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        self.events.update(|r| {
            r.threads.push((entry.0, thread));
            r.opened.push(entry);
        });
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, message: Message<'_>) {
        let _ = match message {
            Message::Text(text) => {
                if let Some(code) = text.strip_prefix("!close ") {
                    conn.close(CloseCode(code.parse().expect("!close <code>")), "bye");
                    return;
                }
                if let Some(payload) = text.strip_prefix("!ping ") {
                    let status = conn.ping(payload.as_bytes());
                    let _ = conn.send_text(&format!("ping {status:?}"));
                    return;
                }
                if let Some(shared) = text.strip_prefix("!shared ") {
                    conn.send_shared(&SharedFrame::text(shared))
                } else {
                    conn.send_text(text)
                }
            }
            Message::Binary(bytes) => conn.send_binary(bytes),
        };
    }

    fn on_close(&mut self, conn: &mut Conn<'_, String>, reason: &CloseReason) {
        let entry = (conn.id(), reason.clone());
        self.events.update(|r| r.closed.push(entry));
    }
}

/// A scripted server for one connection: reads the upgrade request, then
/// runs `script` with the socket and the request's `Sec-WebSocket-Key`.
pub fn scripted<T: Send + 'static>(
    script: impl FnOnce(TcpStream, String) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let limits = RequestLimits::default();
        let mut reader = RequestReader::default();
        let mut buf = [0; 4096];
        loop {
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "the client hung up during its request");
            if reader.push(&buf[..n], &limits).unwrap().is_some() {
                break;
            }
        }
        let key = {
            let request = reader.request(&limits).unwrap();
            String::from_utf8(request.header("sec-websocket-key").unwrap().to_vec()).unwrap()
        };
        script(socket, key)
    });
    (addr, thread)
}

/// A 101 answer to `key`, with `extra` header lines.
pub fn switching(key: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_key(key.as_bytes())
    )
}

/// Reads the client's frames until its close frame; returns the close code.
pub fn close_code_from(socket: &mut TcpStream) -> Option<u16> {
    let mut decoder = Decoder::new(Role::Server);
    let mut buf = [0; 4096];
    loop {
        let n = socket.read(&mut buf).ok().filter(|&n| n > 0)?;
        let mut input = &mut buf[..n];
        while !input.is_empty() {
            let decoded = decoder.decode(input, &Limits::default()).expect("client frames are valid and masked");
            if let Some(Event::Close(code, _)) = decoded.event {
                return code.map(|c| c.0);
            }
            let consumed = decoded.consumed;
            input = &mut input[consumed..];
        }
    }
}

/// Waits until the server counts `expected` connections, failing after [`WAIT`].
pub fn wait_connection_count(handle: &ServerHandle, expected: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let count = handle.connection_count();
        if count == expected {
            return;
        }
        assert!(Instant::now() < deadline, "connection_count stayed {count}, expected {expected}");
        std::thread::sleep(ms(5));
    }
}

/// A self-signed TLS identity for `localhost`: (certificate PEM, key PEM).
pub fn identity() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a self-signed certificate");
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}
