//! One node's link to Redis ([`RedisLink`]): starting its writer and
//! subscriber threads, queueing publishes and presence for the writer, and
//! the queries about every live node.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Cmd, Commands, Connection, RedisResult};

use super::routed::RedisConn;

use super::connect::Connector;
use super::error::ClusterError;
use super::ids::{id_key, parse_holder, IdClaim};
use super::options::RedisOptions;
use super::outage::Health;
use super::reader::{self, Job};
use super::sessions::{alias_key, direct_key, record_key, Record};
use super::subscriber::{self, Subscription};
use super::wire::{hex, with_sender};
use super::writer::{Writer, WriterCommand};
use crate::app::{Scope, SocketId};
use crate::runtime::ConnId;

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

/// One node's link to Redis: pub/sub with the other nodes and this node's
/// presence. Cheap to clone; the threads stop when [`stop`](Self::stop) is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<LinkState>,
}

/// What a link's clones and its threads share (the threads hold it
/// weakly: dropping the last clone ends them).
pub(super) struct LinkState {
    /// Where every connection of the link is opened.
    connector: Arc<Connector>,
    node: u64,
    options: RedisOptions,
    /// The writer thread's queue.
    writes: Mutex<Sender<WriterCommand>>,
    /// The background thread's queue.
    jobs: Mutex<Sender<Job>>,
    stopped: AtomicBool,
    /// The subscriber is listening: messages from other nodes arrive.
    pub(super) subscribed: AtomicBool,
    /// Publishes handed to the writer and not yet written or dropped by it.
    pub(super) queued: AtomicUsize,
    /// Publishes dropped: too many were queued, or Redis was unreachable.
    pub(super) dropped: AtomicU64,
    /// Publishes handed to the writer (the metrics' count).
    published: AtomicU64,
    /// Messages from other nodes handed on (by the subscriber thread).
    pub(super) received: AtomicU64,
    /// Connections the writer made to Redis: the first, then reconnections.
    pub(super) writer_connections: AtomicU64,
    /// Live nodes as the last query or heartbeat found them.
    pub(super) nodes_alive: AtomicUsize,
    /// Whether the writer and the subscriber reach Redis, and who hears of it.
    pub(super) health: Health,
    /// The connection queries run on, opened on the first query, with the
    /// master's generation it was opened under.
    queries: Mutex<Option<(RedisConn, u64)>>,
    /// For a Redis Cluster: this node's sockets in each group, whose
    /// channel the subscriber listens to while it has any (see
    /// [`RedisLink::group_channel`]). Empty for one Redis.
    listened: Mutex<HashMap<Box<str>, HashSet<u64>>>,
    /// The subscriber thread's queue of channels to listen to or drop.
    subscriptions: Mutex<Sender<Subscription>>,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink").field("node", &hex(self.inner.node)).finish_non_exhaustive()
    }
}

impl LinkState {
    /// Whether the subscriber listens and neither it nor the writer is in an outage.
    fn reaches_redis(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst) && self.health.up()
    }
}

impl Drop for LinkState {
    fn drop(&mut self) {
        let _ = self.writes.lock().map(|w| w.send(WriterCommand::Stop));
    }
}

