//! The Redis adapter through Sentinel (`redis+sentinel://`), against real
//! processes the test starts: a master, a replica and three sentinels
//! (quorum 2, down-after 1000 ms). Two app nodes find the master through
//! the sentinels; clients on both exchange numbered broadcasts while the
//! test forces a failover (the master SIGKILLed, or `SENTINEL FAILOVER`).
//! Afterwards messages flow both ways again, the presence is whole on the
//! new master, and the delivery gap each way is printed (measured, not
//! asserted: see docs/BENCHMARKS.md). Without redis-server on the PATH
//! these tests fail, naming what to install, unless `EMITWS_SKIP=redis`
//! leaves them out.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[path = "common/app.rs"]
mod app_client;
mod common;
#[path = "common/redis_ha.rs"]
mod redis_ha;
#[path = "common/redis.rs"]
mod redis_server;

use app_client::AppClient;
use common::{Frame, RecvError};
use emitws::app::{Adapter, App, BroadcastOpts, EventLimits, Running};
use emitws::cluster::{RedisAdapter, RedisOptions};
use redis_ha::{connect, SentinelGroup};
use redis_server::wait_for;
use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every wait of the test is bounded by this (a failover takes ~2-5 s).
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);
/// The period of each sender's broadcasts.
const EVERY: Duration = Duration::from_millis(20);

/// An app node through the sentinels: `/join` joins `#r`; `/say` broadcasts
/// `/said` to `#r`, its sender left out.
fn node(group: &SentinelGroup) -> (Running, Arc<RedisAdapter>) {
    let options = RedisOptions::default()
        .heartbeat_ttl(Duration::from_secs(3))
        .max_backoff(Duration::from_millis(500))
        .query_timeout(Duration::from_secs(1));
    let adapter = RedisAdapter::new(&group.url(), options).expect("a valid URL");
    let mut app = App::new();
    app.adapter(adapter.clone());
    app.limits(EventLimits::default().rate(None));
    app.on("/join", |req| {
        req.join("#r").expect("may join");
        req.reply(&true);
    });
    app.on("/say", |req| {
        let text: String = req.data().expect("a text");
        req.broadcast("/said", &text, BroadcastOpts::to("#r")).expect("serializes");
    });
    let running = app_client::start(app, 2);
    assert!(adapter.link().ready(Duration::from_secs(10)), "the node listens");
    (running, adapter)
}

/// A client that emits `/say` "`tag`:N", N = 1, 2, … every [`EVERY`] until
/// `stop`; `sent` is the last N.
fn sender(running: &Running, tag: &'static str, stop: &Arc<AtomicBool>, sent: &Arc<AtomicU64>) -> JoinHandle<()> {
    let mut client = AppClient::connect(running.local_addr());
    let (stop, sent) = (stop.clone(), sent.clone());
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let n = sent.load(Ordering::SeqCst) + 1;
            client.emit("/say", json!(format!("{tag}:{n}")));
            sent.store(n, Ordering::SeqCst);
            thread::sleep(EVERY);
        }
        client.close();
    })
}

/// What a listener got: the number of each `/said` from `tag`, with when.
type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A client in `#r` that records the `/said` "`tag`:N" it gets until
/// `stop`, then is handed back, still connected.
fn listener(running: &Running, tag: &'static str, stop: &Arc<AtomicBool>) -> (JoinHandle<AppClient>, Arrivals) {
    let mut client = AppClient::connect(running.local_addr());
    assert_eq!(client.request("/join", Value::Null), Ok(json!(true)));
    let arrivals: Arrivals = Arc::default();
    let (stop, record) = (stop.clone(), arrivals.clone());
    let handle = thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match client.ws.try_recv_within(Duration::from_millis(100)) {
                Ok(Frame::Text(text)) => {
                    let envelope: Value = serde_json::from_str(&text).expect("JSON");
                    let said = envelope[2].as_str().unwrap_or_default();
                    if let Some(n) = said.strip_prefix(tag).and_then(|rest| rest.strip_prefix(':')) {
                        record.lock().unwrap().push((n.parse().expect("a number"), Instant::now()));
                    }
                }
                Ok(Frame::Ping(payload)) => client.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(RecvError::Timeout) => {}
                Err(e) => panic!("the listener's connection failed: {e:?}"),
            }
        }
        client
    });
    (handle, arrivals)
}

