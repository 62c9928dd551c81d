//! Commands to a Redis Cluster, each sent to the master serving its key's
//! slot over a connection per master ([`Router`]), following the cluster as
//! it changes: a `MOVED` (the slot moved for good) or a lost connection or
//! `READONLY` (the master failed over, or was demoted) has the slot map read
//! again and the command sent once more where the new map says; an `ASK`
//! (the slot is being migrated, the key already moved) sends `ASKING` and
//! the command to the node named, once. Anything else is the caller's: a
//! second redirection, `CLUSTERDOWN` or `TRYAGAIN` during a failover or a
//! migration come back as errors, for the caller's backoff.
//!
//! The redis crate's own sync cluster client follows redirections too, but
//! a link needs its connections per master anyway (sharded pub/sub is
//! listened to on the master serving each channel), opened through the
//! link's [`Connector`] (TLS, credentials), and pipelines of one slot sent
//! as one round trip: so the routing is done here, over plain connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{Connection, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

use super::connect::Connector;
use super::slotmap::{key_slot, NodeAddr, Redirection, SlotMap};

/// Connections to the masters of a Redis Cluster, and where each slot is.
pub(crate) struct Router {
    connector: Arc<Connector>,
    /// How long connecting, and each read or write, may take.
    timeout: Duration,
    /// The slot map last read; None until the first command, and after a
    /// redirection or a lost master, until the next.
    map: Option<SlotMap>,
    /// One connection per master used so far.
    connections: HashMap<NodeAddr, Connection>,
}

impl Router {
    /// A router through `connector` (of a `redis+cluster://` URL), whose
    /// connections each wait at most `timeout`; nothing is opened yet.
    pub(super) fn new(connector: Arc<Connector>, timeout: Duration) -> Router {
        Router { connector, timeout, map: None, connections: HashMap::new() }
    }

    /// Runs `run` on the connection to the master serving `key`'s slot (a
    /// key, or a sharded channel), following one `MOVED`, `ASK`, `READONLY`
    /// or lost connection (see the module's docs). Every key `run` sends
    /// must be of that slot: a pipeline of several slots is refused by
    /// Redis (`CROSSSLOT`) or redirected in part.
    pub(super) fn on_key<T>(
        &mut self,
        key: &[u8],
        mut run: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let slot = key_slot(key);
        let master = self.master_of_slot(slot)?;
        let first = self.connection(&master).and_then(&mut run);
        let error = match first {
            Ok(answer) => return Ok(answer),
            Err(error) => error,
        };
        match Redirection::of(&error) {
            Some(Redirection::Ask { to, .. }) => {
                // The slot is migrating: only this command goes to `to`.
                let conn = self.connection(&to)?;
                redis::cmd("ASKING").query::<()>(conn)?;
                run(conn)
            }
            Some(Redirection::Moved { .. }) => self.retry(slot, run),
            None if lost(&error) => {
                self.connections.remove(&master);
                self.retry(slot, run)
            }
            None => Err(error),
        }
    }

    /// Runs `commands` (each a key and a command of that key's slot, or no
    /// key for a command every master of the run is to get, answered by
    /// any), one pipeline per master they go to: one round trip each. Within a
    /// slot they run in the order given. A command redirected (`MOVED`,
    /// `ASK`), or of a master whose connection fails, is sent once more on
    /// its own, as [`on_key`](Self::on_key) does: after a failed connection
    /// a command may thus run twice (whether the old master ran it is not
    /// known). The answers, in the order of `commands`: a command refused
    /// (`WRONGTYPE`, say) has its error as its answer, the others still run.
    ///
    /// # Errors
    ///
    /// The map cannot be read, or a command's second attempt fails to reach
    /// Redis.
    pub(super) fn run_all(
        &mut self,
        commands: &[(Option<Vec<u8>>, redis::Cmd)],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let mut groups: Vec<(NodeAddr, Vec<usize>)> = Vec::new();
        for (key, _) in commands {
            let master = self.master_of_slot(key.as_deref().map_or(0, key_slot))?;
            if !groups.iter().any(|(m, _)| *m == master) {
                groups.push((master, Vec::new()));
            }
        }
        for (at, (key, _)) in commands.iter().enumerate() {
            match key {
                Some(key) => {
                    let master = self.master_of_slot(key_slot(key))?;
                    groups.iter_mut().filter(|(m, _)| *m == master).for_each(|(_, members)| members.push(at));
                }
                // No key (`SCRIPT LOAD`, say): every master of the run gets it, in its place.
                None => groups.iter_mut().for_each(|(_, members)| members.push(at)),
            }
        }
        let mut answers: Vec<RedisResult<Value>> = commands.iter().map(|_| Ok(Value::Nil)).collect();
        let mut again = Vec::new();
        for (master, members) in groups {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &at in &members {
                pipe.add_command(commands[at].1.clone());
            }
            match self.on_master(&master, |c| pipe.query::<Vec<Value>>(c)) {
                Ok(values) => {
                    for (at, value) in members.into_iter().zip(values) {
                        answers[at] = match value {
                            Value::ServerError(e) => Err(e.into()),
                            value => Ok(value),
                        };
                        if answers[at].as_ref().is_err_and(|e| Redirection::of(e).is_some()) {
                            again.push(at);
                        }
                    }
                }
                Err(e) if lost(&e) => again.extend(members),
                Err(e) => return Err(e),
            }
        }
        again.sort_unstable(); // in the order given, within each slot
        again.dedup();
        for at in again {
            let (key, cmd) = &commands[at];
            answers[at] = match self.on_key(key.as_deref().unwrap_or_default(), |c| cmd.query::<Value>(c)) {
                Err(e) if lost(&e) || Redirection::of(&e).is_some() => return Err(e),
                answer => answer,
            };
        }
        Ok(answers)
    }

