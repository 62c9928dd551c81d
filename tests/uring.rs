//! Sends through io_uring (`Settings::io_uring_sends`, feature `io-uring`)
//! over real loopback sockets: a room fan-out, a member that stops reading
//! until the server's writes fall short and wait, and ping-pong echo. Every
//! message must arrive whole and in order.

#![cfg(all(feature = "io-uring", target_os = "linux"))]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use common::*;
use emitws::proto::{CloseReason, Message};
use emitws::runtime::{Accept, BackpressurePolicy, Conn, ConnId, Handler, Reject, Server, SharedFrame, UpgradeRequest};

/// A one-worker test server that writes through io_uring.
fn uring_server() -> Server {
    let mut settings = quick_server().backpressure(64 << 20, BackpressurePolicy::Close).settings().clone();
    settings.io_uring_sends = true;
    Server::with_settings(settings)
}

/// Connections on paths starting with `/m` are members of one room. A text
/// `pub SEQ SIZE` from anyone broadcasts `message(SEQ, SIZE)` to every
/// member (from the worker's inbox, so a whole turn's members are written
/// together). Counts each path's `on_drain`.
#[derive(Clone, Default)]
struct Room {
    members: Arc<Mutex<Vec<ConnId>>>,
    drains: Arc<Mutex<HashMap<String, usize>>>,
}

impl Handler for Room {
    type Data = String;

    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<String>, Reject> {
        Ok(Accept::new(request.path().to_string()))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        if conn.data().starts_with("/m") {
            self.members.lock().unwrap().push(conn.id());
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, message: Message<'_>) {
        let Message::Text(text) = message else { panic!("unexpected {message:?}") };
        let mut words = text.split(' ').skip(1).map(|word| word.parse::<usize>().expect("pub SEQ SIZE"));
        let (seq, size) = (words.next().unwrap(), words.next().unwrap());
        let members = self.members.lock().unwrap().clone();
        conn.server().broadcast(members, &SharedFrame::text(&message_text(seq, size)));
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, String>) {
        *self.drains.lock().unwrap().entry(conn.data().clone()).or_default() += 1;
    }

    fn on_close(&mut self, _: &mut Conn<'_, String>, _: &CloseReason) {}
}

/// The text of message `seq`, `size` bytes long (or just its number, if
/// that is longer): its number, then letters
/// that depend on it, so that a lost, repeated or shifted byte shows.
fn message_text(seq: usize, size: usize) -> String {
    let mut text = format!("{seq}:");
    let letters = size.saturating_sub(text.len());
    text.extend((0..letters).map(|i| char::from(b'a' + ((seq * 7 + i) % 26) as u8)));
    text
}

/// Reads `count` messages, checking each is `message_text(seq, size_of(seq))`
/// in order; `progress` counts them.
fn expect_messages(client: &mut Client, count: usize, size_of: impl Fn(usize) -> usize, progress: &AtomicUsize) {
    for seq in 0..count {
        match client.recv() {
            Frame::Text(text) => {
                assert!(text == message_text(seq, size_of(seq)), "message {seq} damaged or out of order")
            }
            other => panic!("message {seq}: {other:?}"),
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

fn wait_members(room: &Room, count: usize) {
    let deadline = Instant::now() + WAIT;
    while room.members.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "members did not open");
        thread::sleep(ms(1));
    }
}

#[test]
fn fan_out_reaches_every_member_whole_and_in_order() {
    const MEMBERS: usize = 64;
    const MESSAGES: usize = 400;
    // Small frames are copied into each member's one buffer (sent through the
    // ring); from 1 KiB on they are referenced, and the queue is written with
    // writev instead: the two paths alternate within one connection.
    let size_of = |seq: usize| [1, 20, 125, 126, 1000, 1023, 1024, 3000][seq % 8];
    let room = Room::default();
    let server = uring_server().start("127.0.0.1:0", room.clone()).unwrap();
    let addr = server.local_addr();
    let mut members: Vec<Client> = (0..MEMBERS).map(|i| Client::connect_path(addr, &format!("/m{i}"))).collect();
    wait_members(&room, MEMBERS);
    let received = AtomicUsize::new(0);
    thread::scope(|scope| {
        for member in &mut members {
            scope.spawn(|| expect_messages(member, MESSAGES, size_of, &received));
        }
        let mut publisher = Client::connect_path(addr, "/publisher");
        for seq in 0..MESSAGES {
            publisher.send_text(&format!("pub {seq} {}", size_of(seq)));
        }
    });
    assert_eq!(received.load(Ordering::Relaxed), MEMBERS * MESSAGES);
    server.shutdown();
}

#[test]
fn a_member_that_stops_reading_gets_everything_once_it_reads_again() {
    const MESSAGES: usize = 20_000;
    const SIZE: usize = 1000;
    let room = Room::default();
    let server = uring_server().start("127.0.0.1:0", room.clone()).unwrap();
    let addr = server.local_addr();
    let mut fast = Client::connect_path(addr, "/m-fast");
    let mut slow = Client::connect_path(addr, "/m-slow");
    // A small receive window: the server's sends to it fall short once its
    // socket buffer fills (20 MB would otherwise fit in loopback's buffers).
    socket2::SockRef::from(&slow.stream).set_recv_buffer_size(64 << 10).unwrap();
    wait_members(&room, 2);
    let fast_received = AtomicUsize::new(0);
    thread::scope(|scope| {
        scope.spawn(|| expect_messages(&mut fast, MESSAGES, |_| SIZE, &fast_received));
        let mut publisher = Client::connect_path(addr, "/publisher");
        for seq in 0..MESSAGES {
            publisher.send_text(&format!("pub {seq} {SIZE}"));
            if seq % 500 == 499 {
                // Spread the broadcasts over many loop turns: wait for the
                // fast member, so that the slow one's queue grows turn by turn.
                let deadline = Instant::now() + WAIT;
                while fast_received.load(Ordering::Relaxed) <= seq {
                    assert!(Instant::now() < deadline, "the fast member stalled at {seq}");
                    thread::sleep(ms(1));
                }
            }
        }
    });
    // 20 MB cannot all be in the sockets' buffers yet: the server holds the
    // rest, its sends having fallen short.
    let slow_received = AtomicUsize::new(0);
    expect_messages(&mut slow, MESSAGES, |_| SIZE, &slow_received);
    let deadline = Instant::now() + WAIT;
    while room.drains.lock().unwrap().get("/m-slow").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the slow member's queue never waited for the socket, or never drained");
        thread::sleep(ms(1));
    }
    server.shutdown();
}

#[test]
fn echo_answers_every_message_whole() {
    let echo = Echo::default();
    let server = uring_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut clients: Vec<Client> =
        (0..8).map(|i| Client::connect_path(server.local_addr(), &format!("/e{i}"))).collect();
    for round in 0..50 {
        for (i, client) in clients.iter_mut().enumerate() {
            client.echo(&format!("round {round} client {i}"));
        }
    }
    for client in &mut clients {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        client.send_binary(&payload);
        assert_eq!(client.recv(), Frame::Binary(payload));
    }
    for client in clients {
        client.close(1000);
    }
    server.shutdown();
}
