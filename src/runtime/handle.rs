//! Reaching connections from any thread: ids, shared frames and the server handle.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::dial::{ClientBuilder, ClientError, Url};
use crate::proto::compress::SharedCompressed;
use crate::proto::{close_payload, encode_frame, CloseCode, OpCode};

/// A connection's id, unique for the server's lifetime (slots are reused, ids are not
/// until 2^24 connections later on the same slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    pub(crate) fn new(worker: usize, key: usize, generation: u32) -> ConnId {
        ConnId((worker as u64) << 56 | (generation as u64 & 0xff_ffff) << 32 | key as u64)
    }

    /// The index of the worker thread that owns the connection.
    pub fn worker(self) -> usize {
        (self.0 >> 56) as usize
    }

    pub(crate) fn key(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        ((self.0 >> 32) & 0xff_ffff) as u32
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A frame encoded once, to be sent to many connections without copying.
///
/// With permessage-deflate on, it is also compressed at most once, for all
/// the recipients whose agreement lets them take a message compressed on its
/// own (no server context takeover); the others compress it themselves.
///
/// ```
/// use emitws::runtime::SharedFrame;
/// let frame = SharedFrame::text("tick");
/// assert_eq!(frame.as_bytes(), b"\x81\x04tick");
/// ```
#[derive(Clone, Debug)]
pub struct SharedFrame(pub(crate) Arc<SharedBody>);

#[derive(Debug)]
pub(crate) struct SharedBody {
    pub plain: Arc<[u8]>,
    pub opcode: OpCode,
    header_len: usize,
    pub compressed: SharedCompressed,
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &SharedFrame) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SharedFrame {}

impl SharedFrame {
    /// A text message frame.
    pub fn text(text: &str) -> SharedFrame {
        SharedFrame::encode(OpCode::Text, text.as_bytes())
    }

    /// A binary message frame.
    pub fn binary(bytes: &[u8]) -> SharedFrame {
        SharedFrame::encode(OpCode::Binary, bytes)
    }

    fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        let mut out = Vec::with_capacity(payload.len() + 10);
        encode_frame(&mut out, opcode, true, None, payload);
        let header_len = out.len() - payload.len();
        SharedFrame(Arc::new(SharedBody {
            plain: out.into(),
            opcode,
            header_len,
            compressed: SharedCompressed::default(),
        }))
    }

    /// The encoded frame (uncompressed).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0.plain
    }

    /// The message payload.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.0.plain[self.0.header_len..]
    }
}

/// Work handed to a worker from another thread.
pub(crate) enum Command {
    Send(ConnId, SharedFrame),
    Broadcast(Vec<ConnId>, SharedFrame),
    Close(ConnId, CloseCode, String),
    Adopt(mio::net::TcpStream),
    /// A connection accepted elsewhere, with the bytes already read from it (`ServerHandle::adopt`).
    AdoptReceived(mio::net::TcpStream, Box<[u8]>),
    Notify(Box<dyn Any + Send>),
    Connect(Box<super::worker::Dial>),
    Stats(Sender<Stats>),
    Drain(Arc<DrainPlan>),
    Shutdown,
}

/// A drain as every worker follows it: when it began, when its last close is
/// due, what the closes say, and how many were sent (for [`Drain::closes_sent`]).
#[derive(Debug)]
pub(crate) struct DrainPlan {
    pub started: Instant,
    pub deadline: Instant,
    pub redirect: String,
    pub closes_sent: AtomicUsize,
}

/// The close code of a drain: 1012, registered with IANA as "Service
/// Restart". Its reason is the URL to reconnect to, or empty (PROTOCOL.md §6).
pub const DRAIN_CLOSE_CODE: CloseCode = CloseCode::SERVICE_RESTART;

/// The longest redirect a drain accepts: a close frame's reason is at most
/// 123 bytes.
pub const MAX_REDIRECT_LEN: usize = 123;

