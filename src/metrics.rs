//! Counters the runtime, the app and the cluster keep, read as a typed
//! [`Snapshot`] or in the Prometheus text format.
//!
//! ```no_run
//! use emitws::app::App;
//!
//! let mut app = App::new();
//! let metrics = app.metrics();
//! app.on_http(move |request| (request.path() == "/metrics").then(|| metrics.http_response()));
//! let running = app.listen("127.0.0.1:3000")?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Cost
//!
//! Each worker thread owns its counters (`WorkerMetrics`) and is their one
//! writer: a count is a relaxed load and a store of a cell the worker's cache
//! already holds, never a locked read-modify-write of a line that other cores
//! write too. A scrape sums every worker's cells without asking the workers
//! anything, so a busy worker never delays it (a scrape may see one worker a
//! message further than another: each counter is exact, the set is not a
//! single instant). Gauges that the app already keeps (rooms, members, the
//! cluster's queue) are read at scrape time instead of being counted.
//!
//! The text format is written here rather than through `prometheus-client`
//! or `metrics`: both keep a family's values in shared atomics that every
//! thread updates with `fetch_add` (a `lock`-prefixed read-modify-write per
//! count, on cache lines that all the workers write: they bounce between
//! cores at every message), and `metrics` also looks a counter up through a
//! global recorder unless handles are kept. Neither sums per-thread cells at
//! scrape time. The format itself is a hundred lines here
//! ([`Snapshot::write_prometheus`]). Callgrind counts a locked instruction as
//! one, so its numbers (docs/BENCHMARKS.md, "Metrics cost") show the
//! instructions the counting adds, not what shared atomics would cost on
//! several cores.

// The app's counters (routes, replies, calls, handler time) are written by
// the event layer only.
#![cfg_attr(not(feature = "app"), allow(dead_code))]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::proto::{CloseReason, OpCode};
use crate::runtime::{HttpResponse, SharedFrame};

/// A count with one writer (the worker thread that owns it): a relaxed load
/// and store, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the counter's owning thread may call this: two writers
    /// would lose counts.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// The count (exact on the owning thread).
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A count any thread may bump, for paths that already cross threads
/// (a deferred reply): there one `fetch_add` is small beside the channel send.
#[derive(Debug, Default)]
pub(crate) struct SharedCounter(AtomicU64);

impl SharedCounter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Labels of the message kinds: data frames by opcode, control frames together.
const KINDS: [&str; 3] = ["text", "binary", "control"];

/// The index of `opcode`'s kind in [`KINDS`].
#[inline]
pub(crate) fn kind(opcode: OpCode) -> usize {
    match opcode {
        OpCode::Text => 0,
        OpCode::Binary => 1,
        _ => 2,
    }
}

/// Labels of the close reasons, one per [`CloseReason`] variant.
const CLOSE_REASONS: [&str; 10] = [
    "peer",
    "protocol",
    "keepalive_timeout",
    "handshake_timeout",
    "close_timeout",
    "no_close_frame",
    "read_failed",
    "write_failed",
    "send_buffer_full",
    "shutdown",
];

/// The index of `reason`'s label in [`CLOSE_REASONS`].
fn close_reason(reason: &CloseReason) -> usize {
    match reason {
        CloseReason::Peer { .. } => 0,
        CloseReason::Protocol(_) => 1,
        CloseReason::KeepaliveTimeout(_) => 2,
        CloseReason::HandshakeTimeout => 3,
        CloseReason::CloseTimeout => 4,
        CloseReason::NoCloseFrame => 5,
        CloseReason::ReadFailed(_) => 6,
        CloseReason::WriteFailed(_) => 7,
        CloseReason::SendBufferFull => 8,
        CloseReason::Shutdown => 9,
    }
}

/// The statuses an upgrade is refused with that get their own label; the
/// rest (a handler's own [`Reject`](crate::runtime::Reject)) count as `other`.
const REFUSAL_CODES: [u16; 8] = [400, 401, 403, 404, 426, 429, 431, 503];
/// Their labels, then `other`.
const REFUSAL_STATUSES: [&str; 9] = ["400", "401", "403", "404", "426", "429", "431", "503", "other"];

fn refusal_status(status: u16) -> usize {
    REFUSAL_CODES.iter().position(|&s| s == status).unwrap_or(REFUSAL_CODES.len())
}

