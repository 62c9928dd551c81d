//! Sharded pub/sub on a Redis Cluster ([`ShardedSubscriber`]): every
//! channel is listened to (`SSUBSCRIBE`) on the master serving its slot,
//! over one connection per master, so a message published there
//! (`SPUBLISH`) costs only that master. The channels wanted are kept here:
//! when the map changes they are subscribed again where it now says.
//!
//! The map is read again (and every channel put where it belongs) when a
//! master's connection is lost (a failover), when a master unsubscribes a
//! channel by itself (`sunsubscribe` push: its slot moved away), or when a
//! subscription is not confirmed within [`CONFIRM_WITHIN`]: it was refused
//! (`MOVED`: the map read was already old, or the master has not learnt yet
//! that the slot is its own; the masters learn of a move one by one). The
//! refusal itself is seldom seen: after a read has timed out, the redis
//! crate takes the next reply that is not a push for the late answer to an
//! earlier command and drops it, and these connections time out every
//! [`SUBSCRIBE_TURN`]. So a subscription's confirmation (a push) is awaited
//! instead, and one not confirmed is placed anew on a fresh map.
//!
//! Each master's connection is read by a thread of its own, blocked on it,
//! which hands on what comes (messages, confirmations, refusals, a lost
//! connection) over one queue: a message is taken as soon as it arrives,
//! whichever master it comes from. (One thread reading the connections in
//! turn with read timeouts would wait on idle masters: a socket's timeout
//! is counted in the kernel's ticks, 4 ms here, which capped a node at a few
//! hundred messages a second.) The thread sends the (un)subscriptions asked
//! of it between two reads, which time out every [`SUBSCRIBE_TURN`].
//!
//! The redis crate's sync `PubSub` does not decode `smessage` over RESP2,
//! and its drop unsubscribes everything. So the connections speak RESP3,
//! where every message, confirmation and `sunsubscribe` is a push, and are
//! read directly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, PushKind, RedisError, RedisResult, Value};

use super::connect::Connector;
use super::slotmap::{NodeAddr, Redirection, SlotMap};

/// A message of a sharded channel: the channel and the payload.
pub(super) type ShardMessage = (String, Vec<u8>);

/// How long a master's reading thread waits on its connection before it
/// sends the (un)subscriptions asked of it meanwhile.
const SUBSCRIBE_TURN: Duration = Duration::from_millis(10);

/// How long a subscription's confirmation is awaited before the channel is
/// placed anew (a master confirms in well under a millisecond; a refusal
/// goes unseen, see the module's docs). Placing one twice is harmless.
const CONFIRM_WITHIN: Duration = Duration::from_millis(250);

/// Listens to sharded channels on the masters of a Redis Cluster.
pub(super) struct ShardedSubscriber {
    connector: Arc<Connector>,
    /// How long connecting and each write (a subscription) may take.
    timeout: Duration,
    /// The slot map the channels are placed by; None when it is to be read
    /// again (first use, a lost master, a moved slot).
    map: Option<SlotMap>,
    /// The channels asked for, placed or not.
    wanted: BTreeSet<String>,
    /// One reading thread per master listened to, with its channels.
    listeners: Vec<Listener>,
    /// What the reading threads hand on, each with its listener's number.
    heard: Receiver<(u64, Heard)>,
    /// The reading threads' end of [`heard`](Self::heard).
    hear: Sender<(u64, Heard)>,
    /// The number the next listener gets (a lost one's late news is told apart).
    next_number: u64,
}

/// One master's connection, read by its own thread, and the channels subscribed there.
struct Listener {
    master: NodeAddr,
    number: u64,
    /// (Un)subscriptions for the thread to send; dropped, the thread ends.
    orders: Sender<(&'static str, String)>,
    /// The channels subscribed (or being subscribed) here.
    channels: BTreeSet<String>,
    /// The channels whose subscription is not confirmed yet, with when it
    /// was asked for.
    unconfirmed: BTreeMap<String, Instant>,
}

/// What a master's reading thread hands on.
enum Heard {
    Message(ShardMessage),
    Subscribed(String),
    /// A channel unsubscribed by the master (its slot moved away), or by us.
    Unsubscribed(String),
    /// A subscription refused (`MOVED`: the map read was old).
    Refused,
    /// The connection failed: the thread has ended.
    Lost(RedisError),
}

impl ShardedSubscriber {
    /// A subscriber through `connector` (of a `redis+cluster://` URL)
    /// whose connecting and writes each take at most `timeout`; it connects
    /// at the first [`next_message`](Self::next_message).
    pub(super) fn new(connector: Arc<Connector>, timeout: Duration) -> ShardedSubscriber {
        let (hear, heard) = mpsc::channel();
        ShardedSubscriber {
            connector,
            timeout,
            map: None,
            wanted: BTreeSet::new(),
            listeners: Vec::new(),
            heard,
            hear,
            next_number: 0,
        }
    }

