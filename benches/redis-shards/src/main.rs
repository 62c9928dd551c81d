//! Redis CPU per cross-node publish, one Redis against a Redis Cluster
//! (docs/BENCHMARKS.md, "Redis Cluster: pub/sub cost per shard"). For K app
//! nodes (K subscriber connections; ARG2, `2,4,8` by default), N publishes
//! (ARG1, 100,000 by default) of an emitws-sized cluster message (sender
//! line, header, envelope: 80 bytes), in three setups:
//!
//! - `single`: one redis-server; each node SUBSCRIBEs to the broadcast
//!   channel; PUBLISH on it.
//! - `cluster-publish`: 3 masters + 3 replicas; each node SUBSCRIBEs on one
//!   of the masters (node i on master i mod 3); classic PUBLISH, sent to the
//!   masters in turn (the cluster bus carries every message to every node,
//!   replicas included).
//! - `cluster-spublish`: the same cluster; one channel per room
//!   (`emitws:r:{ROOM}`, 64 rooms spread over the slots); each node holds a
//!   connection per master and SSUBSCRIBEs there to the rooms it owns (every
//!   node has members in every room: the worst case); SPUBLISH of room i mod
//!   64, on its master.
//!
//! Every node receives every message; the publisher waits for the slowest
//! when 5,000 are in flight. The redis-server CPU is utime+stime of each
//! process (/proc/PID/stat, found by `INFO server`'s process_id) from the
//! first publish until every node received the last. The servers are
//! started by the bench (redis-server and redis-cli on the PATH), on free
//! ports, through the tests' harness (tests/common/redis_cluster.rs). A
//! standalone package (its own workspace):
//! `cargo run --release --manifest-path benches/redis-shards/Cargo.toml -- 100000 2,4,8`.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "../../../tests/common/redis_cluster.rs"]
mod redis_cluster;

use redis_cluster::single::Redis;
use redis_cluster::RedisCluster;

/// A cluster message as a node publishes it: sender line, header, envelope.
const PAYLOAD: &[u8] = b"00000000deadbeef\n{\"r\":[\"#room\"],\"x\":[]}\n[0,\"/said\",\"message from far away\"]";
/// Rooms (sharded channels) in `cluster-spublish`.
const ROOMS: usize = 64;
/// Publishes at most in flight (sent, not yet received by every node).
const IN_FLIGHT: u64 = 5_000;
/// Publishes per pipeline.
const BATCH: usize = 200;

fn connect(port: u16) -> redis::Connection {
    let conn = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    conn
}

/// The redis-server's process id on `port`.
fn pid(port: u16) -> u32 {
    let info: String = redis::cmd("INFO").arg("server").query(&mut connect(port)).unwrap();
    info.lines().find_map(|l| l.strip_prefix("process_id:")).unwrap().trim().parse().unwrap()
}

/// CPU seconds (utime + stime) a process used so far.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / ticks_per_second
}

fn ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// One app node's subscriptions: connections (port, command, channels) and
/// a count of the messages they received.
struct Subscriber {
    received: Arc<AtomicU64>,
}

fn subscribe(connections: Vec<(u16, &'static str, Vec<String>)>, stop: &Arc<AtomicBool>) -> Subscriber {
    let received = Arc::new(AtomicU64::new(0));
    for (port, command, channels) in connections {
        let mut conn = connect(port);
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // One channel per command: SSUBSCRIBE's channels must share a slot.
        for channel in &channels {
            conn.send_packed_command(&redis::cmd(command).arg(channel).get_packed_command()).unwrap();
            let confirmed = conn.recv_response().unwrap();
            assert!(matches!(confirmed, redis::Value::Array(_)), "{command} {channel}: {confirmed:?}");
        }
        // No timeout from now on: one ending mid-message could lose it. The
        // thread ends when its server is killed at the end of the run.
        conn.set_read_timeout(None).unwrap();
        let (received, stop) = (received.clone(), stop.clone());
        thread::spawn(move || {
            loop {
                match conn.recv_response() {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    // A signal (a redis-server reaped) interrupting the read.
                    Err(e) if e.to_string().contains("Interrupted") => {}
                    Err(_) if stop.load(Ordering::Relaxed) => return, // the servers are going
                    Err(e) => panic!("subscriber on {port}: {e}"),
                }
            }
        });
    }
    Subscriber { received }
}

/// The fewest messages any node received.
fn slowest(subscribers: &[Subscriber]) -> u64 {
    subscribers.iter().map(|s| s.received.load(Ordering::Relaxed)).min().unwrap_or(0)
}

/// Sends `n` publishes (`command`, channel, payload) to the ports
/// `route(i)` gives, pipelined per port, then waits until every node got
/// them all; the redis-server CPU seconds of each of `ports` meanwhile, and
/// the time taken.
fn run(
    n: usize,
    command: &str,
    ports: &[u16],
    subscribers: &[Subscriber],
    route: impl Fn(usize) -> (u16, String),
) -> (Vec<f64>, Duration) {
    let tick = ticks_per_second();
    let pids: Vec<u32> = ports.iter().map(|&p| pid(p)).collect();
    let mut publishers: Vec<(u16, redis::Connection, redis::Pipeline)> =
        ports.iter().map(|&p| (p, connect(p), redis::pipe())).collect();
    let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p, tick)).collect();
    let start = Instant::now();
    let flush = |publishers: &mut Vec<(u16, redis::Connection, redis::Pipeline)>| {
        for (_, conn, pipe) in publishers.iter_mut() {
            if !pipe.is_empty() {
                let _: () = pipe.query(conn).unwrap();
                pipe.clear();
            }
        }
    };
    for i in 0..n {
        let (port, channel) = route(i);
        let publisher = publishers.iter_mut().find(|(p, _, _)| *p == port).expect("a publisher for the port");
        publisher.2.cmd(command).arg(channel).arg(PAYLOAD).ignore();
        if (i + 1) % BATCH == 0 {
            flush(&mut publishers);
            while (i as u64 + 1).saturating_sub(slowest(subscribers)) > IN_FLIGHT {
                thread::sleep(Duration::from_micros(200));
            }
        }
    }
    flush(&mut publishers);
    let deadline = Instant::now() + Duration::from_secs(120);
    while slowest(subscribers) < n as u64 {
        assert!(Instant::now() < deadline, "not every node received every message");
        thread::sleep(Duration::from_millis(1));
    }
    let took = start.elapsed();
    let used = pids.iter().zip(before).map(|(&p, b)| cpu_seconds(p, tick) - b).collect();
    (used, took)
}