/// The longest silence between two arrivals, and how many numbers up to
/// the last one received never arrived.
fn gap_and_lost(arrivals: &[(u64, Instant)]) -> (Duration, u64) {
    let gap = arrivals.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    let last = arrivals.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let first = arrivals.iter().map(|(n, _)| *n).min().unwrap_or(0);
    (gap, (last - first + 1).saturating_sub(arrivals.len() as u64))
}

/// Whether `arrivals` holds a number above `n`.
fn got_beyond(arrivals: &Arrivals, n: u64) -> bool {
    arrivals.lock().unwrap().iter().any(|(m, _)| *m > n)
}

/// The fields of the outage log lines (`emitws::cluster::outage`), message included.
static OUTAGES: Mutex<Vec<HashMap<String, String>>> = Mutex::new(Vec::new());

/// Keeps the outage log lines in [`OUTAGES`].
struct OutageLines;

impl<S: tracing::Subscriber> Layer<S> for OutageLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(HashMap<String, String>);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().into(), format!("{value:?}").trim_matches('"').into());
            }
        }
        if event.metadata().target() == "emitws::cluster::outage" {
            let mut fields = Fields(HashMap::new());
            event.record(&mut fields);
            OUTAGES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(fields.0);
        }
    }
}

/// The outage lines of `node`'s `link` thread so far: their messages, and the `after_s` of the last.
fn outages(node: &RedisAdapter, link: &str) -> (Vec<String>, Option<f64>) {
    let node = format!("{:016x}", node.link().node());
    let lines = OUTAGES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mine: Vec<_> = lines.iter().filter(|l| l["node"] == node && l["link"] == link).collect();
    let after = mine.last().and_then(|l| l.get("after_s")).and_then(|s| s.parse().ok());
    (mine.iter().map(|l| l["message"].clone()).collect(), after)
}

/// One failover at a time: each runs five servers, and the gaps measured
/// are the failover's, not the machine's load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Failover {
    /// SIGKILL to the master: the sentinels notice after down-after.
    KillMaster,
    /// `SENTINEL FAILOVER`: the master is demoted to a replica, alive.
    Command,
}

