//! Outbound backpressure over real loopback sockets: a peer that stops
//! reading, each policy, and `on_drain`.

mod common;

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use common::*;
use emitws::proto::{CloseCode, CloseReason, Message};
use emitws::runtime::{BackpressurePolicy, Conn, ConnId, Conns, Handler, SendStatus};

const CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
struct Stats {
    floods: usize,
    sent: usize,
    buffered: usize,
    refused: usize,
    drains: usize,
    /// `Conn::buffered` and `Conn::is_open` right after the first refusal.
    after_refusal: Option<(usize, bool)>,
}

/// On `flood`, sends four 64 KiB binary messages (stopping at a refusal); on
/// `flood-until-refused`, sends them until one is refused. Echoes anything
/// else; says `drained` from `on_drain`.
#[derive(Clone, Default)]
struct Flood {
    echo: Echo,
    stats: Arc<Mutex<Stats>>,
}

impl Flood {
    fn stats<T>(&self, f: impl FnOnce(&Stats) -> T) -> T {
        f(&self.stats.lock().unwrap())
    }
}

impl Handler for Flood {
    type Data = String;

    fn on_upgrade(
        &mut self,
        request: &emitws::runtime::UpgradeRequest<'_>,
    ) -> Result<emitws::runtime::Accept<String>, emitws::runtime::Reject> {
        self.echo.on_upgrade(request)
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        self.echo.on_open(conn);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, message: Message<'_>) {
        let limit = match message {
            Message::Text("flood") => 4,
            Message::Text("flood-until-refused") => 10_000,
            _ => return self.echo.on_message(conn, message),
        };
        let payload = vec![0xab; CHUNK];
        let mut stats = self.stats.lock().unwrap();
        stats.floods += 1;
        for _ in 0..limit {
            match conn.send_binary(&payload) {
                SendStatus::Sent => stats.sent += 1,
                SendStatus::Buffered => stats.buffered += 1,
                SendStatus::Refused => {
                    stats.refused += 1;
                    if stats.after_refusal.is_none() {
                        stats.after_refusal = Some((conn.buffered(), conn.is_open()));
                    }
                    break;
                }
            }
        }
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, String>) {
        self.stats.lock().unwrap().drains += 1;
        let _ = conn.send_text("drained");
    }

    fn on_close(&mut self, conn: &mut Conn<'_, String>, reason: &CloseReason) {
        self.echo.on_close(conn, reason);
    }

    /// A `ConnId` posted with `notify`: floods it from outside any of its
    /// own callbacks, until a send is refused.
    fn on_notify(&mut self, conns: &mut Conns<'_, String>, message: Box<dyn Any + Send>) {
        let id = *message.downcast::<ConnId>().expect("the test posts connection ids");
        let payload = vec![0xab; CHUNK];
        let mut stats = self.stats.lock().unwrap();
        stats.floods += 1;
        while let Some(mut conn) = conns.get(id) {
            if conn.send_binary(&payload) == SendStatus::Refused {
                stats.refused += 1;
                break;
            }
        }
    }
}

/// Reads 64 KiB binary messages until something else arrives; returns how
/// many came and that something.
fn read_chunks(client: &mut Client) -> (usize, Frame) {
    let mut count = 0;
    loop {
        match client.recv() {
            Frame::Binary(bytes) => {
                assert!(bytes.len() == CHUNK && bytes.iter().all(|&b| b == 0xab), "a damaged message");
                count += 1;
            }
            other => return (count, other),
        }
    }
}

/// A `Flood` server with a 512 KiB budget and the `Close` policy.
fn closing_server() -> (Flood, emitws::runtime::RunningServer) {
    let flood = Flood::default();
    let server = quick_server()
        .backpressure(512 << 10, BackpressurePolicy::Close)
        // Long enough that a reader sees the close frame, not a timeout.
        .close_timeout(ms(5000))
        .start("127.0.0.1:0", flood.clone())
        .unwrap();
    (flood, server)
}

#[test]
fn peer_that_never_reads_is_closed_at_its_budget_while_others_keep_echoing() {
    let (flood, server) = closing_server();
    let mut slow = Client::connect_path(server.local_addr(), "/slow");
    let mut other = Client::connect_path(server.local_addr(), "/other");
    let slow_id = flood.echo.events.wait_opened("/slow");

    // The slow client asks for more and more and never reads, until the server
    // gives up on it. One request at a time, each handled (and its replies
    // flushed as far as the socket takes them) before the next: so the budget
    // is only reached once the socket is full.
    let closed = || !flood.echo.events.snapshot().close_codes(slow_id).is_empty();
    let mut asked = 0;
    while !closed() {
        assert!(asked < 1000, "never closed after {asked} floods: {:?}", flood.stats(|s| format!("{s:?}")));
        if slow.try_write_raw(&masked_frame(emitws::proto::OpCode::Text, true, b"flood")).is_err() {
            break;
        }
        asked += 1;
        let deadline = Instant::now() + WAIT;
        while flood.stats(|s| s.floods) < asked && !closed() {
            assert!(Instant::now() < deadline, "flood {asked} not handled");
            thread::sleep(ms(1));
        }
        if asked % 8 == 0 {
            other.echo(&format!("meanwhile {asked}"));
        }
    }
    let slow_close = flood.echo.events.wait_closed(slow_id);
    assert!(matches!(slow_close, CloseReason::SendBufferFull), "{slow_close:?}");
    assert_eq!(slow_close.code().0, 1008);
    flood.stats(|s| {
        assert!(s.buffered > 0, "the socket never filled up: {s:?}");
        assert_eq!(s.refused, 1, "{s:?}");
        assert_eq!(s.after_refusal.map(|(_, open)| open), Some(false), "closing after the refusal");
    });

    // The other connection never noticed.
    other.echo("after");
    other.send_binary(&[1; 100_000]);
    assert_eq!(other.recv(), Frame::Binary(vec![1; 100_000]));

    // What reached the slow client is whole messages, then the 1008 close.
    let (chunks, last) = read_chunks(&mut slow);
    assert!(chunks > 0);
    assert!(matches!(last, Frame::Close(Some(1008), _)), "{last:?} after {chunks} messages");
    slow.expect_eof();
    drop(slow);
    other.close(1000);
    server.shutdown();
}

