//! One client thread: a mio `Poll` driving its share of the connections.
//!
//! Connections are opened gradually (a bounded number of connects and
//! handshakes in flight; with emitws.v1 in fanout and idle mode, each then
//! joins the room), then wait for the run to start. In echo mode every
//! connection keeps K masked messages in flight, checking each echo against
//! what was sent and recording its round trip; in fanout mode publishers send
//! a message each time their own copy of the previous one comes back, and
//! every member checks it gets each publisher's messages in order; in idle
//! mode connections only answer pings; in resume-storm mode connections
//! follow the phases the main thread sets (see `storm`): they are cut, and
//! reconnect to resume their sessions. At the end every open connection is
//! closed with a close handshake (bounded in time).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use emitws::app::{PROTOCOL, PROTOCOL_V2};
use emitws::proto::deflate::{client_offer, Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use emitws::proto::handshake::client::{encode_key, Accepted, Offer, ResponseReader, UpgradeRequest};
use emitws::proto::handshake::server::RequestLimits;
use emitws::proto::{
    encode_frame, encode_frame_with_rsv, CloseCode, Decoder, Event, Limits, MaskRng, Message, OpCode, Role,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Config, Mode};
use crate::storm::{self, phase, Outcome, Session, StormStats};
use hdrhistogram::Histogram;

/// The RSV bit of a compressed message.
const RSV1: u8 = 0b100;
/// Bytes read from a socket at a time, into the thread's one read buffer.
const READ_BUFFER: usize = 256 << 10;
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
    /// Fanout: send times in messages are nanoseconds since this.
    pub epoch: Instant,
    /// Fanout: messages published, all threads.
    pub published: AtomicU64,
    /// Fanout: deliveries counted so far, all threads (each adds its own at every loop turn).
    pub delivered: AtomicU64,
    /// Fanout: threads that have stopped publishing at the end of the measured time.
    pub quiet: AtomicUsize,
    /// Resume-storm: the phase the main thread has set (`storm::phase`).
    pub phase: AtomicU8,
    /// Resume-storm: phases acted on, all threads together.
    pub acked: AtomicUsize,
    /// Resume-storm: sessions cut, and resumes answered (or failed) so far.
    pub sessions: AtomicUsize,
    pub answered: AtomicUsize,
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
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            quiet: AtomicUsize::new(0),
            phase: AtomicU8::new(phase::JOINED),
            acked: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        }
    }

    pub fn set_fatal(&self, message: String) {
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

/// The largest latency recorded as itself (larger ones count as this): an hour, in nanoseconds.
const MAX_LATENCY: u64 = 3_600_000_000_000;

/// What one thread counted.
pub struct Stats {
    /// Echoes (fanout: deliveries) received during the measured window.
    pub messages: u64,
    /// Round trips of those echoes (fanout: publish-to-delivery times), in
    /// nanoseconds, to 3 significant digits (0.1%). Recording allocates nothing.
    pub latency: Histogram<u64>,
    /// Fanout: deliveries over the whole run, warm-up and drain included.
    pub delivered: u64,
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
    /// Resume-storm: how the resumes went.
    pub storm: StormStats,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            messages: 0,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY, 3)
                .expect("1 ns to an hour at 3 digits is a valid range"),
            delivered: 0,
            connect_errors: 0,
            handshake_errors: 0,
            dropped: 0,
            protocol_errors: 0,
            mismatches: 0,
            open_at_end: 0,
            unclean_closes: 0,
            lingering: 0,
            storm: StormStats::default(),
        }
    }
}

impl Stats {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.handshake_errors + self.dropped + self.protocol_errors + self.mismatches
    }

    pub fn merge(&mut self, other: &Stats) {
        self.messages += other.messages;
        self.latency.add(&other.latency).expect("every thread's histogram has the same range");
        self.delivered += other.delivered;
        self.connect_errors += other.connect_errors;
        self.handshake_errors += other.handshake_errors;
        self.dropped += other.dropped;
        self.protocol_errors += other.protocol_errors;
        self.mismatches += other.mismatches;
        self.open_at_end += other.open_at_end;
        self.unclean_closes += other.unclean_closes;
        self.lingering += other.lingering;
        self.storm.merge(&other.storm);
    }
}

/// Masks and handshake keys, from the core's xorshift64* (`MaskRng`). Not cryptographic; this is a load tool.
pub struct Rng(MaskRng);