/// Why [`ServerHandle::drain`] refused to start.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainError {
    /// The redirect is longer than [`MAX_REDIRECT_LEN`] bytes (its length).
    RedirectTooLong(usize),
    /// The redirect is not a `ws://` or `wss://` URL (why).
    BadRedirect(String),
    /// The server is already draining or shutting down.
    Stopping,
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainError::RedirectTooLong(len) => {
                write!(f, "the redirect is {len} bytes, more than a close reason holds ({MAX_REDIRECT_LEN})")
            }
            DrainError::BadRedirect(why) => write!(f, "the redirect is not a ws:// or wss:// URL: {why}"),
            DrainError::Stopping => f.write_str("the server is already draining or shutting down"),
        }
    }
}

impl std::error::Error for DrainError {}

/// A drain under way (see [`ServerHandle::drain`]): its progress, and a wait
/// for its end.
#[derive(Clone, Debug)]
pub struct Drain {
    handle: ServerHandle,
    plan: Arc<DrainPlan>,
}

impl Drain {
    /// Connections still held (closing ones included): the drain is over
    /// when this is 0.
    pub fn remaining(&self) -> usize {
        self.handle.connection_count()
    }

    /// Drain closes sent so far, all workers together.
    pub fn closes_sent(&self) -> usize {
        self.plan.closes_sent.load(Ordering::Relaxed)
    }

    /// When the last close is due.
    pub fn deadline(&self) -> Instant {
        self.plan.deadline
    }

    /// Waits until every connection is gone, or `timeout` passed; true if
    /// they are all gone. It looks every 10 ms: a drain spans seconds.
    pub fn wait(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.remaining() == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10).min(until - now));
        }
    }
}

/// What a server holds in memory, in counts, all workers together (see
/// [`ServerHandle::stats`]): on a steady load, none of these grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections the workers hold (upgrading and closing ones included).
    pub connections: usize,
    /// Connection slots allocated: the most connections held at once since
    /// a worker last had none.
    pub connection_slots: usize,
    /// Timer entries armed: at most one per connection (none for an open
    /// connection without keepalive).
    pub timer_entries: usize,
    /// Timer entries allocated: the most armed at once since a worker's
    /// timers last emptied.
    pub timer_capacity: usize,
    /// Empty write queues kept for reuse (at most 4,096 per worker).
    pub pooled_queues: usize,
    /// The buffer bytes those queues keep (at most 8 MiB per worker).
    pub pooled_bytes: usize,
}

impl std::ops::Add for Stats {
    type Output = Stats;

    fn add(self, other: Stats) -> Stats {
        Stats {
            connections: self.connections + other.connections,
            connection_slots: self.connection_slots + other.connection_slots,
            timer_entries: self.timer_entries + other.timer_entries,
            timer_capacity: self.timer_capacity + other.timer_capacity,
            pooled_queues: self.pooled_queues + other.pooled_queues,
            pooled_bytes: self.pooled_bytes + other.pooled_bytes,
        }
    }
}

#[derive(Debug)]
pub(crate) struct WorkerInbox {
    pub sender: Sender<Command>,
    pub waker: Arc<Waker>,
}

/// State shared by all workers and handles.
#[derive(Debug, Default)]
pub(crate) struct ServerState {
    pub connections: AtomicUsize,
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub stopping: AtomicBool,
    /// The handler's `Data` type, which outgoing connections' data must be.
    pub data_type: Option<TypeId>,
    /// The worker the next outgoing (or adopted) connection goes to.
    pub next_dialer: AtomicUsize,
    /// The registry the workers count into.
    pub metrics: crate::metrics::Metrics,
}

/// Sends to connections, broadcasts and shuts down, from any thread.
///
/// Cloning is cheap. Commands are queued to the owning worker and applied on
/// its next loop turn; a command for a connection that has closed is dropped.
#[derive(Clone, Debug)]
pub struct ServerHandle {
    pub(crate) inboxes: Arc<Vec<WorkerInbox>>,
    pub(crate) shared: Arc<ServerState>,
    /// Wakes the acceptor thread (acceptor mode only) so it sees a shutdown.
    pub(crate) acceptor: Option<Arc<Waker>>,
}