/// Labels of reply codes: `ok`, the error codes of PROTOCOL.md, and `other`
/// for codes an application made up.
const REPLY_CODES: [&str; 8] =
    ["ok", "bad_request", "too_large", "rate_limited", "unauthorized", "no_handler", "internal", "other"];

/// The index of a reply's label in [`REPLY_CODES`]: `None` is a result.
pub(crate) fn reply_code(error: Option<&str>) -> usize {
    let Some(code) = error else { return 0 };
    REPLY_CODES[1..REPLY_CODES.len() - 1].iter().position(|c| *c == code).map_or(REPLY_CODES.len() - 1, |i| i + 1)
}

/// Labels of the outcomes of a server-to-client call.
const CALL_OUTCOMES: [&str; 7] =
    ["answered", "timeout", "not_registered", "execution_failed", "disconnected", "too_many", "remote_error"];

/// Upper bounds of the handler time histogram's buckets, in microseconds.
const HANDLER_BUCKETS_US: [u64; 10] = [10, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000, 1_000_000];

/// One worker's counters. The worker thread is the one writer of every cell.
/// Aligned so that no other worker's counters share its cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct WorkerMetrics {
    /// Connections accepted (TCP), before any cap.
    pub accepted: Counter,
    /// Connections put in the worker's table (accepted within the caps, or dialed).
    pub admitted: Counter,
    /// Connections taken out of the table.
    pub removed: Counter,
    /// Upgrades completed (both directions).
    pub opened: Counter,
    /// Opened connections ended, by [`CLOSE_REASONS`].
    closed: [Counter; CLOSE_REASONS.len()],
    /// Upgrades refused, by [`REFUSAL_STATUSES`].
    refused: [Counter; REFUSAL_STATUSES.len()],
    /// Plain HTTP requests answered by the handler's `on_http`.
    pub http_answered: Counter,
    /// Messages (and pongs) handed to the handler, by [`KINDS`].
    pub messages_in: [Counter; KINDS.len()],
    /// Their payload bytes (uncompressed), by [`KINDS`].
    pub bytes_in: [Counter; KINDS.len()],
    /// Frames the handler queued, by [`KINDS`].
    pub messages_out: [Counter; KINDS.len()],
    /// Their bytes as queued (headers included, compressed if they were), by [`KINDS`].
    pub bytes_out: [Counter; KINDS.len()],
    /// Bytes read from sockets.
    pub bytes_read: Counter,
    /// Sends refused (closing, or over the send budget).
    pub sends_refused: Counter,
    /// Sends queued behind bytes the socket had not taken.
    pub sends_buffered: Counter,
    /// Payload bytes of the messages sent compressed, before compression.
    pub deflate_plain_out: Counter,
    /// The same messages' payload bytes after compression.
    pub deflate_compressed_out: Counter,
    /// Payload bytes of the compressed messages received, as they came.
    pub deflate_compressed_in: Counter,
    /// The same messages' payload bytes once inflated.
    pub deflate_plain_in: Counter,
    /// The app's event and request names with their own label, in label order.
    names: Arc<[Box<str>]>,
    /// Events (no reply expected) and requests by name: one pair per name, then `other`'s.
    routes: Box<[[Counter; 2]]>,
    /// Replies to requests answered on the worker, by [`REPLY_CODES`].
    replies: [Counter; REPLY_CODES.len()],
    /// Messages refused for their socket's rate.
    pub rate_limited: Counter,
    /// Server-to-client calls settled, by [`CALL_OUTCOMES`].
    calls: [Counter; CALL_OUTCOMES.len()],
    /// Handler times by [`HANDLER_BUCKETS_US`], then the +Inf bucket (not cumulative).
    handler_time: [Counter; HANDLER_BUCKETS_US.len() + 1],
    /// The sum of the handler times, in nanoseconds.
    handler_time_ns: Counter,
}

impl WorkerMetrics {
    fn new(names: Arc<[Box<str>]>) -> WorkerMetrics {
        let labels = names.len() + 1;
        WorkerMetrics {
            accepted: Counter::default(),
            admitted: Counter::default(),
            removed: Counter::default(),
            opened: Counter::default(),
            closed: Default::default(),
            refused: Default::default(),
            http_answered: Counter::default(),
            messages_in: Default::default(),
            bytes_in: Default::default(),
            messages_out: Default::default(),
            bytes_out: Default::default(),
            bytes_read: Counter::default(),
            sends_refused: Counter::default(),
            sends_buffered: Counter::default(),
            deflate_plain_out: Counter::default(),
            deflate_compressed_out: Counter::default(),
            deflate_compressed_in: Counter::default(),
            deflate_plain_in: Counter::default(),
            names,
            routes: (0..labels).map(|_| Default::default()).collect(),
            replies: Default::default(),
            rate_limited: Counter::default(),
            calls: Default::default(),
            handler_time: Default::default(),
            handler_time_ns: Counter::default(),
        }
    }

