//! Scale-out over Redis (feature `redis`): [`RedisAdapter`] plugs an
//! [`App`](crate::app::App) into a cluster of servers sharing one Redis;
//! [`RedisLink`] is the node-to-node transport and the shared presence under it.
//!
//! ```no_run
//! use emitws::app::{App, BroadcastOpts};
//! use emitws::cluster::{RedisAdapter, RedisOptions};
//!
//! let mut app = App::new();
//! app.adapter(RedisAdapter::new("redis://127.0.0.1:6379/", RedisOptions::default())?);
//! app.on("/say", |req| {
//!     // Reaches #lobby's members on every server of the cluster.
//!     let _ = req.broadcast("/said", &req.raw_data(), BroadcastOpts::to("#lobby"));
//! });
//! let running = app.listen("0.0.0.0:3000")?;
//! println!("{} sockets cluster-wide", running.cluster().socket_count()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every node has an id and keeps a heartbeat in the sorted set `P:nodes`
//! (score: when the heartbeat expires, in ms). Presence lives in per-node
//! sets (`P:n:NODE:sockets`, `P:n:NODE:g:GROUP`, `P:n:NODE:u:USER`, and the
//! list `P:n:NODE:users`; a set emptied is gone), and every query reads only
//! the nodes whose heartbeat is alive: a dead node leaves all answers as soon
//! as its heartbeat expires, and survivors delete its keys afterwards.
//!
//! Messages between nodes go over pub/sub: `P:all` for broadcasts, `P:node:ID`
//! for one node. Each payload starts with the sender's id (16 hex digits) and
//! a newline, so a node ignores its own broadcasts; the app's messages then
//! have a one-line JSON header saying who they are for, a newline and the
//! envelope (see [`RedisAdapter`]). One thread per node subscribes, another
//! owns the writing connection: it pipelines queued publishes and presence
//! updates, refreshes the heartbeat, and reconnects with backoff. An outage
//! is logged once, when it starts, and once when it ends; local delivery never
//! waits for Redis.
//!
//! ```no_run
//! use emitws::cluster::{RedisLink, RedisOptions};
//! let node = RedisLink::start("redis://127.0.0.1:6379/", RedisOptions::default(), |message| {
//!     println!("from {}: {} bytes", message.from, message.payload.len());
//! })?;
//! node.add_socket(1);
//! node.join("#lobby", 1);
//! node.publish_all(br#"[0,"/news","hello"]"#);
//! println!("{} in #lobby cluster-wide", node.count(emitws::app::Scope::Group("#lobby"))?);
//! # Ok::<(), emitws::cluster::ClusterError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Cmd, Commands, Connection, RedisResult};
use serde::{Deserialize, Serialize};

use crate::app::{self, Adapter, AppHandle, BroadcastOpts, Presence, Scope, SocketId, Target};
use crate::proto::CloseCode;
use crate::runtime::ConnId;

/// Settings of the Redis adapter.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `emitws`): several apps can
    /// share one Redis.
    pub prefix: String,
    /// How long a node's heartbeat lives (default 10 s); it is refreshed three
    /// times per period. A dead node leaves every answer within this time.
    pub heartbeat_ttl: Duration,
    /// Time allowed for a query, connection included (default 2 s).
    pub query_timeout: Duration,
    /// The longest wait between reconnection attempts (default 5 s).
    pub max_backoff: Duration,
    /// Publishes waiting for the writer at most (default 100,000): beyond
    /// it, when Redis cannot keep up, new ones are dropped and counted
    /// ([`RedisLink::dropped`]) rather than held in memory without bound.
    pub max_queued: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "emitws".into(),
            heartbeat_ttl: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            max_queued: 100_000,
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Redis URL does not parse.
    BadUrl(String),
    /// Redis did not answer in time, or refused (the message says which).
    Unavailable(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BadUrl(e) => write!(f, "bad Redis URL: {e}"),
            ClusterError::Unavailable(e) => write!(f, "Redis unavailable: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl From<ClusterError> for app::Error {
    fn from(e: ClusterError) -> app::Error {
        app::Error::Unavailable(e.to_string())
    }
}

fn unavailable(e: redis::RedisError) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// A message from another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The sender's node id.
    pub from: u64,
    /// Whether it was addressed to this node alone (else to every node).
    pub direct: bool,
    /// What the sender published.
    pub payload: Vec<u8>,
}

