//! The link's subscriber thread: it listens on the broadcast channel, this
//! node's own and the history channel, and hands every other node's
//! message on, and every message of the history channel, this node's too
//! (a room's broadcasts reach every node in the one order Redis gave them).
//!
//! On a Redis Cluster it listens with sharded pub/sub (`SSUBSCRIBE`, see
//! `super::sharded`) to the broadcast channel, its own, and the channel of
//! each group with members on this node, which carries that group's
//! broadcasts, those with history included (told by their header).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Weak;
use std::thread;
use std::time::Duration;

use super::link::{gone, Inbound, LinkState, ThreadCtx};
use super::outage::{backoff, Outage};
use super::routed::RedisConn;
use super::sharded::ShardedSubscriber;
use super::wire::split_sender;

/// A change of the channels listened to (Redis Cluster only: see
/// `RedisLink::group_channel`).
pub(super) enum Subscription {
    Listen(String),
    Drop(String),
}

/// How long the sharded subscriber reads before it looks at its queue of
/// subscriptions and whether the link stopped.
const SHARDED_ROUND: Duration = Duration::from_millis(10);

/// The subscriber thread: hands every message from another node, and every
/// one on the history channel, to `deliver`.
pub(super) fn run(
    link: Weak<LinkState>,
    (connector, options, node): ThreadCtx,
    changes: Receiver<Subscription>,
    deliver: impl Fn(Inbound),
) {
    if connector.is_cluster() {
        return run_sharded(link, (connector, options, node), changes, deliver);
    }
    let p = options.prefix.clone();
    let all = format!("{p}:all");
    let direct = format!("{p}:node:{node}");
    let history = format!("{p}:history");
    let mut outage = Outage::watched("subscriber", &node, &link);
    let mut wait = Duration::ZERO;
    loop {
        if gone(&link) {
            return;
        }
        let (mut conn, generation) = match connector.open(options.query_timeout) {
            Ok((RedisConn::One(conn), generation)) => (conn, generation),
            Ok((RedisConn::Cluster(_), _)) => unreachable!("a cluster is listened to by run_sharded"),
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
        if let Err(e) = pubsub.subscribe(&[&all, &direct, &history]) {
            // Connected but cut off or refused: back off as for a failed connection.
            outage.failed(&e);
            wait = backoff(wait, options.max_backoff);
            thread::sleep(wait);
            continue;
        }
        outage.recovered();
        wait = Duration::ZERO;
        let listening = |yes: bool| link.upgrade().map(|inner| inner.subscribed.store(yes, Ordering::SeqCst));
        listening(true);
        loop {
            if gone(&link) {
                return;
            }
            if generation != connector.generation() {
                // The master moved (Sentinel): listen on the new one.
                listening(false);
                outage.failed(&"the Redis master moved");
                break;
            }
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    listening(false);
                    outage.failed(&e);
                    break;
                }
            };
            // Malformed payloads (no sender line) are ignored.
            let Some((sender, from, payload)) = split_sender(message.get_payload_bytes()) else { continue };
            let channel = message.get_channel_name();
            if sender == node.as_bytes() && channel != history {
                continue;
            }
            if let Some(inner) = link.upgrade() {
                inner.received.fetch_add(1, Ordering::Relaxed);
            }
            let is_direct = channel == direct;
            deliver(Inbound { from, direct: is_direct, payload: payload.to_vec() });
        }
    }
}

/// The subscriber of a Redis Cluster (see the module's docs).
fn run_sharded(
    link: Weak<LinkState>,
    (connector, options, node): ThreadCtx,
    changes: Receiver<Subscription>,
    deliver: impl Fn(Inbound),
) {
    let p = &options.prefix;
    let direct = format!("{p}:node:{node}");
    let mut subscriber = ShardedSubscriber::new(connector, options.query_timeout);
    subscriber.subscribe(&format!("{p}:all"));
    subscriber.subscribe(&direct);
    let mut outage = Outage::watched("subscriber", &node, &link);
    let mut wait = Duration::ZERO;
    let listening = |yes: bool| link.upgrade().map(|inner| inner.subscribed.store(yes, Ordering::SeqCst));
    loop {
        if gone(&link) {
            return;
        }
        while let Ok(change) = changes.try_recv() {
            match change {
                Subscription::Listen(channel) => subscriber.subscribe(&channel),
                Subscription::Drop(channel) => subscriber.unsubscribe(&channel),
            }
        }
        let (channel, payload) = match subscriber.next_message(SHARDED_ROUND) {
            Ok(Some(message)) => message,
            Ok(None) => {
                if subscriber.settled() {
                    outage.recovered();
                    wait = Duration::ZERO;
                    listening(true);
                }
                continue;
            }
            Err(e) => {
                // A master lost (a failover under way): its channels are
                // placed again at the next round, after a backoff.
                listening(false);
                outage.failed(&e);
                wait = backoff(wait, options.max_backoff);
                thread::sleep(wait);
                continue;
            }
        };
        let Some((sender, from, payload)) = split_sender(&payload) else { continue };
        // A group's channel carries its broadcasts with history too: those
        // the sender delivers when they come back numbered, as every node.
        if sender == node.as_bytes() && !payload.starts_with(br#"{"h":"#) {
            continue;
        }
        if let Some(inner) = link.upgrade() {
            inner.received.fetch_add(1, Ordering::Relaxed);
        }
        deliver(Inbound { from, direct: channel == direct, payload: payload.to_vec() });
    }
}