    /// An opened connection ended for `reason`.
    pub(crate) fn closed(&self, reason: &CloseReason) {
        self.closed[close_reason(reason)].inc();
    }

    /// An upgrade was refused with `status`.
    pub(crate) fn refused(&self, status: u16) {
        self.refused[refusal_status(status)].inc();
    }

    /// A message of `len` payload bytes came in.
    #[inline]
    pub(crate) fn message_in(&self, opcode: OpCode, len: usize) {
        let kind = kind(opcode);
        self.messages_in[kind].inc();
        self.bytes_in[kind].add(len as u64);
    }

    /// A frame of `len` bytes was queued.
    #[inline]
    pub(crate) fn message_out(&self, opcode: OpCode, len: usize) {
        let kind = kind(opcode);
        self.messages_out[kind].inc();
        self.bytes_out[kind].add(len as u64);
    }

    /// `count` connections were sent `frame`.
    #[inline]
    pub(crate) fn shared_out(&self, frame: &SharedFrame, count: u64) {
        let kind = kind(frame.0.opcode);
        self.messages_out[kind].add(count);
        self.bytes_out[kind].add(count * frame.payload().len() as u64);
    }

    /// A message of `plain` payload bytes was sent compressed to `compressed` bytes.
    pub(crate) fn deflated(&self, plain: usize, compressed: usize) {
        self.deflate_plain_out.add(plain as u64);
        self.deflate_compressed_out.add(compressed as u64);
    }

    /// A compressed message of `compressed` payload bytes arrived and
    /// inflated to `plain` bytes.
    pub(crate) fn inflated(&self, compressed: usize, plain: usize) {
        self.deflate_compressed_in.add(compressed as u64);
        self.deflate_plain_in.add(plain as u64);
    }

    /// An event (`request` false) or a request was dispatched to the route
    /// with label `label` (`None`: no route has its name).
    #[inline]
    pub(crate) fn dispatched(&self, label: Option<usize>, request: bool) {
        // A label past the names this worker was built with counts as `other`.
        let other = self.names.len();
        self.routes[label.map_or(other, |label| label.min(other))][usize::from(request)].inc();
    }

    /// A reply went out on the worker (`error`: its error code).
    pub(crate) fn replied(&self, error: Option<&str>) {
        self.replies[reply_code(error)].inc();
    }

    /// A server-to-client call ended with `outcome` (one of [`CALL_OUTCOMES`]).
    pub(crate) fn call_settled(&self, outcome: &str) {
        if let Some(i) = CALL_OUTCOMES.iter().position(|o| *o == outcome) {
            self.calls[i].inc();
        }
    }

    /// A handler ran for `elapsed`.
    pub(crate) fn handler_time(&self, elapsed: Duration) {
        let micros = elapsed.as_micros();
        let bucket =
            HANDLER_BUCKETS_US.iter().position(|&b| micros <= u128::from(b)).unwrap_or(HANDLER_BUCKETS_US.len());
        self.handler_time[bucket].inc();
        self.handler_time_ns.add(elapsed.as_nanos() as u64);
    }
}

/// Fills in a snapshot's gauges at scrape time.
type GaugeReader = Box<dyn Fn(&mut Snapshot) + Send + Sync>;

#[derive(Default)]
struct Registry {
    /// The app's route names, given to workers that start after they are set.
    names: Mutex<Arc<[Box<str>]>>,
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    /// Replies given from other threads (deferred), by [`REPLY_CODES`].
    deferred_replies: [SharedCounter; REPLY_CODES.len()],
    gauges: Mutex<Vec<GaugeReader>>,
}