    /// Listens to `channel` from now on (on its slot's master, as soon as
    /// the map is known). A failed subscription has the map read again.
    pub(super) fn subscribe(&mut self, channel: &str) {
        if self.wanted.insert(channel.to_owned()) && self.map.is_some() {
            self.place(channel);
        }
    }

    /// Stops listening to `channel`.
    pub(super) fn unsubscribe(&mut self, channel: &str) {
        self.wanted.remove(channel);
        if let Some(listener) = self.listeners.iter_mut().find(|l| l.channels.contains(channel)) {
            listener.channels.remove(channel);
            listener.unconfirmed.remove(channel);
            if listener.orders.send(("SUNSUBSCRIBE", channel.to_owned())).is_err() {
                self.map = None; // this master's thread ended: seen again at the next read
            }
        }
    }

    /// Whether every channel asked for is listened to, confirmed by its master.
    pub(super) fn settled(&self) -> bool {
        self.map.is_some()
            && self.listeners.iter().all(|l| l.unconfirmed.is_empty())
            && self.wanted.iter().all(|c| self.listeners.iter().any(|l| l.channels.contains(c)))
    }

    /// The channels listened to now, by master (for the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn placed(&self) -> Vec<(NodeAddr, Vec<String>)> {
        self.listeners.iter().map(|l| (l.master.clone(), l.channels.iter().cloned().collect())).collect()
    }

