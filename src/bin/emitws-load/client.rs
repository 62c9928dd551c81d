//! One client thread: a mio `Poll` driving its share of the connections.
//!
//! Connections are opened gradually (a bounded number of connects and
//! handshakes in flight), then wait for the run to start. In echo mode every
//! connection keeps K masked messages in flight, checking each echo against
//! what was sent and recording its round trip; in idle mode connections only
//! answer pings. At the end every open connection is closed with a close
//! handshake (bounded in time).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use emitws::proto::deflate::{
    accept_response, client_offer, Compressor, Decompressor, DeflateAgreement, DeflateConfig,
};
use emitws::proto::handshake::{accept_key, parse_extensions};
use emitws::proto::{encode_frame, encode_frame_with_rsv, CloseCode, Decoder, Event, Limits, Message, OpCode, Role};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Config, Mode};
use crate::hist::Histogram;

/// The RSV bit of a compressed message.
const RSV1: u8 = 0b100;
/// Bytes read from a socket at a time, into the thread's one read buffer.
const READ_BUFFER: usize = 256 << 10;
/// Largest handshake response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Time allowed for the close handshakes at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Distinct payload offsets into the pattern (consecutive messages differ).
pub const PATTERN_SLACK: usize = 251;
/// Error messages printed to stderr, all threads together.
const MAX_REPORTED_ERRORS: usize = 10;

/// State shared by the main thread and the client threads.
pub struct Shared {
    /// Set by the main thread (end of run, signal) or on a fatal error.
    pub stop: AtomicBool,
    /// Threads that have tried every one of their connections.
    pub threads_ready: AtomicUsize,
    /// Connections tried so far (succeeded or not).
    pub attempted: AtomicUsize,
    /// Connections open right now.
    pub open: AtomicUsize,
    /// Echo mode: (measure from, measure until), set once everything is connected.
    pub window: OnceLock<(Instant, Instant)>,
    /// A problem that makes the whole run meaningless (e.g. out of file descriptors).
    pub fatal: Mutex<Option<String>>,
    reported_errors: AtomicUsize,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            threads_ready: AtomicUsize::new(0),
            attempted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            window: OnceLock::new(),
            fatal: Mutex::new(None),
            reported_errors: AtomicUsize::new(0),
        }
    }

    fn set_fatal(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        fatal.get_or_insert(message);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Prints the first few errors (of all threads) to stderr.
    fn report(&self, message: std::fmt::Arguments<'_>) {
        let n = self.reported_errors.fetch_add(1, Ordering::Relaxed);
        if n < MAX_REPORTED_ERRORS {
            eprintln!("error: {message}");
        } else if n == MAX_REPORTED_ERRORS {
            eprintln!("error: (further errors are counted but not shown)");
        }
    }
}

/// What one thread counted.
#[derive(Default)]
pub struct Stats {
    /// Echoes received during the measured window.
    pub messages: u64,
    /// Round trips of those echoes, in nanoseconds.
    pub latency: Histogram,
    pub connect_errors: u64,
    pub handshake_errors: u64,
    /// Connections lost after the handshake (EOF, reset, close from the server, write errors).
    pub dropped: u64,
    pub protocol_errors: u64,
    pub mismatches: u64,
    /// Connections still open when the run ended.
    pub open_at_end: u64,
    /// Of those, how many got no close frame back in time.
    pub unclean_closes: u64,
    /// Of those, how many got the close frame but not the server's TCP close in time.
    pub lingering: u64,
}

impl Stats {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.handshake_errors + self.dropped + self.protocol_errors + self.mismatches
    }

    pub fn merge(&mut self, other: &Stats) {
        self.messages += other.messages;
        self.latency.merge(&other.latency);
        self.connect_errors += other.connect_errors;
        self.handshake_errors += other.handshake_errors;
        self.dropped += other.dropped;
        self.protocol_errors += other.protocol_errors;
        self.mismatches += other.mismatches;
        self.open_at_end += other.open_at_end;
        self.unclean_closes += other.unclean_closes;
        self.lingering += other.lingering;
    }
}