fn report(setup: &str, k: usize, n: usize, labels: &[String], used: &[f64], took: Duration) {
    let per = |s: f64| s * 1e6 / n as f64;
    let total: f64 = used.iter().sum();
    let busiest = used.iter().cloned().fold(0.0, f64::max);
    println!(
        "{setup:17} K={k}: {n} publishes in {took:.2?}; redis CPU {:.2} us per publish in all, busiest process {:.2} us \
         (one core: {:.0} publishes/s)",
        per(total),
        per(busiest),
        1e6 / per(busiest).max(f64::MIN_POSITIVE)
    );
    let each: Vec<String> = labels.iter().zip(used).map(|(l, u)| format!("{l} {:.2}", per(*u))).collect();
    println!("{:17}      per process (us per publish): {}", "", each.join(", "));
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(100_000, |n| n.parse().expect("N: a number of publishes"));
    let ks: Vec<usize> = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "2,4,8".into())
        .split(',')
        .map(|k| k.parse().expect("K: numbers of app nodes, comma separated"))
        .collect();
    let all = "emitws:all".to_owned();
    for &k in &ks {
        let redis = Redis::start().expect("redis-server");
        let stop = Arc::new(AtomicBool::new(false));
        let subscribers: Vec<Subscriber> =
            (0..k).map(|_| subscribe(vec![(redis.port, "SUBSCRIBE", vec![all.clone()])], &stop)).collect();
        let (used, took) = run(n, "PUBLISH", &[redis.port], &subscribers, |_| (redis.port, all.clone()));
        report("single", k, n, &["redis".into()], &used, took);
        stop.store(true, Ordering::Relaxed);
    }
    for &k in &ks {
        let cluster = RedisCluster::start().expect("redis cluster");
        let shards = cluster.shards();
        let masters: Vec<u16> = shards.iter().map(|s| s.master).collect();
        let ports: Vec<u16> = shards.iter().flat_map(|s| std::iter::once(s.master).chain(s.replicas.clone())).collect();
        let labels: Vec<String> = shards
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                std::iter::once(format!("master{i}")).chain(s.replicas.iter().map(move |_| format!("replica{i}")))
            })
            .collect();

        let stop = Arc::new(AtomicBool::new(false));
        let subscribers: Vec<Subscriber> = (0..k)
            .map(|i| subscribe(vec![(masters[i % masters.len()], "SUBSCRIBE", vec![all.clone()])], &stop))
            .collect();
        let (used, took) = run(n, "PUBLISH", &ports, &subscribers, |i| (masters[i % masters.len()], all.clone()));
        report("cluster-publish", k, n, &labels, &used, took);
        stop.store(true, Ordering::Relaxed);

        let rooms: Vec<(String, u16)> = (0..ROOMS)
            .map(|r| {
                let channel = format!("emitws:r:{{#room{r}}}");
                let owner = cluster.master_of(&channel);
                (channel, owner)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let subscribers: Vec<Subscriber> = (0..k)
            .map(|_| {
                let per_master = masters
                    .iter()
                    .map(|&m| (m, "SSUBSCRIBE", rooms.iter().filter(|r| r.1 == m).map(|r| r.0.clone()).collect()))
                    .collect();
                subscribe(per_master, &stop)
            })
            .collect();
        let (used, took) = run(n, "SPUBLISH", &ports, &subscribers, |i| {
            let (channel, owner) = &rooms[i % ROOMS];
            (*owner, channel.clone())
        });
        report("cluster-spublish", k, n, &labels, &used, took);
        stop.store(true, Ordering::Relaxed);
    }
}
