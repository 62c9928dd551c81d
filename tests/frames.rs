//! Frame-level rules over real loopback sockets: what the server closes with,
//! and what it answers, for each kind of frame a client may send.

mod common;

use common::*;
use emitws::proto::{encode_frame, encode_frame_with_rsv, CloseReason, FrameHeader, OpCode, MAX_HEADER_LEN};
use emitws::runtime::Server;

/// A server with [`quick_server`]'s timeouts and `configure` applied, and a client on it.
fn setup(configure: impl FnOnce(Server) -> Server) -> (emitws::runtime::RunningServer, Echo, Client) {
    let echo = Echo::default();
    let server = configure(quick_server()).start("127.0.0.1:0", echo.clone()).unwrap();
    let client = Client::connect_path(server.local_addr(), "/c");
    (server, echo, client)
}

/// Expects the server to fail the connection with `code`: a close frame, TCP
/// closed, and `on_close` told of the protocol error with the same code, once.
fn expect_failed_with(echo: &Echo, mut client: Client, code: u16) {
    client.expect_close(code);
    client.expect_eof();
    drop(client);
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Protocol(e) if e.close_code().0 == code), "{reason:?}");
    assert_eq!(echo.events.snapshot().close_codes(id), [code], "on_close exactly once");
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let (server, echo, mut client) = setup(|s| s);
    client.echo("masked is fine");
    let mut frame = Vec::new();
    encode_frame(&mut frame, OpCode::Text, true, None, b"not masked");
    client.write_raw(&frame);
    expect_failed_with(&echo, client, 1002);
    server.shutdown();
}

#[test]
fn reserved_opcode_is_closed_with_1002() {
    for opcode in [0x3, 0x7, 0xb, 0xf] {
        let (server, echo, mut client) = setup(|s| s);
        client.send(OpCode::Reserved(opcode), true, b"?");
        expect_failed_with(&echo, client, 1002);
        server.shutdown();
    }
}

#[test]
fn rsv_bit_without_extension_is_closed_with_1002() {
    for rsv in [0b100, 0b010, 0b001] {
        let (server, echo, mut client) = setup(|s| s);
        let mut frame = Vec::new();
        encode_frame_with_rsv(&mut frame, OpCode::Text, true, rsv, Some([1, 2, 3, 4]), b"compressed?");
        client.write_raw(&frame);
        expect_failed_with(&echo, client, 1002);
        server.shutdown();
    }
}

#[test]
fn oversized_message_gets_1009_as_soon_as_the_header_arrives() {
    let (server, echo, mut client) = setup(|s| s.max_message_size(64 << 10));
    // A message at the limit is fine.
    client.send_binary(&vec![5; 64 << 10]);
    assert_eq!(client.recv(), Frame::Binary(vec![5; 64 << 10]));
    // Only the header of a 1 GiB frame: the payload is never sent.
    let header =
        FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: Some([9, 9, 9, 9]), payload_len: 1 << 30 };
    let mut head = [0; MAX_HEADER_LEN];
    let len = header.encode(&mut head);
    client.write_raw(&head[..len]);
    expect_failed_with(&echo, client, 1009);
    server.shutdown();
}

#[test]
fn fragmented_message_crossing_max_message_size_gets_1009() {
    let (server, echo, mut client) = setup(|s| s.max_message_size(1000));
    // 400 + 400 + 200 = 1000 bytes in three fragments: exactly the limit.
    client.send(OpCode::Binary, false, &[1; 400]);
    client.send(OpCode::Continuation, false, &[2; 400]);
    client.send(OpCode::Continuation, true, &[3; 200]);
    let mut expected = vec![1; 400];
    expected.extend([2; 400]);
    expected.extend([3; 200]);
    assert_eq!(client.recv(), Frame::Binary(expected));
    // 400 + 400, then the header of a further 400: refused at that header,
    // before any of its payload is sent.
    client.send(OpCode::Text, false, &[b'a'; 400]);
    client.send(OpCode::Continuation, false, &[b'b'; 400]);
    client.expect_silence(ms(50));
    let mut third = client.encode(OpCode::Continuation, true, &[b'c'; 400]);
    third.truncate(4 + 4); // 2 bytes + 16-bit length + mask
    client.write_raw(&third);
    expect_failed_with(&echo, client, 1009);
    server.shutdown();
}

#[test]
fn frame_over_max_frame_size_or_too_many_fragments_gets_1009() {
    let (server, echo, mut client) = setup(|s| s.max_frame_size(100));
    client.send_binary(&[0; 100]);
    assert_eq!(client.recv(), Frame::Binary(vec![0; 100]));
    client.send(OpCode::Binary, false, &[0; 100]);
    client.send(OpCode::Continuation, true, &[0; 100]);
    assert_eq!(client.recv(), Frame::Binary(vec![0; 200]), "the frame limit is per frame");
    client.send_binary(&[0; 101]);
    expect_failed_with(&echo, client, 1009);
    server.shutdown();

    let (server, echo, mut client) = setup(|s| s.max_fragments(3));
    client.send(OpCode::Text, false, b"a");
    client.send(OpCode::Continuation, false, b"b");
    client.send(OpCode::Continuation, true, b"c");
    assert_eq!(client.recv(), Frame::text("abc"));
    client.send(OpCode::Text, false, b"a");
    client.send(OpCode::Continuation, false, b"b");
    client.send(OpCode::Continuation, false, b"c");
    client.send(OpCode::Continuation, true, b"d");
    expect_failed_with(&echo, client, 1009);
    server.shutdown();
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let (server, echo, mut client) = setup(|s| s);
    client.send(OpCode::Text, true, &[b'o', b'k', 0xce, 0xba, 0xff, 0xfe]);
    expect_failed_with(&echo, client, 1007);
    server.shutdown();

    // Invalid UTF-8 split across fragments, and in a close reason.
    let (server, echo, mut client) = setup(|s| s);
    client.send(OpCode::Text, false, "κό".as_bytes());
    client.send(OpCode::Continuation, true, &[0xed, 0xa0, 0x80]); // an encoded surrogate
    expect_failed_with(&echo, client, 1007);
    server.shutdown();

    let (server, echo, mut client) = setup(|s| s);
    client.send(OpCode::Close, true, &[0x03, 0xe8, 0xc0, 0xaf]);
    expect_failed_with(&echo, client, 1007);
    server.shutdown();
}