impl Rng {
    pub fn seeded(salt: u64) -> Rng {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = (time as u64) ^ ((std::process::id() as u64) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng::fixed(seed)
    }

    pub fn fixed(seed: u64) -> Rng {
        Rng(MaskRng::from_seed(seed | 1))
    }

    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
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
    /// emitws.v1, fanout, idle and resume-storm: `[1,1,"/join"]` sent, waiting for its reply.
    Joining,
    /// Resume-storm: `@resume` sent, receiving the replay and waiting for the reply.
    Resuming,
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
    /// The Sec-WebSocket-Key sent, then (after the handshake) nothing.
    key: String,
    /// The response head as it arrives.
    head: ResponseReader,
    decoder: Decoder,
    /// Compression both ways, once permessage-deflate is agreed.
    deflate: Option<Box<(Compressor, Decompressor)>>,
    out: Vec<u8>,
    written: usize,
    /// Send time and pattern offset of each message in flight, oldest first.
    in_flight: VecDeque<(Instant, u32)>,
    /// Messages sent (echo: the last request id; fanout: the last sequence number).
    sent: u64,
    /// Fanout: this connection's publisher number, if it publishes.
    publisher: Option<u16>,
    /// Fanout: the last sequence number received from each publisher.
    seen: Vec<u64>,
    /// Resume-storm: what the connection keeps across the cut.
    session: Option<Box<Session>>,
    /// Socket.IO binary: the request whose acknowledgement's attachment comes next.
    attachment_of: Option<u64>,
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
    /// Where emitws.v1 envelopes and fanout messages are written, and expected answers.
    envelope: Vec<u8>,
    expected: Vec<u8>,
    /// Fanout: `stats.delivered` as last added to `shared.delivered`.
    delivered_shared: u64,
    /// Echo messages are being sent.
    sending: bool,
    window: Option<(Instant, Instant)>,
    /// Resume-storm: the last phase this thread acted on, and the sessions cut, waiting to resume.
    phase: u8,
    sessions: Vec<Session>,
}

impl Ctx<'_> {
    /// Appends the next echo message to `conn.out`: the payload, or with
    /// emitws.v1 the request `[1,ID,"/echo","PAYLOAD"]` (emitws.v2: its
    /// binary form; Socket.IO: the event `42ID["echo","PAYLOAD"]`).
    #[inline]
    fn queue_message(&mut self, conn: &mut Conn, now: Instant) {
        let offset = (conn.sent % PATTERN_SLACK as u64) as usize;
        conn.sent += 1;
        let payload = &self.pattern[offset..offset + self.config.payload];
        if self.config.v2 {
            let mut envelope = std::mem::take(&mut self.envelope);
            envelope.clear();
            envelope.push(1);
            write_leb128(&mut envelope, conn.sent);
            envelope.push(5);
            envelope.extend_from_slice(b"/echo");
            envelope.extend_from_slice(payload);
            self.queue_frame(conn, &envelope);
            self.envelope = envelope;
        } else if self.config.socketio_binary {
            let mut envelope = std::mem::take(&mut self.envelope);
            envelope.clear();
            write!(envelope, "451-{}[\"bin\",{{\"_placeholder\":true,\"num\":0}}]", conn.sent).expect("a Vec");
            self.queue_frame_as(conn, OpCode::Text, &envelope);
            self.queue_frame_as(conn, OpCode::Binary, payload);
            self.envelope = envelope;
        } else if self.config.socketio {
            let mut envelope = std::mem::take(&mut self.envelope);
            envelope.clear();
            write!(envelope, "42{}[\"echo\",\"", conn.sent).expect("writing to a Vec");
            envelope.extend_from_slice(payload);
            envelope.extend_from_slice(b"\"]");
            self.queue_frame(conn, &envelope);
            self.envelope = envelope;
        } else if self.config.app {
            let mut envelope = std::mem::take(&mut self.envelope);
            envelope.clear();
            write!(envelope, "[1,{},\"/echo\",\"", conn.sent).expect("writing to a Vec");
            envelope.extend_from_slice(payload);
            envelope.extend_from_slice(b"\"]");
            self.queue_frame(conn, &envelope);
            self.envelope = envelope;
        } else {
            self.queue_frame(conn, payload);
        }
        conn.in_flight.push_back((now, offset as u32));
    }

    /// Appends one masked message to `conn.out`, compressed if agreed.
    fn queue_frame(&mut self, conn: &mut Conn, message: &[u8]) {
        self.queue_frame_as(conn, self.opcode, message);
    }

    /// [`queue_frame`](Self::queue_frame) with `opcode` rather than the run's.
    fn queue_frame_as(&mut self, conn: &mut Conn, opcode: OpCode, message: &[u8]) {
        let key = (self.rng.next() as u32).to_ne_bytes();
        match conn.deflate.as_deref_mut() {
            Some((compressor, _)) => {
                self.compressed.clear();
                compressor.compress(message, &mut self.compressed);
                encode_frame_with_rsv(&mut conn.out, opcode, true, RSV1, Some(key), &self.compressed);
            }
            None => encode_frame(&mut conn.out, opcode, true, Some(key), message),
        }
    }

    /// Fanout: appends the publisher's next message, `[0,"/pub","…"]`, whose
    /// string holds the publisher, the sequence number and the send time (hex),
    /// padded with dots to --payload bytes.
    fn queue_publish(&mut self, conn: &mut Conn, publisher: u16) {
        conn.sent += 1;
        let sent_at = self.shared.epoch.elapsed().as_nanos() as u64;
        let mut envelope = std::mem::take(&mut self.envelope);
        envelope.clear();
        write!(envelope, "{FANOUT_PREFIX}{publisher:04x}{:010x}{sent_at:016x}", conn.sent).expect("a Vec");
        envelope.resize(FANOUT_PREFIX.len() + self.config.payload, b'.');
        envelope.extend_from_slice(FANOUT_SUFFIX.as_bytes());
        self.queue_frame(conn, &envelope);
        self.envelope = envelope;
        self.shared.published.fetch_add(1, Ordering::Relaxed);
    }