/// The metrics registry of a server or an app. Cheap to clone: clones share
/// the counters.
///
/// Every [`Settings`](crate::runtime::Settings) holds one (a fresh one by
/// default); [`Server::metrics`](crate::runtime::Server::metrics) and
/// `App::metrics` hand it out before the server starts, so that an `on_http`
/// handler can serve it.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Registry>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("workers", &lock(&self.0.workers).len()).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The counters of a worker starting now (summed into every snapshot
    /// from now on, also after the worker ends).
    pub(crate) fn worker(&self) -> Arc<WorkerMetrics> {
        let names = lock(&self.0.names).clone();
        let cells = Arc::new(WorkerMetrics::new(names));
        lock(&self.0.workers).push(cells.clone());
        cells
    }

    /// Names the app's routes, in label order: workers started afterwards
    /// count events and requests by these names.
    pub(crate) fn set_names(&self, names: Vec<Box<str>>) {
        *lock(&self.0.names) = names.into();
    }

    /// Adds a reader of gauges, called at every snapshot.
    pub(crate) fn add_gauges(&self, reader: impl Fn(&mut Snapshot) + Send + Sync + 'static) {
        lock(&self.0.gauges).push(Box::new(reader));
    }

    /// A reply given from another thread (`error`: its error code).
    pub(crate) fn deferred_reply(&self, error: Option<&str>) {
        self.0.deferred_replies[reply_code(error)].inc();
    }

    /// Every counter and gauge now.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        let sum = |cells: &[Counter], into: &mut [u64]| {
            for (total, cell) in into.iter_mut().zip(cells) {
                *total += cell.get();
            }
        };
        let (mut closed, mut refused, mut replies) = ([0; CLOSE_REASONS.len()], [0; REFUSAL_STATUSES.len()], [0; 8]);
        let (mut calls, mut buckets) = ([0; CALL_OUTCOMES.len()], [0; HANDLER_BUCKETS_US.len() + 1]);
        let (mut admitted, mut removed, mut handler_ns) = (0, 0, 0);
        let mut kinds = [[0; KINDS.len()]; 4];
        for w in lock(&self.0.workers).iter() {
            s.connections_accepted += w.accepted.get();
            admitted += w.admitted.get();
            removed += w.removed.get();
            s.connections_opened += w.opened.get();
            s.http_answered += w.http_answered.get();
            s.bytes_read += w.bytes_read.get();
            s.sends_refused += w.sends_refused.get();
            s.sends_buffered += w.sends_buffered.get();
            s.deflate_plain_out += w.deflate_plain_out.get();
            s.deflate_compressed_out += w.deflate_compressed_out.get();
            s.deflate_compressed_in += w.deflate_compressed_in.get();
            s.deflate_plain_in += w.deflate_plain_in.get();
            s.rate_limited += w.rate_limited.get();
            handler_ns += w.handler_time_ns.get();
            sum(&w.closed, &mut closed);
            sum(&w.refused, &mut refused);
            sum(&w.replies, &mut replies);
            sum(&w.calls, &mut calls);
            sum(&w.handler_time, &mut buckets);
            for (into, cells) in kinds.iter_mut().zip([&w.messages_in, &w.bytes_in, &w.messages_out, &w.bytes_out]) {
                sum(cells, into);
            }
            let names = w.names.iter().map(|n| &**n).chain(["other"]);
            for (name, [events, requests]) in names.zip(w.routes.iter()) {
                *s.events.entry(name.to_owned()).or_default() += events.get();
                *s.requests.entry(name.to_owned()).or_default() += requests.get();
            }
        }
        // Workers count admissions and removals separately, and are read one
        // after another: the difference may be off for a moment, never negative.
        s.connections_open = admitted.saturating_sub(removed);
        for (i, deferred) in self.0.deferred_replies.iter().enumerate() {
            replies[i] += deferred.get();
        }
        let by_kind = |[text, binary, control]: [u64; 3]| ByKind { text, binary, control };
        (s.messages_in, s.bytes_in, s.messages_out, s.bytes_out) =
            (by_kind(kinds[0]), by_kind(kinds[1]), by_kind(kinds[2]), by_kind(kinds[3]));
        s.closed = CLOSE_REASONS.into_iter().zip(closed).collect();
        s.handshakes_refused = REFUSAL_STATUSES.into_iter().zip(refused).collect();
        s.replies = REPLY_CODES.into_iter().zip(replies).collect();
        s.calls = CALL_OUTCOMES.into_iter().zip(calls).collect();
        let mut cumulative = 0;
        for (i, count) in buckets.into_iter().enumerate() {
            cumulative += count;
            let bound = HANDLER_BUCKETS_US.get(i).map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            s.handler_seconds.buckets.push((bound, cumulative));
        }
        s.handler_seconds.count = cumulative;
        s.handler_seconds.sum = handler_ns as f64 / 1e9;
        for reader in lock(&self.0.gauges).iter() {
            reader(&mut s);
        }
        s
    }

    /// The snapshot in the Prometheus text format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        self.snapshot().write_prometheus(&mut out).expect("writing to a String does not fail");
        out
    }

    /// A `200` response with [`prometheus`](Self::prometheus)'s text, for
    /// an `on_http` handler to return at `/metrics`.
    pub fn http_response(&self) -> HttpResponse {
        HttpResponse::new(200, "text/plain; version=0.0.4; charset=utf-8", self.prometheus())
    }
}