/// Work for the writing thread.
enum Write {
    Publish { channel: String, payload: Vec<u8> },
    AddSocket(u64),
    RemoveSocket { id: u64, groups: Vec<String>, user: Option<String> },
    Join { group: String, id: u64 },
    Leave { group: String, id: u64 },
    AddUser { user: String, id: u64 },
    Stop,
}

/// One node's link to Redis: pub/sub with the other nodes and this node's
/// presence. Cheap to clone; the threads stop when [`stop`](Self::stop) is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    node: u64,
    options: RedisOptions,
    writes: Mutex<Sender<Write>>,
    stopped: AtomicBool,
    /// The subscriber is listening: messages from other nodes arrive.
    subscribed: AtomicBool,
    /// Publishes handed to the writer and not yet written or dropped by it.
    queued: AtomicUsize,
    /// Publishes dropped because too many were queued.
    dropped: AtomicU64,
    queries: Mutex<Option<Connection>>,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink").field("node", &hex(self.inner.node)).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.writes.lock().map(|w| w.send(Write::Stop));
    }
}

/// A node id as it appears in keys, channels and payloads.
fn hex(node: u64) -> String {
    format!("{node:016x}")
}

impl RedisLink {
    /// Starts this node's threads. `deliver` gets every message other nodes
    /// send to all nodes or to this one; it runs on the subscriber thread and
    /// should hand the message on (to the workers) without blocking. Redis
    /// need not be up: the threads connect, and reconnect, by themselves.
    pub fn start(
        url: &str,
        options: RedisOptions,
        deliver: impl Fn(Inbound) + Send + 'static,
    ) -> Result<RedisLink, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl(e.to_string()))?;
        let (writes, queue) = mpsc::channel();
        let inner = Arc::new(Inner {
            client,
            node: node_id(),
            options,
            writes: Mutex::new(writes),
            stopped: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            queries: Mutex::new(None),
        });
        let link = RedisLink { inner };
        let name = &hex(link.inner.node)[..8];
        let writer = Writer { link: Arc::downgrade(&link.inner), state: HashMap::new() };
        let ctx = link.thread_ctx();
        thread::Builder::new()
            .name(format!("emitws-redis-writer-{name}"))
            .spawn(move || writer.run(queue, ctx))
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let subscriber = Arc::downgrade(&link.inner);
        let ctx = link.thread_ctx();
        thread::Builder::new()
            .name(format!("emitws-redis-sub-{name}"))
            .spawn(move || subscribe(subscriber, ctx, deliver))
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(link)
    }

    fn thread_ctx(&self) -> ThreadCtx {
        (self.inner.client.clone(), self.inner.options.clone(), hex(self.inner.node))
    }

    /// This node's id: random, never 0.
    pub fn node(&self) -> u64 {
        self.inner.node
    }

    /// Waits up to `within` for the subscriber to listen (messages other
    /// nodes send from then on arrive); false if it does not.
    pub fn ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.inner.subscribed.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// How many publishes were dropped because more than
    /// [`max_queued`](RedisOptions::max_queued) waited for Redis.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Stops the threads and removes this node's presence.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.write(Write::Stop);
    }

    fn write(&self, write: Write) {
        if let Ok(writes) = self.inner.writes.lock() {
            let _ = writes.send(write);
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.options.prefix)
    }

    fn publish(&self, channel: String, parts: &[&[u8]]) {
        if self.inner.queued.fetch_add(1, Ordering::Relaxed) >= self.inner.options.max_queued {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let node = hex(self.inner.node);
        let mut payload = Vec::with_capacity(node.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
        payload.extend_from_slice(node.as_bytes());
        payload.push(b'\n');
        parts.iter().for_each(|part| payload.extend_from_slice(part));
        self.write(Write::Publish { channel, payload });
    }

    /// Sends `payload` to every other node.
    pub fn publish_all(&self, payload: &[u8]) {
        self.publish(self.key("all"), &[payload]);
    }

    /// Sends `payload` to one node.
    pub fn publish_to(&self, node: u64, payload: &[u8]) {
        self.publish(self.key(&format!("node:{}", hex(node))), &[payload]);
    }

    /// Records a connection of this node.
    pub fn add_socket(&self, id: u64) {
        self.write(Write::AddSocket(id));
    }

    /// Forgets a connection of this node, with its groups and its user.
    pub fn remove_socket(&self, id: u64, groups: Vec<String>, user: Option<String>) {
        self.write(Write::RemoveSocket { id, groups, user });
    }

    /// Records that connection `id` joined `group` (a room or a tag).
    pub fn join(&self, group: &str, id: u64) {
        self.write(Write::Join { group: group.into(), id });
    }

    /// Records that connection `id` left `group`.
    pub fn leave(&self, group: &str, id: u64) {
        self.write(Write::Leave { group: group.into(), id });
    }

    /// Records that connection `id` belongs to `user`.
    pub fn add_user(&self, user: &str, id: u64) {
        self.write(Write::AddUser { user: user.into(), id });
    }

    /// Runs a read-only query on the query connection, with the timeout,
    /// given the live nodes.
    fn query<T>(&self, run: impl FnOnce(&mut Connection, &[u64]) -> RedisResult<T>) -> Result<T, ClusterError> {
        let timeout = self.inner.options.query_timeout;
        let mut slot = self.inner.queries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            let conn = self.inner.client.get_connection_with_timeout(timeout).map_err(unavailable)?;
            conn.set_read_timeout(Some(timeout)).map_err(unavailable)?;
            conn.set_write_timeout(Some(timeout)).map_err(unavailable)?;
            *slot = Some(conn);
        }
        let conn = slot.as_mut().expect("connected above");
        let result = alive_nodes(conn, &self.inner.options.prefix).and_then(|nodes| run(conn, &nodes));
        if result.is_err() {
            *slot = None; // Reconnect next time.
        }
        result.map_err(unavailable)
    }

    /// The key of the set that `scope` reads on `node`.
    fn scope_key(&self, node: u64, scope: Scope<'_>) -> String {
        let node = hex(node);
        match scope {
            Scope::Group(group) => self.key(&format!("n:{node}:g:{group}")),
            Scope::User(user) => self.key(&format!("n:{node}:u:{user}")),
            _ => self.key(&format!("n:{node}:sockets")),
        }
    }

    /// The nodes whose heartbeat is alive, this one included once it has beaten.
    pub fn nodes(&self) -> Result<Vec<u64>, ClusterError> {
        self.query(|_, nodes| Ok(nodes.to_vec()))
    }

    /// The sockets in `scope`, on every live node, sorted.
    pub fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, ClusterError> {
        self.query(|conn, nodes| {
            let mut pipe = redis::pipe();
            for node in nodes {
                pipe.smembers(self.scope_key(*node, scope));
            }
            let sets: Vec<Vec<u64>> = pipe.query(conn)?;
            let mut sockets: Vec<SocketId> = nodes
                .iter()
                .zip(sets)
                .flat_map(|(&node, ids)| ids.into_iter().map(move |id| SocketId { node, conn: ConnId(id) }))
                .collect();
            sockets.sort();
            Ok(sockets)
        })
    }

    /// How many sockets `scope` has, on every live node.
    pub fn count(&self, scope: Scope<'_>) -> Result<usize, ClusterError> {
        self.query(|conn, nodes| {
            let mut pipe = redis::pipe();
            for node in nodes {
                pipe.scard(self.scope_key(*node, scope));
            }
            let counts: Vec<usize> = pipe.query(conn)?;
            Ok(counts.into_iter().sum())
        })
    }

    /// Whether a socket is connected to a live node.
    pub fn socket_exists(&self, socket: SocketId) -> Result<bool, ClusterError> {
        self.query(|conn, nodes| {
            if !nodes.contains(&socket.node) {
                return Ok(false);
            }
            conn.sismember(self.scope_key(socket.node, Scope::All), socket.conn.0)
        })
    }

    /// Every user with a connection on a live node, sorted.
    pub fn users(&self) -> Result<Vec<String>, ClusterError> {
        self.query(|conn, nodes| {
            let keys: Vec<String> = nodes.iter().map(|node| self.key(&format!("n:{}:users", hex(*node)))).collect();
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut users: Vec<String> = conn.sunion(keys)?;
            users.sort();
            Ok(users)
        })
    }
}