    /// The next message of a channel listened to, waiting at most `wait`
    /// (None if none came). Places every channel first if the map is to be
    /// read again.
    ///
    /// # Errors
    ///
    /// The map cannot be read (no node answers, or some slot has no master:
    /// a failover under way), or a master's connection was lost: its
    /// channels are placed again at the next call, the caller backs off.
    pub(super) fn next_message(&mut self, wait: Duration) -> RedisResult<Option<ShardMessage>> {
        // While the map cannot be read whole, or a master reached (a
        // failover under way), the channels of the other masters are still
        // read; the error is given once the wait is over with no message.
        let unplaced = if self.map.is_none() { self.resync().err() } else { None };
        let deadline = Instant::now() + wait;
        loop {
            if self.listeners.iter().any(|l| l.unconfirmed.values().any(|asked| asked.elapsed() > CONFIRM_WITHIN)) {
                // A subscription not confirmed in time, refused most likely:
                // the ones waiting are placed anew on a fresh map.
                self.listeners.iter_mut().for_each(Listener::forget_unconfirmed);
                self.map = None;
                return Ok(None);
            }
            let (number, heard) = match self.heard.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(heard) => heard,
                Err(RecvTimeoutError::Timeout) => return unplaced.map_or(Ok(None), Err),
                Err(RecvTimeoutError::Disconnected) => unreachable!("self holds a sender"),
            };
            // News of a listener dropped since (a lost master) is stale.
            let Some(at) = self.listeners.iter().position(|l| l.number == number) else { continue };
            let listener = &mut self.listeners[at];
            match heard {
                Heard::Message(message) => return Ok(Some(message)),
                Heard::Subscribed(channel) => {
                    listener.unconfirmed.remove(&channel);
                }
                Heard::Unsubscribed(channel) => {
                    if listener.channels.remove(&channel) {
                        // Not asked for: the master gave the slot away.
                        self.map = None;
                        return Ok(None);
                    }
                }
                Heard::Refused => {
                    // A subscription sent by an old map. The refusal does not
                    // name its channel: the ones waiting here are placed anew.
                    listener.forget_unconfirmed();
                    self.map = None;
                    return Ok(None);
                }
                Heard::Lost(e) => {
                    // Its master failed, say: its channels are placed again,
                    // on the new map, at the next call.
                    self.listeners.swap_remove(at);
                    self.map = None;
                    return Err(e);
                }
            }
        }
    }

    /// Reads the map, drops the listeners of servers that master no slot,
    /// moves every channel to its slot's master, and subscribes the ones
    /// not listened to yet.
    fn resync(&mut self) -> RedisResult<()> {
        let map = self.connector.slot_map(self.timeout)?;
        let masters = map.masters();
        self.listeners.retain(|l| masters.contains(&&l.master));
        for listener in &mut self.listeners {
            let moved: Vec<String> = listener
                .channels
                .iter()
                .filter(|c| map.master_of(c.as_bytes()) != Some(&listener.master))
                .cloned()
                .collect();
            for channel in moved {
                listener.channels.remove(&channel);
                listener.unconfirmed.remove(&channel);
                // Best effort: the old master may be unsubscribing it already.
                let _ = listener.orders.send(("SUNSUBSCRIBE", channel));
            }
        }
        self.map = Some(map);
        let unplaced: Vec<String> =
            self.wanted.iter().filter(|c| !self.listeners.iter().any(|l| l.channels.contains(*c))).cloned().collect();
        for channel in unplaced {
            self.place(&channel);
            if self.map.is_none() {
                // A master could not be reached: the caller backs off and retries.
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "a Redis Cluster master is unreachable",
                    channel,
                )));
            }
        }
        Ok(())
    }

    /// Subscribes `channel` on its slot's master (starting a listener
    /// there if needed); on failure the map is to be read again.
    fn place(&mut self, channel: &str) {
        let Some(master) = self.map.as_ref().and_then(|map| map.master_of(channel.as_bytes())).cloned() else {
            self.map = None;
            return;
        };
        let at = match self.listeners.iter().position(|l| l.master == master) {
            Some(at) => at,
            None => match self.listen_on(master) {
                Ok(listener) => {
                    self.listeners.push(listener);
                    self.listeners.len() - 1
                }
                Err(_) => {
                    self.map = None;
                    return;
                }
            },
        };
        let listener = &mut self.listeners[at];
        match listener.orders.send(("SSUBSCRIBE", channel.to_owned())) {
            Ok(()) => {
                listener.channels.insert(channel.to_owned());
                listener.unconfirmed.insert(channel.to_owned(), Instant::now());
            }
            Err(_) => {
                self.listeners.swap_remove(at);
                self.map = None;
            }
        }
    }

    /// Connects to `master` and starts the thread that reads it.
    fn listen_on(&mut self, master: NodeAddr) -> RedisResult<Listener> {
        let conn = self.connector.open_node_resp3(&master, self.timeout)?;
        conn.set_read_timeout(Some(SUBSCRIBE_TURN))?;
        let (orders, to_do) = mpsc::channel();
        let number = self.next_number;
        self.next_number += 1;
        let hear = self.hear.clone();
        thread::Builder::new()
            .name(format!("emitws-redis-shard-{}", master.1))
            .spawn(move || read_master(conn, to_do, number, hear))
            .map_err(|e| {
                RedisError::from((redis::ErrorKind::Io, "cannot start a shard's reading thread", e.to_string()))
            })?;
        let (channels, unconfirmed) = (BTreeSet::new(), BTreeMap::new());
        Ok(Listener { master, number, orders, channels, unconfirmed })
    }
}

impl Listener {
    /// Forgets the channels whose subscription is not confirmed, so that
    /// the next [`resync`](ShardedSubscriber::resync) places them anew.
    /// (Kept, a refused one would wait here forever when the map read next
    /// names this master again.)
    fn forget_unconfirmed(&mut self) {
        for channel in std::mem::take(&mut self.unconfirmed).into_keys() {
            self.channels.remove(&channel);
        }
    }
}