/// xorshift64*: masks and handshake keys. Not cryptographic; this is a load tool.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(salt: u64) -> Rng {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = (time as u64) ^ ((std::process::id() as u64) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    pub fn fixed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Printable ASCII (valid UTF-8 for text mode), `len` bytes, pseudo-random so
/// that payloads taken at different offsets differ.
pub fn pattern(len: usize, json: bool) -> Vec<u8> {
    let mut rng = Rng::fixed(0x5eed_cafe);
    if !json {
        return (0..len).map(|_| b' ' + (rng.next() >> 40) as u8 % 95).collect();
    }
    // Chat-like event objects: the keys repeat, the values vary.
    const WORDS: [&str; 8] = ["hello", "there", "how", "are", "you", "fine", "thanks", "later"];
    let mut out = Vec::with_capacity(len + 200);
    while out.len() < len {
        let r = rng.next();
        let _ = write!(
            out,
            r#"{{"event":"chat:message","data":{{"room":"room{}","user":"user{}","text":"{} {}","ts":{}}}}}"#,
            r % 7,
            r >> 8 & 0x3ff,
            WORDS[(r >> 20) as usize % 8],
            WORDS[(r >> 23) as usize % 8],
            1_700_000_000 + (r >> 32 & 0xffff)
        );
    }
    out.truncate(len);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, reading the response.
    Handshake,
    Open,
    /// Our close frame is sent; waiting for the server's.
    Closing,
    /// The server's close frame arrived; waiting for it to close TCP (RFC 6455
    /// §7.1.1: the server closes first, so TIME_WAIT stays on its side).
    Closed,
}

struct Conn {
    stream: TcpStream,
    /// The TLS session of a wss:// connection.
    #[cfg(feature = "tls")]
    tls: Option<Box<emitws::tls::TlsStream>>,
    state: State,
    started: Instant,
    /// The expected Sec-WebSocket-Accept, then (after the handshake) nothing.
    accept: String,
    /// The response head as it arrives.
    head: Vec<u8>,
    decoder: Decoder,
    /// Compression both ways, once permessage-deflate is agreed.
    deflate: Option<Box<(Compressor, Decompressor)>>,
    out: Vec<u8>,
    written: usize,
    /// Send time and pattern offset of each message in flight, oldest first.
    in_flight: VecDeque<(Instant, u32)>,
    sent: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect,
    Handshake,
    Dropped,
    Protocol,
}

/// Why a connection ended.
enum End {
    /// Closed cleanly (close handshake completed at the end of the run).
    Clean,
    /// An error of this kind, with a description.
    Error(Kind, String),
}

fn err(kind: Kind, message: impl Into<String>) -> End {
    End::Error(kind, message.into())
}

/// Everything a connection's event handling needs besides the connection and read buffer.
struct Ctx<'a> {
    config: &'a Config,
    pattern: &'a [u8],
    shared: &'a Shared,
    rng: Rng,
    stats: Stats,
    limits: Limits,
    opcode: OpCode,
    /// Where messages are compressed, and inflated.
    compressed: Vec<u8>,
    inflated: Vec<u8>,
    /// Echo messages are being sent.
    sending: bool,
    window: Option<(Instant, Instant)>,
}

impl Ctx<'_> {
    /// Appends the next echo message to `conn.out`.
    #[inline]
    fn queue_message(&mut self, conn: &mut Conn, now: Instant) {
        let offset = (conn.sent % PATTERN_SLACK as u64) as usize;
        conn.sent += 1;
        let key = (self.rng.next() as u32).to_ne_bytes();
        let payload = &self.pattern[offset..offset + self.config.payload];
        match conn.deflate.as_deref_mut() {
            Some((compressor, _)) => {
                self.compressed.clear();
                compressor.compress(payload, &mut self.compressed);
                encode_frame_with_rsv(&mut conn.out, self.opcode, true, RSV1, Some(key), &self.compressed);
            }
            None => encode_frame(&mut conn.out, self.opcode, true, Some(key), payload),
        }
        conn.in_flight.push_back((now, offset as u32));
    }

    fn queue_close(&mut self, conn: &mut Conn) {
        let key = (self.rng.next() as u32).to_ne_bytes();
        encode_frame(&mut conn.out, OpCode::Close, true, Some(key), &CloseCode::NORMAL.0.to_be_bytes());
    }

    /// Starts the echo traffic on a connection.
    fn start_echo(&mut self, conn: &mut Conn, now: Instant) {
        for _ in 0..self.config.in_flight {
            self.queue_message(conn, now);
        }
    }
}