/// The live nodes, by Redis's clock (so the nodes' clocks need not agree).
fn alive_nodes(conn: &mut Connection, prefix: &str) -> RedisResult<Vec<u64>> {
    const ALIVE: &str = "local t = redis.call('TIME')
        return redis.call('ZRANGEBYSCORE', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), '+inf')";
    let nodes: Vec<String> = eval(ALIVE, &[&format!("{prefix}:nodes")]).query(conn)?;
    Ok(nodes.iter().filter_map(|node| u64::from_str_radix(node, 16).ok()).collect())
}

/// A Lua script call (sent whole: they are short and rare).
fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node id: random (std's per-process hash keys, a counter and the clock),
/// so a restarted process, or a second link in one process, is a new node.
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(now_ms());
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Logs an outage once when it starts and once when it ends.
struct Outage {
    what: &'static str,
    since: Option<Instant>,
}

impl Outage {
    fn failed(&mut self, error: &dyn fmt::Display) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            eprintln!("emitws: Redis {} lost: {error}; local delivery goes on, retrying", self.what);
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            eprintln!("emitws: Redis {} back after {:.1} s", self.what, since.elapsed().as_secs_f64());
        }
    }
}

/// Whether the link was stopped or dropped: its threads then end.
fn gone(link: &Weak<Inner>) -> bool {
    link.upgrade().map_or(true, |inner| inner.stopped.load(Ordering::SeqCst))
}