/// A master's reading thread: sends the (un)subscriptions ordered, hands
/// on what the connection brings, until its orders' sender is dropped (the
/// listener is) or the connection fails.
fn read_master(mut conn: Connection, to_do: Receiver<(&'static str, String)>, number: u64, hear: Sender<(u64, Heard)>) {
    let tell = |heard: Heard| hear.send((number, heard)).is_ok();
    loop {
        loop {
            match to_do.try_recv() {
                Ok((command, channel)) => {
                    let packed = redis::cmd(command).arg(channel).get_packed_command();
                    if let Err(e) = conn.send_packed_command(&packed) {
                        tell(Heard::Lost(e));
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let heard = match conn.recv_response() {
            Ok(Value::Push { kind, data }) => {
                let channel = match data.first() {
                    Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => continue,
                };
                match (kind, data.get(1)) {
                    (PushKind::SMessage, Some(Value::BulkString(payload))) => {
                        Heard::Message((channel, payload.clone()))
                    }
                    (PushKind::SSubscribe, _) => Heard::Subscribed(channel),
                    (PushKind::SUnsubscribe, _) => Heard::Unsubscribed(channel),
                    _ => continue,
                }
            }
            Ok(_) => continue,
            Err(e) if e.is_timeout() => continue,
            Err(e) if Redirection::of(&e).is_some() => Heard::Refused,
            Err(e) => {
                tell(Heard::Lost(e));
                return;
            }
        };
        if !tell(heard) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::router::tests::{connector, key_per_master};
    use crate::cluster::router::Router;
    use crate::cluster::test_redis_cluster::RedisCluster;

    /// SPUBLISH through the router: how many subscribers got it.
    fn publish(router: &mut Router, channel: &str, payload: &str) -> RedisResult<u64> {
        router.on_key(channel.as_bytes(), |c| redis::cmd("SPUBLISH").arg(channel).arg(payload).query(c))
    }

    /// The next message within `within`, skipping errors (a failover).
    fn receive(subscriber: &mut ShardedSubscriber, within: Duration) -> Option<ShardMessage> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match subscriber.next_message(Duration::from_millis(50)) {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        None
    }

    /// A router and a subscriber, asked for a channel on each master (in
    /// order of [`RedisCluster::shards`]).
    fn subscribed_on_each_master(cluster: &RedisCluster) -> (Arc<Connector>, Router, ShardedSubscriber, Vec<String>) {
        let connector = connector(cluster);
        let router = Router::new(connector.clone(), Duration::from_secs(2));
        let mut subscriber = ShardedSubscriber::new(connector.clone(), Duration::from_secs(2));
        let channels = key_per_master(cluster);
        for channel in &channels {
            subscriber.subscribe(channel);
        }
        (connector, router, subscriber, channels)
    }

    #[test]
    fn channels_are_heard_on_their_masters_through_a_slot_move_and_a_failover() {
        let Some(mut cluster) = RedisCluster::start() else { return };
        let (connector, mut router, mut subscriber, channels) = subscribed_on_each_master(&cluster);
        assert_eq!(subscriber.next_message(Duration::from_millis(100)).unwrap(), None);
        assert_eq!(subscriber.placed().len(), 3, "one connection per master");
        for channel in &channels {
            assert_eq!(publish(&mut router, channel, "hi").unwrap(), 1, "{channel} not listened to on its master");
            assert_eq!(receive(&mut subscriber, Duration::from_secs(2)), Some((channel.clone(), b"hi".to_vec())));
        }

        // Unsubscribed: the master has nobody to send to any more.
        subscriber.unsubscribe(&channels[2]);
        assert_eq!(subscriber.next_message(Duration::from_millis(100)).unwrap(), None);
        assert_eq!(publish(&mut router, &channels[2], "gone").unwrap(), 0);
        subscriber.subscribe(&channels[2]);

        // The slot of channel 0 given to channel 1's master: the old master
        // unsubscribes it; the subscriber finds it its new master.
        let slot = cluster.slot(&channels[0]);
        let to = cluster.master_of(&channels[1]);
        cluster.give_slot(slot, to);
        let moved_at = Instant::now();
        let deadline = moved_at + Duration::from_secs(5);
        loop {
            let _ = subscriber.next_message(Duration::from_millis(50));
            let placed = subscriber.placed();
            let on_new = placed.iter().any(|((_, port), chans)| *port == to && chans.contains(&channels[0]));
            if on_new {
                break;
            }
            assert!(Instant::now() < deadline, "channel 0 not moved with its slot: {placed:?}");
        }
        eprintln!(
            "sharded subscriber: channel subscribed on its new master {:?} after its slot moved",
            moved_at.elapsed()
        );
        assert_eq!(publish(&mut router, &channels[0], "moved").unwrap(), 1);
        assert_eq!(receive(&mut subscriber, Duration::from_secs(2)), Some((channels[0].clone(), b"moved".to_vec())));

        // The master of channel 2 killed while numbered messages go to
        // channels 0 and 2: channel 0's master goes on being heard during
        // the failover; channel 2 is heard again from the promoted replica.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = move |stop: &Arc<std::sync::atomic::AtomicBool>| stop.load(std::sync::atomic::Ordering::SeqCst);
        let listening = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut heard = Vec::new();
                while !stopped(&stop) {
                    if let Ok(Some((channel, _))) = subscriber.next_message(Duration::from_millis(50)) {
                        heard.push((Instant::now(), channel));
                    }
                }
                (subscriber, heard)
            })
        };
        let publishing = {
            let (stop, channels) = (stop.clone(), channels.clone());
            let mut router = Router::new(connector.clone(), Duration::from_secs(2));
            std::thread::spawn(move || {
                for number in 0u64.. {
                    if stopped(&stop) {
                        break;
                    }
                    for channel in [&channels[0], &channels[2]] {
                        let _ = publish(&mut router, channel, &number.to_string());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let killed_at = Instant::now();
        let (old, new) = cluster.fail_over(cluster.slot(&channels[2]));
        let promoted_at = Instant::now();
        assert_ne!(old, new);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        publishing.join().unwrap();
        let (mut subscriber, heard) = listening.join().unwrap();
        let during = |channel: &String| {
            heard.iter().filter(|(at, c)| c == channel && *at > killed_at && *at < promoted_at).count()
        };
        let arrivals =
            |channel: &String| heard.iter().filter(|(_, c)| c == channel).map(|(at, _)| *at).collect::<Vec<_>>();
        let longest_gap =
            |channel: &String| arrivals(channel).windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default();
        eprintln!(
            "sharded subscriber: master killed; promotion seen after {:?}; longest silence of its channel {:?}, \
             of another master's {:?} (heard {} times meanwhile)",
            promoted_at - killed_at,
            longest_gap(&channels[2]),
            longest_gap(&channels[0]),
            during(&channels[0])
        );
        assert!(during(&channels[0]) > 0, "another master's channel went unheard during the failover");
        assert!(arrivals(&channels[2]).iter().any(|at| *at > promoted_at), "channel 2 not heard after the failover");
        // What the listening thread left unread when it stopped.
        while let Ok(Some(_)) = subscriber.next_message(Duration::from_millis(300)) {}
        for channel in &channels {
            assert_eq!(publish(&mut router, channel, "after").unwrap(), 1, "{channel} lost in the failover");
            assert_eq!(receive(&mut subscriber, Duration::from_secs(2)), Some((channel.clone(), b"after".to_vec())));
        }
    }

    #[test]
    fn a_channel_refused_by_a_master_that_has_not_learnt_of_its_slot_yet_is_placed_again() {
        let Some(cluster) = RedisCluster::start() else { return };
        let (_, mut router, mut subscriber, channels) = subscribed_on_each_master(&cluster);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !subscriber.settled() {
            let _ = subscriber.next_message(Duration::from_millis(50));
            assert!(Instant::now() < deadline, "not settled: {:?}", subscriber.placed());
        }

        // The map is read from the master of slot 0 first: a channel of
        // that master is moved to another, which is told last. Meanwhile the
        // subscriber hears the old master give the channel up, reads the map
        // from the old master (which names the new one), and the new master,
        // not knowing yet, refuses the subscription.
        let old = cluster.master_of_slot(0);
        let at = channels.iter().position(|c| cluster.master_of(c) == old).expect("a channel on each master");
        let (moved, to) = (&channels[at], cluster.master_of(&channels[(at + 1) % channels.len()]));
        let slot = cluster.slot(moved);
        for port in cluster.shards().iter().map(|s| s.master).filter(|&port| port != to) {
            cluster.tell_slot(port, slot, to);
        }
        let refusals_until = Instant::now() + 2 * CONFIRM_WITHIN;
        while Instant::now() < refusals_until {
            assert_eq!(subscriber.next_message(Duration::from_millis(20)).ok(), Some(None));
        }
        cluster.tell_slot(to, slot, to);

        // Placed again, on the map that now names the new master for good.
        let deadline = Instant::now() + Duration::from_secs(5);
        while publish(&mut router, moved, "here").unwrap() == 0 {
            let _ = subscriber.next_message(Duration::from_millis(20));
            assert!(Instant::now() < deadline, "{moved} not listened to on its new master: {:?}", subscriber.placed());
        }
        assert_eq!(receive(&mut subscriber, Duration::from_secs(2)), Some((moved.clone(), b"here".to_vec())));
    }
}