/// Runs one client thread with `count` connections. Returns what it counted.
pub fn run(id: usize, count: usize, max_connecting: usize, config: &Config, pattern: &[u8], shared: &Shared) -> Stats {
    let mut ctx = Ctx {
        config,
        pattern,
        shared,
        rng: Rng::seeded(id as u64 + 1),
        stats: Stats::default(),
        limits: Limits { max_frame_size: 1 << 30, max_message_size: 1 << 30, max_fragments: u32::MAX },
        opcode: if config.text { OpCode::Text } else { OpCode::Binary },
        compressed: Vec::new(),
        inflated: Vec::new(),
        sending: false,
        window: None,
    };
    let mut poll = match Poll::new() {
        Ok(poll) => poll,
        Err(e) => {
            shared.set_fatal(format!("cannot create a poll instance: {e}"));
            shared.threads_ready.fetch_add(1, Ordering::SeqCst);
            return ctx.stats;
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(count);
    let mut to_open = count;
    let mut connecting = 0usize;
    let mut ready = false;
    let mut last_timeout_scan = Instant::now();
    let mut closing_since: Option<Instant> = None;
    let mut closing = 0usize;

    loop {
        let now = Instant::now();

        // Open connections, a bounded number at a time.
        while closing_since.is_none() && to_open > 0 && connecting < max_connecting {
            to_open -= 1;
            match open(&mut poll, conns.len(), &mut ctx, now) {
                Ok(conn) => {
                    conns.push(Some(conn));
                    connecting += 1;
                }
                Err(Some(fatal)) => {
                    shared.set_fatal(fatal);
                    shared.attempted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(None) => {
                    ctx.stats.connect_errors += 1;
                    shared.attempted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !ready && to_open == 0 && connecting == 0 {
            ready = true;
            shared.threads_ready.fetch_add(1, Ordering::SeqCst);
        }

        // Connect and handshake timeouts.
        if connecting > 0 && now.duration_since(last_timeout_scan) >= Duration::from_millis(100) {
            last_timeout_scan = now;
            for slot in conns.iter_mut() {
                let timed_out = slot.as_ref().is_some_and(|c| {
                    matches!(c.state, State::Connecting | State::Handshake)
                        && now.duration_since(c.started) > config.connect_timeout
                });
                if timed_out {
                    let conn = slot.take().expect("checked");
                    let (kind, what) = match conn.state {
                        State::Connecting => (Kind::Connect, "connect"),
                        _ => (Kind::Handshake, "handshake"),
                    };
                    let end = err(kind, format!("{what} timed out after {:?}", config.connect_timeout));
                    finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
                }
            }
        }

        // Start the echo traffic once the main thread has set the window.
        if config.mode == Mode::Echo && ready && ctx.window.is_none() && closing_since.is_none() {
            if let Some(&window) = shared.window.get() {
                ctx.window = Some(window);
                ctx.sending = true;
                for slot in conns.iter_mut() {
                    let Some(conn) = slot.as_mut().filter(|c| c.state == State::Open) else { continue };
                    ctx.start_echo(conn, now);
                    if let Err(end) = flush(conn) {
                        let conn = slot.take().expect("present");
                        finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
                    }
                }
            }
        }

        // The end: close every connection with a close handshake.
        let run_over = ctx.window.is_some_and(|(_, until)| now >= until);
        if closing_since.is_none() && (shared.stop.load(Ordering::Relaxed) || run_over) {
            closing_since = Some(now);
            ctx.sending = false;
            for slot in conns.iter_mut() {
                let Some(conn) = slot.as_mut() else { continue };
                match conn.state {
                    State::Open => {
                        ctx.stats.open_at_end += 1;
                        shared.open.fetch_sub(1, Ordering::Relaxed);
                        conn.state = State::Closing;
                        closing += 1;
                        ctx.queue_close(conn);
                        if flush(conn).is_err() {
                            let conn = slot.take().expect("present");
                            finish(&mut poll, conn, End::Clean, &mut ctx, &mut connecting, &mut closing);
                        }
                    }
                    State::Connecting | State::Handshake => {
                        let mut conn = slot.take().expect("present");
                        let _ = poll.registry().deregister(&mut conn.stream);
                        connecting -= 1;
                    }
                    State::Closing | State::Closed => {}
                }
            }
        }
        if let Some(since) = closing_since {
            if closing == 0 {
                break;
            }
            if now.duration_since(since) >= CLOSE_TIMEOUT {
                for conn in conns.iter().flatten() {
                    match conn.state {
                        State::Closing => ctx.stats.unclean_closes += 1,
                        State::Closed => ctx.stats.lingering += 1,
                        _ => {}
                    }
                }
                break;
            }
        }

        // Wait for events.
        let timeout = if closing_since.is_some() {
            Duration::from_millis(20)
        } else if let Some((_, until)) = ctx.window {
            until.saturating_duration_since(now).min(Duration::from_millis(50))
        } else if ready && config.mode == Mode::Echo {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                shared.set_fatal(format!("poll failed: {e}"));
            }
            continue;
        }
        let now = Instant::now();
        for event in events.iter() {
            let index = event.token().0;
            let Some(conn) = conns[index].as_mut() else { continue };
            let was_connecting = matches!(conn.state, State::Connecting | State::Handshake);
            let result = on_event(conn, event, &mut buf, &mut ctx, now);
            let conn = conns[index].as_mut().expect("present");
            if was_connecting && conn.state == State::Open {
                connecting -= 1;
                shared.attempted.fetch_add(1, Ordering::Relaxed);
                shared.open.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(end) = result {
                let conn = conns[index].take().expect("present");
                finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
            }
        }
    }
    if !ready {
        shared.threads_ready.fetch_add(1, Ordering::SeqCst);
    }
    for mut conn in conns.iter_mut().filter_map(Option::take) {
        let _ = poll.registry().deregister(&mut conn.stream);
    }
    ctx.stats
}

/// Starts connecting. `Err(Some(_))` is fatal for the whole run.
fn open(poll: &mut Poll, index: usize, ctx: &mut Ctx<'_>, now: Instant) -> Result<Conn, Option<String>> {
    let config = ctx.config;
    let mut stream = match TcpStream::connect(config.addr) {
        Ok(stream) => stream,
        Err(e) => return Err(connect_error(e, ctx)),
    };
    if let Err(e) = poll.registry().register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE) {
        return Err(Some(format!("cannot register connection #{} with the poller: {e}", index + 1)));
    }
    let mut raw_key = [0u8; 16];
    raw_key[..8].copy_from_slice(&ctx.rng.next().to_ne_bytes());
    raw_key[8..].copy_from_slice(&ctx.rng.next().to_ne_bytes());
    let key = base64(&raw_key);
    let mut out = Vec::with_capacity(256);
    write!(
        out,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: emitws-load\r\n",
        config.path, config.host
    )
    .expect("writing to a Vec");
    if config.deflate {
        write!(out, "Sec-WebSocket-Extensions: {}\r\n", client_offer(&DeflateConfig::default())).expect("a Vec");
    }
    out.extend_from_slice(b"\r\n");
    #[cfg(feature = "tls")]
    let tls = match &config.tls {
        Some((connector, name)) => match connector.session(name) {
            Ok(session) => Some(Box::new(session)),
            Err(e) => return Err(Some(format!("TLS: {e}"))),
        },
        None => None,
    };
    Ok(Conn {
        stream,
        #[cfg(feature = "tls")]
        tls,
        state: State::Connecting,
        started: now,
        accept: accept_key(key.as_bytes()),
        head: Vec::new(),
        decoder: Decoder::new(Role::Client),
        deflate: None,
        out,
        written: 0,
        in_flight: VecDeque::with_capacity(if config.mode == Mode::Echo { config.in_flight } else { 0 }),
        sent: 0,
    })
}

/// Sorts a failed `connect()` into fatal (no point going on) or a counted error.
fn connect_error(e: io::Error, ctx: &mut Ctx<'_>) -> Option<String> {
    match e.raw_os_error() {
        Some(24) | Some(23) => {
            let limit = ctx.config.open_files_limit.map_or_else(String::new, |n| format!(" (limit: {n})"));
            Some(format!(
                "cannot open more connections: too many open files{limit}; raise `ulimit -n` or use fewer \
                 connections ({e})"
            ))
        }
        Some(99) => Some(format!("cannot open more connections: out of local ports ({e})")),
        _ => {
            ctx.shared.report(format_args!("connect to {}: {e}", ctx.config.addr));
            None
        }
    }
}

/// Removes a connection for good, counting how it ended.
fn finish(poll: &mut Poll, mut conn: Conn, end: End, ctx: &mut Ctx<'_>, connecting: &mut usize, closing: &mut usize) {
    let _ = poll.registry().deregister(&mut conn.stream);
    match conn.state {
        State::Connecting | State::Handshake => {
            *connecting -= 1;
            ctx.shared.attempted.fetch_add(1, Ordering::Relaxed);
        }
        State::Open => {
            ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        State::Closing | State::Closed => {
            // Whatever happens after our close frame is not an error.
            *closing -= 1;
            return;
        }
    }
    if let End::Error(kind, message) = end {
        let counter = match kind {
            Kind::Connect => &mut ctx.stats.connect_errors,
            Kind::Handshake => &mut ctx.stats.handshake_errors,
            Kind::Dropped => &mut ctx.stats.dropped,
            Kind::Protocol => &mut ctx.stats.protocol_errors,
        };
        *counter += 1;
        let what = match kind {
            Kind::Connect => "", // The message says "connect ..." already.
            Kind::Handshake => "handshake: ",
            Kind::Dropped => "connection lost: ",
            Kind::Protocol => "protocol error: ",
        };
        ctx.shared.report(format_args!("{what}{message}"));
    }
}

/// Handles one readiness event. `Err` ends the connection.
fn on_event(
    conn: &mut Conn,
    event: &mio::event::Event,
    buf: &mut [u8],
    ctx: &mut Ctx<'_>,
    now: Instant,
) -> Result<(), End> {
    if conn.state == State::Connecting {
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Err(err(Kind::Connect, format!("connect to {}: {e}", ctx.config.addr)));
        }
        match conn.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                if event.is_error() || event.is_read_closed() || event.is_write_closed() {
                    return Err(err(Kind::Connect, format!("connect to {}: failed", ctx.config.addr)));
                }
                return Ok(()); // Not yet.
            }
            Err(e) => return Err(err(Kind::Connect, format!("connect to {}: {e}", ctx.config.addr))),
        }
        let _ = conn.stream.set_nodelay(true);
        conn.state = State::Handshake;
        return flush(conn).map_err(|_| err(Kind::Handshake, "could not send the upgrade request"));
    }
    if event.is_writable() || event.is_write_closed() {
        flush(conn)?;
    }
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        loop {
            let n = match conn.read(buf) {
                Ok(0) => {
                    return Err(match conn.state {
                        State::Handshake => err(Kind::Handshake, "server closed the connection during the handshake"),
                        State::Closing | State::Closed => End::Clean,
                        _ => err(Kind::Dropped, "server closed the TCP connection without a close frame"),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let kind = if conn.state == State::Handshake { Kind::Handshake } else { Kind::Dropped };
                    return Err(err(kind, format!("read: {e}")));
                }
            };
            let data = &mut buf[..n];
            if conn.state == State::Handshake {
                on_response(conn, data, ctx, now)?;
            } else {
                on_frames(conn, data, ctx, now)?;
            }
            // A short read drained the socket; with edge-triggered readiness, more
            // data (or EOF) raises a new event. Saves a read() that would say EAGAIN.
            // Not so once the peer's FIN is known: it may be queued behind this data,
            // and no new event would announce it.
            if n < buf.len() && !event.is_read_closed() && !conn.is_tls() {
                break;
            }
        }
        flush(conn)?;
    }
    Ok(())
}

/// Accumulates and checks the upgrade response; any bytes after it are frames.
fn on_response(conn: &mut Conn, data: &mut [u8], ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    conn.head.extend_from_slice(data);
    let Some(end) = conn.head.windows(4).position(|w| w == b"\r\n\r\n") else {
        if conn.head.len() > MAX_RESPONSE_HEAD {
            return Err(err(Kind::Handshake, "response head over 16 KiB"));
        }
        return Ok(());
    };
    let head = std::mem::take(&mut conn.head);
    let agreement = check_response(&head[..end], &conn.accept, ctx.config.deflate)
        .map_err(|message| err(Kind::Handshake, message))?;
    if let Some(agreement) = agreement {
        let compressor = Compressor::new(&agreement, Role::Client, &DeflateConfig::default());
        conn.deflate = Some(Box::new((compressor, Decompressor::new(&agreement, Role::Client))));
        conn.decoder.allow_extension_rsv(RSV1);
    }
    conn.accept = String::new();
    conn.state = State::Open;
    if ctx.sending {
        ctx.start_echo(conn, now);
    } else if ctx.config.deflate {
        // Idle mode: one echo, so the server's compression state exists.
        ctx.queue_message(conn, now);
    }
    let mut rest = head[end + 4..].to_vec();
    if !rest.is_empty() {
        on_frames(conn, &mut rest, ctx, now)?;
    }
    Ok(())
}

/// Checks the 101 and returns the permessage-deflate agreement, if we offered it.
fn check_response(head: &[u8], accept: &str, offered_deflate: bool) -> Result<Option<DeflateAgreement>, String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") || code != "101" {
        return Err(format!("expected `101 Switching Protocols`, got {status:?}"));
    }
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    match header("sec-websocket-accept") {
        Some(value) if value == accept => {}
        Some(value) => return Err(format!("wrong Sec-WebSocket-Accept {value:?} (expected {accept:?})")),
        None => return Err("no Sec-WebSocket-Accept header".into()),
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err("no `Upgrade: websocket` header".into());
    }
    let extensions = header("sec-websocket-extensions");
    match (extensions, offered_deflate) {
        (None, false) => Ok(None),
        (None, true) => Err("the server declined permessage-deflate".into()),
        (Some(value), false) => Err(format!("extensions {value:?} that were never offered")),
        (Some(value), true) => match &parse_extensions(value.as_bytes())[..] {
            [answer] if answer.name == "permessage-deflate" => accept_response(answer, &DeflateConfig::default())
                .map(Some)
                .map_err(|e| format!("bad permessage-deflate answer {value:?}: {e}")),
            _ => Err(format!("extensions {value:?} that were never offered")),
        },
    }
}

/// Decodes server frames from `data`: echoes are checked and timed, pings answered.
fn on_frames(conn: &mut Conn, data: &mut [u8], ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    if conn.state == State::Closed {
        return Ok(()); // Nothing may follow a close frame; just wait for EOF.
    }
    let mut pos = 0;
    while pos < data.len() {
        let decoded = match conn.decoder.decode(&mut data[pos..], &ctx.limits) {
            Ok(decoded) => decoded,
            Err(e) => {
                return Err(match conn.state {
                    State::Closing => End::Clean,
                    _ => err(Kind::Protocol, format!("{e:?} (close code {})", e.close_code().0)),
                })
            }
        };
        pos += decoded.consumed;
        match decoded.event {
            None => {}
            Some(Event::Compressed { text, payload: compressed }) => {
                if conn.state == State::Closing {
                    continue;
                }
                let Some((_, decompressor)) = conn.deflate.as_deref_mut() else {
                    unreachable!("RSV1 is only allowed once permessage-deflate is agreed")
                };
                ctx.inflated.clear();
                if let Err(e) = decompressor.decompress(compressed, &mut ctx.inflated, usize::MAX) {
                    return Err(err(Kind::Protocol, format!("compressed echo: {e}")));
                }
                let inflated = std::mem::take(&mut ctx.inflated);
                let message = match text {
                    true => Message::Text(std::str::from_utf8(&inflated).unwrap_or("<invalid UTF-8>")),
                    false => Message::Binary(&inflated),
                };
                let result = check_echo(&mut conn.in_flight, message, ctx, now);
                ctx.inflated = inflated;
                result?;
                if ctx.sending {
                    ctx.queue_message(conn, now);
                }
            }
            Some(Event::Message(message)) => {
                if conn.state == State::Closing {
                    continue;
                }
                check_echo(&mut conn.in_flight, message, ctx, now)?;
                if ctx.sending {
                    ctx.queue_message(conn, now);
                }
            }
            Some(Event::Ping(payload)) if conn.state != State::Closing => {
                let key = (ctx.rng.next() as u32).to_ne_bytes();
                encode_frame(&mut conn.out, OpCode::Pong, true, Some(key), payload);
            }
            Some(Event::Ping(_)) => {}
            Some(Event::Pong(_)) => {}
            Some(Event::Close(code, reason)) => {
                if conn.state == State::Closing {
                    conn.state = State::Closed;
                    return Ok(());
                }
                let code = code.map_or_else(|| "none".to_string(), |c| c.0.to_string());
                return Err(err(Kind::Dropped, format!("server sent close (code {code}, reason {reason:?})")));
            }
        }
    }
    Ok(())
}

/// Checks one echo against what was sent (the oldest in `in_flight`) and
/// records its round trip.
fn check_echo(
    in_flight: &mut VecDeque<(Instant, u32)>,
    message: Message<'_>,
    ctx: &mut Ctx<'_>,
    now: Instant,
) -> Result<(), End> {
    let payload = ctx.config.payload;
    let Some((sent, offset)) = in_flight.pop_front() else {
        return Err(err(Kind::Protocol, "a message arrived that was never sent"));
    };
    let expected = &ctx.pattern[offset as usize..offset as usize + payload];
    let kind_ok = matches!((message, ctx.config.text), (Message::Text(_), true) | (Message::Binary(_), false));
    if !kind_ok || message.as_bytes() != expected {
        ctx.stats.mismatches += 1;
        let got = message.as_bytes();
        ctx.shared.report(format_args!(
            "echo mismatch: sent {} {} bytes, got {} {} bytes{}",
            if ctx.config.text { "text" } else { "binary" },
            payload,
            if matches!(message, Message::Text(_)) { "text" } else { "binary" },
            got.len(),
            match got.iter().zip(expected).position(|(a, b)| a != b) {
                Some(at) => format!(", first difference at byte {at}"),
                None => String::new(),
            }
        ));
    }
    if let Some((from, until)) = ctx.window {
        if now >= from && now < until {
            ctx.stats.messages += 1;
            ctx.stats.latency.record(now.duration_since(sent).as_nanos() as u64);
        }
    }
    Ok(())
}

impl Conn {
    /// Reads what the server sent (decrypted, on wss://).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.read(&mut self.stream, buf);
        }
        self.stream.read(buf)
    }

    fn write(&mut self, from: usize) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return tls.write(&mut self.stream, &self.out[from..]);
        }
        self.stream.write(&self.out[from..])
    }

    /// Sends TLS records still waiting; WouldBlock is fine (the next writable event comes back here).
    fn flush_tls(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_deref_mut() {
            return match tls.flush(&mut self.stream) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                _ => Ok(()),
            };
        }
        Ok(())
    }

    /// TLS may hold decrypted bytes back: a short read does not mean the socket is drained.
    fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
}

