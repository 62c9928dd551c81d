//! The link's subscriber thread: it listens on the broadcast channel, this
//! node's own and the history channel, and hands every other node's
//! message on, and every message of the history channel, this node's too
//! (a room's broadcasts reach every node in the one order Redis gave them).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::thread;
use std::time::Duration;

use super::link::{gone, Inbound, LinkState, ThreadCtx};
use super::outage::{backoff, Outage};
use super::wire::split_sender;

/// The subscriber thread: hands every message from another node, and every
/// one on the history channel, to `deliver`.
pub(super) fn run(link: Weak<LinkState>, (connector, options, node): ThreadCtx, deliver: impl Fn(Inbound)) {
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
            Ok(opened) => opened,
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