/// Counts by message kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ByKind {
    /// Text messages.
    pub text: u64,
    /// Binary messages.
    pub binary: u64,
    /// Control frames: in, the pongs received; out, every ping, pong and
    /// close frame sent (by the handler or by the protocol itself).
    pub control: u64,
}

/// A histogram: cumulative counts under each upper bound, as Prometheus has them.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Histogram {
    /// `(upper bound in seconds, observations at or under it)`, the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

/// Every metric at one time (each exact; workers are read one after another).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Connections the workers hold now (upgrading, open or closing).
    pub connections_open: u64,
    /// TCP connections accepted, including those a connection cap turned away.
    pub connections_accepted: u64,
    /// Connections whose upgrade completed (accepted and outgoing).
    pub connections_opened: u64,
    /// Opened connections that ended, by close reason (a label per
    /// [`CloseReason`] variant: `peer`, `protocol`, `keepalive_timeout`, …).
    pub closed: BTreeMap<&'static str, u64>,
    /// Upgrades refused, by HTTP status (`"400"`, `"403"`, … and `"other"`).
    pub handshakes_refused: BTreeMap<&'static str, u64>,
    /// Plain HTTP requests answered by an `on_http` handler.
    pub http_answered: u64,
    /// Messages received, by kind.
    pub messages_in: ByKind,
    /// Payload bytes received (after decompression), by kind.
    pub bytes_in: ByKind,
    /// Messages sent, by kind (a broadcast counts once per recipient).
    pub messages_out: ByKind,
    /// Bytes queued to send (frame headers included, compressed if sent so), by kind.
    pub bytes_out: ByKind,
    /// Bytes read from sockets (TLS records decrypted).
    pub bytes_read: u64,
    /// Sends refused: the connection was closing or over its send budget.
    pub sends_refused: u64,
    /// Sends queued behind bytes the socket had not taken (backpressure).
    pub sends_buffered: u64,
    /// Payload bytes of the messages sent compressed, before compression.
    pub deflate_plain_out: u64,
    /// The same payloads' bytes after compression.
    pub deflate_compressed_out: u64,
    /// Payload bytes of the compressed messages received, as they came.
    pub deflate_compressed_in: u64,
    /// The same messages' payload bytes once inflated.
    pub deflate_plain_in: u64,
    /// App events (no reply expected) by name: registered routes, the rest as `other`.
    pub events: BTreeMap<String, u64>,
    /// App requests by name: registered routes, the rest as `other`.
    pub requests: BTreeMap<String, u64>,
    /// Replies to requests by code: `ok`, an error code of PROTOCOL.md, or `other`.
    pub replies: BTreeMap<&'static str, u64>,
    /// Messages refused for their socket's rate.
    pub rate_limited: u64,
    /// Time in event and request handlers (empty unless the app times them).
    pub handler_seconds: Histogram,
    /// Server-to-client calls settled, by outcome.
    pub calls: BTreeMap<&'static str, u64>,
    /// Rooms with members on this node.
    pub rooms: u64,
    /// Sockets in rooms on this node, summed over rooms.
    pub room_members: u64,
    /// Messages this node handed to the cluster's writer (published unless
    /// an outage drops them; only with a cluster adapter, as the rest of `cluster_*`).
    pub cluster_published: u64,
    /// Messages this node received from the cluster.
    pub cluster_received: u64,
    /// Messages dropped on the way to the cluster: more than its queue held
    /// waited, or Redis was unreachable (an outage loses them).
    pub cluster_dropped: u64,
    /// Reconnections to the cluster's Redis.
    pub cluster_reconnects: u64,
    /// Messages waiting to be published.
    pub cluster_queue_depth: u64,
    /// Nodes of the cluster alive (this one included) as the last cluster
    /// query or heartbeat found them: 0 before either; while Redis is
    /// unreachable, the last count (see `cluster_redis_up`).
    pub cluster_nodes_alive: u64,
    /// 1 while this node reaches Redis (its publisher and subscriber
    /// connections both work), else 0.
    pub cluster_redis_up: u64,
}

