//! Sharded pub/sub on a Redis Cluster ([`ShardedSubscriber`]): every
//! channel is listened to (`SSUBSCRIBE`) on the master serving its slot,
//! over one connection per master, so a message published there
//! (`SPUBLISH`) costs only that master. The channels wanted are kept here:
//! when the map changes they are subscribed again where it now says.
//!
//! The map is read again (and every channel put where it belongs) when a
//! master's connection is lost (a failover), when a master unsubscribes a
//! channel by itself (`sunsubscribe` push: its slot moved away), or when a
//! subscription is refused (`MOVED`: the map read was already old).
//!
//! The redis crate's sync `PubSub` does not decode `smessage` over RESP2,
//! and its drop unsubscribes everything; and a plain connection's read that
//! times out takes the next reply read for a late one and skips it, but
//! never a push value. So the connections speak RESP3, where every
//! message, confirmation and `sunsubscribe` is a push, and are read with
//! timeouts (to take turns between masters) directly.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use redis::{Connection, PushKind, RedisResult, Value};

use super::connect::Connector;
use super::slotmap::{NodeAddr, Redirection, SlotMap};

/// A message of a sharded channel: the channel and the payload.
pub(super) type ShardMessage = (String, Vec<u8>);

/// The shortest wait on one master's connection in a round of
/// [`ShardedSubscriber::next_message`] (a read timeout of zero means none).
const SHORTEST_READ: Duration = Duration::from_millis(1);

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
    /// One connection per master listened to, with its channels.
    listeners: Vec<Listener>,
    /// The listener the next round reads first (each gets its turn).
    turn: usize,
}

/// A connection to one master and the channels subscribed there.
struct Listener {
    master: NodeAddr,
    conn: Connection,
    /// The channels subscribed (or being subscribed) here.
    channels: BTreeSet<String>,
    /// The channels whose subscription is not confirmed yet, with when it
    /// was sent.
    unconfirmed: BTreeMap<String, Instant>,
}

impl ShardedSubscriber {
    /// A subscriber through `connector` (of a `redis+cluster://` URL)
    /// whose connecting and writes each take at most `timeout`; it connects
    /// at the first [`next_message`](Self::next_message).
    pub(super) fn new(connector: Arc<Connector>, timeout: Duration) -> ShardedSubscriber {
        ShardedSubscriber { connector, timeout, map: None, wanted: BTreeSet::new(), listeners: Vec::new(), turn: 0 }
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
            if send(&mut listener.conn, "SUNSUBSCRIBE", channel).is_err() {
                self.map = None; // this master's connection failed: seen again at the next read
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

    /// The next message of a channel listened to, waiting at most about
    /// `wait` (None if none came). Places every channel first if the map is
    /// to be read again.
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
            let count = self.listeners.len();
            if count == 0 {
                // Nothing to listen to: wait as asked, as a read would.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return unplaced.map_or(Ok(None), Err);
            }
            let slice = (wait / count as u32).max(SHORTEST_READ);
            for _ in 0..count {
                let at = self.turn % self.listeners.len();
                self.turn = self.turn.wrapping_add(1);
                if let Some(message) = self.read(at, slice)? {
                    return Ok(Some(message));
                }
                if self.map.is_none() && unplaced.is_none() {
                    return Ok(None); // the next call places the channels again
                }
            }
            if Instant::now() >= deadline {
                return unplaced.map_or(Ok(None), Err);
            }
        }
    }

    /// One read on listener `at`, waiting at most `slice`: a message, or
    /// None (nothing came, or a subscription's confirmation, or a channel
    /// moved away, or a subscription refused).
    fn read(&mut self, at: usize, slice: Duration) -> RedisResult<Option<ShardMessage>> {
        let listener = &mut self.listeners[at];
        if listener.unconfirmed.values().any(|sent| sent.elapsed() > self.timeout) {
            // A subscription neither confirmed nor refused in time (a
            // refusal read past a timeout is not told apart from a late
            // reply): place it again on a fresh map.
            self.map = None;
            return Ok(None);
        }
        listener.conn.set_read_timeout(Some(slice))?;
        let reply = match listener.conn.recv_response() {
            Ok(reply) => reply,
            Err(e) if e.is_timeout() => return Ok(None),
            Err(e) if Redirection::of(&e).is_some() => {
                // A subscription sent by an old map: place them all again.
                self.map = None;
                return Ok(None);
            }
            Err(e) => {
                // Lost (its master failed, say): its channels are placed
                // again, on the new map, at the next call.
                self.listeners.swap_remove(at);
                self.map = None;
                return Err(e);
            }
        };
        let Value::Push { kind, data } = reply else { return Ok(None) };
        let channel = match data.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => return Ok(None),
        };
        match (kind, data.get(1)) {
            (PushKind::SMessage, Some(Value::BulkString(payload))) => Ok(Some((channel, payload.clone()))),
            (PushKind::SSubscribe, _) => {
                listener.unconfirmed.remove(&channel);
                Ok(None)
            }
            (PushKind::SUnsubscribe, _) if listener.channels.contains(&channel) => {
                // Not asked for: the master gave the slot away.
                listener.channels.remove(&channel);
                self.map = None;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Reads the map, drops the connections to servers that master no
    /// slot, moves every channel to its slot's master, and subscribes the
    /// ones not listened to yet.
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
                // Best effort: the old master may be unsubscribing it already.
                let _ = send(&mut listener.conn, "SUNSUBSCRIBE", &channel);
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

    /// Subscribes `channel` on its slot's master (opening a connection to
    /// it if needed); on failure the map is to be read again.
    fn place(&mut self, channel: &str) {
        let Some(master) = self.map.as_ref().and_then(|map| map.master_of(channel.as_bytes())).cloned() else {
            self.map = None;
            return;
        };
        let at = match self.listeners.iter().position(|l| l.master == master) {
            Some(at) => at,
            None => match self.connector.open_node_resp3(&master, self.timeout) {
                Ok(conn) => {
                    let (channels, unconfirmed) = (BTreeSet::new(), BTreeMap::new());
                    self.listeners.push(Listener { master, conn, channels, unconfirmed });
                    self.listeners.len() - 1
                }
                Err(_) => {
                    self.map = None;
                    return;
                }
            },
        };
        let listener = &mut self.listeners[at];
        match send(&mut listener.conn, "SSUBSCRIBE", channel) {
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
}

/// Sends `command channel` without waiting for its reply: it comes among
/// the messages, and [`ShardedSubscriber::read`] takes it.
fn send(conn: &mut Connection, command: &str, channel: &str) -> RedisResult<()> {
    conn.send_packed_command(&redis::cmd(command).arg(channel).get_packed_command())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::router::tests::{connector, id_of, key_per_master};
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

    #[test]
    fn channels_are_heard_on_their_masters_through_a_slot_move_and_a_failover() {
        let Some(mut cluster) = RedisCluster::start() else { return };
        let connector = connector(&cluster);
        let mut router = Router::new(connector.clone(), Duration::from_secs(2));
        let mut subscriber = ShardedSubscriber::new(connector.clone(), Duration::from_secs(2));
        let channels = key_per_master(&cluster);
        for channel in &channels {
            subscriber.subscribe(channel);
        }
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
        let to_id = id_of(&cluster, to);
        for port in cluster.shards().iter().map(|s| s.master) {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query(&mut cluster.connect(port))
                .unwrap();
        }
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
}