/// The next wait between attempts: doubling, capped.
fn backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(50), max)
}

/// The writing thread: publishes, presence updates and the heartbeat.
struct Writer {
    link: Weak<Inner>,
    /// This node's presence, socket by socket (`g:GROUP`, `u:USER`), to write
    /// again after a reconnect or a lapsed heartbeat.
    state: HashMap<u64, Vec<String>>,
}

type ThreadCtx = (redis::Client, RedisOptions, String);

impl Writer {
    fn run(mut self, queue: Receiver<Write>, (client, options, node): ThreadCtx) {
        let p = options.prefix.clone();
        let beat_every = options.heartbeat_ttl / 3;
        let mut conn: Option<Connection> = None;
        let mut outage = Outage { what: "publisher", since: None };
        let mut wait = Duration::ZERO;
        let mut next_beat = Instant::now();
        let mut fresh = false;
        let mut batch: Vec<Write> = Vec::new();
        loop {
            let timeout = next_beat.saturating_duration_since(Instant::now());
            match queue.recv_timeout(timeout) {
                Ok(Write::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(write) => {
                    batch.push(write);
                    // Pipeline everything already queued with it.
                    while let Ok(write) = queue.try_recv() {
                        if matches!(write, Write::Stop) {
                            self.flush(&mut conn, &mut batch, &p, &node);
                            return self.leave(conn, &p, &node);
                        }
                        batch.push(write);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if gone(&self.link) {
                break;
            }
            if conn.is_none() {
                // Waiting out the backoff: what comes meanwhile is not sent.
                if Instant::now() < next_beat {
                    self.drop_publishes(&mut batch);
                    continue;
                }
                match client.get_connection_with_timeout(options.query_timeout) {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(options.query_timeout));
                        let _ = c.set_write_timeout(Some(options.query_timeout));
                        conn = Some(c);
                        next_beat = Instant::now();
                        fresh = true;
                    }
                    Err(e) => {
                        outage.failed(&e);
                        self.drop_publishes(&mut batch);
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                }
            }
            if Instant::now() >= next_beat {
                let ttl = options.heartbeat_ttl.as_millis() as u64;
                let beat = conn.as_mut().map(|c| {
                    let lapsed = heartbeat(c, &p, &node, ttl)?;
                    // Redis may have lost this node's presence (a restart, or
                    // survivors that took it for dead): write it again.
                    if lapsed || fresh {
                        self.replay(c, &p, &node)?;
                    }
                    Ok::<_, redis::RedisError>(())
                });
                match beat {
                    Some(Ok(())) => {
                        outage.recovered();
                        wait = Duration::ZERO;
                        next_beat = Instant::now() + beat_every;
                        fresh = false;
                    }
                    Some(Err(e)) => {
                        // Connected but refused (Redis still loading, say): back off too.
                        outage.failed(&e);
                        conn = None;
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                    None => continue,
                }
            }
            self.flush(&mut conn, &mut batch, &p, &node);
            if conn.is_none() {
                next_beat = Instant::now(); // Lost while writing: reconnect at once, then back off.
            }
        }
        self.leave(conn, &p, &node);
    }

    /// Takes the publishes out of the batch (written, or lost in an outage);
    /// presence is kept (and replayed).
    fn drop_publishes(&mut self, batch: &mut Vec<Write>) {
        let before = batch.len();
        batch.retain(|w| !matches!(w, Write::Publish { .. }));
        if let Some(inner) = self.link.upgrade() {
            inner.queued.fetch_sub(before - batch.len(), Ordering::Relaxed);
        }
        self.remember(batch);
    }

    /// Applies presence writes to the state kept for replays.
    fn remember(&mut self, batch: &mut Vec<Write>) {
        for write in batch.drain(..) {
            match write {
                Write::AddSocket(id) => {
                    self.state.entry(id).or_default();
                }
                Write::Join { group, id } => self.state.entry(id).or_default().push(format!("g:{group}")),
                Write::AddUser { user, id } => self.state.entry(id).or_default().push(format!("u:{user}")),
                Write::Leave { group, id } => {
                    if let Some(sets) = self.state.get_mut(&id) {
                        sets.retain(|set| set.strip_prefix("g:") != Some(&group));
                    }
                }
                Write::RemoveSocket { id, .. } => {
                    self.state.remove(&id);
                }
                Write::Publish { .. } | Write::Stop => {}
            }
        }
    }

    fn flush(&mut self, conn: &mut Option<Connection>, batch: &mut Vec<Write>, p: &str, node: &str) {
        if batch.is_empty() {
            return;
        }
        let Some(c) = conn.as_mut() else { return self.drop_publishes(batch) };
        let mut pipe = redis::pipe();
        let mut left_users = Vec::new();
        for write in batch.iter() {
            match write {
                Write::Publish { channel, payload } => {
                    pipe.publish(channel, payload.as_slice()).ignore();
                }
                Write::AddSocket(id) => {
                    pipe.sadd(format!("{p}:n:{node}:sockets"), id).ignore();
                }
                Write::RemoveSocket { id, groups, user } => {
                    pipe.srem(format!("{p}:n:{node}:sockets"), id).ignore();
                    for group in groups {
                        pipe.srem(format!("{p}:n:{node}:g:{group}"), id).ignore();
                    }
                    if let Some(user) = user {
                        pipe.srem(format!("{p}:n:{node}:u:{user}"), id).ignore();
                        left_users.push(user);
                    }
                }
                Write::Join { group, id } => {
                    pipe.sadd(format!("{p}:n:{node}:g:{group}"), id).ignore();
                }
                Write::Leave { group, id } => {
                    pipe.srem(format!("{p}:n:{node}:g:{group}"), id).ignore();
                }
                Write::AddUser { user, id } => {
                    pipe.sadd(format!("{p}:n:{node}:u:{user}"), id).ignore();
                    pipe.sadd(format!("{p}:n:{node}:users"), user).ignore();
                }
                Write::Stop => {}
            }
        }
        // A user with no connection left on this node is no longer listed here
        // (the writes above ran first, in order, on this one connection).
        const UNLIST: &str =
            "if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end return 0";
        for user in left_users {
            let keys = [&format!("{p}:n:{node}:u:{user}")[..], &format!("{p}:n:{node}:users")];
            pipe.add_command(eval(UNLIST, &keys).arg(user).clone()).ignore();
        }
        let result: RedisResult<()> = pipe.query(c);
        if result.is_err() {
            *conn = None;
        }
        self.drop_publishes(batch);
    }

    /// Writes this node's presence again, replacing whatever Redis has of it.
    fn replay(&self, c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
        let stale = node_keys(c, p, node)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !stale.is_empty() {
            pipe.del(stale).ignore();
        }
        for (id, sets) in &self.state {
            pipe.sadd(format!("{p}:n:{node}:sockets"), id).ignore();
            for set in sets {
                match set.split_once(':') {
                    Some(("g", group)) => pipe.sadd(format!("{p}:n:{node}:g:{group}"), id).ignore(),
                    Some((_, user)) => {
                        pipe.sadd(format!("{p}:n:{node}:users"), user).ignore();
                        pipe.sadd(format!("{p}:n:{node}:u:{user}"), id).ignore()
                    }
                    None => continue,
                };
            }
        }
        pipe.query(c)
    }

    /// Removes this node from the cluster on a clean stop.
    fn leave(&self, conn: Option<Connection>, p: &str, node: &str) {
        if let Some(mut c) = conn {
            let _: RedisResult<()> = c.zrem(format!("{p}:nodes"), node);
            let _ = delete_node_keys(&mut c, p, node);
        }
    }
}

/// Refreshes this node's heartbeat (by Redis's clock) and forgets the nodes
/// whose heartbeat died. True if this node's own heartbeat had lapsed.
fn heartbeat(c: &mut Connection, p: &str, node: &str, ttl_ms: u64) -> RedisResult<bool> {
    let nodes = format!("{p}:nodes");
    const BEAT: &str = "local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
        local lapsed = 1
        if was and tonumber(was) >= now then lapsed = 0 end
        return {lapsed, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)}";
    let (lapsed, dead): (u8, Vec<String>) = eval(BEAT, &[&nodes]).arg(node).arg(ttl_ms).query(c)?;
    for dead in dead {
        delete_node_keys(c, p, &dead)?;
        let _: () = c.zrem(&nodes, &dead)?;
    }
    Ok(lapsed == 1)
}

fn node_keys(c: &mut Connection, p: &str, node: &str) -> RedisResult<Vec<String>> {
    c.scan_match(format!("{p}:n:{node}:*"))?.collect()
}

fn delete_node_keys(c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
    let keys = node_keys(c, p, node)?;
    if !keys.is_empty() {
        let _: () = c.del(keys)?;
    }
    Ok(())
}

/// The subscriber thread: hands every message from another node to `deliver`.
fn subscribe(link: Weak<Inner>, (client, options, node): ThreadCtx, deliver: impl Fn(Inbound)) {
    let p = options.prefix.clone();
    let all = format!("{p}:all");
    let direct = format!("{p}:node:{node}");
    let mut outage = Outage { what: "subscriber", since: None };
    let mut wait = Duration::ZERO;
    loop {
        if gone(&link) {
            return;
        }
        let mut conn = match client.get_connection_with_timeout(options.query_timeout) {
            Ok(conn) => conn,
            Err(e) => {
                outage.failed(&e);
                wait = backoff(wait, options.max_backoff);
                thread::sleep(wait);
                continue;
            }
        };
        // Wake up now and then to notice a stop.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(250)));
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe(&all).and_then(|()| pubsub.subscribe(&direct)).is_err() {
            continue;
        }
        outage.recovered();
        wait = Duration::ZERO;
        let listening = |yes: bool| link.upgrade().map(|inner| inner.subscribed.store(yes, Ordering::SeqCst));
        listening(true);
        loop {
            if gone(&link) {
                return;
            }
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    listening(false);
                    outage.failed(&e);
                    break;
                }
            };
            let payload = message.get_payload_bytes();
            // Malformed payloads (no sender line) are ignored.
            let Some(at) = payload.iter().position(|&b| b == b'\n') else { continue };
            let Some(from) = std::str::from_utf8(&payload[..at]).ok().and_then(|f| u64::from_str_radix(f, 16).ok())
            else {
                continue;
            };
            if payload[..at] == *node.as_bytes() {
                continue;
            }
            let is_direct = message.get_channel_name() == direct;
            deliver(Inbound { from, direct: is_direct, payload: payload[at + 1..].to_vec() });
        }
    }
}

/// Who an app message between nodes is for: the JSON line before the envelope.
#[derive(Serialize, Deserialize)]
enum Header {
    /// A broadcast: its groups (none: everyone) and the sockets left out, as (node, conn).
    #[serde(rename = "b")]
    Broadcast(Vec<String>, Vec<(u64, u64)>),
    /// One connection of the receiving node.
    #[serde(rename = "s")]
    Socket(u64),
    /// A user's devices.
    #[serde(rename = "u")]
    User(String),
    /// Close one connection of the receiving node with a code; the reason follows.
    #[serde(rename = "cs")]
    CloseSocket(u64, u16),
    /// Close a user's devices with a code; the reason follows.
    #[serde(rename = "cu")]
    CloseUser(String, u16),
}

/// The [`Adapter`] that makes an app one node of a cluster sharing a Redis.
///
/// Per node: one subscriber thread hands other nodes' messages to the
/// workers (through their wakers, never blocking them), one writer thread
/// pipelines publishes and presence and keeps the heartbeat. Messages go as
/// `NODE\n{"b":[groups,except]}\nENVELOPE` (or `{"s":conn}` to one node's
/// socket, `{"u":user}` to a user's devices), and closes as
/// `NODE\n{"cs":[conn,code]}\nREASON` or `NODE\n{"cu":[user,code]}\nREASON`;
/// anything else is ignored.
///
/// ```no_run
/// use emitws::app::App;
/// use emitws::cluster::{RedisAdapter, RedisOptions};
/// let mut app = App::new();
/// app.adapter(RedisAdapter::new("redis://127.0.0.1:6379/", RedisOptions::default())?);
/// # Ok::<(), emitws::cluster::ClusterError>(())
/// ```
pub struct RedisAdapter {
    link: RedisLink,
    app: Arc<Mutex<Option<AppHandle>>>,
}

impl fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdapter").field("link", &self.link).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisAdapter {
    /// Connects this node to the cluster at `url` (`redis://host:port/db`).
    /// Only a bad URL fails: Redis need not be up yet, the link connects by itself.
    pub fn new(url: &str, options: RedisOptions) -> Result<Arc<RedisAdapter>, ClusterError> {
        let app: Arc<Mutex<Option<AppHandle>>> = Arc::default();
        let slot = app.clone();
        let link = RedisLink::start(url, options, move |message| {
            let app = lock(&slot).clone();
            if let Some(app) = app {
                deliver(&app, &message);
            }
        })?;
        Ok(Arc::new(RedisAdapter { link, app }))
    }