impl Snapshot {
    /// Writes the snapshot in the Prometheus text format (version 0.0.4).
    ///
    /// # Errors
    ///
    /// `out`'s error, if writing to it fails.
    pub fn write_prometheus(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let mut w = TextWriter { out };
        w.gauge("connections_open", "Connections held now.", self.connections_open)?;
        w.counter("connections_accepted_total", "TCP connections accepted.", self.connections_accepted)?;
        w.counter("connections_opened_total", "Upgrades completed.", self.connections_opened)?;
        w.family("connections_closed_total", "counter", "Opened connections ended, by close reason.")?;
        w.labelled("connections_closed_total", "reason", &self.closed)?;
        w.family("handshakes_refused_total", "counter", "Upgrades refused, by HTTP status.")?;
        w.labelled("handshakes_refused_total", "status", &self.handshakes_refused)?;
        w.counter("http_answered_total", "Plain HTTP requests answered.", self.http_answered)?;
        let kinds = [
            ("messages_in_total", "Messages received, by kind.", self.messages_in),
            ("bytes_in_total", "Payload bytes received, by kind.", self.bytes_in),
            ("messages_out_total", "Messages sent, by kind.", self.messages_out),
            ("bytes_out_total", "Bytes queued to send, by kind.", self.bytes_out),
        ];
        for (name, help, by) in kinds {
            w.family(name, "counter", help)?;
            w.labelled_pairs(name, "kind", [("text", by.text), ("binary", by.binary), ("control", by.control)])?;
        }
        w.counter("bytes_read_total", "Bytes read from sockets.", self.bytes_read)?;
        w.counter("sends_refused_total", "Sends refused (closing, or over the send budget).", self.sends_refused)?;
        w.counter("sends_buffered_total", "Sends queued behind unsent bytes.", self.sends_buffered)?;
        w.counter(
            "deflate_plain_out_bytes_total",
            "Bytes of compressed messages before compression.",
            self.deflate_plain_out,
        )?;
        w.counter(
            "deflate_compressed_out_bytes_total",
            "Bytes of compressed messages after compression.",
            self.deflate_compressed_out,
        )?;
        w.counter(
            "deflate_compressed_in_bytes_total",
            "Bytes of compressed messages received, as they came.",
            self.deflate_compressed_in,
        )?;
        w.counter(
            "deflate_plain_in_bytes_total",
            "Bytes of compressed messages received, once inflated.",
            self.deflate_plain_in,
        )?;
        w.family("app_events_total", "counter", "Events by name (registered routes; the rest as other).")?;
        w.labelled("app_events_total", "name", &self.events)?;
        w.family("app_requests_total", "counter", "Requests by name (registered routes; the rest as other).")?;
        w.labelled("app_requests_total", "name", &self.requests)?;
        w.family("app_replies_total", "counter", "Replies to requests, by code.")?;
        w.labelled("app_replies_total", "code", &self.replies)?;
        w.counter("app_rate_limited_total", "Messages refused for their socket's rate.", self.rate_limited)?;
        w.histogram("app_handler_seconds", "Time in event and request handlers.", &self.handler_seconds)?;
        w.family("app_calls_total", "counter", "Server-to-client calls settled, by outcome.")?;
        w.labelled("app_calls_total", "outcome", &self.calls)?;
        w.gauge("app_rooms", "Rooms with members on this node.", self.rooms)?;
        w.gauge("app_room_members", "Sockets in rooms, summed over rooms.", self.room_members)?;
        w.counter("cluster_published_total", "Messages published to the cluster.", self.cluster_published)?;
        w.counter("cluster_received_total", "Messages received from the cluster.", self.cluster_received)?;
        w.counter("cluster_dropped_total", "Messages dropped on the way to the cluster.", self.cluster_dropped)?;
        w.counter("cluster_reconnects_total", "Reconnections to Redis.", self.cluster_reconnects)?;
        w.gauge("cluster_queue_depth", "Messages waiting to be published.", self.cluster_queue_depth)?;
        w.gauge("cluster_nodes_alive", "Cluster nodes seen alive.", self.cluster_nodes_alive)?;
        w.gauge("cluster_redis_up", "Whether this node reaches Redis (1) or not (0).", self.cluster_redis_up)
    }
}

