//! Scale-out over Redis (feature `redis`): the node-to-node transport and the
//! shared presence that cross-node queries read.
//!
//! Every node has an id and keeps a heartbeat in the sorted set `P:nodes`
//! (score: when the heartbeat expires, in ms). Presence lives in per-node
//! sets (`P:n:NODE:sockets`, `P:n:NODE:g:GROUP`, `P:n:NODE:u:USER`, and the
//! lists `P:n:NODE:groups`, `P:n:NODE:users`), and every query reads only the
//! nodes whose heartbeat is alive: a dead node leaves all answers as soon as
//! its heartbeat expires, and survivors delete its keys afterwards.
//!
//! Messages between nodes go over pub/sub: `P:all` for broadcasts, `P:node:ID`
//! for one node. Each payload starts with the sender's id and a newline, so a
//! node ignores its own broadcasts. One thread per node subscribes, another
//! owns the writing connection: it pipelines queued publishes and presence
//! updates, refreshes the heartbeat, and reconnects with backoff. An outage
//! is logged once, when it starts, and once when it ends; local delivery never
//! waits for Redis.
//!
//! ```no_run
//! use emitws::cluster::{RedisAdapter, RedisOptions};
//! let node = RedisAdapter::start("redis://127.0.0.1:6379/", RedisOptions::default(), |message| {
//!     println!("from {}: {} bytes", message.from, message.payload.len());
//! })?;
//! node.add_socket(1);
//! node.join("#lobby", 1);
//! node.publish_all(br#"[0,"/news","hello"]"#);
//! println!("{} in #lobby cluster-wide", node.group_size("#lobby")?);
//! # Ok::<(), emitws::cluster::ClusterError>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Commands, Connection, RedisResult};

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
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "emitws".into(),
            heartbeat_ttl: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
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

fn unavailable(e: redis::RedisError) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// A socket somewhere in the cluster: its node and its id on that node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteSocket {
    /// The node's id.
    pub node: String,
    /// The connection's id on its node (a `ConnId`'s value).
    pub id: u64,
}

/// A message from another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The sender's node id.
    pub from: String,
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

/// One node's link to Redis. Cheap to clone; the threads stop when
/// [`stop`](Self::stop) is called or the last clone is dropped.
#[derive(Clone)]
pub struct RedisAdapter {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    node: String,
    options: RedisOptions,
    writes: Mutex<Sender<Write>>,
    stopped: AtomicBool,
    queries: Mutex<Option<Connection>>,
}

impl fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAdapter").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.writes.lock().map(|w| w.send(Write::Stop));
    }
}