    /// The masters serving a slot now, from the map (read if there is none).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn masters(&mut self) -> RedisResult<Vec<NodeAddr>> {
        let map = self.map()?;
        Ok(map.masters().into_iter().cloned().collect())
    }

    /// Runs `run` on the connection to `master` (one of [`masters`](Self::masters)),
    /// opened if needed; a connection that fails is closed (the next call
    /// opens another), and the map is read again at the next command.
    pub(super) fn on_master<T>(
        &mut self,
        master: &NodeAddr,
        run: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let answer = self.connection(master).and_then(run);
        if answer.as_ref().is_err_and(lost) {
            self.connections.remove(master);
            self.map = None;
        }
        answer
    }

    /// Forgets the slot map and closes the connections to servers that no
    /// longer master a slot in the map read now.
    pub(super) fn refresh(&mut self) -> RedisResult<()> {
        let map = self.connector.slot_map(self.timeout)?;
        let masters = map.masters();
        self.connections.retain(|address, _| masters.contains(&address));
        self.map = Some(map);
        Ok(())
    }

    /// Reads the map again and runs `run` once more on the slot's master.
    fn retry<T>(&mut self, slot: u16, run: impl FnOnce(&mut Connection) -> RedisResult<T>) -> RedisResult<T> {
        self.refresh()?;
        let master = self.master_of_slot(slot)?;
        self.on_master(&master, run)
    }

    fn map(&mut self) -> RedisResult<&SlotMap> {
        if self.map.is_none() {
            self.refresh()?;
        }
        Ok(self.map.as_ref().expect("read above"))
    }

    fn master_of_slot(&mut self, slot: u16) -> RedisResult<NodeAddr> {
        self.map()?.master_of_slot(slot).cloned().ok_or_else(|| {
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "no master serves slot",
                slot.to_string(),
            ))
        })
    }

    fn connection(&mut self, address: &NodeAddr) -> RedisResult<&mut Connection> {
        if !self.connections.contains_key(address) {
            let conn = self.connector.open_node(address, self.timeout)?;
            self.connections.insert(address.clone(), conn);
        }
        Ok(self.connections.get_mut(address).expect("opened above"))
    }
}