/// Two nodes, numbered broadcasts both ways, a failover; messages flow
/// again and presence is right on the new master. Prints the gaps.
fn messages_and_presence_survive(kind: Failover) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(OutageLines))
            .expect("no other subscriber in this test process");
    });
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(mut group) = SentinelGroup::start("emitws-test") else { return };
    let old = group.master_port().expect("the sentinels name a master");
    let (a, adapter_a) = node(&group);
    let (b, adapter_b) = node(&group);
    wait_for(FAILOVER_WITHIN, || adapter_a.link().nodes().is_ok_and(|n| n.len() == 2));

    let stop = Arc::new(AtomicBool::new(false));
    let (listen_a, from_b) = listener(&a, "b", &stop);
    let (listen_b, from_a) = listener(&b, "a", &stop);
    let (sent_a, sent_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let senders = [sender(&a, "a", &stop, &sent_a), sender(&b, "b", &stop, &sent_b)];
    wait_for(FAILOVER_WITHIN, || a.cluster().socket_count().is_ok_and(|n| n == 4));
    wait_for(FAILOVER_WITHIN, || got_beyond(&from_a, 10) && got_beyond(&from_b, 10));

    let started = Instant::now();
    match kind {
        Failover::KillMaster => drop(group.master.take()),
        Failover::Command => group.failover(),
    }
    let new = group.wait_new_master(old, FAILOVER_WITHIN);
    let promoted = started.elapsed();
    // Both nodes' writers reconnect to it (a master demoted alive is left
    // at the next heartbeat, when the sentinels name another).
    let reconnected = |running: &Running| running.metrics().snapshot().cluster_reconnects >= 1;
    wait_for(FAILOVER_WITHIN, || reconnected(&a) && reconnected(&b));
    let moved = started.elapsed();
    // Flowing again both ways: numbers sent after the nodes moved arrive.
    let (after_a, after_b) = (sent_a.load(Ordering::SeqCst), sent_b.load(Ordering::SeqCst));
    wait_for(FAILOVER_WITHIN, || got_beyond(&from_a, after_a + 10) && got_beyond(&from_b, after_b + 10));
    let resumed = started.elapsed();
    // The failover is one outage of each node's writer and subscriber,
    // logged when it starts and when it ends, with its length.
    for adapter in [&adapter_a, &adapter_b] {
        for link in ["publisher", "subscriber"] {
            let (lines, after) = outages(adapter, link);
            let lost = "Redis lost; local delivery goes on, retrying";
            assert_eq!(lines, [lost, "Redis back"], "{link}");
            println!("{kind:?}: {link} outage logged, {:.3} s", after.expect("its length"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for handle in senders {
        handle.join().expect("a sender thread");
    }
    let listeners = [listen_a.join().expect("a listener thread"), listen_b.join().expect("a listener thread")];
    let (gap_ab, lost_ab) = gap_and_lost(&from_a.lock().unwrap());
    let (gap_ba, lost_ba) = gap_and_lost(&from_b.lock().unwrap());
    println!(
        "failover {kind:?}: new master after {promoted:?}, both nodes on it after {moved:?}, \
         both ways flowing after {resumed:?}; \
         delivery gap a->b {gap_ab:?} ({lost_ab} lost), b->a {gap_ba:?} ({lost_ba} lost)"
    );

    // Presence on the new master: each node's socket (a listener; the
    // senders have left) and its #r membership, replayed by its writer.
    let mut direct = connect(new).expect("the new master answers");
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut direct).unwrap();
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())));
    wait_for(FAILOVER_WITHIN, || {
        a.cluster().socket_count().is_ok_and(|n| n == 2) && b.cluster().group_size("#r").is_ok_and(|n| n == 2)
    });
    for (running, adapter) in [(&a, &adapter_a), (&b, &adapter_b)] {
        let node = format!("{:016x}", adapter.link().node());
        let members: Vec<u64> =
            redis::cmd("SMEMBERS").arg(format!("emitws:n:{{{node}}}:g:#r")).query(&mut direct).unwrap();
        assert_eq!(members.len(), 1, "node {node}'s #r on the new master");
        assert_eq!(running.cluster().group_members("#r").unwrap().len(), 2);
        assert!(adapter.healthy().is_ok());
    }
    // The senders' last broadcasts may still be crossing Redis.
    for client in listeners {
        client.close_amid_events();
    }
    a.close();
    b.close();
}

#[test]
fn a_killed_master_is_followed_to_the_promoted_replica() {
    messages_and_presence_survive(Failover::KillMaster);
}

#[test]
fn a_commanded_failover_is_followed() {
    messages_and_presence_survive(Failover::Command);
}

#[test]
fn without_any_sentinel_queries_fail_within_their_timeout() {
    // Sentinels that do not exist: the node starts, and says Redis is unavailable.
    let ports: Vec<u16> = (0..2).map(|_| redis_server::free_port()).collect();
    let url = format!("redis+sentinel://127.0.0.1:{},127.0.0.1:{}/nobody", ports[0], ports[1]);
    let options = RedisOptions::default().query_timeout(Duration::from_millis(500));
    let adapter = RedisAdapter::new(&url, options).expect("a valid URL");
    let started = Instant::now();
    let error = adapter.link().nodes().unwrap_err();
    assert!(matches!(error, emitws::cluster::ClusterError::Unavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(adapter.healthy().is_err());
    adapter.link().stop();
}

#[test]
fn a_sentinel_that_does_not_know_the_master_name_is_no_master() {
    let Some(group) = SentinelGroup::start("emitws-known") else { return };
    let hosts: Vec<String> = group.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let url = format!("redis+sentinel://{}/unknown-name", hosts.join(","));
    let adapter = RedisAdapter::new(&url, RedisOptions::default()).expect("a valid URL");
    let error = adapter.link().nodes().unwrap_err();
    let cause = std::error::Error::source(&error).expect("the Redis error is kept").to_string();
    assert!(cause.contains("monitors no master of that name"), "{cause}");
    adapter.link().stop();
}
