//! permessage-deflate over real loopback sockets: negotiation, compressed
//! messages both ways with and without context takeover, and the failures
//! (a decompression bomb, corrupt data, bad UTF-8, RSV1 where it is not allowed).

mod common;

use common::*;
use emitws::proto::deflate::{accept_response, Compressor, Decompressor, DeflateAgreement, DeflateConfig};
use emitws::proto::handshake::server::parse_extensions;
use emitws::proto::{encode_frame_with_rsv, CloseCode, CloseReason, OpCode, ProtocolError, Role};
use emitws::runtime::{RunningServer, Server, SharedFrame};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn start(deflate: Option<DeflateConfig>, configure: impl FnOnce(Server) -> Server) -> (RunningServer, Echo) {
    let echo = Echo::default();
    let server = configure(quick_server().deflate(deflate)).start("127.0.0.1:0", echo.clone()).unwrap();
    (server, echo)
}

/// Upgrades with `offer` and returns the client and the server's
/// `Sec-WebSocket-Extensions` answer.
fn connect(server: &RunningServer, offer: &str) -> (Client, Option<String>) {
    connect_path(server, "/c", offer)
}

fn connect_path(server: &RunningServer, path: &str, offer: &str) -> (Client, Option<String>) {
    let (stream, reply, rest) =
        http(server.local_addr(), &upgrade_request(path, &[("Sec-WebSocket-Extensions", offer)]));
    assert_eq!(reply.status, 101, "{reply:?}");
    let answer = reply.header("sec-websocket-extensions").map(str::to_owned);
    (Client::from_parts(stream, rest), answer)
}

/// The client's side of a negotiated connection.
struct Peer {
    client: Client,
    compressor: Compressor,
    decompressor: Decompressor,
}

impl Peer {
    fn connect(server: &RunningServer, offer: &str) -> (Peer, DeflateAgreement) {
        Peer::connect_path(server, "/c", offer)
    }

    fn connect_path(server: &RunningServer, path: &str, offer: &str) -> (Peer, DeflateAgreement) {
        let (mut client, answer) = connect_path(server, path, offer);
        client.accept_compressed();
        let answer = answer.expect("permessage-deflate accepted");
        let agreement = accept_response(&parse_extensions(answer.as_bytes())[0], &DeflateConfig::default()).unwrap();
        let compressor = Compressor::new(&agreement, Role::Client, &DeflateConfig::default());
        (Peer { client, compressor, decompressor: Decompressor::new(&agreement, Role::Client) }, agreement)
    }

    fn send_compressed(&mut self, opcode: OpCode, message: &[u8]) {
        let mut payload = Vec::new();
        self.compressor.compress(message, &mut payload);
        self.send_raw_compressed(opcode, &payload);
    }

    fn send_raw_compressed(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Vec::new();
        encode_frame_with_rsv(&mut frame, opcode, true, 0b100, Some([9, 8, 7, 6]), payload);
        self.client.write_raw(&frame);
    }

    /// The next message, inflated if it came compressed; and whether it did.
    fn recv(&mut self) -> (Frame, bool) {
        match self.client.recv() {
            Frame::Compressed(text, payload) => {
                let mut out = Vec::new();
                self.decompressor.decompress(&payload, &mut out, 1 << 24).expect("the server's data inflates");
                let frame = match text {
                    true => Frame::Text(String::from_utf8(out).expect("UTF-8")),
                    false => Frame::Binary(out),
                };
                (frame, true)
            }
            frame => (frame, false),
        }
    }
}

#[test]
fn negotiation_answers_what_was_agreed() {
    let (plain, _) = start(None, |s| s);
    assert_eq!(connect(&plain, OFFER).1, None, "compression is off by default");
    plain.shutdown();

    let (server, _) = start(Some(DeflateConfig::default()), |s| s);
    assert_eq!(connect(&server, OFFER).1.as_deref(), Some("permessage-deflate"));
    assert_eq!(connect(&server, "x-webkit-deflate-frame").1, None);
    assert_eq!(connect(&server, "permessage-deflate; server_max_window_bits=8").1, None);
    assert_eq!(connect(&server, "permessage-deflate; foo=bar").1, None);
    assert_eq!(
        connect(&server, "permessage-deflate; bad, permessage-deflate; server_max_window_bits=11").1.as_deref(),
        Some("permessage-deflate; server_max_window_bits=11")
    );
    server.shutdown();

    let (low, _) = start(Some(DeflateConfig::low_memory()), |s| s);
    assert_eq!(
        connect(&low, OFFER).1.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9; client_max_window_bits=9"
        )
    );
    low.shutdown();
}

fn echo_round_trips(config: DeflateConfig) {
    let (server, _) = start(Some(config), |s| s);
    let (mut peer, _) = Peer::connect(&server, OFFER);
    let json = r#"{"event":"chat","data":{"room":"lobby","text":"hello there, how are you?"}}"#.repeat(4);
    for round in 0..5 {
        let text = format!("{json}{round}");
        peer.send_compressed(OpCode::Text, text.as_bytes());
        assert_eq!(peer.recv(), (Frame::Text(text), true));
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i * round % 251) as u8).collect();
        peer.send_compressed(OpCode::Binary, &bytes);
        assert_eq!(peer.recv(), (Frame::Binary(bytes), true));
    }
    // Short messages go back uncompressed, and uncompressed ones are fine too.
    peer.send_compressed(OpCode::Text, b"hi");
    assert_eq!(peer.recv(), (Frame::text("hi"), false));
    peer.client.send_text(&json);
    assert_eq!(peer.recv(), (Frame::Text(json), true));
    peer.client.close(1000);
    server.shutdown();
}