    /// The link under the adapter.
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Publishes `header` and `body` to one node, or to all of them.
    fn send(&self, header: &Header, node: Option<u64>, body: &[u8]) {
        let Ok(mut header) = serde_json::to_vec(header) else { return };
        header.push(b'\n');
        let channel = match node {
            Some(node) => self.link.key(&format!("node:{}", hex(node))),
            None => self.link.key("all"),
        };
        self.link.publish(channel, &[&header, body]);
    }
}

/// Hands a message from another node to the app; malformed ones are dropped.
fn deliver(app: &AppHandle, message: &Inbound) -> Option<()> {
    let at = message.payload.iter().position(|&b| b == b'\n')?;
    let header: Header = serde_json::from_slice(&message.payload[..at]).ok()?;
    let body = std::str::from_utf8(&message.payload[at + 1..]).ok()?;
    let here = |conn| SocketId { node: app.node(), conn: ConnId(conn) };
    let envelope = || serde_json::from_str::<serde::de::IgnoredAny>(body).ok().map(|_| body);
    match header {
        Header::Broadcast(groups, except) => {
            let mut opts = BroadcastOpts::all();
            opts.to = groups.into_iter().map(Into::into).collect();
            opts.except = except.into_iter().map(|(node, conn)| SocketId { node, conn: ConnId(conn) }).collect();
            app.deliver_remote(envelope()?, Target::Broadcast(&opts));
        }
        Header::Socket(conn) if message.direct => app.deliver_remote(envelope()?, Target::Socket(here(conn))),
        Header::User(user) => app.deliver_remote(envelope()?, Target::User(&user)),
        Header::CloseSocket(conn, code) if message.direct => {
            app.deliver_close(Target::Socket(here(conn)), CloseCode(code), body)
        }
        Header::CloseUser(user, code) => app.deliver_close(Target::User(&user), CloseCode(code), body),
        Header::Socket(_) | Header::CloseSocket(..) => {}
    }
    Some(())
}