/// Writes as much of `conn.out` as the socket takes.
fn flush(conn: &mut Conn) -> Result<(), End> {
    if let Err(e) = conn.flush_tls() {
        return Err(err(Kind::Dropped, format!("TLS write: {e}")));
    }
    while conn.written < conn.out.len() {
        match conn.write(conn.written) {
            Ok(0) => return Err(err(Kind::Dropped, "write returned 0")),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(conn.state, State::Closing | State::Closed) => {
                return Err(err(Kind::Dropped, format!("write: {e}")))
            }
            Err(e) => {
                let kind = if conn.state == State::Handshake { Kind::Handshake } else { Kind::Dropped };
                return Err(err(kind, format!("write: {e}")));
            }
        }
    }
    conn.out.clear();
    conn.written = 0;
    Ok(())
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_response_check() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let ok = "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(check_response(ok.as_bytes(), &accept, false), Ok(None));
        assert!(check_response(b"HTTP/1.1 400 Bad Request", &accept, false).is_err());
        assert!(check_response(ok.replace("xOo=", "xOx=").as_bytes(), &accept, false).is_err());
        assert!(check_response(ok.as_bytes(), &accept, true).is_err(), "declined compression is an error");
        let deflate = format!("{ok}\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover");
        let agreement = check_response(deflate.as_bytes(), &accept, true).unwrap().unwrap();
        assert!(agreement.server_no_context_takeover);
        assert!(check_response(deflate.as_bytes(), &accept, false).is_err(), "never offered");
    }

    #[test]
    fn pattern_is_printable_and_offsets_differ() {
        // JSON repeats its keys, so only messages of an event or more differ at every offset.
        for (json, len) in [(false, 20), (true, 200)] {
            let p = pattern(len + PATTERN_SLACK, json);
            assert_eq!(p.len(), len + PATTERN_SLACK);
            assert!(p.iter().all(|b| (b' '..=b'~').contains(b)));
            for a in 0..PATTERN_SLACK {
                for b in a + 1..PATTERN_SLACK {
                    assert_ne!(p[a..a + len], p[b..b + len], "offsets {a} and {b}");
                }
            }
        }
    }
}