#[test]
fn a_send_from_another_callback_over_the_budget_closes_and_reports_the_connection() {
    let (flood, server) = closing_server();
    let mut slow = Client::connect_path(server.local_addr(), "/slow");
    let slow_id = flood.echo.events.wait_opened("/slow");

    // One notification floods past the budget: the queue takes 512 KiB and
    // the next send is refused.
    assert!(server.handle().notify(slow_id.worker(), Box::new(slow_id)));
    // `on_close` comes once `on_notify` returns, with the reason.
    let reason = flood.echo.events.wait_closed(slow_id);
    assert!(matches!(reason, CloseReason::SendBufferFull), "{reason:?}");
    assert_eq!(flood.stats(|s| (s.floods, s.refused)), (1, 1));
    // Nothing of the flood was written before the budget ran out (writes
    // happen at the end of the turn), so the close frame replaced it all.
    let (chunks, last) = read_chunks(&mut slow);
    assert!(matches!(last, Frame::Close(Some(1008), _)), "{last:?} after {chunks} messages");
    server.shutdown();
}

#[test]
fn refuse_policy_refuses_the_send_and_keeps_the_connection() {
    let flood = Flood::default();
    let server =
        quick_server().backpressure(256 << 10, BackpressurePolicy::Refuse).start("127.0.0.1:0", flood.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    client.send_text("flood-until-refused");
    // Everything queued before the refusal arrives, then the connection goes on.
    let (chunks, next) = {
        client.send_text("still here");
        read_chunks(&mut client)
    };
    assert_eq!(next, Frame::text("still here"));
    flood.stats(|s| {
        assert_eq!(s.refused, 1, "{s:?}");
        assert_eq!(s.sent + s.buffered, chunks, "{s:?}");
        assert!(chunks >= 1 && chunks * CHUNK <= 256 << 10, "{chunks} messages within a 256 KiB budget");
        let (buffered, open) = s.after_refusal.unwrap();
        assert!(open, "Refuse keeps the connection open");
        assert!(buffered <= 256 << 10 && buffered >= chunks * CHUNK, "buffered {buffered}");
    });
    // And it can do it again once the queue has drained.
    client.send_text("flood-until-refused");
    client.send_text("once more");
    let (again, next) = read_chunks(&mut client);
    assert_eq!((again, next), (chunks, Frame::text("once more")));
    let id = flood.echo.events.wait_opened("/c");
    assert!(flood.echo.events.snapshot().close_codes(id).is_empty(), "no close");
    client.close(1000);
    let reason = flood.echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Peer { code: Some(CloseCode::NORMAL), .. }), "{reason:?}");
    server.shutdown();
}

#[test]
fn on_drain_fires_after_a_buffered_send_once_the_peer_reads() {
    let flood = Flood::default();
    let server =
        quick_server().backpressure(256 << 20, BackpressurePolicy::Refuse).start("127.0.0.1:0", flood.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    // Ask for data without reading until a send reports Buffered.
    let mut asked = 0;
    while flood.stats(|s| s.buffered) == 0 {
        assert!(asked < 1000, "no send was ever Buffered: {:?}", flood.stats(|s| format!("{s:?}")));
        client.send_text("flood");
        asked += 1;
        thread::sleep(ms(2));
    }
    // Let every request be handled, then check on_drain waits for the reader.
    let deadline = Instant::now() + WAIT;
    while flood.stats(|s| s.floods) < asked {
        assert!(Instant::now() < deadline, "floods not handled");
        thread::sleep(ms(2));
    }
    thread::sleep(ms(50));
    assert_eq!(flood.stats(|s| s.drains), 0, "on_drain before the peer read anything");

    let (chunks, next) = read_chunks(&mut client);
    assert_eq!(next, Frame::text("drained"));
    assert_eq!(chunks, asked * 4);
    flood.stats(|s| {
        assert_eq!((s.drains, s.refused), (1, 0), "{s:?}");
    });
    client.expect_silence(ms(50));
    client.close(1000);
    server.shutdown();
}