impl Adapter for RedisAdapter {
    fn node(&self) -> u64 {
        self.link.node()
    }

    fn attach(&self, app: AppHandle) {
        *lock(&self.app) = Some(app);
    }

    fn detach(&self) {
        self.link.stop();
        lock(&self.app).take();
    }

    fn publish(&self, envelope: &[u8], to: Target<'_>) {
        let (header, node) = match to {
            Target::Broadcast(opts) => {
                let groups = opts.groups().iter().map(|g| g.to_string()).collect();
                let except = opts.excepted().iter().map(|id| (id.node, id.conn.0)).collect();
                (Header::Broadcast(groups, except), None)
            }
            Target::Socket(id) => (Header::Socket(id.conn.0), Some(id.node)),
            Target::User(user) => (Header::User(user.into()), None),
        };
        self.send(&header, node, envelope);
    }

    fn close(&self, to: Target<'_>, code: CloseCode, reason: &str) {
        let (header, node) = match to {
            Target::Socket(id) => (Header::CloseSocket(id.conn.0, code.0), Some(id.node)),
            Target::User(user) => (Header::CloseUser(user.into(), code.0), None),
            Target::Broadcast(_) => return,
        };
        self.send(&header, node, reason.as_bytes());
    }

    fn presence(&self, change: Presence<'_>) {
        match change {
            Presence::Connected { id, user } => {
                self.link.add_socket(id.0);
                if let Some(user) = user {
                    self.link.add_user(user, id.0);
                }
            }
            Presence::Joined { id, group } => self.link.join(group, id.0),
            Presence::Left { id, group } => self.link.leave(group, id.0),
            Presence::Disconnected { id, user, groups } => {
                let groups = groups.iter().map(|g| g.to_string()).collect();
                self.link.remove_socket(id.0, groups, user.map(Into::into));
            }
        }
    }

    fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, app::Error> {
        Ok(self.link.sockets(scope)?)
    }

    fn count(&self, scope: Scope<'_>) -> Result<usize, app::Error> {
        Ok(self.link.count(scope)?)
    }

    fn socket_exists(&self, id: SocketId) -> Result<bool, app::Error> {
        let id = SocketId { node: if id.node == 0 { self.node() } else { id.node }, ..id };
        Ok(self.link.socket_exists(id)?)
    }

    fn users(&self) -> Result<Vec<String>, app::Error> {
        Ok(self.link.users()?)
    }
}