impl RedisAdapter {
    /// Starts this node's threads. `deliver` gets every message other nodes
    /// send to all nodes or to this one; it runs on the subscriber thread and
    /// should hand the message on (to the workers) without blocking. Redis
    /// need not be up: the threads connect, and reconnect, by themselves.
    pub fn start(
        url: &str,
        options: RedisOptions,
        deliver: impl Fn(Inbound) + Send + 'static,
    ) -> Result<RedisAdapter, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl(e.to_string()))?;
        let node = node_id();
        let (writes, queue) = mpsc::channel();
        let inner = Arc::new(Inner {
            client,
            node,
            options,
            writes: Mutex::new(writes),
            stopped: AtomicBool::new(false),
            queries: Mutex::new(None),
        });
        let adapter = RedisAdapter { inner };
        let writer = Writer { link: Arc::downgrade(&adapter.inner), state: Vec::new() };
        let ctx = (adapter.inner.client.clone(), adapter.inner.options.clone(), adapter.inner.node.clone());
        thread::Builder::new()
            .name(format!("emitws-redis-writer-{}", &adapter.inner.node[..8]))
            .spawn(move || writer.run(queue, ctx))
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let subscriber = Arc::downgrade(&adapter.inner);
        let ctx = (adapter.inner.client.clone(), adapter.inner.options.clone(), adapter.inner.node.clone());
        thread::Builder::new()
            .name(format!("emitws-redis-sub-{}", &adapter.inner.node[..8]))
            .spawn(move || subscribe(subscriber, ctx, deliver))
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        Ok(adapter)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
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

    /// Sends `payload` to every other node.
    pub fn publish_all(&self, payload: &[u8]) {
        self.write(Write::Publish { channel: self.key("all"), payload: framed(&self.inner.node, payload) });
    }

    /// Sends `payload` to one node.
    pub fn publish_to(&self, node: &str, payload: &[u8]) {
        let channel = self.key(&format!("node:{node}"));
        self.write(Write::Publish { channel, payload: framed(&self.inner.node, payload) });
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

    /// Runs a read-only query on the query connection, with the timeout.
    fn query<T>(&self, run: impl FnOnce(&mut Connection, &[String]) -> RedisResult<T>) -> Result<T, ClusterError> {
        let timeout = self.inner.options.query_timeout;
        let mut slot = self.inner.queries.lock().map_err(|_| ClusterError::Unavailable("poisoned".into()))?;
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

    /// The nodes whose heartbeat is alive, this one included once it has beaten.
    pub fn nodes(&self) -> Result<Vec<String>, ClusterError> {
        self.query(|_, nodes| Ok(nodes.to_vec()))
    }

    /// Every connection in `group`, on every live node.
    pub fn group_members(&self, group: &str) -> Result<Vec<RemoteSocket>, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| per_node_members(conn, nodes, |node| format!("{prefix}:n:{node}:g:{group}")))
    }

    /// How many connections `group` has, on every live node.
    pub fn group_size(&self, group: &str) -> Result<usize, ClusterError> {
        Ok(self.group_members(group)?.len())
    }

    /// Every connection, on every live node.
    pub fn sockets(&self) -> Result<Vec<RemoteSocket>, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| per_node_members(conn, nodes, |node| format!("{prefix}:n:{node}:sockets")))
    }

    /// How many connections there are, on every live node.
    pub fn socket_count(&self) -> Result<usize, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| {
            let mut pipe = redis::pipe();
            for node in nodes {
                pipe.scard(format!("{prefix}:n:{node}:sockets"));
            }
            let counts: Vec<usize> = pipe.query(conn)?;
            Ok(counts.into_iter().sum())
        })
    }

    /// Whether a connection exists (on a live node).
    pub fn socket_exists(&self, socket: &RemoteSocket) -> Result<bool, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| {
            if !nodes.contains(&socket.node) {
                return Ok(false);
            }
            conn.sismember(format!("{prefix}:n:{}:sockets", socket.node), socket.id)
        })
    }

    /// The connections of `user`, on every live node.
    pub fn user_sockets(&self, user: &str) -> Result<Vec<RemoteSocket>, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| per_node_members(conn, nodes, |node| format!("{prefix}:n:{node}:u:{user}")))
    }

    /// Whether `user` has a connection on a live node.
    pub fn user_online(&self, user: &str) -> Result<bool, ClusterError> {
        Ok(!self.user_sockets(user)?.is_empty())
    }

    /// Every user with a connection on a live node, sorted.
    pub fn online_users(&self) -> Result<Vec<String>, ClusterError> {
        let prefix = &self.inner.options.prefix;
        self.query(|conn, nodes| {
            let keys: Vec<String> = nodes.iter().map(|node| format!("{prefix}:n:{node}:users")).collect();
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut users: Vec<String> = conn.sunion(keys)?;
            users.sort();
            Ok(users)
        })
    }
}

/// The members of one set per live node, as sockets of those nodes.
fn per_node_members(
    conn: &mut Connection,
    nodes: &[String],
    key: impl Fn(&str) -> String,
) -> RedisResult<Vec<RemoteSocket>> {
    let mut pipe = redis::pipe();
    for node in nodes {
        pipe.smembers(key(node));
    }
    let sets: Vec<Vec<u64>> = pipe.query(conn)?;
    let mut sockets: Vec<RemoteSocket> = nodes
        .iter()
        .zip(sets)
        .flat_map(|(node, ids)| ids.into_iter().map(move |id| RemoteSocket { node: node.clone(), id }))
        .collect();
    sockets.sort();
    Ok(sockets)
}

