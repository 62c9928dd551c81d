//! Scale-out over Redis (feature `redis`): [`RedisAdapter`] plugs an
//! [`App`](crate::app::App) into a cluster of servers sharing one Redis;
//! [`RedisLink`] is the node-to-node transport and the shared presence under it.
//! That Redis is reached by URL: `redis://`, `rediss://` (TLS through rustls,
//! with [`RedisOptions::ca_file`] for a private CA), or the master of a
//! Sentinel group, `redis+sentinel://host:port,host:port/MASTER[/db]` (and
//! `rediss+sentinel://`), followed through failovers (see [`RedisLink::start`]),
//! or a Redis Cluster (`redis+cluster://host:port[,host:port...]/`): every
//! command then goes to its slot's master, and each room has a sharded
//! channel of its own (see README.md, "Redis Cluster").
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
//! sets (`P:n:{NODE}:sockets`, `P:n:{NODE}:g:GROUP`, `P:n:{NODE}:u:USER`, the
//! list `P:n:{NODE}:users`, and the hash `P:n:{NODE}:groups` of the node's
//! groups with their sizes; a set emptied is gone; the braces make the node's
//! id their hash tag, so one node's presence is in one slot of a Redis
//! Cluster), and every query reads only
//! the nodes whose heartbeat is alive: a dead node leaves all answers as soon
//! as its heartbeat expires, and survivors delete its keys afterwards.
//!
//! Messages between nodes go over pub/sub: `P:all` for broadcasts, `P:node:ID`
//! for one node, `P:history` for broadcasts to rooms with history (numbered
//! by a script in Redis, and taken by every node, the sender's included);
//! on a Redis Cluster these are sharded channels, and a broadcast to one
//! group goes on that group's own channel `P:g:{GROUP}` instead (its
//! numbered ones too), heard only by the nodes with members in it. Each payload starts with the sender's id (16 hex digits) and
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
//!
//! # Files
//!
//! `options` (settings), `error`, `connect` (where every connection is
//! opened: the URL forms, TLS, Sentinel discovery), `wire` (node ids, payload framing, the
//! app-message header), `link` (the node's [`RedisLink`] and its queries),
//! `routed` (the connection every thread talks through: one server, or a
//! Redis Cluster's masters by slot),
//! `writer` and `subscriber` (the link's main threads), `reader` (its
//! background thread for claims and reads a worker must not wait for),
//! `outage` (backoff and outage logging, shared by the threads), `history`
//! (room history kept and numbered in Redis), `sessions` (session records
//! for resume), `users` (each user's devices counted across the cluster:
//! the device cap, user presence), `ids` (the app's generated socket ids,
//! claimed and looked up across the cluster), `asks` (requests to another node's
//! socket waiting for their answers, with their timeouts), `adapter`
//! ([`RedisAdapter`]); for a Redis Cluster, `slotmap` (each key's slot, the
//! masters' slots, `MOVED`/`ASK`), `router` (commands to their slot's
//! master, following redirections and failovers) and `sharded` (sharded
//! pub/sub, one connection per master).

mod adapter;
mod asks;
mod connect;
mod error;
mod history;
mod ids;
mod link;
mod options;
mod outage;
mod reader;
mod routed;
mod router;
mod sessions;
mod sharded;
mod slotmap;
#[cfg(test)]
mod slots;
mod subscriber;
/// The tests' Redis Cluster, for the check that every script runs on one
/// slot; it brings the tests' redis-server, for crate tests against a real Redis.
#[cfg(test)]
#[path = "../../tests/common/redis_cluster.rs"]
pub(crate) mod test_redis_cluster;
mod users;
mod wire;
mod writer;

pub use adapter::RedisAdapter;
pub use error::ClusterError;
pub use link::{Inbound, RedisLink};
pub use options::RedisOptions;
#[cfg(test)]
pub(crate) use test_redis_cluster::single as test_redis;
