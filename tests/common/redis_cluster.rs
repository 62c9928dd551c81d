//! A Redis Cluster that a test starts on ports of its own: three masters and
//! three replicas (one per master), each redis-server in a temporary
//! directory of its own, joined by `redis-cli --cluster create`; every
//! process is killed and the directories removed when it is dropped (also
//! when the test panics). Without redis-server or redis-cli on the PATH the
//! test fails, naming what is missing, unless the Redis tests were left out
//! on purpose (`EMITWS_SKIP=redis`): then `start` returns None.
//!
//! Beside starting it: which node serves a key or a slot (`CLUSTER KEYSLOT`,
//! `CLUSTER SHARDS`), killing a master, and waiting for its replica to take
//! over, for the tests of failover.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The single redis-server's helpers (the crate's tests reach it through here).
#[path = "redis.rs"]
pub mod single;
pub use single::{left_out, wait_for};

/// Masters the cluster starts with; each has one replica.
pub const MASTERS: usize = 3;

/// How long the cluster may take to agree (`cluster_state:ok` everywhere),
/// and a replica to take over a killed master.
pub const SETTLE: Duration = Duration::from_secs(20);

/// One redis-server of the cluster.
struct ClusterNode {
    port: u16,
    /// None once killed.
    child: Option<Child>,
    dir: PathBuf,
}

/// A running Redis Cluster of [`MASTERS`] masters and as many replicas.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