impl RedisLink {
    /// Starts this node's threads. `deliver` gets every message other nodes
    /// send to all nodes or to this one; it runs on the subscriber thread and
    /// should hand the message on (to the workers) without blocking. Redis
    /// need not be up: the threads connect, and reconnect, by themselves.
    ///
    /// `url` is one of:
    /// - `redis://[user:password@]host[:port][/db]`: one Redis;
    /// - `rediss://…`: the same over TLS (rustls), trusting the CA file of
    ///   [`RedisOptions::ca_file`] if set, else Mozilla's roots;
    /// - `redis+sentinel://[user:password@]host:port[,host:port…]/MASTER[/db]`:
    ///   the master named `MASTER` of a Sentinel group, found by asking each
    ///   sentinel in turn (port 26379 if none is given) and checked with
    ///   `ROLE`; every reconnection asks again, so a failover is followed
    ///   (the credentials are the master's; the sentinels are asked without);
    /// - `rediss+sentinel://…`: the same with TLS to the sentinels and the master.
    ///
    /// - `redis+cluster://[user:password@]host:port[,host:port…][/]`: a
    ///   Redis Cluster (7.0 or later) by some of its nodes: each command
    ///   goes to its slot's master, and pub/sub is sharded, a channel per
    ///   group listened to by the nodes with members in it (see
    ///   [`join`](Self::join));
    /// - `rediss+cluster://…`: the same over TLS.
    ///
    /// # Errors
    ///
    /// [`ClusterError::BadUrl`] if `url` does not parse (or a CA file comes
    /// with a URL without TLS), [`ClusterError::CaFile`] if the CA file cannot
    /// be read or holds no certificate, [`ClusterError::Spawn`] if a thread
    /// cannot start. Redis being down is no error.
    pub fn start(
        url: &str,
        options: RedisOptions,
        deliver: impl Fn(Inbound) + Send + 'static,
    ) -> Result<RedisLink, ClusterError> {
        let connector = Arc::new(Connector::new(url, &options)?);
        let (writes, queue) = mpsc::channel();
        let (jobs, job_queue) = mpsc::channel();
        let (subscriptions, changes) = mpsc::channel();
        let inner = Arc::new(LinkState {
            connector,
            node: node_id(),
            options,
            writes: Mutex::new(writes),
            jobs: Mutex::new(jobs),
            stopped: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            writer_connections: AtomicU64::new(0),
            nodes_alive: AtomicUsize::new(0),
            health: Health::default(),
            queries: Mutex::new(None),
            listened: Mutex::default(),
            subscriptions: Mutex::new(subscriptions),
        });
        let link = RedisLink { inner };
        let name = &hex(link.inner.node)[..8];
        let writer = Writer::new(Arc::downgrade(&link.inner));
        let ctx = link.thread_ctx();
        thread::Builder::new()
            .name(format!("emitws-redis-writer-{name}"))
            .spawn(move || writer.run(queue, ctx))
            .map_err(ClusterError::Spawn)?;
        let subscriber = Arc::downgrade(&link.inner);
        let ctx = link.thread_ctx();
        thread::Builder::new()
            .name(format!("emitws-redis-sub-{name}"))
            .spawn(move || subscriber::run(subscriber, ctx, changes, deliver))
            .map_err(ClusterError::Spawn)?;
        let background = Arc::downgrade(&link.inner);
        let ctx = link.thread_ctx();
        thread::Builder::new()
            .name(format!("emitws-redis-bg-{name}"))
            .spawn(move || reader::run(background, job_queue, ctx))
            .map_err(ClusterError::Spawn)?;
        Ok(link)
    }

    fn thread_ctx(&self) -> ThreadCtx {
        (self.inner.connector.clone(), self.inner.options.clone(), hex(self.inner.node))
    }