/// Writes metric families, every name prefixed `emitws_`.
struct TextWriter<'a, W> {
    out: &'a mut W,
}

impl<W: fmt::Write> TextWriter<'_, W> {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> fmt::Result {
        writeln!(self.out, "# HELP emitws_{name} {help}\n# TYPE emitws_{name} {kind}")
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, "counter", help)?;
        writeln!(self.out, "emitws_{name} {value}")
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, "gauge", help)?;
        writeln!(self.out, "emitws_{name} {value}")
    }

    fn labelled<K: AsRef<str>>(&mut self, name: &str, label: &str, values: &BTreeMap<K, u64>) -> fmt::Result {
        self.labelled_pairs(name, label, values.iter().map(|(value, count)| (value.as_ref(), *count)))
    }

    fn labelled_pairs<'v>(
        &mut self,
        name: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> fmt::Result {
        for (value, count) in values {
            write!(self.out, "emitws_{name}{{{label}=\"")?;
            write_label_value(self.out, value)?;
            writeln!(self.out, "\"}} {count}")?;
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) -> fmt::Result {
        self.family(name, "histogram", help)?;
        for &(bound, count) in &histogram.buckets {
            match bound.is_finite() {
                true => writeln!(self.out, "emitws_{name}_bucket{{le=\"{bound}\"}} {count}")?,
                false => writeln!(self.out, "emitws_{name}_bucket{{le=\"+Inf\"}} {count}")?,
            }
        }
        writeln!(self.out, "emitws_{name}_sum {}\nemitws_{name}_count {}", histogram.sum, histogram.count)
    }
}

/// A label value as the text format quotes it: backslash, double quote and
/// line feed escaped.
fn write_label_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    for c in value.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        write_label_value(&mut out, "a\\b\"c\nd/é").unwrap();
        assert_eq!(out, r#"a\\b\"c\nd/é"#);
    }

    #[test]
    fn a_route_name_with_quotes_stays_one_line() {
        let metrics = Metrics::new();
        metrics.set_names(vec!["say \"hi\"\n".into()]);
        let worker = metrics.worker();
        worker.dispatched(Some(0), false);
        worker.dispatched(None, false);
        worker.dispatched(Some(7), true);
        let text = metrics.prometheus();
        assert!(text.contains("emitws_app_events_total{name=\"say \\\"hi\\\"\\n\"} 1\n"), "{text}");
        assert!(text.contains("emitws_app_events_total{name=\"other\"} 1\n"), "{text}");
        assert!(text.contains("emitws_app_requests_total{name=\"other\"} 1\n"), "{text}");
    }

    #[test]
    fn workers_are_summed() {
        let metrics = Metrics::new();
        let (a, b) = (metrics.worker(), metrics.worker());
        a.admitted.add(3);
        b.admitted.add(2);
        a.removed.inc();
        a.closed(&CloseReason::Shutdown);
        b.closed(&CloseReason::Shutdown);
        b.refused(426);
        b.refused(418);
        a.message_out(OpCode::Binary, 10);
        b.message_out(OpCode::Binary, 5);
        let s = metrics.snapshot();
        assert_eq!(s.connections_open, 4);
        assert_eq!(s.closed["shutdown"], 2);
        assert_eq!(s.closed["peer"], 0);
        assert_eq!((s.handshakes_refused["426"], s.handshakes_refused["other"]), (1, 1));
        assert_eq!((s.messages_out.binary, s.bytes_out.binary), (2, 15));
    }

    #[test]
    fn reply_codes_are_bounded() {
        assert_eq!(REPLY_CODES[reply_code(None)], "ok");
        assert_eq!(REPLY_CODES[reply_code(Some("no_handler"))], "no_handler");
        assert_eq!(REPLY_CODES[reply_code(Some("made_up"))], "other");
    }

    #[test]
    fn handler_times_fall_in_cumulative_buckets() {
        let metrics = Metrics::new();
        let w = metrics.worker();
        w.handler_time(Duration::from_micros(5));
        w.handler_time(Duration::from_micros(300));
        w.handler_time(Duration::from_secs(3));
        let h = metrics.snapshot().handler_seconds;
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.00001, 1));
        assert_eq!(h.buckets[4], (0.0005, 2));
        assert_eq!(h.buckets.last().unwrap().1, 3);
    }
}