impl ServerHandle {
    fn post(&self, worker: usize, command: Command) -> bool {
        let Some(inbox) = self.inboxes.get(worker) else { return false };
        inbox.sender.send(command).is_ok() && inbox.waker.wake().is_ok()
    }

    /// The registry the server's workers count into (as
    /// [`Server::metrics`](super::Server::metrics) gave before it started):
    /// read it with [`Metrics::snapshot`](crate::metrics::Metrics::snapshot)
    /// or serve it as Prometheus text.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    /// Queues a text message to one connection. Returns false if the server has stopped.
    pub fn send_text(&self, id: ConnId, text: &str) -> bool {
        self.send_frame(id, &SharedFrame::text(text))
    }

    /// Queues a binary message to one connection. Returns false if the server has stopped.
    pub fn send_binary(&self, id: ConnId, bytes: &[u8]) -> bool {
        self.send_frame(id, &SharedFrame::binary(bytes))
    }

    /// Queues a pre-encoded frame to one connection.
    pub fn send_frame(&self, id: ConnId, frame: &SharedFrame) -> bool {
        self.post(id.worker(), Command::Send(id, frame.clone()))
    }

    /// Sends one frame to many connections. The frame is encoded once and
    /// shared by reference by every recipient on every worker.
    pub fn broadcast(&self, ids: impl IntoIterator<Item = ConnId>, frame: &SharedFrame) {
        let mut per_worker: Vec<Vec<ConnId>> = (0..self.inboxes.len()).map(|_| Vec::new()).collect();
        for id in ids {
            if let Some(list) = per_worker.get_mut(id.worker()) {
                list.push(id);
            }
        }
        for (worker, ids) in per_worker.into_iter().enumerate() {
            if !ids.is_empty() {
                self.post(worker, Command::Broadcast(ids, frame.clone()));
            }
        }
    }

    /// Posts `message` to worker `worker`'s [`Handler::on_notify`](super::Handler::on_notify).
    /// Returns false if there is no such worker or the server has stopped.
    pub fn notify(&self, worker: usize, message: Box<dyn Any + Send>) -> bool {
        self.post(worker, Command::Notify(message))
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Starts the close handshake with `code` and `reason` (at most 123 bytes kept).
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        let (_, len) = close_payload(code, reason);
        self.post(id.worker(), Command::Close(id, code, reason[..len - 2].to_string()))
    }

    /// Begins a graceful shutdown without waiting for it (see [`RunningServer::shutdown`](super::RunningServer::shutdown)).
    pub fn shutdown(&self) {
        self.post_shutdown();
    }

    /// [`shutdown`](Self::shutdown); false if no worker was left to hear it
    /// (the server had stopped).
    fn post_shutdown(&self) -> bool {
        self.stop_accepting();
        // Every worker is told: no short circuit.
        let mut heard = false;
        for worker in 0..self.inboxes.len() {
            heard |= self.post(worker, Command::Shutdown);
        }
        heard
    }

    /// Marks the server stopping (`/readyz` answers 503, the acceptor
    /// thread returns); says whether it was not already.
    fn stop_accepting(&self) -> bool {
        let first = !self.shared.stopping.swap(true, Ordering::AcqRel);
        if let Some(acceptor) = &self.acceptor {
            let _ = acceptor.wake();
        }
        first
    }