    /// A new connection to Redis, opened as the link's own are (the master
    /// through Sentinel, TLS with the CA file), with
    /// [`query_timeout`](RedisOptions::query_timeout) for connecting, reads
    /// and writes: for an application's own keys. After an error, open
    /// another (through Sentinel, it then reaches the master of the moment).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis (or every sentinel) does not
    /// answer in time, or refuses.
    ///
    /// A Redis Cluster has no one connection for every key:
    /// [`ClusterError::Unavailable`] too; use redis's cluster client
    /// (`redis::cluster::ClusterClient`, feature `cluster`) for the
    /// application's keys there.
    pub fn connection(&self) -> Result<Connection, ClusterError> {
        match self.inner.connector.open(self.inner.options.query_timeout).map_err(ClusterError::Unavailable)? {
            (RedisConn::One(conn), _) => Ok(conn),
            (RedisConn::Cluster(_), _) => Err(ClusterError::Unavailable(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no one connection",
                "use redis's cluster client for the application's keys".to_owned(),
            )))),
        }
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

    /// Whether the link reaches Redis now: its subscriber listens and
    /// neither it nor the writer is in an outage.
    pub(super) fn reaches_redis(&self) -> bool {
        self.inner.reaches_redis()
    }

    /// Has `watcher` hear of the link's health from now on: Redis lost and
    /// back, other nodes joining and leaving (see [`super::outage::Health`]).
    /// It runs on the link's threads and must not block.
    pub(super) fn watch(&self, watcher: impl Fn(crate::app::ClusterEvent) + Send + Sync + 'static) {
        self.inner.health.watch(watcher);
    }

    /// How many publishes were dropped: more than
    /// [`max_queued`](RedisOptions::max_queued) waited for Redis, or Redis
    /// was unreachable when the writer had them (an outage loses them).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Waits until what this node handed its writer before the call
    /// (presence, session records, publishes) is written to Redis, or kept
    /// for the rewrite when Redis is back if it is down; false if that took
    /// longer than `within`, or the link has stopped. For a drain before
    /// shutting down, or a test that is to find a node's writes in Redis.
    ///
    /// ```no_run
    /// # fn demo(link: &emitws::cluster::RedisLink) {
    /// use std::time::Duration;
    /// assert!(link.written(Duration::from_secs(2)), "Redis answers slowly");
    /// # }
    /// ```
    pub fn written(&self, within: Duration) -> bool {
        let (told, done) = std::sync::mpsc::sync_channel(1);
        self.write(WriterCommand::Written(told));
        done.recv_timeout(within).is_ok()
    }

    /// Stops the threads and removes this node's presence.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.write(WriterCommand::Stop);
    }

    fn write(&self, write: WriterCommand) {
        if let Ok(writes) = self.inner.writes.lock() {
            let _ = writes.send(write);
        }
    }

    /// Runs `job` on the link's background thread, after the jobs queued
    /// before it: for work whose caller must not wait for Redis (a worker),
    /// which the job answers through what it holds. Once the link has
    /// stopped, the job is dropped unrun.
    pub(crate) fn background(&self, job: Job) {
        if let Ok(jobs) = self.inner.jobs.lock() {
            let _ = jobs.send(job);
        }
    }

    /// A key or channel name: the prefix, a colon, `rest`.
    pub(super) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.options.prefix)
    }

    /// Queues `parts`, behind this node's sender line, for `channel`;
    /// dropped and counted when too many wait already.
    pub(super) fn publish(&self, channel: String, parts: &[&[u8]]) {
        self.queue_publish(parts, |payload| WriterCommand::Publish { channel, payload });
    }

    /// [`publish`](Self::publish), once every write queued before it is
    /// done (see [`WriterCommand::PublishAfterWrites`]).
    pub(super) fn publish_after_writes(&self, channel: String, parts: &[&[u8]]) {
        self.queue_publish(parts, |payload| WriterCommand::PublishAfterWrites { channel, payload });
    }

    /// Hands the writer the publish `command` makes of the payload, unless
    /// too many wait already (then it is dropped and counted).
    fn queue_publish(&self, parts: &[&[u8]], command: impl FnOnce(Vec<u8>) -> WriterCommand) {
        if self.queue(|| command(with_sender(self.inner.node, parts))) {
            self.inner.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands the writer a write it drops in an outage, as it does
    /// publishes, unless too many wait already (then it is dropped and
    /// counted); whether it was handed.
    fn queue(&self, command: impl FnOnce() -> WriterCommand) -> bool {
        if self.inner.queued.fetch_add(1, Ordering::Relaxed) >= self.inner.options.max_queued {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.write(command());
        true
    }

    /// Keeps `envelope`, numbered `number`, for the away socket of record
    /// `key` (see [`super::sessions::HOLD`]), the latest `cap`.
    pub(super) fn hold_direct(&self, key: &str, envelope: &[u8], cap: usize, number: u64) {
        let p = &self.inner.options.prefix;
        let (record, list) = (record_key(p, key), direct_key(p, key));
        self.queue(|| WriterCommand::HoldDirect { record, list, envelope: envelope.to_vec(), cap, number });
    }

    /// Has `metrics` read the link's counts at every snapshot, while the link lives.
    pub(super) fn count_into(&self, metrics: &crate::metrics::Metrics) {
        let link = Arc::downgrade(&self.inner);
        metrics.add_gauges(move |snapshot| {
            let Some(link) = link.upgrade() else { return };
            snapshot.cluster_published = link.published.load(Ordering::Relaxed);
            snapshot.cluster_received = link.received.load(Ordering::Relaxed);
            snapshot.cluster_dropped = link.dropped.load(Ordering::Relaxed);
            snapshot.cluster_reconnects = link.writer_connections.load(Ordering::Relaxed).saturating_sub(1);
            snapshot.cluster_queue_depth = link.queued.load(Ordering::Relaxed) as u64;
            snapshot.cluster_nodes_alive = link.nodes_alive.load(Ordering::Relaxed) as u64;
            snapshot.cluster_redis_up = u64::from(link.reaches_redis());
        });
    }

    /// Sends `payload` to every other node.
    pub fn publish_all(&self, payload: &[u8]) {
        self.publish(self.all_channel(), &[payload]);
    }

    /// Sends `payload` to one node.
    pub fn publish_to(&self, node: u64, payload: &[u8]) {
        self.publish(self.node_channel(node), &[payload]);
    }

    /// Whether the link is to a Redis Cluster (sharded pub/sub).
    pub(super) fn is_cluster(&self) -> bool {
        self.inner.connector.is_cluster()
    }

    /// The channel every node listens to.
    pub(super) fn all_channel(&self) -> String {
        self.key("all")
    }

    /// The channel of one node.
    pub(super) fn node_channel(&self, node: u64) -> String {
        self.key(&format!("node:{}", hex(node)))
    }

    /// A group's channel on a Redis Cluster, listened to by the nodes with
    /// members in it: `PREFIX:g:{GROUP}`, of the slot of the group's
    /// history keys (see `super::history::keys`), so that the history
    /// script publishes to it.
    pub(super) fn group_channel(&self, group: &str) -> String {
        self.key(&format!("g:{{{group}}}"))
    }

    /// Where a broadcast to `groups` goes: on a Redis Cluster, one group's
    /// own channel (its members' nodes alone hear it, and its master alone
    /// carries it); else, and for none or several groups (a socket in two of
    /// them must get one copy), the channel of every node.
    pub(super) fn channel_of_groups(&self, groups: &[&str]) -> String {
        match groups {
            [group] if self.is_cluster() => self.group_channel(group),
            _ => self.all_channel(),
        }
    }

    /// Records a connection of this node.
    pub fn add_socket(&self, id: u64) {
        self.write(WriterCommand::AddSocket(id));
    }

    /// Forgets a connection of this node, with its groups and its user.
    pub fn remove_socket(&self, id: u64, groups: Vec<String>, user: Option<String>) {
        for group in &groups {
            self.listen_for(group, id, false);
        }
        self.write(WriterCommand::RemoveSocket { id, groups, user });
    }

    /// Records that connection `id` joined `group` (a room or a tag). On a
    /// Redis Cluster, the group's first connection here has the node
    /// listen to the group's channel, and its last ([`leave`](Self::leave),
    /// [`remove_socket`](Self::remove_socket)) stop.
    pub fn join(&self, group: &str, id: u64) {
        self.listen_for(group, id, true);
        self.write(WriterCommand::Join { group: group.into(), id });
    }

    /// Records that connection `id` left `group`.
    pub fn leave(&self, group: &str, id: u64) {
        self.listen_for(group, id, false);
        self.write(WriterCommand::Leave { group: group.into(), id });
    }

    /// On a Redis Cluster, has the subscriber listen to `group`'s channel
    /// from its first socket here on (`joined`), and drop it after its last.
    fn listen_for(&self, group: &str, id: u64, joined: bool) {
        if !self.is_cluster() {
            return;
        }
        let mut listened = self.inner.listened.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let change = if joined {
            let members = listened.entry(group.into()).or_default();
            (members.insert(id) && members.len() == 1).then(|| Subscription::Listen(self.group_channel(group)))
        } else {
            let emptied = listened.get_mut(group).is_some_and(|members| members.remove(&id) && members.is_empty());
            emptied.then(|| {
                listened.remove(group);
                Subscription::Drop(self.group_channel(group))
            })
        };
        if let Some(change) = change {
            let _ = self.inner.subscriptions.lock().map(|s| s.send(change));
        }
    }

    /// Records that connection `id` belongs to `user`.
    pub fn add_user(&self, user: &str, id: u64) {
        self.write(WriterCommand::AddUser { user: user.into(), id });
    }

    /// Records that connection `id` now belongs to `user` (or to none), no
    /// longer to `previous`: in the node's presence and its session record.
    pub(super) fn set_user(&self, id: u64, user: Option<String>, previous: Option<String>) {
        self.write(WriterCommand::SetUser { id, user, previous });
    }

    /// Has the writer make Redis count `user`'s devices on this node as
    /// they are (a change of them could not be counted), at its next heartbeat.
    pub(super) fn resync_devices(&self, user: String) {
        self.write(WriterCommand::SyncDevices(user));
    }

    /// Writes a socket's session record (see [`super::sessions`]).
    pub(super) fn add_record(&self, id: u64, record: Record) {
        self.write(WriterCommand::AddRecord { id, record });
    }

    /// Notes a group in connection `id`'s record, with the room's position.
    pub(super) fn record_join(&self, id: u64, group: &str, position: Option<(&str, u64)>) {
        let position = position.map(|(epoch, offset)| (epoch.to_owned(), offset));
        self.write(WriterCommand::RecordJoin { id, group: group.into(), position });
    }

    /// Notes a shared value (JSON text) in connection `id`'s record, or forgets it.
    pub(super) fn record_store(&self, id: u64, key: &str, value: Option<&str>) {
        self.write(WriterCommand::RecordStore { id, key: key.into(), value: value.map(Into::into) });
    }

    /// RedisConn `id` is gone: its record is kept `kept` for a claim, or goes.
    pub(super) fn end_record(&self, id: u64, kept: Option<Duration>) {
        self.write(WriterCommand::EndRecord { id, kept });
    }

    /// Queues `parts`, behind this node's sender line, for the socket of
    /// public id `public`, wherever it answers now (see
    /// [`super::sessions::ROUTE`]); dropped and counted as
    /// [`publish`](Self::publish)es are.
    pub(super) fn publish_routed(&self, public: SocketId, parts: &[&[u8]]) {
        let alias = alias_key(&self.inner.options.prefix, public);
        self.queue_publish(parts, |payload| WriterCommand::PublishRouted { alias, node: hex(public.node), payload });
    }

    /// The settings the link runs with.
    pub(super) fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// Runs a read-only query on the query connection, with the timeout,
    /// given the live nodes.
    fn query<T>(&self, run: impl FnOnce(&mut RedisConn, &[u64]) -> RedisResult<T>) -> Result<T, ClusterError> {
        let timeout = self.inner.options.query_timeout;
        let mut slot = self.inner.queries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_ref().is_some_and(|(_, generation)| *generation != self.inner.connector.generation()) {
            *slot = None; // The master moved (Sentinel): this one is not it any more.
        }
        if slot.is_none() {
            *slot = Some(self.inner.connector.open(timeout).map_err(ClusterError::Unavailable)?);
        }
        let (conn, _) = slot.as_mut().expect("connected above");
        let result = alive_nodes(conn, &self.inner.options.prefix).and_then(|nodes| {
            self.inner.nodes_alive.store(nodes.len(), Ordering::Relaxed);
            run(conn, &nodes)
        });
        if result.is_err() {
            // Reconnect next time (through the sentinels, if any): this one
            // failed, or its server answers READONLY (demoted in a failover).
            *slot = None;
        }
        result.map_err(ClusterError::Unavailable)
    }

    /// The key of the set that `scope` reads on `node`.
    fn scope_key(&self, node: u64, scope: Scope<'_>) -> String {
        let (p, node) = (&self.inner.options.prefix, hex(node));
        match scope {
            Scope::Group(group) => node_key(p, &node, &format!("g:{group}")),
            Scope::User(user) => node_key(p, &node, &format!("u:{user}")),
            _ => node_key(p, &node, "sockets"),
        }
    }

    /// The nodes whose heartbeat is alive, this one included once it has beaten.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn nodes(&self) -> Result<Vec<u64>, ClusterError> {
        self.query(|_, nodes| Ok(nodes.to_vec()))
    }

    /// The sockets in `scope`, on every live node, sorted.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn sockets(&self, scope: Scope<'_>) -> Result<Vec<SocketId>, ClusterError> {
        self.query(|conn, nodes| {
            let sets: Vec<Vec<u64>> = per_node(conn, nodes, |pipe, node| pipe.smembers(self.scope_key(node, scope)))?;
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
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn count(&self, scope: Scope<'_>) -> Result<usize, ClusterError> {
        self.query(|conn, nodes| {
            let counts: Vec<usize> = per_node(conn, nodes, |pipe, node| pipe.scard(self.scope_key(node, scope)))?;
            Ok(counts.into_iter().sum())
        })
    }

    /// Whether a socket is connected to a live node.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn socket_exists(&self, socket: SocketId) -> Result<bool, ClusterError> {
        self.query(|conn, nodes| {
            if !nodes.contains(&socket.node) {
                return Ok(false);
            }
            conn.sismember(self.scope_key(socket.node, Scope::All), socket.conn.0)
        })
    }

    /// Every user with a connection on a live node, sorted.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn users(&self) -> Result<Vec<String>, ClusterError> {
        self.query(|conn, nodes| {
            // Every node's list is in a slot of its own (a Redis Cluster
            // has no union across slots): one read per node, united here.
            let p = &self.inner.options.prefix;
            let lists: Vec<Vec<String>> =
                per_node(conn, nodes, |pipe, node| pipe.smembers(node_key(p, &hex(node), "users")))?;
            let users: std::collections::BTreeSet<String> = lists.into_iter().flatten().collect();
            Ok(users.into_iter().collect())
        })
    }

    /// Every room and tag with members on a live node, with how many, sorted
    /// by name (from each node's `n:NODE:groups` index, see the writer).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn group_sizes(&self) -> Result<Vec<(String, usize)>, ClusterError> {
        self.query(|conn, nodes| {
            let p = &self.inner.options.prefix;
            let indexes: Vec<Vec<(String, usize)>> =
                per_node(conn, nodes, |pipe, node| pipe.hgetall(node_key(p, &hex(node), "groups")))?;
            let mut sizes = std::collections::BTreeMap::<String, usize>::new();
            for (group, size) in indexes.into_iter().flatten() {
                *sizes.entry(group).or_default() += size;
            }
            Ok(sizes.into_iter().collect())
        })
    }

    /// Has the writer claim generated id `id` for this node's socket of
    /// public id `public`, as claim `token` (see [`super::ids`]).
    pub(super) fn claim_id(&self, id: &str, token: u64, public: SocketId) {
        let key = id_key(&self.inner.options.prefix, id);
        self.write(WriterCommand::ClaimId(IdClaim { key, id: id.into(), token, public }));
    }

    /// Has the writer free generated id `id` if this node's claim `token` still has it.
    pub(super) fn release_id(&self, id: &str, token: u64) {
        let key = id_key(&self.inner.options.prefix, id);
        self.write(WriterCommand::ReleaseId { key, token });
    }

    /// The socket (public id) that generated id `id` names on a live node.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when Redis does not answer within
    /// [`query_timeout`](RedisOptions::query_timeout) or refuses.
    pub fn generated_id(&self, id: &str) -> Result<Option<SocketId>, ClusterError> {
        self.query(|conn, nodes| {
            let holder: Option<String> = conn.get(id_key(&self.inner.options.prefix, id))?;
            let holder = holder.as_deref().and_then(parse_holder);
            Ok(holder.filter(|(node, ..)| nodes.contains(node)).map(|(.., public)| public))
        })
    }

    /// A handle that does not keep the link alive (for what the link's own
    /// threads hold).
    pub(super) fn downgrade(&self) -> Weak<LinkState> {
        Arc::downgrade(&self.inner)
    }

    /// The link of a [`downgrade`](Self::downgrade)d handle, while it lives.
    pub(super) fn upgrade(link: &Weak<LinkState>) -> Option<RedisLink> {
        link.upgrade().map(|inner| RedisLink { inner })
    }
}

