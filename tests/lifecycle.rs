//! Connection lifetimes over real loopback sockets: keepalive pings, the close
//! timeout, and `on_close` being called exactly once with the right code.

mod common;

use std::time::Instant;

use common::*;
use emitws::proto::{CloseCode, CloseReason, OpCode, ProtocolError};
use emitws::runtime::Keepalive;

fn keepalive(idle: u64, timeout: u64) -> Option<Keepalive> {
    Some(Keepalive { idle: ms(idle), timeout: ms(timeout), ..Keepalive::default() })
}

#[test]
fn keepalive_pings_an_idle_client_and_one_that_answers_stays() {
    let echo = Echo::default();
    let server = quick_server().keepalive(keepalive(200, 200)).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    let start = Instant::now();
    let mut pings = 0;
    // Answer every ping for well over idle + timeout.
    while start.elapsed() < ms(1200) {
        match client.try_recv_within(ms(100)) {
            Ok(Frame::Ping(payload)) => {
                pings += 1;
                client.send(OpCode::Pong, true, &payload);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RecvError::Timeout) => {}
            Err(e) => panic!("the connection ended after {:?} and {pings} pings: {e:?}", start.elapsed()),
        }
    }
    assert!(pings >= 2, "only {pings} pings in {:?} with a 200 ms idle time", start.elapsed());
    client.echo("still here");
    let id = echo.events.wait_opened("/c");
    assert!(echo.events.snapshot().close_codes(id).is_empty());
    client.close(1000);
    server.shutdown();
}

#[test]
fn keepalive_closes_a_client_that_never_answers_after_idle_plus_timeout() {
    let echo = Echo::default();
    let server = quick_server().keepalive(keepalive(200, 200)).start("127.0.0.1:0", echo.clone()).unwrap();
    let start = Instant::now();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    assert_eq!(client.recv(), Frame::Ping(Vec::new()));
    assert!(start.elapsed() >= ms(180), "pinged after {:?}, before the idle time", start.elapsed());
    // No pong, nothing at all: the server says why it gives up (1001 by
    // default), then drops TCP once the close timeout passes unanswered.
    assert_eq!(client.expect_close(1001), "keepalive timeout");
    assert!(start.elapsed() >= ms(380), "closed after {:?}, before idle + timeout", start.elapsed());
    client.expect_eof();
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::KeepaliveTimeout(CloseCode(1001))), "{reason:?}");
    wait_connection_count(&server.handle(), 0);
    assert_eq!(echo.events.snapshot().close_codes(id), [1001], "on_close once");
    server.shutdown();
}

#[test]
fn the_keepalive_close_code_is_a_setting_and_the_close_handshake_completes() {
    let echo = Echo::default();
    // As the event layer sets it: the code alone, on the keepalive already chosen.
    let quick = quick_server().keepalive(keepalive(100, 100)).keepalive_close_code(CloseCode(4408));
    let server = quick.start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    assert_eq!(client.recv(), Frame::Ping(Vec::new()));
    assert_eq!(client.expect_close(4408), "keepalive timeout");
    // A peer that was only slow answers the close: the handshake ends cleanly.
    client.send_close(4408, "");
    client.expect_eof();
    let id = echo.events.wait_opened("/c");
    // The handler heard when the server gave up, not when the peer answered.
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::KeepaliveTimeout(CloseCode(4408))), "{reason:?}");
    wait_connection_count(&server.handle(), 0);
    assert_eq!(echo.events.snapshot().close_codes(id), [4408], "on_close once");
    server.shutdown();
}

#[test]
fn traffic_postpones_the_keepalive_ping() {
    let server = quick_server().keepalive(keepalive(300, 300)).start("127.0.0.1:0", Echo::default()).unwrap();
    let mut client = Client::connect(server.local_addr());
    // Messages every 50 ms for 900 ms: the connection is never idle for 300 ms.
    for i in 0..18 {
        client.echo(&format!("busy {i}"));
        std::thread::sleep(ms(50));
    }
    assert_eq!(client.recv(), Frame::Ping(Vec::new()), "then idle: pinged");
    client.close(1000);
    server.shutdown();
}

#[test]
fn no_keepalive_means_no_ping() {
    let echo = Echo::default();
    let server = quick_server().keepalive(None).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    client.expect_silence(ms(800));
    client.echo("still here");
    client.expect_silence(ms(200));
    let id = echo.events.wait_opened("/c");
    assert!(echo.events.snapshot().close_codes(id).is_empty());
    client.close(1000);
    server.shutdown();
}

#[test]
fn unanswered_conn_close_is_dropped_after_the_close_timeout() {
    let echo = Echo::default();
    let server = quick_server().close_timeout(ms(300)).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    client.send_text("!close 4000");
    let start = Instant::now();
    assert_eq!(client.expect_close(4000), "bye");
    // Never answer: the server gives up after the close timeout.
    client.expect_eof();
    assert!(start.elapsed() >= ms(250), "dropped after {:?}, before the close timeout", start.elapsed());
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::CloseTimeout), "{reason:?}");
    assert_eq!(echo.events.snapshot().close_codes(id), [1006]);
    server.shutdown();
}