#[test]
fn close_with_a_code_not_allowed_on_the_wire_is_closed_with_1002() {
    for code in [1005u16, 999, 1006, 1004, 1015, 2000, 5000] {
        let (server, echo, mut client) = setup(|s| s);
        client.send_close(code, "");
        expect_failed_with(&echo, client, 1002);
        server.shutdown();
    }
    // A one-byte close payload is a protocol error too.
    let (server, echo, mut client) = setup(|s| s);
    client.send(OpCode::Close, true, &[3]);
    expect_failed_with(&echo, client, 1002);
    server.shutdown();
}

#[test]
fn valid_close_is_echoed_and_the_server_closes_tcp() {
    for code in [1000u16, 1001, 3000, 4999] {
        let (server, echo, mut client) = setup(|s| s);
        client.echo("before");
        client.send_close(code, "done");
        client.expect_close(code);
        client.expect_eof();
        drop(client);
        let id = echo.events.wait_opened("/c");
        let reason = echo.events.wait_closed(id);
        assert!(matches!(&reason, CloseReason::Peer { code: Some(c), reason } if c.0 == code && reason == "done"));
        server.shutdown();
    }
    // An empty close is answered with an empty close; on_close reports 1005.
    let (server, echo, mut client) = setup(|s| s);
    client.send(OpCode::Close, true, b"");
    assert_eq!(client.recv(), Frame::Close(None, String::new()));
    client.expect_eof();
    drop(client);
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Peer { code: None, .. }), "{reason:?}");
    assert_eq!(reason.code().0, 1005);
    server.shutdown();
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let (server, _echo, mut client) = setup(|s| s);
    for payload in [&b""[..], b"hello", &[0xff; 125]] {
        client.send(OpCode::Ping, true, payload);
        assert_eq!(client.recv(), Frame::Pong(payload.to_vec()));
    }
    // Pongs from the client are ignored.
    client.send(OpCode::Pong, true, b"unsolicited");
    client.echo("still open");
    client.close(1000);
    server.shutdown();
}

#[test]
fn ping_inside_a_fragmented_message_gets_a_pong_then_the_whole_message() {
    let (server, _echo, mut client) = setup(|s| s);
    client.send(OpCode::Text, false, b"Hel");
    client.send(OpCode::Ping, true, b"mid");
    assert_eq!(client.recv(), Frame::Pong(b"mid".to_vec()), "the pong does not wait for the message");
    client.send(OpCode::Continuation, false, b"lo, ");
    client.send(OpCode::Ping, true, b"again");
    client.send(OpCode::Continuation, true, "wörld".as_bytes());
    assert_eq!(client.recv(), Frame::Pong(b"again".to_vec()));
    assert_eq!(client.recv(), Frame::text("Hello, wörld"));
    // The same, all in one write.
    let mut bytes = client.encode(OpCode::Binary, false, b"ab");
    bytes.extend(client.encode(OpCode::Ping, true, b"1"));
    bytes.extend(client.encode(OpCode::Continuation, true, b"cd"));
    client.write_raw(&bytes);
    assert_eq!(client.recv(), Frame::Pong(b"1".to_vec()));
    assert_eq!(client.recv(), Frame::Binary(b"abcd".to_vec()));
    client.close(1000);
    server.shutdown();
}

#[test]
fn frames_split_into_single_bytes_still_decode() {
    let (server, _echo, mut client) = setup(|s| s);
    let mut bytes = client.encode(OpCode::Text, true, "byte by byte".as_bytes());
    bytes.extend(client.encode(OpCode::Binary, true, &[0xab; 300]));
    for byte in bytes {
        client.write_raw(&[byte]);
    }
    assert_eq!(client.recv(), Frame::text("byte by byte"));
    assert_eq!(client.recv(), Frame::Binary(vec![0xab; 300]));
    client.close(1000);
    server.shutdown();
}

#[test]
fn handler_pings_and_shared_frames_reach_the_client() {
    let (server, _echo, mut client) = setup(|s| s);
    client.send_text("!ping are you there");
    assert_eq!(client.recv(), Frame::Ping(b"are you there".to_vec()));
    assert_eq!(client.recv(), Frame::text("ping Sent"));
    client.send(OpCode::Pong, true, b"are you there");
    let long = format!("!ping {}", "x".repeat(126));
    client.send_text(&long);
    assert_eq!(client.recv(), Frame::text("ping Refused"), "a ping payload over 125 bytes is refused");
    client.send_text("!shared to everyone");
    assert_eq!(client.recv(), Frame::text("to everyone"));
    client.close(1000);
    server.shutdown();
}