#[test]
fn compressed_bytes_are_counted_both_ways() {
    let metrics = emitws::metrics::Metrics::new();
    let (server, _) = start(Some(DeflateConfig::default()), |s| s.with_metrics(metrics.clone()));
    let (mut peer, _) = Peer::connect(&server, OFFER);
    let text = "a compressible line of chat, ".repeat(100);
    let mut payload = Vec::new();
    peer.compressor.compress(text.as_bytes(), &mut payload);
    peer.send_raw_compressed(OpCode::Text, &payload);
    assert_eq!(peer.recv(), (Frame::Text(text.clone()), true));
    let counted = metrics.snapshot();
    assert_eq!((counted.deflate_compressed_in, counted.deflate_plain_in), (payload.len() as u64, text.len() as u64));
    assert_eq!(counted.deflate_plain_out, text.len() as u64);
    assert!(counted.deflate_compressed_out > 0 && counted.deflate_compressed_out < counted.deflate_plain_out);
    peer.client.close(1000);
    server.shutdown();
}

#[test]
fn compressed_echo_with_context_takeover() {
    echo_round_trips(DeflateConfig::default());
}

#[test]
fn compressed_echo_without_context_takeover() {
    echo_round_trips(DeflateConfig::low_memory());
}

#[test]
fn a_decompression_bomb_is_closed_with_1009() {
    let (server, echo) = start(Some(DeflateConfig::default()), |s| s.max_message_size(1 << 20));
    let (mut peer, _) = Peer::connect(&server, OFFER);
    // 64 MiB of zeros compress to about 64 KiB; the limit is 1 MiB.
    let mut bomb = Vec::new();
    Compressor::new(&DeflateAgreement::default(), Role::Client, &DeflateConfig::default())
        .compress(&vec![0; 64 << 20], &mut bomb);
    assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
    peer.send_raw_compressed(OpCode::Binary, &bomb);
    peer.client.expect_close(1009);
    let id = echo.events.wait_opened("/c");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Protocol(ProtocolError::MessageTooLarge)), "{reason:?}");
    server.shutdown();
}

#[test]
fn corrupt_data_and_bad_utf8_are_closed_with_1007() {
    let (server, echo) = start(Some(DeflateConfig::default()), |s| s);
    let (mut peer, _) = Peer::connect(&server, OFFER);
    peer.send_raw_compressed(OpCode::Binary, b"\xff\xff\xff\xff");
    peer.client.expect_close(1007);
    drop(peer);

    let (mut peer, _) = Peer::connect(&server, OFFER);
    peer.send_compressed(OpCode::Text, b"valid until \xff here");
    peer.client.expect_close(1007);
    let closed = echo.events.snapshot().closed;
    let invalid =
        |r: &CloseReason| matches!(r, CloseReason::Protocol(e) if e.close_code() == CloseCode::INVALID_PAYLOAD);
    assert!(closed.iter().all(|(_, reason)| invalid(reason)), "{closed:?}");
    server.shutdown();
}

#[test]
fn rsv1_is_refused_on_continuations_and_without_negotiation() {
    let (server, _) = start(Some(DeflateConfig::default()), |s| s);
    let (mut peer, _) = Peer::connect(&server, OFFER);
    peer.client.send(OpCode::Text, false, b"first");
    let mut frame = Vec::new();
    encode_frame_with_rsv(&mut frame, OpCode::Continuation, true, 0b100, Some([1, 2, 3, 4]), b"x");
    peer.client.write_raw(&frame);
    peer.client.expect_close(1002);

    // The server compresses, but this client did not offer it.
    let (mut client, answer) = connect(&server, "x-other");
    assert_eq!(answer, None);
    let mut frame = Vec::new();
    encode_frame_with_rsv(&mut frame, OpCode::Text, true, 0b100, Some([1, 2, 3, 4]), b"x");
    client.write_raw(&frame);
    client.expect_close(1002);
    server.shutdown();
}

#[test]
fn a_broadcast_reaches_every_kind_of_recipient() {
    let (server, echo) = start(Some(DeflateConfig::default()), |s| s.workers(2));
    // Takes the frame compressed once for all; compresses its own copy; takes it plain.
    let (mut alone, _) = Peer::connect_path(&server, "/alone", "permessage-deflate; server_no_context_takeover");
    let (mut takeover, _) = Peer::connect_path(&server, "/takeover", OFFER);
    let (mut plain, answer) = connect_path(&server, "/plain", "x-none");
    assert_eq!(answer, None);
    let ids = ["/alone", "/takeover", "/plain"].map(|tag| echo.events.wait_opened(tag));
    let news = r#"{"event":"news","data":{"headline":"compressed once, sent to many"}}"#.repeat(10);
    for _ in 0..3 {
        server.handle().broadcast(ids, &SharedFrame::text(&news));
        assert_eq!(alone.recv(), (Frame::Text(news.clone()), true));
        assert_eq!(takeover.recv(), (Frame::Text(news.clone()), true));
        assert_eq!(plain.recv(), Frame::Text(news.clone()));
    }
    // Both compressed streams are still in step afterwards.
    for peer in [&mut alone, &mut takeover] {
        peer.send_compressed(OpCode::Text, news.as_bytes());
        assert_eq!(peer.recv(), (Frame::Text(news.clone()), true));
    }
    server.shutdown();
}