/// A shard as `CLUSTER SHARDS` describes it: its master's port, its
/// replicas' in sync (health `online`), and its slot ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub master: u16,
    pub replicas: Vec<u16>,
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the servers, creates the cluster, and waits (up to [`SETTLE`])
    /// until every node says `cluster_state:ok`.
    pub fn start() -> Option<RedisCluster> {
        let mut cluster = RedisCluster { nodes: Vec::new() };
        for _ in 0..MASTERS * 2 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("emitws-redis-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("cluster node directory");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match child {
                Ok(child) => cluster.nodes.push(ClusterNode { port, child: Some(child), dir }),
                Err(_) if left_out("redis") => {
                    eprintln!("\n*** EMITWS_SKIP=redis: not running this Redis Cluster test ***\n");
                    let _ = std::fs::remove_dir_all(&dir);
                    return None;
                }
                Err(e) => panic!(
                    "cannot start redis-server ({e}): install it (apt-get install redis-server, or \
                     scripts/install-deps.sh), or leave the Redis tests out with EMITWS_SKIP=redis"
                ),
            }
        }
        for node in &cluster.nodes {
            wait_for(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok());
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        match created {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) if left_out("redis") => return None,
            Err(e) => panic!(
                "cannot run redis-cli ({e}): install it (apt-get install redis-tools, or \
                 scripts/install-deps.sh), or leave the Redis tests out with EMITWS_SKIP=redis"
            ),
        }
        // A replica not yet in sync could not take over (its data would be
        // too old): the cluster is ready once every replica is online.
        wait_for(SETTLE, || {
            cluster.settled() && shards_at(cluster.nodes[0].port).is_ok_and(|s| s.iter().all(|s| s.replicas.len() == 1))
        });
        Some(cluster)
    }

    /// Whether every live node says `cluster_state:ok` and knows all
    /// [`MASTERS`] masters to serve slots.
    fn settled(&self) -> bool {
        self.live_ports().into_iter().all(|port| {
            let ok = query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))
                .is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"));
            ok && shards_at(port).is_ok_and(|shards| shards.len() == MASTERS)
        })
    }

    /// The ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// The seed URLs of every live node, for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.live_ports().into_iter().map(|port| format!("redis://127.0.0.1:{port}/")).collect()
    }

    /// A client of the cluster that follows MOVED/ASK (redis's cluster
    /// client), seeded with every live node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("cluster client")
    }

    /// A plain connection to the node on `port` (no redirections followed).
    pub fn connect(&self, port: u16) -> redis::Connection {
        connect(port).unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    /// The masters and their slots, as a live node sees them.
    pub fn shards(&self) -> Vec<Shard> {
        let port = self.live_ports()[0];
        shards_at(port).unwrap_or_else(|e| panic!("CLUSTER SHARDS at {port}: {e}"))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`: hash tags included).
    pub fn slot(&self, key: &str) -> u16 {
        query(self.live_ports()[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).expect("CLUSTER KEYSLOT")
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let shards = self.shards();
        let owner = shards.iter().find(|s| s.slots.iter().any(|&(from, to)| (from..=to).contains(&slot)));
        owner.unwrap_or_else(|| panic!("no master serves slot {slot}: {shards:?}")).master
    }

    /// The port of the master serving `key` (a key, or a sharded channel:
    /// both hash alike).
    pub fn master_of(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot(key))
    }

    /// Kills the redis-server on `port` (SIGKILL: no goodbye to the others).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the master serving `slot` and waits (up to [`SETTLE`]) until
    /// one of its replicas serves that slot as master, and every live node
    /// agrees; the killed master's port and its successor's.
    pub fn fail_over(&mut self, slot: u16) -> (u16, u16) {
        let shard = self.shards().into_iter().find(|s| s.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)));
        let shard = shard.expect("a master for the slot");
        self.kill(shard.master);
        wait_for(SETTLE, || {
            self.settled()
                && self.live_ports().into_iter().all(|port| {
                    shards_at(port).is_ok_and(|shards| {
                        shards.iter().any(|s| {
                            s.master != shard.master
                                && shard.replicas.contains(&s.master)
                                && s.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
                        })
                    })
                })
        });
        (shard.master, self.master_of_slot(slot))
    }

    /// Gives `slot` (which must hold no key) to the master on `to` for good
    /// (`CLUSTER SETSLOT … NODE` on every master), as a resharding ends.
    pub fn give_slot(&self, slot: u16, to: u16) {
        for shard in self.shards() {
            self.tell_slot(shard.master, slot, to);
        }
    }

    /// Tells the master on `port` that `slot` is now the one on `to`'s
    /// (`CLUSTER SETSLOT … NODE`): one step of [`give_slot`](Self::give_slot),
    /// for a move the masters learn of one by one.
    pub fn tell_slot(&self, port: u16, slot: u16, to: u16) {
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut self.connect(to)).expect("CLUSTER MYID");
        let set = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&id).clone();
        set.query::<()>(&mut self.connect(port)).unwrap_or_else(|e| panic!("SETSLOT on {port}: {e}"));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

/// A port free on 127.0.0.1 now. A cluster node also listens on it plus
/// 10000 (the cluster bus): ports above 55535 would leave it none.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    cmd.query(&mut connect(port)?)
}

/// `CLUSTER SHARDS` at `port`: each shard's master (the node whose role is
/// master and whose health is online) with its replicas online and its slot ranges;
/// shards without slots or without a live master are left out.
fn shards_at(port: u16) -> redis::RedisResult<Vec<Shard>> {
    use redis::Value;
    let reply: Value = query(port, redis::cmd("CLUSTER").arg("SHARDS"))?;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    };
    // RESP2 maps arrive as flat arrays of name, value.
    let field = |pairs: &[Value], name: &str| -> Option<Value> {
        pairs.chunks_exact(2).find(|p| text(&p[0]) == name).map(|p| p[1].clone())
    };
    let Value::Array(shards) = reply else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for shard in shards {
        let Value::Array(shard) = shard else { continue };
        let slots: Vec<u16> = match field(&shard, "slots") {
            Some(Value::Array(bounds)) => bounds.iter().filter_map(|b| text(b).parse().ok()).collect(),
            _ => Vec::new(),
        };
        let Some(Value::Array(nodes)) = field(&shard, "nodes") else { continue };
        let (mut master, mut replicas) = (None, Vec::new());
        for node in nodes {
            let Value::Array(node) = node else { continue };
            let get = |name| field(&node, name).map(|v| text(&v)).unwrap_or_default();
            let Ok(port) = get("port").parse::<u16>() else { continue };
            match (&get("role")[..], &get("health")[..]) {
                ("master", "online") => master = Some(port),
                ("replica", "online") => replicas.push(port),
                _ => {}
            }
        }
        if let (Some(master), false) = (master, slots.is_empty()) {
            let slots = slots.chunks_exact(2).map(|r| (r[0], r[1])).collect();
            found.push(Shard { master, replicas, slots });
        }
    }
    Ok(found)
}