#[test]
fn unanswered_handle_close_is_dropped_after_the_close_timeout() {
    let echo = Echo::default();
    let server = quick_server().close_timeout(ms(300)).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    let id = echo.events.wait_opened("/c");
    let start = Instant::now();
    let handle = server.handle();
    std::thread::spawn(move || assert!(handle.close(id, CloseCode(4001), "from elsewhere"))).join().unwrap();
    assert_eq!(client.expect_close(4001), "from elsewhere");
    client.expect_eof();
    assert!(start.elapsed() >= ms(250), "dropped after {:?}, before the close timeout", start.elapsed());
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::CloseTimeout), "{reason:?}");
    server.shutdown();
}

#[test]
fn answered_server_close_reports_the_peer_code() {
    let echo = Echo::default();
    let server = quick_server().close_timeout(ms(3000)).start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    client.send_text("!close 4002");
    client.expect_close(4002);
    // Data sent before our close reply is still read; messages are no longer delivered.
    client.send_text("late");
    client.send_close(4002, "ok");
    client.expect_eof();
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(
        matches!(&reason, CloseReason::Peer { code: Some(CloseCode(4002)), reason } if reason == "ok"),
        "{reason:?}"
    );
    drop(client);
    wait_connection_count(&server.handle(), 0);
    server.shutdown();
}

#[test]
fn on_close_reports_the_peer_close_code_once() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let client = Client::connect_path(server.local_addr(), "/c");
    client.close(4321);
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Peer { code: Some(CloseCode(4321)), .. }), "{reason:?}");
    wait_connection_count(&server.handle(), 0);
    std::thread::sleep(ms(50));
    assert_eq!(echo.events.snapshot().close_codes(id), [4321]);
    server.shutdown();
    assert_eq!(echo.events.snapshot().closed.len(), 1);
}

#[test]
fn on_close_reports_1002_on_a_protocol_error_once() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = Client::connect_path(server.local_addr(), "/c");
    // A continuation with no message started, then more junk behind it.
    client.send(OpCode::Continuation, true, b"orphan");
    client.send(OpCode::Reserved(5), true, b"");
    client.expect_close(1002);
    client.expect_eof();
    drop(client);
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Protocol(ProtocolError::UnexpectedContinuation)), "{reason:?}");
    assert_eq!(reason.code(), CloseCode::PROTOCOL_ERROR);
    wait_connection_count(&server.handle(), 0);
    server.shutdown();
    assert_eq!(echo.events.snapshot().close_codes(id), [1002]);
    assert_eq!(echo.events.snapshot().closed.len(), 1);
}

#[test]
fn on_close_reports_1006_when_the_peer_drops_once() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut dropped = Client::connect_path(server.local_addr(), "/dropped");
    dropped.echo("hi");
    drop(dropped);
    // Half a message, then gone: the FIN arrives with the data (this once
    // went unnoticed, leaving the connection open for good).
    let mut partial = Client::connect_path(server.local_addr(), "/partial");
    let frame = partial.encode(OpCode::Binary, true, &[0; 1000]);
    partial.write_raw(&frame[..500]);
    drop(partial);
    // The same with more data than one turn reads (4 × 64 KiB).
    let mut big = Client::connect_path(server.local_addr(), "/big");
    let frame = big.encode(OpCode::Binary, true, &vec![0; 1 << 20]);
    big.write_raw(&frame[..300_000]);
    drop(big);
    let record = echo.events.wait("three closes", |r| (r.closed.len() == 3).then(|| r.clone()));
    for tag in ["/dropped", "/partial", "/big"] {
        assert_eq!(record.close_codes(record.id_of(tag).unwrap()), [1006], "{tag}");
    }
    // A reset (unread data when the peer closed) is a read error; a FIN, no close frame.
    let dropped = |r: &CloseReason| matches!(r, CloseReason::NoCloseFrame | CloseReason::ReadFailed(_));
    assert!(record.closed.iter().all(|(_, reason)| dropped(reason)), "{:?}", record.closed);
    wait_connection_count(&server.handle(), 0);
    server.shutdown();
    assert_eq!(echo.events.snapshot().closed.len(), 3);
}

#[test]
fn every_opened_connection_gets_exactly_one_on_close() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let addr = server.local_addr();
    // A mix of endings, and some still open when the server shuts down.
    let mut open = Vec::new();
    for i in 0..30 {
        let mut client = Client::connect_path(addr, &format!("/{i}"));
        match i % 5 {
            0 => client.close(1000),
            1 => drop(client),
            2 => {
                client.send(OpCode::Text, true, &[0xff]);
                client.expect_close(1007);
            }
            3 => {
                client.send_text("!close 4000");
                client.expect_close(4000);
                client.send_close(4000, "");
                client.expect_eof();
            }
            _ => open.push(client),
        }
    }
    // Handshakes that never complete never open.
    let _half = connect(addr);
    server.shutdown();
    drop(open);
    let record = echo.events.snapshot();
    assert_eq!(record.opened.len(), 30);
    for (id, tag) in &record.opened {
        let codes = record.close_codes(*id);
        let i: usize = tag[1..].parse().unwrap();
        let expected = [1000, 1006, 1007, 4000, 1006][i % 5];
        assert_eq!(codes, [expected], "connection {tag}");
    }
    assert_eq!(record.closed.len(), 30);
}
