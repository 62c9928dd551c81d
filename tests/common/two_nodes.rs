//! App nodes over one real redis-server, for the cluster tests: a node runs
//! a test's app (two workers) on a Redis adapter, records its
//! `@disconnect`s and loses clients on purpose; two nodes that see each
//! other. A test file includes it with `#[path = "common/two_nodes.rs"]`,
//! next to `app_client` (common/app.rs) and `redis_server` (common/redis.rs).

#![allow(dead_code)]

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emitws::app::{App, Running};
use emitws::cluster::{RedisAdapter, RedisOptions};
use serde_json::{json, Value};

use crate::app_client::{self, eventually, AppClient};
use crate::redis_server::{wait_for, Redis};

/// Each `@disconnect` of a node: the socket's id and the event's data.
pub type Disconnects = Arc<Mutex<Vec<(String, Value)>>>;

/// The options of a test node: heartbeats living `heartbeat`, reconnection
/// attempts at most 200 ms apart.
pub fn options(heartbeat: Duration) -> RedisOptions {
    RedisOptions::default().heartbeat_ttl(heartbeat).max_backoff(Duration::from_millis(200))
}

/// One node of a test cluster; dereferences to its [`Running`] app.
pub struct Node {
    pub running: Running,
    pub adapter: Arc<RedisAdapter>,
    /// Its `@disconnect`s, in order.
    pub gone: Disconnects,
}

impl Node {
    /// Runs `app` on an adapter to the Redis at `url`, recording its
    /// `@disconnect`s (after the app's own handlers), once it listens to the cluster.
    pub fn start(url: &str, options: RedisOptions, mut app: App) -> Node {
        let adapter = RedisAdapter::new(url, options).expect("a good URL");
        app.adapter(adapter.clone());
        let gone = Disconnects::default();
        let record = gone.clone();
        app.on("@disconnect", move |req| {
            let data: Value = req.data().expect("@disconnect data is JSON");
            record.lock().unwrap().push((req.socket_id().to_string(), data));
        });
        let running = app_client::start(app, 2);
        assert!(adapter.link().ready(Duration::from_secs(5)), "the node listens to the cluster");
        Node { running, adapter, gone }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Waits for the `nth` (from 0) `@disconnect` of `socket` on this node
    /// (one per connection it had here); returns its data.
    pub fn disconnect_of(&self, socket: &str, nth: usize) -> Value {
        let mut data = Value::Null;
        eventually("the @disconnect", || {
            let seen = self.gone.lock().unwrap();
            let Some((_, d)) = seen.iter().filter(|(s, _)| s == socket).nth(nth) else { return false };
            data = d.clone();
            true
        });
        data
    }

    /// Loses `client`'s connection without a close frame (1006) and waits
    /// until this node has kept its session (the socket's `before`+1-th
    /// `@disconnect` here) and written it to Redis: a resume that comes
    /// sooner, on a loaded machine, finds no session in Redis yet.
    pub fn lose(&self, client: AppClient, socket: &str, before: usize) {
        client.ws.stream.shutdown(Shutdown::Both).expect("shut down");
        drop(client);
        let data = self.disconnect_of(socket, before);
        assert_eq!((&data["code"], &data["resumable"]), (&json!(1006), &json!(true)), "{data}");
        // Twice: the session's record is handed to the writer just after the
        // `@disconnect` handlers, by the socket's worker, which the first
        // wait may pass.
        for _ in 0..2 {
            assert!(self.adapter.link().written(crate::common::WAIT), "the writer answers");
        }
    }

    /// Closes the app, then leaves the cluster.
    pub fn close(self) {
        self.running.close();
        self.adapter.link().stop();
    }
}

impl Deref for Node {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

/// Two nodes of `app()` over `redis` (heartbeats living 2 s) that see each other.
pub fn two_nodes(redis: &Redis, app: impl Fn() -> App) -> (Node, Node) {
    let start = || Node::start(&redis.url(), options(Duration::from_secs(2)), app());
    let (a, b) = (start(), start());
    wait_joined(&[&a, &b]);
    (a, b)
}

/// Waits until every one of `nodes` sees all of them alive.
pub fn wait_joined(nodes: &[&Node]) {
    wait_for(Duration::from_secs(5), || {
        nodes.iter().all(|n| n.adapter.link().nodes().is_ok_and(|alive| alive.len() == nodes.len()))
    });
}

/// The body of a killed-node test's child node (see common/child_node.rs):
/// when the environment variable `var` names a Redis URL, runs `app()` over
/// it with `options`, prints `node at ADDR` and waits to be killed; does
/// nothing otherwise.
pub fn serve_until_killed(var: &str, options: RedisOptions, app: impl FnOnce() -> App) {
    let Ok(url) = std::env::var(var) else { return };
    let node = Node::start(&url, options, app());
    println!("node at {}", node.addr());
    std::io::stdout().flush().expect("the parent reads");
    std::thread::sleep(Duration::from_secs(60));
}