    /// emitws.v1: joins the room before the connection counts as open (in
    /// resume-storm mode, the connection's history room).
    fn queue_join(&mut self, conn: &mut Conn) {
        match &conn.session {
            Some(session) => {
                let join = format!("[1,1,\"/join\",\"{}\"]", session.room);
                self.queue_frame(conn, join.as_bytes());
            }
            None => self.queue_frame(conn, JOIN),
        }
    }

    /// Resume-storm: a session's connection is cut: dropped at once with
    /// SO_LINGER 0, so the server sees a reset (1006, its session kept) and
    /// no TIME_WAIT is left here. Its session waits for the resume.
    fn cut(&mut self, poll: &mut Poll, mut conn: Conn) {
        let _ = poll.registry().deregister(&mut conn.stream);
        let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        self.sessions.push(*conn.session.expect("a resume-storm connection has its session"));
    }

    fn queue_close(&mut self, conn: &mut Conn) {
        let key = (self.rng.next() as u32).to_ne_bytes();
        encode_frame(&mut conn.out, OpCode::Close, true, Some(key), &CloseCode::NORMAL.0.to_be_bytes());
    }

    /// Starts the traffic on a connection: K echo messages, or a publisher's first message.
    fn start(&mut self, conn: &mut Conn, now: Instant) {
        match (self.config.mode, conn.publisher) {
            (Mode::Echo, _) => {
                for _ in 0..self.config.in_flight {
                    self.queue_message(conn, now);
                }
            }
            (Mode::Fanout, Some(publisher)) => self.queue_publish(conn, publisher),
            _ => {}
        }
    }

    /// The connection is ready (handshake done, and the room joined if asked).
    fn opened(&mut self, conn: &mut Conn, now: Instant) {
        conn.state = State::Open;
        if self.sending {
            self.start(conn, now);
        } else if self.config.mode == Mode::Idle && self.config.deflate {
            // One echo, so the server's compression state exists.
            self.queue_message(conn, now);
        }
    }
}

/// The start of the server's `@ready` event (emitws.v1).
const READY: &[u8] = b"[0,\"@ready\",";

/// The request that joins the room (emitws.v1), and the start of its reply.
const JOIN: &[u8] = b"[1,1,\"/join\"]";
const JOINED: &[u8] = b"[2,1,";
/// A fanout message is `[0,"/pub","` + --payload bytes + `"]`.
const FANOUT_PREFIX: &str = "[0,\"/pub\",\"";
const FANOUT_SUFFIX: &str = "\"]";