/// The live nodes by Redis's clock. KEYS: the nodes' sorted set.
pub(super) const ALIVE: &str = "local t = redis.call('TIME')
    return redis.call('ZRANGEBYSCORE', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), '+inf')";

/// One read per node, pipelined: what `read` adds to the pipeline for each
/// of `nodes`, answered in their order (none for no node: Redis refuses an
/// empty pipeline).
fn per_node<T: redis::FromRedisValue>(
    conn: &mut RedisConn,
    nodes: &[u64],
    read: impl Fn(&mut redis::Pipeline, u64) -> &mut redis::Pipeline,
) -> RedisResult<Vec<T>> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for &node in nodes {
        read(&mut pipe, node);
    }
    pipe.query(conn)
}

/// The live nodes, by Redis's clock (so the nodes' clocks need not agree).
pub(super) fn alive_nodes(conn: &mut RedisConn, prefix: &str) -> RedisResult<Vec<u64>> {
    let nodes: Vec<String> = eval(ALIVE, &[&format!("{prefix}:nodes")]).query(conn)?;
    Ok(nodes.iter().filter_map(|node| u64::from_str_radix(node, 16).ok()).collect())
}

/// The key of one node's presence `rest` (`sockets`, `users`, `g:GROUP`,
/// `u:USER`, `records`): `PREFIX:n:{NODE}:REST`. The node's id is the hash
/// tag, so all of a node's presence is in one slot of a Redis Cluster: a
/// script or a transaction over it stays on one shard, and its keys are
/// found (`SCAN`) and deleted together.
pub(super) fn node_key(prefix: &str, node: &str, rest: &str) -> String {
    format!("{prefix}:n:{{{node}}}:{rest}")
}

/// A Lua script call (sent whole: they are short and rare).
pub(super) fn eval(script: &str, keys: &[&str]) -> Cmd {
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

/// Whether the link was stopped or dropped: its threads then end.
pub(super) fn gone(link: &Weak<LinkState>) -> bool {
    link.upgrade().map_or(true, |inner| inner.stopped.load(Ordering::SeqCst))
}

/// What each of the link's threads needs to connect on its own: the
/// connector, the settings, and this node's id in hex.
pub(super) type ThreadCtx = (Arc<Connector>, RedisOptions, String);