/// Whether `error` says the connection's server is no master to use any
/// more: the connection failed or timed out, or the server was demoted.
fn lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cluster::options::RedisOptions;
    use crate::cluster::test_redis_cluster::RedisCluster;

    /// A connector for `cluster`'s `redis+cluster://` URL, every live node a seed.
    pub(in crate::cluster) fn connector(cluster: &RedisCluster) -> Arc<Connector> {
        let seeds: Vec<String> = cluster.live_ports().iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let url = format!("redis+cluster://{}/", seeds.join(","));
        Arc::new(Connector::new(&url, &RedisOptions::default()).expect("a cluster URL"))
    }

    fn router(cluster: &RedisCluster) -> Router {
        Router::new(connector(cluster), Duration::from_secs(2))
    }

    fn set(router: &mut Router, key: &str, value: &str) {
        let set = |c: &mut Connection| redis::cmd("SET").arg(key).arg(value).query::<()>(c);
        router.on_key(key.as_bytes(), set).unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }

    fn get(router: &mut Router, key: &str) -> Option<String> {
        router
            .on_key(key.as_bytes(), |c| redis::cmd("GET").arg(key).query(c))
            .unwrap_or_else(|e| panic!("GET {key}: {e}"))
    }

    /// The cluster id of the node on `port`.
    pub(in crate::cluster) fn id_of(cluster: &RedisCluster, port: u16) -> String {
        redis::cmd("CLUSTER").arg("MYID").query(&mut cluster.connect(port)).expect("CLUSTER MYID")
    }

    /// A room's channel (a key of its slot too) served by each master, in
    /// order of [`RedisCluster::shards`].
    pub(in crate::cluster) fn key_per_master(cluster: &RedisCluster) -> Vec<String> {
        cluster
            .shards()
            .iter()
            .map(|shard| {
                (0..).map(|i| format!("P:r:{{#room{i}}}")).find(|k| cluster.master_of(k) == shard.master).unwrap()
            })
            .collect()
    }

    #[test]
    fn commands_reach_each_slots_master_and_follow_ask_moved_and_a_failover() {
        let Some(mut cluster) = RedisCluster::start() else { return };
        let mut router = router(&cluster);
        assert_eq!(key_slot(b"P:n:{aa}:sockets"), cluster.slot("P:n:{aa}:sockets"));

        // Each key on its own master: read there without any redirection.
        let keys = key_per_master(&cluster);
        for key in &keys {
            set(&mut router, key, "v");
            let there: Option<String> =
                redis::cmd("GET").arg(key).query(&mut cluster.connect(cluster.master_of(key))).unwrap();
            assert_eq!(there.as_deref(), Some("v"), "{key} not on its slot's master");
        }
        assert_eq!(router.connections.len(), 3);
        assert_eq!(router.masters().unwrap().len(), 3);

        // A slot migrating from A to B: a key still on A is read there, a
        // new key of the slot is written on B (ASK), then, the slot moved
        // for good, the key moved with it is read on B (MOVED).
        let key = &keys[0];
        let slot = cluster.slot(key);
        let (a, b) = (cluster.master_of(key), cluster.master_of(&keys[1]));
        let (a_id, b_id) = (id_of(&cluster, a), id_of(&cluster, b));
        let setslot = |port: u16, state: &str, id: &str| {
            redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id).query::<()>(&mut cluster.connect(port))
        };
        setslot(b, "IMPORTING", &a_id).unwrap();
        setslot(a, "MIGRATING", &b_id).unwrap();
        assert_eq!(get(&mut router, key).as_deref(), Some("v"));
        let tag = key.trim_start_matches("P:r:");
        let newcomer = format!("P:h:{tag}:new");
        set(&mut router, &newcomer, "w");
        let mut on_b = cluster.connect(b);
        redis::cmd("ASKING").query::<()>(&mut on_b).unwrap();
        let there: Option<String> = redis::cmd("GET").arg(&newcomer).query(&mut on_b).unwrap();
        assert_eq!(there.as_deref(), Some("w"), "the ASK was not followed to the importing master");
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(b)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(key)
            .query(&mut cluster.connect(a))
            .unwrap();
        for port in cluster.shards().iter().map(|s| s.master) {
            setslot(port, "NODE", &b_id).unwrap();
        }
        assert_eq!(get(&mut router, key).as_deref(), Some("v"), "the MOVED was not followed");
        assert_eq!(cluster.master_of_slot(slot), b);

        // Several keys of every master in one call, one pipeline per master,
        // under a stale map (the slot moved back to A): the moved key's
        // commands are redirected and sent again, in order; a refused
        // command answers its own error.
        let _: () = redis::cmd("DEL").arg(key).arg(&newcomer).query(&mut cluster.connect(b)).unwrap();
        for port in cluster.shards().iter().map(|s| s.master) {
            setslot(port, "NODE", &a_id).unwrap();
        }
        let batch: Vec<(Option<Vec<u8>>, redis::Cmd)> = keys
            .iter()
            .flat_map(|key| {
                let set = format!("P:n:{}:set", key.trim_start_matches("P:r:"));
                [redis::cmd("SADD").arg(&set).arg(1).clone(), redis::cmd("SADD").arg(&set).arg(2).clone()]
                    .into_iter()
                    .chain([redis::cmd("SCARD").arg(&set).clone()])
                    .map(move |cmd| (Some(set.clone().into_bytes()), cmd))
            })
            .chain([(Some(keys[1].clone().into_bytes()), redis::cmd("HGET").arg(&keys[1]).arg("f").clone())])
            .collect();
        let answers = router.run_all(&batch).expect("the batch runs");
        let cards: Vec<_> = answers.iter().skip(2).step_by(3).take(3).map(|a| a.as_ref().ok().cloned()).collect();
        assert_eq!(cards, vec![Some(redis::Value::Int(2)); 3], "{answers:?}");
        assert_eq!(answers.last().unwrap().as_ref().expect_err("HGET of a string").code(), Some("WRONGTYPE"));
        let moved_set = format!("P:n:{tag}:set");
        let on_a: usize = redis::cmd("SCARD").arg(&moved_set).query(&mut cluster.connect(a)).unwrap();
        assert_eq!(on_a, 2, "the moved slot's commands did not follow it back to its master");

        // The master of a slot killed: its replica takes over, and the
        // router follows it at the next command (the value was replicated).
        let survivor = &keys[2];
        let _: () = router.on_key(survivor.as_bytes(), |c| redis::cmd("WAIT").arg(1).arg(2000).query(c)).unwrap();
        let (old, new) = cluster.fail_over(cluster.slot(survivor));
        assert_ne!(old, new);
        assert_eq!(get(&mut router, survivor).as_deref(), Some("v"));
        assert!(router.masters().unwrap().iter().any(|(_, port)| *port == new));
        assert!(!router.connections.keys().any(|(_, port)| *port == old), "a connection to the dead master kept");
    }
}