/// Runs one client thread with `count` connections, numbered from `first`
/// over all threads. Returns what it counted.
pub fn run(
    id: usize,
    first: usize,
    count: usize,
    max_connecting: usize,
    config: &Config,
    pattern: &[u8],
    shared: &Shared,
) -> Stats {
    let mut ctx = Ctx {
        config,
        pattern,
        shared,
        rng: Rng::seeded(id as u64 + 1),
        stats: Stats::default(),
        limits: Limits::default().max_frame_size(1 << 30).max_message_size(1 << 30).max_fragments(u32::MAX),
        opcode: if config.text { OpCode::Text } else { OpCode::Binary },
        compressed: Vec::new(),
        inflated: Vec::new(),
        envelope: Vec::new(),
        expected: Vec::new(),
        delivered_shared: 0,
        sending: false,
        window: None,
        phase: phase::JOINED,
        sessions: Vec::new(),
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
    // Resume-storm: this thread's sessions are reconnecting.
    let mut resuming = false;

    loop {
        let now = Instant::now();

        // Open connections, a bounded number at a time.
        while closing_since.is_none() && to_open > 0 && connecting < max_connecting {
            to_open -= 1;
            let session = if resuming { ctx.sessions.pop().map(Box::new) } else { None };
            match open(&mut poll, conns.len(), first + conns.len(), session, &mut ctx, now) {
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
                    matches!(c.state, State::Connecting | State::Handshake | State::Joining | State::Resuming)
                        && now.duration_since(c.started) > config.connect_timeout
                });
                if timed_out {
                    let conn = slot.take().expect("checked");
                    let (kind, what) = match conn.state {
                        State::Connecting => (Kind::Connect, "connect"),
                        State::Handshake => (Kind::Handshake, "handshake"),
                        State::Resuming => (Kind::Handshake, "resuming"),
                        _ => (Kind::Handshake, "joining the room"),
                    };
                    let end = err(kind, format!("{what} timed out after {:?}", config.connect_timeout));
                    finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
                }
            }
        }

        // Resume-storm: act on each phase the main thread sets, in order.
        if config.mode == Mode::ResumeStorm && ready && closing_since.is_none() {
            while ctx.phase < shared.phase.load(Ordering::SeqCst) {
                ctx.phase += 1;
                if ctx.phase == phase::RESUME {
                    to_open = ctx.sessions.len();
                    resuming = true;
                    continue;
                }
                // With --kill the cut is the node's death; whatever it left open goes once it is dead.
                let killing = config.storm.as_ref().is_some_and(|storm| storm.kill.is_some());
                if ctx.phase == phase::AWAY || !killing {
                    for slot in conns.iter_mut() {
                        if slot.as_ref().is_some_and(|conn| conn.state == State::Open) {
                            ctx.cut(&mut poll, slot.take().expect("checked"));
                        }
                    }
                }
                shared.acked.fetch_add(1, Ordering::SeqCst);
            }
        }
        if resuming && to_open == 0 && connecting == 0 {
            resuming = false;
            shared.acked.fetch_add(1, Ordering::SeqCst);
        }

        // Start the traffic once the main thread has set the window.
        if matches!(config.mode, Mode::Echo | Mode::Fanout) && ready && ctx.window.is_none() && closing_since.is_none()
        {
            if let Some(&window) = shared.window.get() {
                ctx.window = Some(window);
                ctx.sending = true;
                for slot in conns.iter_mut() {
                    let Some(conn) = slot.as_mut().filter(|c| c.state == State::Open) else { continue };
                    ctx.start(conn, now);
                    if let Err(end) = flush(conn) {
                        let conn = slot.take().expect("present");
                        finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
                    }
                }
            }
        }

        // Fanout: publishing stops at the end of the measured time; the main
        // thread stops the run once the last deliveries are in.
        let run_over = ctx.window.is_some_and(|(_, until)| now >= until);
        if config.mode == Mode::Fanout && run_over && ctx.sending {
            ctx.sending = false;
            shared.quiet.fetch_add(1, Ordering::SeqCst);
        }
        if matches!(config.mode, Mode::Fanout | Mode::ResumeStorm) && ctx.stats.delivered != ctx.delivered_shared {
            shared.delivered.fetch_add(ctx.stats.delivered - ctx.delivered_shared, Ordering::Relaxed);
            ctx.delivered_shared = ctx.stats.delivered;
        }

        // The end: close every connection with a close handshake.
        let closing_time = run_over && config.mode == Mode::Echo;
        if closing_since.is_none() && (shared.stop.load(Ordering::Relaxed) || closing_time) {
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
                    State::Connecting | State::Handshake | State::Joining | State::Resuming => {
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
        } else if let Some((_, until)) = ctx.window.filter(|(_, until)| now < *until) {
            until.saturating_duration_since(now).min(Duration::from_millis(50))
        } else if ctx.window.is_some() {
            Duration::from_millis(5) // Fanout, draining.
        } else if ready && matches!(config.mode, Mode::Echo | Mode::Fanout) {
            Duration::from_millis(1)
        } else if config.mode == Mode::ResumeStorm {
            Duration::from_millis(5) // Phases are noticed within this.
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
            let was_connecting =
                matches!(conn.state, State::Connecting | State::Handshake | State::Joining | State::Resuming);
            let result = on_event(conn, event, &mut buf, &mut ctx, now);
            let conn = conns[index].as_mut().expect("present");
            if was_connecting && conn.state == State::Open {
                connecting -= 1;
                shared.attempted.fetch_add(1, Ordering::Relaxed);
                shared.open.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(end) = result {
                let conn = conns[index].take().expect("present");
                // With --kill, a session's loss between the cut and the resume is the cut.
                let cut = (phase::CUT..phase::RESUME).contains(&ctx.phase) && conn.session.is_some();
                if cut && conn.state == State::Open {
                    ctx.cut(&mut poll, conn);
                } else {
                    finish(&mut poll, conn, end, &mut ctx, &mut connecting, &mut closing);
                }
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

/// Starts connecting connection `number` (over all threads), token `index`;
/// in resume-storm mode, a new one, or the given session's resume.
/// `Err(Some(_))` is fatal for the whole run.
fn open(
    poll: &mut Poll,
    index: usize,
    number: usize,
    resume: Option<Box<Session>>,
    ctx: &mut Ctx<'_>,
    now: Instant,
) -> Result<Conn, Option<String>> {
    let config = ctx.config;
    let (addr, host, path, session) = match (&config.storm, resume) {
        (Some(storm), Some(mut session)) => {
            let user = storm::user(session.number);
            let path = storm::with_query(&storm.resume.path, &[("user", &user), ("emitws_resume", "1")]);
            session.received = 0;
            ctx.stats.storm.first_dial.get_or_insert(now);
            (storm.resume.addr, &storm.resume.host, Cow::Owned(path), Some(session))
        }
        (Some(storm), None) => {
            let path = storm::with_query(&config.path, &[("user", &storm::user(number))]);
            (config.addr, &config.host, Cow::Owned(path), Some(Box::new(Session::new(number, storm.rooms))))
        }
        (None, _) => (config.addr, &config.host, Cow::Borrowed(config.path.as_str()), None),
    };
    let mut stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) => return Err(connect_error(e, ctx)),
    };
    if let Err(e) = poll.registry().register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE) {
        return Err(Some(format!("cannot register connection #{} with the poller: {e}", index + 1)));
    }
    let mut raw_key = [0u8; 16];
    raw_key[..8].copy_from_slice(&ctx.rng.next().to_ne_bytes());
    raw_key[8..].copy_from_slice(&ctx.rng.next().to_ne_bytes());
    let key = encode_key(raw_key);
    let mut out = Vec::with_capacity(256);
    UpgradeRequest {
        host,
        target: &path,
        key: &key,
        protocols: &offered_protocols(config),
        extensions: config.deflate.then(|| client_offer(&DeflateConfig::default())).as_deref(),
        headers: &[("User-Agent".to_string(), "emitws-load".to_string())],
        ..UpgradeRequest::default()
    }
    .write(&mut out);
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
        key,
        head: ResponseReader::default(),
        decoder: Decoder::new(Role::Client),
        deflate: None,
        out,
        written: 0,
        in_flight: VecDeque::with_capacity(if config.mode == Mode::Echo { config.in_flight } else { 0 }),
        sent: 0,
        publisher: (config.mode == Mode::Fanout && number < config.publishers).then_some(number as u16),
        seen: if config.mode == Mode::Fanout { vec![0; config.publishers] } else { Vec::new() },
        session,
        attachment_of: None,
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
        State::Connecting | State::Handshake | State::Joining | State::Resuming => {
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
            // Fanout latency is from the publisher's send to this read.
            let now = if ctx.config.mode == Mode::Fanout { Instant::now() } else { now };
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
    let limits = RequestLimits::default();
    let handshake_error = |e: &dyn std::fmt::Display| err(Kind::Handshake, e.to_string());
    let Some(used) = conn.head.push(data, &limits).map_err(|e| handshake_error(&e))? else {
        return Ok(());
    };
    let config = ctx.config;
    let deflate = DeflateConfig::default();
    let protocols = offered_protocols(config);
    let offer = Offer { key: &conn.key, protocols: &protocols, deflate: config.deflate.then_some(&deflate) };
    let accepted = conn.head.response(&limits).and_then(|response| response.validate(&offer));
    let agreement = accepted.map_err(|e| handshake_error(&e)).and_then(|accepted| {
        check_accepted(accepted, config.deflate, config.app).map_err(|message| err(Kind::Handshake, message))
    })?;
    if let Some(agreement) = agreement {
        let compressor = Compressor::new(&agreement, Role::Client, &deflate);
        conn.deflate = Some(Box::new((compressor, Decompressor::new(&agreement, Role::Client))));
        conn.decoder.allow_extension_rsv(RSV1);
    }
    conn.key = String::new();
    conn.head = ResponseReader::default();
    let resume = conn.session.as_deref().filter(|_| ctx.phase == phase::RESUME).map(Session::resume_request);
    if let Some(request) = resume {
        conn.state = State::Resuming;
        ctx.queue_frame(conn, request.as_bytes());
    } else if config.app && config.mode != Mode::Echo {
        conn.state = State::Joining;
        ctx.queue_join(conn);
    } else if config.socketio {
        // Open once the namespace is connected (`on_socketio_control`).
        conn.state = State::Joining;
    } else {
        ctx.opened(conn, now);
    }
    let rest = &mut data[used..];
    if !rest.is_empty() {
        on_frames(conn, rest, ctx, now)?;
    }
    Ok(())
}

/// The subprotocols the upgrade request offers: emitws.v1 with `--protocol emitws`.
fn offered_protocols(config: &Config) -> Vec<String> {
    if config.v2 {
        vec![PROTOCOL_V2.to_string()]
    } else if config.app {
        vec![PROTOCOL.to_string()]
    } else {
        Vec::new()
    }
}

/// What this tool asks of a valid answer beyond RFC 6455: the emitws.v1
/// subprotocol, and compression, when offered (a run measures what it asked
/// for or fails). Returns the permessage-deflate agreement, if any.
fn check_accepted(accepted: Accepted, offered_deflate: bool, app: bool) -> Result<Option<DeflateAgreement>, String> {
    if app && accepted.protocol.is_none() {
        return Err(format!("the server did not select the subprotocol {PROTOCOL}"));
    }
    if offered_deflate && accepted.deflate.is_none() {
        return Err("the server declined permessage-deflate".into());
    }
    Ok(accepted.deflate)
}

/// Decodes server frames from `data`: messages are checked and timed, pings answered.
fn on_frames(conn: &mut Conn, data: &mut [u8], ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    if conn.state == State::Closed {
        return Ok(()); // Nothing may follow a close frame; just wait for EOF.
    }
    // Out of the connection while the messages it hands out (borrowing it) are handled.
    let mut decoder = std::mem::replace(&mut conn.decoder, Decoder::new(Role::Client));
    let result = decode_frames(conn, &mut decoder, data, ctx, now);
    conn.decoder = decoder;
    result
}

fn decode_frames(
    conn: &mut Conn,
    decoder: &mut Decoder,
    data: &mut [u8],
    ctx: &mut Ctx<'_>,
    now: Instant,
) -> Result<(), End> {
    let mut pos = 0;
    while pos < data.len() {
        let decoded = match decoder.decode(&mut data[pos..], &ctx.limits) {
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
                let result = on_message(conn, message, ctx, now);
                ctx.inflated = inflated;
                result?;
            }
            Some(Event::Message(message)) => {
                if conn.state == State::Closing {
                    continue;
                }
                on_message(conn, message, ctx, now)?;
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

/// A data message from the server: the reply to the join, a fanout
/// delivery, or an echo (after which the next message is sent).
fn on_message(conn: &mut Conn, message: Message<'_>, ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    if ctx.config.mode == Mode::ResumeStorm {
        return on_storm_message(conn, message, ctx, now);
    }
    // Engine.IO and Socket.IO packets are text; binary frames are attachments.
    if ctx.config.socketio
        && matches!(message, Message::Text(_))
        && on_socketio_control(conn, message.as_bytes(), ctx, now)?
    {
        return Ok(());
    }
    // The server's welcome (PROTOCOL §1) comes first, before any reply. An
    // event-layer server serves emitws.v1 to a client that offers no
    // subprotocol too, so idle connections get it without `--protocol emitws`.
    if (ctx.config.app || ctx.config.mode == Mode::Idle) && message.as_bytes().starts_with(READY) {
        return Ok(());
    }
    if conn.state == State::Joining {
        let reply = message.as_bytes();
        if !(reply.starts_with(JOINED) && reply.ends_with(b"]")) {
            let reply = String::from_utf8_lossy(reply);
            return Err(err(Kind::Handshake, format!("joining the room: expected the reply [2,1,…], got {reply:?}")));
        }
        ctx.opened(conn, now);
        return Ok(());
    }
    if ctx.config.mode == Mode::Fanout {
        return on_delivery(conn, message, ctx, now);
    }
    check_echo(conn, message, ctx, now)?;
    if ctx.sending {
        ctx.queue_message(conn, now);
    }
    Ok(())
}

/// Socket.IO (Engine.IO v4 packets over WebSocket text frames): the
/// Engine.IO open packet `0{…}` is answered with the main namespace's
/// connect `40`, whose answer `40{…}` opens the connection; an Engine.IO
/// ping `2` gets its pong `3`; a connect error `44…` ends the connection.
/// True if the message was one of these.
fn on_socketio_control(conn: &mut Conn, packet: &[u8], ctx: &mut Ctx<'_>, now: Instant) -> Result<bool, End> {
    match packet {
        [b'0', b'{', ..] => ctx.queue_frame_as(conn, OpCode::Text, b"40"),
        b"2" => ctx.queue_frame_as(conn, OpCode::Text, b"3"),
        // A binary acknowledgement's header: its attachment comes next.
        [b'4', b'6', b'1', b'-', ..] if ctx.config.socketio_binary => {
            let id = reply_id(packet, true);
            conn.attachment_of = Some(id.ok_or_else(|| err(Kind::Protocol, "a binary ack without an id"))?);
        }
        [b'4', b'0', ..] if conn.state == State::Joining => ctx.opened(conn, now),
        [b'4', b'4', ..] => {
            let refused = String::from_utf8_lossy(packet);
            return Err(err(Kind::Handshake, format!("Socket.IO connect refused: {refused}")));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Resume-storm: `@ready` (its token is kept), the join's reply, a room
/// broadcast (before the cut, or replayed), or the reply to `@resume`.
fn on_storm_message(conn: &mut Conn, message: Message<'_>, ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    let Message::Text(text) = message else { return Err(err(Kind::Protocol, "a binary message")) };
    let session = conn.session.as_deref_mut().expect("a resume-storm connection has its session");
    if text.as_bytes().starts_with(READY) {
        // Every @ready brings a new token, a resumed one too.
        return session.ready(text).map_err(|message| err(Kind::Protocol, message));
    }
    let reply = text.starts_with("[2,") || text.starts_with("[3,");
    match conn.state {
        State::Joining if reply && !session.token.is_empty() => {
            if !text.starts_with(std::str::from_utf8(JOINED).expect("ASCII")) {
                return Err(err(Kind::Handshake, format!("joining {}: {text}", session.room)));
            }
            ctx.opened(conn, now);
        }
        State::Joining => return Err(err(Kind::Handshake, format!("expected @ready, then the join's reply: {text}"))),
        State::Resuming if reply => {
            let storm = &mut ctx.stats.storm;
            storm.last_reply = storm.last_reply.max(Some(now));
            ctx.stats.latency.saturating_record(now.saturating_duration_since(conn.started).as_nanos() as u64);
            ctx.shared.answered.fetch_add(1, Ordering::Relaxed);
            let missed = ctx.config.storm.as_ref().map_or(0, |storm| storm.missed);
            let (counter, problem) = match session.resumed(text, missed) {
                Outcome::Resumed => (&mut storm.resumed, None),
                Outcome::NotResumed(problem) => (&mut storm.not_resumed, Some(problem)),
                Outcome::NotRecovered(problem) => (&mut storm.not_recovered, Some(problem)),
                Outcome::WrongReplay(problem) => (&mut storm.wrong_replays, Some(problem)),
            };
            *counter += 1;
            if let Some(problem) = problem {
                ctx.shared.report(format_args!("{}: {problem}", storm::user(session.number)));
            }
            // Live deliveries follow (none are published after the resume).
            conn.state = State::Open;
        }
        _ => {
            let (resuming, phase_text) = match (conn.state, ctx.phase) {
                (State::Resuming, _) => (true, storm::MISSED),
                (_, phase::RESUME) => (false, storm::MISSED),
                _ => (false, storm::BEFORE),
            };
            match session.broadcast(text, phase_text) {
                Ok(()) if resuming => ctx.stats.storm.replayed += 1,
                Ok(()) => ctx.stats.delivered += 1,
                Err(problem) => {
                    ctx.stats.mismatches += 1;
                    ctx.shared.report(format_args!("{}: {problem}", storm::user(session.number)));
                }
            }
        }
    }
    Ok(())
}

/// Appends an emitws.v2 id (PROTOCOL.md §10): LEB128, low 7 bits first.
fn write_leb128(out: &mut Vec<u8>, mut id: u64) {
    while id >= 0x80 {
        out.push(id as u8 | 0x80);
        id >>= 7;
    }
    out.push(id as u8);
}

/// Counts a message toward the measured rate and latency if it arrived in the window.
fn record(ctx: &mut Ctx<'_>, now: Instant, sent: Instant) {
    if let Some((from, until)) = ctx.window {
        if now >= from && now < until {
            ctx.stats.messages += 1;
            ctx.stats.latency.saturating_record(now.saturating_duration_since(sent).as_nanos() as u64);
        }
    }
}

/// The id of an emitws.v1 reply `[2,ID,…]` (Socket.IO: an ack `43ID[…]`,
/// or a binary ack's header `461-ID[…]`).
fn reply_id(text: &[u8], socketio: bool) -> Option<u64> {
    let prefix = match (socketio, text.starts_with(b"461-")) {
        (false, _) => &b"[2,"[..],
        (true, false) => b"43",
        (true, true) => b"461-",
    };
    let digits = text.strip_prefix(prefix)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Checks one echo against what was sent (the oldest in `in_flight`) and
/// records its round trip.
fn check_echo(conn: &mut Conn, message: Message<'_>, ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    let payload = ctx.config.payload;
    // Replies come in order, so the oldest message in flight has this id.
    // With --any-order the reply names its request, whose pattern offset
    // (`queue_message`: the id less one, modulo the slack) finds it among
    // those in flight (at most PATTERN_SLACK of them, so offsets are unique).
    let (id, at) = match ctx.config.any_order {
        true => {
            let id = match ctx.config.socketio_binary {
                true => conn.attachment_of.take(),
                false => reply_id(message.as_bytes(), ctx.config.socketio),
            };
            let found = id.and_then(|id| {
                let offset = (id.wrapping_sub(1) % PATTERN_SLACK as u64) as u32;
                Some((id, conn.in_flight.iter().position(|(_, o)| *o == offset)?))
            });
            found.ok_or_else(|| err(Kind::Protocol, "a reply to no request in flight"))?
        }
        false => (conn.sent + 1 - conn.in_flight.len() as u64, 0),
    };
    let Some((sent, offset)) = conn.in_flight.remove(at) else {
        return Err(err(Kind::Protocol, "a message arrived that was never sent"));
    };
    let mut expected = &ctx.pattern[offset as usize..offset as usize + payload];
    if ctx.config.v2 {
        ctx.expected.clear();
        ctx.expected.push(2);
        write_leb128(&mut ctx.expected, id);
        ctx.expected.extend_from_slice(expected);
        expected = &ctx.expected;
    } else if ctx.config.socketio && !ctx.config.socketio_binary {
        ctx.expected.clear();
        write!(ctx.expected, "43{id}[\"").expect("writing to a Vec");
        ctx.expected.extend_from_slice(expected);
        ctx.expected.extend_from_slice(b"\"]");
        expected = &ctx.expected;
    } else if ctx.config.app {
        ctx.expected.clear();
        write!(ctx.expected, "[2,{id},\"").expect("writing to a Vec");
        ctx.expected.extend_from_slice(expected);
        ctx.expected.extend_from_slice(b"\"]");
        expected = &ctx.expected;
    }
    let kind_ok = matches!((message, ctx.config.text), (Message::Text(_), true) | (Message::Binary(_), false));
    if !kind_ok || message.as_bytes() != expected {
        ctx.stats.mismatches += 1;
        let got = message.as_bytes();
        ctx.shared.report(format_args!(
            "echo mismatch: expected {} {} bytes, got {} {} bytes{}{}",
            if ctx.config.text { "text" } else { "binary" },
            expected.len(),
            if matches!(message, Message::Text(_)) { "text" } else { "binary" },
            got.len(),
            match got.iter().zip(expected).position(|(a, b)| a != b) {
                Some(at) => format!(", first difference at byte {at}"),
                None => String::new(),
            },
            match message {
                Message::Text(text) if text.len() <= 200 => format!(": {text:?}"),
                _ => String::new(),
            }
        ));
    }
    record(ctx, now, sent);
    Ok(())
}

/// Fanout: checks a delivery (well formed, next in its publisher's order),
/// records its latency, and lets its publisher send the next message.
fn on_delivery(conn: &mut Conn, message: Message<'_>, ctx: &mut Ctx<'_>, now: Instant) -> Result<(), End> {
    let Some((publisher, seq, sent_at)) = parse_delivery(message, ctx.config.payload) else {
        let got = String::from_utf8_lossy(message.as_bytes());
        return Err(err(Kind::Protocol, format!("not a fanout message of {} bytes: {got:?}", ctx.config.payload)));
    };
    let Some(seen) = conn.seen.get_mut(publisher as usize) else {
        return Err(err(Kind::Protocol, format!("a message from publisher {publisher}, who does not exist")));
    };
    if seq != *seen + 1 {
        ctx.stats.mismatches += 1;
        ctx.shared.report(format_args!(
            "publisher {publisher}: message {seq} arrived after message {} (missing, repeated or out of order)",
            *seen
        ));
    }
    *seen = seq.max(*seen);
    ctx.stats.delivered += 1;
    record(ctx, now, ctx.shared.epoch + Duration::from_nanos(sent_at));
    if ctx.sending && conn.publisher == Some(publisher) && seq == conn.sent {
        ctx.queue_publish(conn, publisher);
    }
    Ok(())
}

/// The publisher, sequence number and send time of a fanout message.
fn parse_delivery(message: Message<'_>, payload: usize) -> Option<(u16, u64, u64)> {
    let Message::Text(text) = message else { return None };
    let rest = text.strip_prefix(FANOUT_PREFIX)?;
    let (body, end) = (rest.get(..payload)?, rest.get(payload..)?);
    // A room with history adds a fourth element, `{"room","offset","epoch"}` (PROTOCOL.md §13).
    let end_ok = end == FANOUT_SUFFIX || (end.starts_with("\",{") && end.ends_with("}]"));
    if !end_ok || !body.is_ascii() {
        return None;
    }
    let hex = |range: std::ops::Range<usize>| u64::from_str_radix(&body[range], 16).ok();
    Some((u16::try_from(hex(0..4)?).ok()?, hex(4..14)?, hex(14..30)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_must_grant_what_the_run_asked_for() {
        let app = || Accepted { protocol: Some(PROTOCOL.to_string()), deflate: None };
        assert_eq!(check_accepted(Accepted::default(), false, false), Ok(None));
        assert_eq!(check_accepted(app(), false, true), Ok(None));
        assert!(check_accepted(Accepted::default(), false, true).is_err(), "emitws.v1 not selected");
        assert!(check_accepted(Accepted::default(), true, false).is_err(), "declined compression is an error");
        let agreement = DeflateAgreement::default();
        let deflate = Accepted { protocol: None, deflate: Some(agreement) };
        assert_eq!(check_accepted(deflate, true, false), Ok(Some(agreement)));
    }

    #[test]
    fn reply_ids_are_read_from_emitws_replies_and_socketio_acks() {
        assert_eq!(reply_id(b"[2,42,\"x\"]", false), Some(42));
        assert_eq!(reply_id(b"4342[\"x\"]", true), Some(42));
        assert_eq!(reply_id(b"4342[\"x\"]", false), None);
        assert_eq!(reply_id(b"42[\"echo\"]", true), None, "an event, not an ack");
        assert_eq!(reply_id(b"43[\"x\"]", true), None, "an ack without an id");
        assert_eq!(reply_id(b"461-42[{\"_placeholder\":true,\"num\":0}]", true), Some(42));
    }

    #[test]
    fn fanout_messages_parse_and_bad_ones_do_not() {
        let message = format!("{FANOUT_PREFIX}000a00000001230123456789abcdef..{FANOUT_SUFFIX}");
        let parsed = parse_delivery(Message::Text(&message), 32);
        assert_eq!(parsed, Some((10, 0x123, 0x0123_4567_89ab_cdef)));
        assert_eq!(parse_delivery(Message::Text(&message), 33), None, "wrong length");
        assert_eq!(parse_delivery(Message::Binary(message.as_bytes()), 32), None, "binary");
        let bad = message.replace("000a", "000g");
        assert_eq!(parse_delivery(Message::Text(&bad), 32), None, "not hex");
        assert_eq!(parse_delivery(Message::Text(&message.replace("/pub", "/bup")), 32), None);
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