fn alive_nodes(conn: &mut Connection, prefix: &str) -> RedisResult<Vec<String>> {
    conn.zrangebyscore(format!("{prefix}:nodes"), now_ms(), "+inf")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A node id: random (std's per-process hash keys, a counter and the clock),
/// so a restarted process, or a second adapter in one process, is a new node.
fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(now_ms());
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

fn framed(node: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.len() + 1 + payload.len());
    out.extend_from_slice(node.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
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

/// Whether the adapter was stopped or dropped: its threads then end.
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
    /// Presence to replay after a reconnect (Redis may have lost it).
    state: Vec<(String, u64)>,
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
                match client.get_connection_with_timeout(options.query_timeout) {
                    Ok(fresh) => {
                        conn = Some(fresh);
                        outage.recovered();
                        wait = Duration::ZERO;
                        next_beat = Instant::now();
                        if let Some(c) = conn.as_mut() {
                            if self.replay(c, &p, &node).is_err() {
                                conn = None;
                            }
                        }
                    }
                    Err(e) => {
                        outage.failed(&e);
                        // Publishes are dropped during an outage; presence is kept and replayed.
                        batch.retain(|w| !matches!(w, Write::Publish { .. }));
                        self.remember(&mut batch);
                        wait = backoff(wait, options.max_backoff);
                        next_beat = Instant::now() + wait;
                        continue;
                    }
                }
            }
            if Instant::now() >= next_beat {
                let expires = now_ms() + options.heartbeat_ttl.as_millis() as u64;
                let beat = conn.as_mut().map(|c| heartbeat(c, &p, &node, expires));
                match beat {
                    Some(Ok(())) => next_beat = Instant::now() + beat_every,
                    _ => {
                        conn = None;
                        continue;
                    }
                }
            }
            self.flush(&mut conn, &mut batch, &p, &node);
        }
        self.leave(conn, &p, &node);
    }

    /// Keeps presence writes (they are also replayed after a reconnect).
    fn remember(&mut self, batch: &mut Vec<Write>) {
        for write in batch.drain(..) {
            match write {
                Write::AddSocket(id) => self.state.push((String::new(), id)),
                Write::Join { group, id } => self.state.push((format!("g:{group}"), id)),
                Write::AddUser { user, id } => self.state.push((format!("u:{user}"), id)),
                Write::Leave { group, id } => self.state.retain(|s| *s != (format!("g:{group}"), id)),
                Write::RemoveSocket { id, .. } => self.state.retain(|(_, s)| *s != id),
                Write::Publish { .. } | Write::Stop => {}
            }
        }
    }

    fn flush(&mut self, conn: &mut Option<Connection>, batch: &mut Vec<Write>, p: &str, node: &str) {
        if batch.is_empty() {
            return;
        }
        let Some(c) = conn.as_mut() else {
            batch.retain(|w| !matches!(w, Write::Publish { .. }));
            return self.remember(batch);
        };
        let mut pipe = redis::pipe();
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
                    }
                }
                Write::Join { group, id } => {
                    pipe.sadd(format!("{p}:n:{node}:g:{group}"), id).ignore();
                    pipe.sadd(format!("{p}:n:{node}:groups"), group).ignore();
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
        // A user with no connection left on this node is no longer listed here.
        let users: HashSet<&String> = batch
            .iter()
            .filter_map(|w| match w {
                Write::RemoveSocket { user: Some(user), .. } => Some(user),
                _ => None,
            })
            .collect();
        let result: RedisResult<()> = pipe.query(c);
        let result = result.and_then(|()| {
            for user in users {
                let left: usize = c.scard(format!("{p}:n:{node}:u:{user}"))?;
                if left == 0 {
                    let _: () = c.srem(format!("{p}:n:{node}:users"), user)?;
                }
            }
            Ok(())
        });
        if result.is_err() {
            *conn = None;
        }
        batch.retain(|w| !matches!(w, Write::Publish { .. }));
        self.remember(batch);
    }

    /// Writes this node's presence again, after a reconnect.
    fn replay(&self, c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
        if self.state.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (set, id) in &self.state {
            match set.split_once(':') {
                None => pipe.sadd(format!("{p}:n:{node}:sockets"), id).ignore(),
                Some(("g", group)) => {
                    pipe.sadd(format!("{p}:n:{node}:groups"), group).ignore();
                    pipe.sadd(format!("{p}:n:{node}:g:{group}"), id).ignore()
                }
                Some((_, user)) => {
                    pipe.sadd(format!("{p}:n:{node}:users"), user).ignore();
                    pipe.sadd(format!("{p}:n:{node}:u:{user}"), id).ignore()
                }
            };
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

/// Refreshes this node's heartbeat and forgets the nodes whose heartbeat died.
fn heartbeat(c: &mut Connection, p: &str, node: &str, expires: u64) -> RedisResult<()> {
    let nodes = format!("{p}:nodes");
    let _: () = c.zadd(&nodes, node, expires)?;
    let dead: Vec<String> = c.zrangebyscore(&nodes, "-inf", format!("({}", now_ms()))?;
    for dead in dead {
        delete_node_keys(c, p, &dead)?;
        let _: () = c.zrem(&nodes, &dead)?;
    }
    Ok(())
}

fn delete_node_keys(c: &mut Connection, p: &str, node: &str) -> RedisResult<()> {
    let keys: Vec<String> = c.scan_match(format!("{p}:n:{node}:*"))?.collect::<RedisResult<_>>()?;
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
        loop {
            if gone(&link) {
                return;
            }
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    outage.failed(&e);
                    break;
                }
            };
            let payload = message.get_payload_bytes();
            // Malformed payloads (no sender line) are ignored.
            let Some(at) = payload.iter().position(|&b| b == b'\n') else { continue };
            let Ok(from) = std::str::from_utf8(&payload[..at]) else { continue };
            if from == node {
                continue;
            }
            let is_direct = message.get_channel_name() == direct;
            deliver(Inbound { from: from.to_owned(), direct: is_direct, payload: payload[at + 1..].to_vec() });
        }
    }
}