    /// Takes the server out of service without a herd: stops accepting at
    /// once (new connections are refused), then closes every connection with
    /// [`DRAIN_CLOSE_CODE`] (1012) and `redirect` as the reason (empty
    /// without one), the closes spread evenly over `over`, each worker
    /// closing its share in turn. The clients of `emitws.v1` reconnect to
    /// `redirect` at once, or, without one, to their own URL after a short
    /// random delay (PROTOCOL.md §6). A connection whose handler has work
    /// under way when its turn comes ([`Handler::pending_work`](super::Handler::pending_work): the event
    /// layer's deferred replies) is closed once that work is done, and at
    /// the latest at the deadline. A connection still in its upgrade at the
    /// deadline is dropped.
    ///
    /// The server keeps running, accepting nothing (and opening no outgoing
    /// connection: [`connect`](Self::connect) fails with
    /// [`ClientError::ServerStopped`]), until [`shutdown`](Self::shutdown):
    /// a process that drains calls it once [`Drain::wait`] returns. A
    /// shutdown during a drain closes what is left at once, with 1001.
    ///
    /// # Errors
    ///
    /// [`DrainError::RedirectTooLong`] for a redirect past
    /// [`MAX_REDIRECT_LEN`] bytes, [`DrainError::BadRedirect`] for one that is
    /// not a `ws://` or `wss://` URL, [`DrainError::Stopping`] if the server
    /// is already draining or shutting down. Nothing is changed then.
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Echo;
    /// # impl emitws::runtime::Handler for Echo {
    /// #     type Data = ();
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// use std::time::Duration;
    /// let server = emitws::runtime::Server::new().start("127.0.0.1:9001", Echo)?;
    /// let drain = server.handle().drain(Duration::from_secs(30), Some("ws://10.0.0.2:9001/"))?;
    /// drain.wait(Duration::from_secs(40));
    /// server.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drain(&self, over: Duration, redirect: Option<&str>) -> Result<Drain, DrainError> {
        let redirect = redirect.unwrap_or_default();
        if redirect.len() > MAX_REDIRECT_LEN {
            return Err(DrainError::RedirectTooLong(redirect.len()));
        }
        if !redirect.is_empty() {
            Url::parse(redirect).map_err(|e| DrainError::BadRedirect(e.to_string()))?;
        }
        if !self.stop_accepting() {
            return Err(DrainError::Stopping);
        }
        let started = Instant::now();
        let plan = Arc::new(DrainPlan {
            started,
            deadline: started + over,
            redirect: redirect.to_string(),
            closes_sent: AtomicUsize::new(0),
        });
        for worker in 0..self.inboxes.len() {
            self.post(worker, Command::Drain(plan.clone()));
        }
        Ok(Drain { handle: self.clone(), plan })
    }

    /// Shuts the server down gracefully on the first SIGINT or SIGTERM, as
    /// [`shutdown`](Self::shutdown) does: it stops accepting, closes every
    /// connection with 1001 and lets them finish their close handshakes
    /// within the shutdown timeout; the thread waiting in
    /// [`RunningServer::join`](super::RunningServer::join) then returns, and
    /// `main` with it, so the process exits 0. A second signal, or one
    /// after the server stopped, ends the process at once as the signal's
    /// default would. Opt-in: without it the signals keep their default.
    ///
    /// A thread waits for the signals (installed with `signal-hook`); call
    /// this once per process.
    ///
    /// # Errors
    ///
    /// The error of installing the signal handlers, or of starting the thread.
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Echo;
    /// # impl emitws::runtime::Handler for Echo {
    /// #     type Data = ();
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// let server = emitws::runtime::Server::new().start("127.0.0.1:9001", Echo)?;
    /// server.handle().stop_on_signals()?;
    /// server.join(); // returns after Ctrl-C, once the clients have been told
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stop_on_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = self.clone();
        std::thread::Builder::new().name("emitws-signals".into()).spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if stopping || !handle.post_shutdown() {
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                }
                stopping = true;
            }
        })?;
        Ok(())
    }

    /// Opens an outgoing connection from one of the workers, driven through
    /// the server's [`Handler`](super::Handler) like an accepted one:
    /// `on_open` once the server at `url` accepted the upgrade (with `data`
    /// as the connection's data), then `on_message`, `on_close` and sends
    /// through [`Conn`](super::Conn) as usual, every frame masked; if it never
    /// opens, [`Handler::on_connect_error`](super::Handler::on_connect_error)
    /// gets the data back with the reason. No thread is added.
    ///
    /// `settings` gives the timeout (connect, TLS and upgrade together), the
    /// subprotocols, headers, origin, TLS roots and permessage-deflate: with
    /// [`ClientBuilder::deflate`] the connection offers it, and if the server
    /// agrees, compresses what it sends and inflates what it receives as the
    /// client end ([`Conn::deflate`](super::Conn::deflate) tells). Its frame,
    /// message and fragment limits are the builder's too (a message past
    /// `max_message_size`, inflated or not, fails with 1009); the server's
    /// keepalive applies. The host name is resolved on the calling thread (a
    /// blocking lookup, unless it is an IP address).
    ///
    /// # Errors
    ///
    /// Fails at once, without calling the handler, with
    /// [`ClientError::Url`] for a bad URL, [`ClientError::Dns`] for a name
    /// that does not resolve, [`ClientError::WrongDataType`] for a `data` of
    /// another type than the handler's `Data`, and
    /// [`ClientError::ServerStopped`] once the server is shutting down.
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Feed;
    /// # impl emitws::runtime::Handler for Feed {
    /// #     type Data = String;
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, String>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// use emitws::client::ClientBuilder;
    /// use emitws::proto::deflate::DeflateConfig;
    /// let server = emitws::runtime::Server::new().start("127.0.0.1:9001", Feed)?;
    /// let settings = ClientBuilder::new().deflate(Some(DeflateConfig::default()));
    /// server.handle().connect("ws://127.0.0.1:9100/prices", &settings, "upstream".to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect<D: Send + 'static>(&self, url: &str, settings: &ClientBuilder, data: D) -> Result<(), ClientError> {
        if self.shared.data_type != Some(TypeId::of::<D>()) {
            return Err(ClientError::WrongDataType);
        }
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(ClientError::ServerStopped);
        }
        let dial = super::worker::Dial::new(&Url::parse(url)?, settings, Box::new(data))?;
        let worker = self.shared.next_dialer.fetch_add(1, Ordering::Relaxed) % self.inboxes.len().max(1);
        if !self.post(worker, Command::Connect(Box::new(dial))) {
            return Err(ClientError::ServerStopped);
        }
        Ok(())
    }

    /// Open connections (handshakes included), all workers together.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Asks every worker for its [`Stats`] and waits for the answers (each
    /// worker answers on its next loop turn), or `None` once the server has
    /// stopped. For monitoring and leak tests; do not call it from a handler
    /// callback, which would wait for its own worker.
    ///
    /// ```no_run
    /// # #[derive(Clone)] struct Echo;
    /// # impl emitws::runtime::Handler for Echo {
    /// #     type Data = ();
    /// #     fn on_message(&mut self, _: &mut emitws::runtime::Conn<'_, ()>, _: emitws::proto::Message<'_>) {}
    /// # }
    /// let server = emitws::runtime::Server::new().start("127.0.0.1:9001", Echo)?;
    /// if let Some(stats) = server.handle().stats() {
    ///     println!("{} connections, {} timer entries", stats.connections, stats.timer_entries);
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        let (sender, answers) = std::sync::mpsc::channel();
        for worker in 0..self.inboxes.len() {
            if !self.post(worker, Command::Stats(sender.clone())) {
                return None;
            }
        }
        drop(sender);
        let mut total = Stats::default();
        for _ in 0..self.inboxes.len() {
            total = total + answers.recv().ok()?;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_packs_and_unpacks() {
        let id = ConnId::new(3, 123_456, 0x1ab_cdef);
        assert_eq!((id.worker(), id.key(), id.generation()), (3, 123_456, 0xab_cdef));
    }
}
